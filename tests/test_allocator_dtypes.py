"""The fast allocator against peft's, bit for bit, in every dtype the adapter or the base model may have;
and a step updated twice is refused."""

import copy

import pytest
import torch
from peft import AdaLoraConfig, get_peft_model

from torch._dynamo.utils import counters

from qformer_budget.core.adalora_rules import AdaLoraSchedule
from qformer_budget.peft_hooks import BudgetRecorder, use_fast_allocator
from qformer_budget.peft_hooks.fast_allocator import FusedUpdate, update_averages
from qformer_budget.peft_hooks.peft_internals import allocator_averages
from qformer_budget.peft_hooks.recorder import triplet_scores

TOTAL_STEP, TINIT, TFINAL, DELTA_T = 14, 2, 3, 2


class Layers(torch.nn.Module):
    """Linear layers of several shapes, so that the fast allocator groups and orders them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(24, 16)
        self.b = torch.nn.Linear(16, 40)
        self.c = torch.nn.Linear(24, 16)
        self.d = torch.nn.Linear(40, 8)


def pair(adapter_dtype: torch.dtype, base_dtype: torch.dtype, compile_update: bool = True):
    """Two equal AdaLoRA models, the second driven by the fast allocator (its update compiled or eager)."""
    torch.manual_seed(0)
    config = AdaLoraConfig(target_modules=["a", "b", "c", "d"], init_r=6, target_r=2, tinit=TINIT, tfinal=TFINAL,
                           deltaT=DELTA_T, total_step=TOTAL_STEP)
    model = get_peft_model(Layers(), config)
    for name, param in model.named_parameters():
        param.data = param.data.to(adapter_dtype if "lora_" in name else base_dtype)
    fast = copy.deepcopy(model)
    use_fast_allocator(fast, compile_update=compile_update)
    return model, fast


def same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.dtype == y.dtype and torch.equal(x, y)


@pytest.mark.parametrize("adapter_dtype, base_dtype", [
    (torch.float32, torch.float32), (torch.float64, torch.float64), (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16), (torch.float32, torch.bfloat16),
], ids=["fp32", "fp64", "bf16 adapter", "fp16 adapter", "bf16 base"])
@pytest.mark.parametrize("compile_update", [True, False], ids=["compiled", "eager"])
def test_every_step_equals_peft_bit_for_bit(adapter_dtype, base_dtype, compile_update):
    torch._dynamo.reset()  # no earlier test's graphs count towards dynamo's recompile limit
    counters.clear()
    peft_model, fast_model = pair(adapter_dtype, base_dtype, compile_update)
    generator = torch.Generator().manual_seed(1)
    schedule = AdaLoraSchedule(TOTAL_STEP, TINIT, TFINAL, DELTA_T)
    mask_steps = [step for step in range(TOTAL_STEP) if schedule.is_mask_step(step)]
    assert len(mask_steps) >= 3  # budgeting masks and the final one are compared, and the steps between
    for step in range(TOTAL_STEP):
        for (name, p), (_, q) in zip(peft_model.named_parameters(), fast_model.named_parameters()):
            if p.requires_grad:
                grad = torch.randn(p.shape, generator=generator).to(p.dtype)
                p.grad, q.grad = grad.clone(), grad.clone()
        if step % 3 == 0:  # as the recorder asks on the steps it records; mask steps score anyway
            fast_model.base_model.rankallocator.score_next_update = True
        for model in (peft_model, fast_model):
            model.base_model.update_and_allocate(step)
        theirs, ours = (allocator_averages(m.base_model.rankallocator) for m in (peft_model, fast_model))
        for average in ("exp_avg_ipt", "exp_avg_unc"):
            assert theirs[average].keys() == ours[average].keys()
            for key in theirs[average]:
                assert same(theirs[average][key], ours[average][key]), (step, average, key)
        for (name, p), (_, q) in zip(peft_model.named_parameters(), fast_model.named_parameters()):
            assert same(p.detach(), q.detach()), (step, name)  # lora_E after the masks alike
        if theirs["exp_avg_ipt"]:
            modules = fast_model.base_model.rankallocator.modules
            assert same(triplet_scores(fast_model.base_model, modules, "default"),
                        triplet_scores(peft_model.base_model, modules, "default")), step
        pattern = peft_model.peft_config["default"].rank_pattern
        assert pattern == fast_model.peft_config["default"].rank_pattern, step
        assert (pattern is not None) == (step >= mask_steps[0]), step
    # compiled: one graph without element scores and one with them, and no fallback to eager
    assert counters["stats"]["unique_graphs"] == (2 if compile_update else 0)


def _with_gradients(model, generator) -> None:
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=generator)


def test_a_second_update_of_a_step_is_refused_naming_what_to_remove():
    model, _ = pair(torch.float32, torch.float32)
    generator = torch.Generator().manual_seed(2)
    _with_gradients(model, generator)
    model.base_model.update_and_allocate(0)  # the user's own call, before the recorder's first step
    with pytest.raises(RuntimeError, match=r"already ran before this BudgetRecorder's first step.*remove your own call"):
        BudgetRecorder(None).step(model, 0)

    model, _ = pair(torch.float32, torch.float32)
    recorder = BudgetRecorder(None)
    for step in range(2):
        _with_gradients(model, generator)
        recorder.step(model, step)
    with pytest.raises(RuntimeError, match=r"called for step 1 after step 1 was updated.*remove your own call to "
                                           r"update_and_allocate, or the second recorder"):
        model.base_model.update_and_allocate(1)  # the user's own call, after the recorder's
    second = BudgetRecorder(None)
    with pytest.raises(RuntimeError, match=r"already ran before this BudgetRecorder's first step"):
        second.step(model, 2)  # a second recorder on the same model
    _with_gradients(model, generator)
    recorder.step(model, 2)  # the first recorder goes on
    assert copy.deepcopy(model).base_model.update_and_allocate.__self__ is not model.base_model  # a copy guards itself


def test_a_failed_compile_warns_once_and_updates_eagerly_with_the_same_bits(monkeypatch):
    def no_compiler(function, **options):
        def fails(*args):
            raise RuntimeError("no C++ compiler found\ndetails")
        return fails
    monkeypatch.setattr(torch, "compile", no_compiler)
    fused = FusedUpdate()
    generator = torch.Generator().manual_seed(3)
    products, average, uncertainty = (torch.randn(50, generator=generator) for _ in range(3))
    expected = [average.clone(), uncertainty.clone(), torch.empty(50)]
    update_averages(products, *expected, 0.85, 0.85)
    scores = torch.empty(50)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler found\); updating"):
        fused(products, average, uncertainty, scores, 0.85, 0.85)
    assert fused.compiled is None
    assert all(torch.equal(x, y) for x, y in zip((average, uncertainty, scores), expected))
