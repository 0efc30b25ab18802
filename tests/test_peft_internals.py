"""Every peft internal in ``peft_hooks.peft_internals`` against the installed peft.

Each test fails with a message naming peft's version and the internal, so that a peft upgrade that
changes one of them says which and where instead of silently changing the records.
"""

import re
import warnings

import peft
import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model

from qformer_budget.core.adalora_rules import AdaLoraSchedule
from qformer_budget.peft_hooks import add_adalora, find_adalora_model
from qformer_budget.peft_hooks.adapter_io import load_adapter, save_adapter
from qformer_budget.peft_hooks.fast_allocator import TripletLayout
from qformer_budget.peft_hooks.peft_internals import (
    AVERAGES,
    EMPTY_TENSOR_SAVE_WARNING,
    RANK_PATTERN_LOAD_WARNING,
    LoraLinear,
    PeftInternalsChanged,
    RankAllocator,
    SVDLinear,
    allocator_averages,
    allocator_takes,
    cast_input_dtype,
    deepspeed_active,
    peft_forward_hooks,
    set_allocator_averages,
    swap_layer_class,
)
from qformer_budget.runner.tiny import build_tiny_instructblip

from tiny_training import tiny_setup

PEFT = f"peft {peft.__version__}"


class TwoLinears(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(6, 5)
        self.second = torch.nn.Linear(5, 4)

    def forward(self, x):
        return self.second(self.first(x))


def adalora_model(total_step: int = 10, tinit: int = 1, tfinal: int = 2, deltaT: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = AdaLoraConfig(target_modules=["first", "second"], init_r=4, target_r=2, tinit=tinit, tfinal=tfinal,
                           deltaT=deltaT, total_step=total_step)
    return get_peft_model(TwoLinears(), config)


def trained_allocator(steps: int = 3):
    """peft's own allocator after ``steps`` updates of a two-Linear AdaLoRA model with random gradients."""
    model = adalora_model()
    adalora = model.base_model
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.grad = torch.randn(param.shape, generator=generator)
        adalora.update_and_allocate(step)
    return model, adalora.rankallocator


def test_a_missing_internal_is_named_with_peft_version(monkeypatch):
    owner = next(cls for cls in LoraLinear.__mro__ if "_cast_input_dtype" in vars(cls))
    monkeypatch.delattr(owner, "_cast_input_dtype")
    layer = get_peft_model(TwoLinears(), LoraConfig(target_modules=["first"], r=2)).base_model.model.first
    with pytest.raises(PeftInternalsChanged, match=rf"{PEFT} has no Linear._cast_input_dtype.*routed inputs"):
        cast_input_dtype(layer, torch.ones(1, 6), torch.float32)


def test_forward_hooks_and_special_arguments():
    model = adalora_model()
    assert hasattr(model, "_enable_peft_forward_hooks"), f"{PEFT}: PeftModel._enable_peft_forward_hooks is gone"
    assert "adapter_names" in model.special_peft_forward_args, f"{PEFT}: special_peft_forward_args changed"
    with peft_forward_hooks(model, (), {"x": 1, "adapter_names": None}) as kwargs:
        assert kwargs == {"x": 1}, f"{PEFT}: peft's forward arguments are no longer stripped"


def test_cast_input_dtype_casts_as_peft_does():
    model = get_peft_model(TwoLinears(), LoraConfig(target_modules=["first"], r=2))
    layer = model.base_model.model.first
    assert isinstance(layer, LoraLinear), f"{PEFT}: LoRA's Linear layer class moved"
    cast = cast_input_dtype(layer, torch.ones(2, 6, dtype=torch.bfloat16), torch.float32)
    assert cast.dtype == torch.float32, f"{PEFT}: _cast_input_dtype no longer casts to the adapter's dtype"


def test_swapped_class_keeps_peft_state_and_refuses_unrelated_classes():
    model = adalora_model()
    layer = model.base_model.model.first
    assert type(layer) is SVDLinear, f"{PEFT}: AdaLoRA's Linear layer is no longer SVDLinear"
    state = {k: v.clone() for k, v in layer.state_dict().items()}

    class Marked(SVDLinear):
        pass

    swap_layer_class(layer, Marked)
    assert type(layer) is Marked
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in state.items())
    with pytest.raises(TypeError, match="not a subclass"):
        swap_layer_class(layer, LoraLinear)


def test_deepspeed_config_is_unset_without_deepspeed():
    assert deepspeed_active() is False, f"{PEFT}: adalora.layer.deepspeed_config() is set without DeepSpeed"


def test_allocator_averages_are_dicts_by_parameter_name_under_its_name_filter():
    model, allocator = trained_allocator()
    averages = allocator_averages(allocator)
    takes = [n for n, _ in model.base_model.model.named_parameters() if allocator_takes(n, "default")]
    for name in AVERAGES:
        assert list(averages[name]) == takes, f"{PEFT}: RankAllocator.{name} is no longer keyed by parameter name"
    saved = {name: {k: v.clone() + 1 for k, v in averages[name].items()} for name in AVERAGES}
    set_allocator_averages(allocator, saved)
    assert all(allocator_averages(allocator)[name] is saved[name] for name in AVERAGES)


def test_update_ipt_is_peft_formula():
    """The formula the fast allocator's update repeats: beta * avg + (1 - beta) * |p * grad| and its uncertainty."""
    model, allocator = trained_allocator(steps=1)
    before = {name: {k: v.clone() for k, v in allocator_averages(allocator)[name].items()} for name in AVERAGES}
    parameters = dict(model.base_model.model.named_parameters())
    for param in parameters.values():
        if param.requires_grad:
            param.grad = torch.full_like(param, 0.5)
    allocator.update_ipt(model.base_model.model)
    after = allocator_averages(allocator)
    b1, b2 = allocator.beta1, allocator.beta2
    for name, average in before["exp_avg_ipt"].items():
        ipt = (parameters[name] * parameters[name].grad).abs().detach()
        expected = b1 * average + (1 - b1) * ipt
        assert torch.equal(after["exp_avg_ipt"][name], expected), f"{PEFT}: update_ipt's average changed ({name})"
        unc = b2 * before["exp_avg_unc"][name] + (1 - b2) * (ipt - expected).abs()
        assert torch.equal(after["exp_avg_unc"][name], unc), f"{PEFT}: update_ipt's uncertainty changed ({name})"


def test_triplet_formula_equals_peft_element_score_and_combine_ipt():
    """TripletLayout.triplet_scores against peft's _element_score and _combine_ipt, bit for bit."""
    model, allocator = trained_allocator()
    adapter = "default"
    modules = ["first", "second"]
    parameters = dict(model.base_model.model.named_parameters())
    peft_scores = []
    for module in modules:
        element = {m: allocator._element_score(f"{module}.{m}.{adapter}") for m in ("lora_A", "lora_E", "lora_B")}
        ipt_ab = torch.cat(
            [element["lora_A"].mean(dim=1, keepdim=True), element["lora_B"].mean(dim=0).view(-1, 1)], dim=1
        )
        peft_scores.append(allocator._combine_ipt(element["lora_E"], ipt_ab))
    layout = TripletLayout(4, [(parameters[f"{m}.lora_A.{adapter}"].shape[1], parameters[f"{m}.lora_B.{adapter}"].shape[0])
                               for m in modules])
    flat = torch.empty(layout.numel)
    averages = allocator_averages(allocator)
    for view, name in zip(layout.matrix_views(flat), [f"{m}.{x}.{adapter}" for m in modules for x in ("lora_A", "lora_E", "lora_B")]):
        view.copy_(averages["exp_avg_ipt"][name] * averages["exp_avg_unc"][name])
    ours = layout.triplet_scores(flat)
    for row, theirs in zip(ours, peft_scores):
        assert torch.equal(row, theirs), f"{PEFT}: the triplet score formula (_element_score/_combine_ipt) changed"


@pytest.mark.parametrize("schedule", [(10, 1, 2, 2), (40, 5, 5, 5), (14, 2, 4, 3), (7, 0, 1, 1)])
def test_budget_schedule_is_the_core_rule(schedule):
    total_step, tinit, tfinal, delta_t = schedule
    rules = AdaLoraSchedule(total_step, tinit, tfinal, delta_t)
    allocator = adalora_model(total_step, tinit, tfinal, delta_t).base_model.rankallocator
    assert isinstance(allocator, RankAllocator)
    for step in range(total_step):
        budget, mask = allocator.budget_schedule(step)
        assert budget == rules.budget(step, allocator.init_bgt, allocator.target_bgt), f"{PEFT}: budget_schedule changed"
        if step < rules.final_mask_step:  # update_and_allocate masks at the final mask step whatever mask_ind says
            assert bool(mask) == bool(rules.is_mask_step(step)), f"{PEFT}: mask steps changed at {step}"


def test_warnings_silenced_on_save_and_load_are_still_peft_texts(tmp_path):
    """The adapter of a module pruned to rank 0 still makes peft warn with the texts save/load silence."""
    setup = tiny_setup(total_step=6, tinit=1, tfinal=1, deltaT=1, init_r=2, target_r=0)
    model = add_adalora(build_tiny_instructblip(seed=0)[0], setup, seed=0)
    adalora = find_adalora_model(model)
    config = adalora.peft_config["default"]
    modules = [name for name, module in adalora.model.named_modules() if isinstance(module, SVDLinear)]
    config.rank_pattern = {f"{name}.lora_E.default": [False, False] for name in modules}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(str(tmp_path / "raw"))
        load_adapter(build_tiny_instructblip(seed=0)[0], tmp_path / "raw")
    texts = [str(w.message) for w in caught]
    assert any(re.match(EMPTY_TENSOR_SAVE_WARNING, t) for t in texts), f"{PEFT}: the empty-tensor save warning changed"
    assert not any(RANK_PATTERN_LOAD_WARNING in t for t in texts)  # load_adapter silences it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_adapter(model, tmp_path / "quiet")
        peft.PeftModel.from_pretrained(build_tiny_instructblip(seed=0)[0], str(tmp_path / "quiet"))
    texts = [str(w.message) for w in caught]
    assert not any(re.match(EMPTY_TENSOR_SAVE_WARNING, t) for t in texts)
    assert any(RANK_PATTERN_LOAD_WARNING in t for t in texts), f"{PEFT}: the rank_pattern load warning changed"
