import copy
import functools
import json

import peft
import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from peft.tuners.adalora import AdaLoraModel
from peft.tuners.tuners_utils import BaseTunerLayer

from qformer_budget.benchmarks.synthetic_vqa import generate_examples
from qformer_budget.peft_hooks import (
    AdaLoraSetup,
    BudgetRecorder,
    add_adalora,
    find_adalora_model,
    target_modules_regex,
)
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.tiny import load_tiny_checkpoint, load_tiny_processor
from qformer_budget.vl_methods.routing import (
    RoutingConfig,
    add_routed_adalora,
    add_routed_lora,
    load_routed,
    save_routed,
)
from qformer_budget.vl_methods.routing.config import VARIANTS
from qformer_budget.vl_methods.routing.layer import (
    RoutedLoraLinear,
    RoutedSVDLinear,
    VisualContext,
    make_routed,
    resample_features,
    route,
)

# The Q-Former's paper placements (FFN outputs are 64 wide in the tiny model, the image 32) and the T5 LM's
# attention query/value and FFN output.
QFORMER_AND_LM = (
    f"(?:{target_modules_regex('paper_all')})"
    r"|(?:language_model\.(?:encoder|decoder)\.block\.\d+\.layer\.\d+\."
    r"(?:(?:SelfAttention|EncDecAttention)\.[qv]|DenseReluDense\.wo))"
)


@pytest.fixture(scope="module")
def processor():
    return load_tiny_processor()


@pytest.fixture(scope="module")
def batch(processor):
    return InstructBlipCollator(processor)(generate_examples(4, seed=0))


@functools.cache
def pristine_model():
    # The shipped, aligned checkpoint: a random vision tower's CLS token is all but zero after its layernorm.
    return load_tiny_checkpoint()[0]


def base_model():
    """A fresh copy of the shipped tiny model (copying is faster than loading)."""
    return copy.deepcopy(pristine_model())


def lora_config() -> LoraConfig:
    return LoraConfig(target_modules=QFORMER_AND_LM, r=4, lora_alpha=8, lora_dropout=0.0)


def adalora_setup() -> AdaLoraSetup:
    return AdaLoraSetup(total_step=10, tinit=2, tfinal=2, deltaT=2, init_r=4, target_r=2)


def train_like(model, seed: int = 1, std: float = 0.5) -> None:
    """Nonzero B (LoRA) or E and P (AdaLoRA), as after training; the global RNG is left alone."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name or ".lora_E." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def routed_layers(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (RoutedLoraLinear, RoutedSVDLinear))}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="dot"), "unknown routing variant 'dot'; variants are multiply, add, matmul, matmul2"),
        (dict(pooling="max"), "unknown routing pooling 'max'; poolings are cls, mean"),
    ],
)
def test_bad_routing_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RoutingConfig(**kwargs)


def test_route_matches_the_released_code_formulas():
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(3, 5, 4, generator=generator)  # (batch, tokens, r)
    x_v = torch.randn(3, 1, 4, generator=generator)  # one pooled visual token
    assert torch.equal(route("multiply", x_t, x_v), x_t * x_v)
    assert torch.equal(route("add", x_t, x_v), x_t + x_v.expand_as(x_t))
    # MergedLinearOnlyVLBeforeB: x_t @ x_v.reshape(b, r, 1) @ x_v and x_t @ x_v.expand(b, r, r)
    assert torch.allclose(route("matmul", x_t, x_v), x_t @ x_v.reshape(3, 4, 1) @ x_v, atol=1e-6)
    assert torch.allclose(route("matmul2", x_t, x_v), x_t @ x_v.expand(3, 4, 4), atol=1e-6)
    kept = torch.tensor([1.0, 0.0, 1.0, 1.0])
    masked = (x_t * kept) @ (x_v * kept).reshape(3, 4, 1) @ x_v
    assert torch.allclose(route("matmul", x_t, x_v, kept), masked, atol=1e-6)


def test_width_map_is_identity_or_feature_pooling():
    features = torch.randn(2, 32)
    assert resample_features(features, 32) is features
    assert torch.equal(resample_features(features, 64), features.repeat_interleave(2, dim=1))
    wide = torch.full((2, 1408), 3.0)
    assert torch.allclose(resample_features(wide, 768), torch.full((2, 768), 3.0))


def test_context_pools_and_repeats_images_for_expanded_batches():
    embeds = torch.randn(2, 5, 32)
    context = VisualContext("mean")
    context.set_image_embeds(embeds)
    assert torch.allclose(context.features(32, 2, "layer"), embeds.mean(dim=1))
    assert torch.equal(context.features(32, 4, "layer"), embeds.mean(dim=1).repeat_interleave(2, dim=0))
    with pytest.raises(ValueError, match="'layer' got a batch of 3 rows but the visual context holds 2 images"):
        context.features(32, 3, "layer")
    cls = VisualContext("cls")
    cls.set_image_embeds(embeds)
    assert torch.equal(cls.features(32, 2, "layer"), embeds[:, 0])


@pytest.mark.parametrize("variant", VARIANTS)
def test_routed_models_equal_the_base_model_at_initialisation(variant, batch):
    expected = logits(base_model(), batch)
    lora = add_routed_lora(base_model(), lora_config(), RoutingConfig(variant), seed=0)
    adalora = add_routed_adalora(base_model(), adalora_setup(), RoutingConfig(variant), seed=0)
    for model in (lora, adalora):
        got = logits(model, batch)
        assert model.routing_hooks.context.pooled is not None  # the routed layers did read an image
        assert torch.equal(got, expected)
    assert any(n.startswith("language_model.") for n in routed_layers(lora.get_base_model()))
    # and with a trained-like adapter, routing changes the output
    train_like(lora)
    assert not torch.allclose(logits(lora, batch), expected, atol=1e-4)


class Proj(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def route_copy(plain, variant: str, image_embeds: torch.Tensor):
    """A copy of ``plain`` whose adapter layer is routed, with a context holding ``image_embeds``."""
    routed = copy.deepcopy(plain)
    context = VisualContext("cls")
    make_routed(routed.base_model.model.proj, variant, context, "proj", routed.base_model.peft_config)
    context.set_image_embeds(image_embeds)
    return routed


@pytest.mark.parametrize("variant", ["multiply", "add"])
def test_multiply_by_ones_and_add_zero_reduce_to_plain_lora_exactly(variant):
    torch.manual_seed(0)
    plain = get_peft_model(Proj(), LoraConfig(target_modules=["proj"], r=4, lora_alpha=8))
    train_like(plain)
    x = torch.randn(3, 5, 8)
    image = torch.zeros(3, 2, 8)
    if variant == "multiply":  # A x_R = A[:, 0] = 1 exactly
        image[:, 0, 0] = 1.0
        with torch.no_grad():
            plain.base_model.model.proj.lora_A["default"].weight[:, 0] = 1.0
    routed = route_copy(plain, variant, image)
    assert isinstance(routed.base_model.model.proj, RoutedLoraLinear)
    assert torch.equal(routed(x), plain(x)), f"peft {peft.__version__}: lora.Linear.forward no longer matches the routed copy"
    other = route_copy(plain, variant, torch.randn(3, 2, 8))
    assert not torch.allclose(other(x), plain(x))


@pytest.mark.parametrize("variant", ["multiply", "add"])
def test_multiply_by_ones_and_add_zero_reduce_to_plain_adalora(variant):
    torch.manual_seed(0)
    config = AdaLoraConfig(target_modules=["proj"], init_r=4, total_step=10, lora_alpha=8)
    plain = get_peft_model(Proj(), config)
    train_like(plain)
    x = torch.randn(3, 5, 8)
    image = torch.zeros(3, 2, 8)
    if variant == "multiply":
        image[:, 0, 0] = 1.0
        with torch.no_grad():
            plain.base_model.model.proj.lora_A["default"][:, 0] = 1.0
    routed = route_copy(plain, variant, image)
    assert isinstance(routed.base_model.model.proj, RoutedSVDLinear)
    assert torch.allclose(routed(x), plain(x), atol=1e-6), (
        f"peft {peft.__version__}: SVDLinear.forward no longer matches the routed copy"
    )
    other = route_copy(plain, variant, torch.randn(3, 2, 8))
    assert not torch.allclose(other(x), plain(x), atol=1e-3)


def counts(model) -> tuple[int, int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())


def test_trainable_parameters_equal_plain_lora_and_adalora():
    routing = RoutingConfig("matmul")
    plain_lora = get_peft_model(base_model(), lora_config())
    routed_lora = add_routed_lora(base_model(), lora_config(), routing, seed=0)
    assert counts(routed_lora) == counts(plain_lora)
    assert counts(routed_lora)[0] > 0
    assert {n for n, p in routed_lora.named_parameters() if p.requires_grad} == {
        n for n, p in plain_lora.named_parameters() if p.requires_grad
    }
    plain_adalora = add_adalora(base_model(), adalora_setup(), seed=0)
    routed_adalora = add_routed_adalora(base_model(), adalora_setup(), routing, seed=0)
    assert counts(routed_adalora) == counts(plain_adalora)
    assert len(routed_layers(routed_adalora)) == 120


def test_adapter_initialisation_is_seeded_without_touching_the_global_rng():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    first = add_routed_lora(base_model(), lora_config(), RoutingConfig(), seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    again = add_routed_lora(base_model(), lora_config(), RoutingConfig(), seed=3)
    params = dict(again.named_parameters())
    assert all(torch.equal(p, params[n]) for n, p in first.named_parameters() if p.requires_grad)
    assert all(not p.requires_grad for n, p in first.named_parameters() if ".lora_" not in n)


def test_merging_a_routed_layer_raises(batch):
    model = add_routed_lora(base_model(), lora_config(), RoutingConfig("multiply"), seed=0)
    train_like(model)
    query = model.get_base_model().qformer.encoder.layer[0].attention.attention.query
    weight = query.base_layer.weight.clone()
    with pytest.raises(ValueError, match=r"cannot merge routed layer 'qformer\.encoder\.layer\.0\..*depends on the image"):
        model.merge_and_unload()
    assert torch.equal(query.base_layer.weight, weight)
    adalora = add_routed_adalora(base_model(), adalora_setup(), RoutingConfig("add"), seed=0)
    layer = next(iter(routed_layers(adalora).values()))
    with pytest.raises(ValueError, match="depends on the image"):
        layer.merge()


def test_routed_layer_without_visual_context_raises_naming_it():
    plain = get_peft_model(Proj(), LoraConfig(target_modules=["proj"], r=4))
    routed = copy.deepcopy(plain)
    make_routed(routed.base_model.model.proj, "matmul", VisualContext(), "proj", routed.peft_config)
    with pytest.raises(RuntimeError, match="routed layer 'proj' was called without visual context"):
        routed(torch.randn(2, 3, 8))


def test_hooks_are_removed_and_then_the_layers_refuse_to_run(batch):
    model = add_routed_lora(base_model(), lora_config(), RoutingConfig("matmul2"), seed=0)
    inner = model.get_base_model()
    hooked = (inner, inner.vision_model, inner.qformer)
    hooks = model.routing_hooks
    assert len(hooks.handles) == 3
    assert all(len(m._forward_pre_hooks) == 1 for m in hooked)
    with hooks:
        logits(model, batch)
    assert hooks.handles == [] and hooks.context.pooled is None
    assert all(len(m._forward_pre_hooks) == 0 and len(m._forward_pre_hooks_with_kwargs) == 0 for m in hooked)
    with pytest.raises(RuntimeError, match=r"layer 'qformer\.encoder\.layer\.0\..*without visual context"):
        logits(model, batch)


def test_a_call_that_skips_the_qformer_does_not_reuse_the_last_image(batch):
    model = add_routed_lora(base_model(), lora_config(), RoutingConfig("add"), seed=0)
    logits(model, batch)
    inner = model.get_base_model()
    with torch.no_grad():
        features = inner.get_image_features(
            batch["pixel_values"], qformer_input_ids=batch["qformer_input_ids"],
            qformer_attention_mask=batch["qformer_attention_mask"], return_dict=True,
        )
        image_inputs = ("pixel_values", "qformer_input_ids", "qformer_attention_mask")
        rest = {k: v for k, v in batch.items() if k not in image_inputs}
        with pytest.raises(RuntimeError, match="without visual context"):
            model(pixel_values=None, qformer_input_ids=None, mm_encoder_outputs={"image": features}, **rest)


def test_vision_model_targets_and_adalora_configs_are_refused():
    model = base_model()
    with pytest.raises(ValueError, match="the LoRA targets match .* modules of the vision model"):
        add_routed_lora(model, LoraConfig(target_modules=r"vision_model\..*\.qkv"), RoutingConfig())
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    with pytest.raises(TypeError, match="add_routed_lora takes a peft LoraConfig, got AdaLoraConfig"):
        add_routed_lora(model, AdaLoraConfig(total_step=10), RoutingConfig())


def test_generate_with_routing_on_the_qformer_and_the_lm(processor):
    model = add_routed_lora(base_model(), lora_config(), RoutingConfig("matmul"), seed=0)
    train_like(model, std=0.3)
    model.eval()
    examples = generate_examples(2, seed=4)
    inputs = InstructBlipCollator(processor).encode_for_generation(
        [e.load_image() for e in examples], [e.prompt for e in examples]
    )
    decoder_layer = model.get_base_model().language_model.decoder.block[0].layer[0].SelfAttention.q
    assert isinstance(decoder_layer, RoutedLoraLinear)
    rows = []
    handle = decoder_layer.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            greedy = model.generate(**inputs, max_new_tokens=3, num_beams=1, do_sample=False)
            start = torch.full((2, 1), model.get_base_model().config.text_config.decoder_start_token_id)
            first = model(**inputs, decoder_input_ids=start).logits[:, -1].argmax(-1)
            rows.clear()
            beams = model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False)
    finally:
        handle.remove()
    assert torch.equal(greedy[:, 1], first)
    assert beams.shape[0] == 2
    assert rows and set(rows) == {4}  # the decoder ran on 2 images x 2 beams


@pytest.mark.parametrize("variant", ["multiply", "matmul"])
def test_routed_adalora_is_recorded_through_masking_and_saved_trimmed(variant, batch, processor, tmp_path):
    setup = adalora_setup()
    model = add_routed_adalora(base_model(), setup, RoutingConfig(variant), seed=0)
    assert isinstance(find_adalora_model(model), AdaLoraModel)
    collate = InstructBlipCollator(processor)
    examples = generate_examples(4 * setup.total_step, seed=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    records = []
    with BudgetRecorder(None, benchmark="synthetic_vqa", record_every=1) as recorder:
        for step in range(setup.total_step):
            model(**collate(examples[4 * step : 4 * step + 4])).loss.backward()
            optimizer.step()
            records.append(recorder.step(model, step))
            optimizer.zero_grad()
    assert [r.global_step for r in records] == list(range(setup.total_step))
    assert set(r.module for r in records[0].modules) == set(routed_layers(model.get_base_model()))
    final_mask = records[setup.total_step - setup.tfinal]
    assert final_mask.mask_step and final_mask.budget == setup.target_r * len(final_mask.modules)
    kept = records[-1].direction_kept
    assert 0 < kept.sum() <= final_mask.budget < kept.size
    assert kept.sum(axis=1).min() < setup.init_r  # some modules were pruned

    trained = logits(model, batch)
    save_routed(model, tmp_path)
    assert json.loads((tmp_path / "routing.json").read_text()) == {"variant": variant, "pooling": "cls"}
    assert torch.equal(logits(model, batch), trained)  # peft renamed the live rank_pattern keys on save
    loaded = load_routed(base_model(), tmp_path)
    loaded_layers = routed_layers(loaded)
    assert len(loaded_layers) == len(records[0].modules)
    assert min(m.lora_A["default"].shape[0] for m in loaded_layers.values()) < setup.init_r  # saved trimmed
    assert torch.allclose(logits(loaded, batch), trained, atol=1e-5)


def test_routed_lora_save_load_round_trip(batch, tmp_path):
    model = add_routed_lora(base_model(), lora_config(), RoutingConfig("matmul2", pooling="mean"), seed=0)
    train_like(model)
    trained = logits(model, batch)
    save_routed(model, tmp_path)
    loaded = load_routed(base_model(), tmp_path)
    assert loaded.routing_hooks.config == RoutingConfig("matmul2", pooling="mean")
    assert set(routed_layers(loaded)) == set(routed_layers(model))
    assert torch.equal(logits(loaded, batch), trained)
    with pytest.raises(FileNotFoundError, match="no routing.json in"):
        load_routed(base_model(), tmp_path / "missing")


def tiny_blip2():
    from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

    text = T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )
    config = Blip2Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
        ),
        qformer_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, encoder_hidden_size=32
        ),
        text_config=text.to_dict(), num_query_tokens=4, image_token_index=63,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Blip2ForConditionalGeneration(config)
    # the shipped checkpoint's (same-sized) vision tower, as a random one's CLS token is all but zero
    model.vision_model.load_state_dict(pristine_model().vision_model.state_dict())
    return model


def test_blip2_routes_the_same_way():
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(2, 3, 32, 32, generator=generator),
        "input_ids": torch.tensor([[63] * 4 + [5, 6, 7]] * 2),
        "decoder_input_ids": torch.zeros(2, 1, dtype=torch.long),
    }
    expected = logits(tiny_blip2(), inputs)
    targets = r"qformer\.encoder\.layer\.\d+\.attention\.attention\.(?:query|value)|language_model\..*SelfAttention\.[qv]"
    model = add_routed_lora(tiny_blip2(), LoraConfig(target_modules=targets, r=4), RoutingConfig("multiply"))
    assert len(routed_layers(model)) == 8
    assert torch.equal(logits(model, inputs), expected)
    train_like(model)
    assert not torch.allclose(logits(model, inputs), expected, atol=1e-4)
    generation = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    with torch.no_grad():
        assert model.generate(**generation, max_new_tokens=2, num_beams=2, do_sample=False).shape[0] == 2

