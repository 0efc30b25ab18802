"""The whole-model grammar: every Linear of InstructBLIP (T5 and LLaMA), BLIP-2 and plain LMs, built from configs."""

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from qformer_budget.core.grammar import placement_component
from qformer_budget.peft_hooks import (
    COMPONENT_PLACEMENTS,
    COMPONENTS,
    ModulePosition,
    parse_module,
    parse_sublayer,
    placement_regexes,
    target_modules_regex,
)

VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16,
              patch_size=8)
QFORMER = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
               cross_attention_frequency=2, encoder_hidden_size=16, vocab_size=50)
T5 = dict(vocab_size=60, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=3, num_heads=2)
LLAMA = dict(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
             num_key_value_heads=2)


def vlm(model_class, config_class, text: dict) -> torch.nn.Module:
    config = config_class(vision_config=VISION, qformer_config=QFORMER, text_config=text, num_query_tokens=4)
    return model_class(config)


MODELS = {
    "instructblip-t5": lambda: vlm(InstructBlipForConditionalGeneration, InstructBlipConfig, T5Config(**T5).to_dict()),
    "instructblip-flant5-gated": lambda: vlm(
        InstructBlipForConditionalGeneration, InstructBlipConfig,
        T5Config(**T5, feed_forward_proj="gated-gelu").to_dict(),
    ),
    "instructblip-llama": lambda: vlm(
        InstructBlipForConditionalGeneration, InstructBlipConfig, LlamaConfig(**LLAMA).to_dict()
    ),
    "blip2-t5": lambda: vlm(Blip2ForConditionalGeneration, Blip2Config, T5Config(**T5).to_dict()),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**LLAMA)),
    "t5": lambda: T5ForConditionalGeneration(T5Config(**T5)),
}


def expected_component(name: str) -> str:
    if name.startswith("vision_model."):
        return "vision"
    if name.startswith("qformer.") or name == "language_projection":
        return "qformer"
    return "llm"


@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_linear_parses_to_its_component_and_layer_with_a_label_of_its_own(model_name):
    model = MODELS[model_name]()
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    positions = {name: parse_module(name) for name in names}
    assert [name for name, position in positions.items() if position is None] == []
    for name, position in positions.items():
        assert position.component == expected_component(name), name
        numbers = re.findall(r"\.(?:layers|layer|block)\.(\d+)\.", name)
        assert position.layer == (int(numbers[0]) if numbers else None), name
    labels = [position.label for position in positions.values()]
    assert len(set(labels)) == len(labels)  # one label per module
    for name, position in positions.items():  # the Q-Former's grammar is unchanged
        if position.component == "qformer" and position.layer is not None:
            assert position.label == parse_sublayer(name).label
    components = {position.component for position in positions.values()}
    assert components == ({"llm"} if model_name in ("llama", "t5") else set(COMPONENTS))


def test_blocks_and_projections_of_each_component():
    assert parse_module("base_model.model.vision_model.encoder.layers.7.self_attn.qkv") == ModulePosition(
        "vision", 7, "attn", "qkv"
    )
    assert parse_module("visual_encoder.blocks.3.attn.proj") == ModulePosition("vision", 3, "attn", "projection")
    assert parse_module("language_model.decoder.block.2.layer.1.EncDecAttention.v") == ModulePosition(
        "llm", 2, "dec_cross_attn", "v"
    )
    assert parse_module("language_model.encoder.block.0.layer.1.DenseReluDense.wi_1").label == "llm.L00.enc_ffn.wi_1"
    assert parse_module("t5_model.decoder.block.4.layer.2.DenseReluDense.wo").label == "llm.L04.dec_ffn.wo"
    assert parse_module("llm_model.model.layers.31.mlp.gate_proj").label == "llm.L31.mlp.gate_proj"
    assert parse_module("module.qformer.encoder.layer.2.crossattention.attention.value").label == "L02.cross_attn.value"
    assert parse_module("t5_proj").label == "qformer.language_projection.dense"
    assert parse_module("language_model.lm_head").label == "llm.lm_head.dense"
    for unknown in ("vision_model.embeddings.patch_embedding", "decoder.block.1.layer.0.SelfAttention.relative",
                    "layers.2.mlp.fc9", "qformer.encoder.layer.1.attention.output.LayerNorm"):
        assert parse_module(unknown) is None, unknown


@given(st.text(max_size=80))
def test_the_parser_never_fails_on_arbitrary_text(name):
    position = parse_module(name)
    assert position is None or position.component in COMPONENTS


@pytest.mark.parametrize("model_name", list(MODELS))
def test_each_placement_part_takes_modules_of_its_component_only(model_name):
    model = MODELS[model_name]()
    positions = {name: parse_module(name) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    for part in [*COMPONENT_PLACEMENTS, "paper_all", "all_linear"]:
        pattern = re.compile(target_modules_regex(part))
        taken = {name for name in positions if pattern.fullmatch(name)}
        assert {positions[name].component for name in taken} <= {placement_component(part)}, part
    # "all linear" is every Linear inside the component's layers; the LLM's attention placement is q and v only.
    for component, part in (("llm", "llm_all_linear"), ("vision", "vision_all_linear")):
        inside = {n for n, p in positions.items() if p.component == component and p.layer is not None}
        assert {n for n in positions if re.fullmatch(target_modules_regex(part), n)} == inside
    attention = {positions[n].proj for n in positions if re.fullmatch(target_modules_regex("llm_attn"), n)}
    assert attention in ({"q", "v"}, {"q_proj", "v_proj"}, set())
    joint = {n for n in positions if re.fullmatch(target_modules_regex("paper_all+llm_all"), n)}
    assert joint == {n for part in ("paper_all", "llm_all") for n in positions if re.fullmatch(target_modules_regex(part), n)}


@pytest.mark.parametrize(
    "placement, layers, message",
    [
        ("paper_all+llm_mlp", None, r"unknown placement 'llm_mlp'; known placements: .*, joined with '\+'"),
        ("llm_all+llm_all", None, r"placement 'llm_all\+llm_all' names a part twice"),
        ("paper_all+qformer_all", None, r"placement 'paper_all\+qformer_all' names a part twice"),
        ("paper_all+llm_all", [0, 2], r"layers chooses Q-Former layers; placement part 'llm_all' is outside the Q-Former"),
    ],
)
def test_placements_that_cannot_be_built_are_refused(placement, layers, message):
    with pytest.raises(ValueError, match=message):
        placement_regexes(placement, layers)


def test_qformer_all_is_the_papers_all():
    assert target_modules_regex("qformer_all") == target_modules_regex("paper_all")
