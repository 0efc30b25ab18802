import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from peft import AdaLoraConfig, get_peft_model
from peft.tuners.adalora.layer import AdaLoraLayer
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    InstructBlipVideoConfig,
    InstructBlipVideoForConditionalGeneration,
    T5Config,
)

from qformer_budget.peft_hooks import (
    PLACEMENTS,
    Sublayer,
    parse_sublayer,
    resolve_placement,
    sublayer_label,
    target_modules_regex,
)
from qformer_budget.runner.presets import build_on_meta
from qformer_budget.runner.tiny import build_tiny_instructblip

REPO = Path(__file__).resolve().parents[1]


def linear_names(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def to_lavis(name: str) -> str:
    """The LAVIS spelling of a transformers Q-Former module name."""
    return (
        name.replace("qformer.encoder", "Qformer.bert.encoder")
        .replace("attention.attention.", "attention.self.")
    )


@pytest.fixture(scope="module")
def instructblip():
    model, _ = build_tiny_instructblip(seed=0)
    return model


def small_configs(cls_config, **extra):
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    qformer = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=12, num_attention_heads=2,
        cross_attention_frequency=2, encoder_hidden_size=16, vocab_size=50,
    )
    text = T5Config(vocab_size=60, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2)
    return cls_config(vision_config=vision, qformer_config=qformer, text_config=text.to_dict(), num_query_tokens=4, **extra)


def test_instructblip_taxonomy_covers_all_120_linear_layers(instructblip):
    names = [n for n in linear_names(instructblip) if n.startswith("qformer.")]
    parsed = [parse_sublayer(n) for n in names]
    assert len(names) == 120 and None not in parsed
    assert Counter(s.block for s in parsed) == {"self_attn": 48, "cross_attn": 24, "ffn_query": 24, "ffn_text": 24}
    assert {s.layer for s in parsed if s.block == "cross_attn"} == {0, 2, 4, 6, 8, 10}
    assert len(set(parsed)) == 120


def test_lavis_names_parse_to_the_same_sublayers(instructblip):
    names = [n for n in linear_names(instructblip) if n.startswith("qformer.")]
    assert [parse_sublayer(to_lavis(n)) for n in names] == [parse_sublayer(n) for n in names]
    assert parse_sublayer("Qformer.bert.encoder.layer.3.crossattention.self.value") == Sublayer(3, "cross_attn", "value")
    assert parse_sublayer("Qformer.bert.encoder.layer.0.attention.output.dense") == Sublayer(0, "self_attn", "output")


def test_names_outside_the_qformer_are_not_sublayers(instructblip):
    others = [n for n in linear_names(instructblip) if not n.startswith("qformer.")]
    assert others and all(parse_sublayer(n) is None for n in others)
    for name in [
        "bert.encoder.layer.0.attention.self.query",  # a BERT text encoder is not a Q-Former
        "qformer.encoder.layer.0.attention.attention.query.lora_A",
        "qformer.encoder.layer.x.attention.attention.query",
        "qformer.layernorm",
    ]:
        assert parse_sublayer(name) is None, name


def test_prefixes_from_peft_and_ddp_are_accepted():
    expected = Sublayer(5, "ffn_query", "intermediate")
    assert parse_sublayer("base_model.model.qformer.encoder.layer.5.intermediate_query.dense") == expected
    assert parse_sublayer("module.base_model.model.qformer.encoder.layer.5.intermediate_query.dense") == expected


def test_blip2_and_instructblip_video_names():
    blip2 = Blip2ForConditionalGeneration(small_configs(Blip2Config))
    blocks = Counter(parse_sublayer(n).block for n in linear_names(blip2) if parse_sublayer(n))
    assert blocks == {"self_attn": 48, "cross_attn": 24, "ffn_query": 24}  # BLIP-2's Q-Former has no text FFN
    video = InstructBlipVideoForConditionalGeneration(small_configs(InstructBlipVideoConfig))
    blocks = Counter(parse_sublayer(n).block for n in linear_names(video) if parse_sublayer(n))
    assert blocks == {"self_attn": 48, "cross_attn": 24, "ffn_query": 24, "ffn_text": 24}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_regex_selects_exactly_the_placement_in_both_namings(instructblip, placement):
    chosen = resolve_placement(placement)
    regex = re.compile(target_modules_regex(placement))
    names = linear_names(instructblip)
    for name in names + [to_lavis(n) for n in names if n.startswith("qformer.")]:
        sub = parse_sublayer(name)
        wanted = sub is not None and sub.proj in chosen.get(sub.block, ())
        assert bool(regex.fullmatch(name)) == wanted, name


def test_paper_placements_sizes(instructblip):
    names = linear_names(instructblip)
    counts = {p: sum(bool(re.fullmatch(target_modules_regex(p), n)) for n in names) for p in PLACEMENTS}
    assert counts == {
        "self_attn_qv": 24, "cross_attn_qkvo": 24, "ffn_text_query": 48, "paper_all": 96, "all_linear": 120,
    }


def test_regex_restricted_to_layers(instructblip):
    regex = target_modules_regex({"cross_attn": ["key"]}, layers=[2, 10])
    matched = [n for n in linear_names(instructblip) if re.fullmatch(regex, n)]
    assert matched == ["qformer.encoder.layer.2.crossattention.attention.key", "qformer.encoder.layer.10.crossattention.attention.key"]


def test_peft_adapts_exactly_what_the_regex_names(instructblip):
    """A plain peft list entry 'output.dense' would also hit attention outputs; our regex must not."""
    regex = target_modules_regex({"ffn_text": ["output"]})
    config = AdaLoraConfig(target_modules=regex, init_r=2, target_r=1, total_step=10, tfinal=1)
    model = get_peft_model(build_tiny_instructblip(seed=0)[0], config)
    adapted = [n for n, m in model.named_modules() if isinstance(m, AdaLoraLayer)]
    assert len(adapted) == 12
    assert all(parse_sublayer(n) == Sublayer(parse_sublayer(n).layer, "ffn_text", "output") for n in adapted)


def test_bad_placements_are_refused():
    with pytest.raises(ValueError, match="unknown placement 'attn'"):
        resolve_placement("attn")
    with pytest.raises(ValueError, match="unknown block 'mlp'"):
        resolve_placement({"mlp": ["output"]})
    with pytest.raises(ValueError, match="block 'ffn_text' takes projections from intermediate, output"):
        resolve_placement({"ffn_text": ["query"]})


def test_label_grammar():
    assert sublayer_label(3, "cross_attn", "value") == "L03.cross_attn.value"
    assert Sublayer(11, "ffn_text", "output").label == "L11.ffn_text.output"
    assert str(parse_sublayer("qformer.encoder.layer.2.crossattention.attention.value")) == "L02.cross_attn.value"


def test_every_label_the_docs_show_names_a_real_q_former_module():
    labels = {str(s) for name, _ in build_on_meta("instructblip-flan-t5-xl").named_modules()
              if (s := parse_sublayer(name)) is not None}
    shown = set()
    sources = [p for p in sorted(REPO.glob("*/*.py")) if p.parent.name != "tests"]  # tests format labels on purpose
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sources]:
        # Q-Former labels only: the whole model's other components prefix theirs (llm.L05.dec_cross_attn.q).
        shown |= set(re.findall(r"(?<![\w.])L\d\d\.[a-z_]+\.[a-z]+\b", document.read_text(encoding="utf-8")))
    assert shown and shown <= labels, sorted(shown - labels)


@given(st.text(max_size=80))
def test_parser_never_fails_on_arbitrary_text(name):
    result = parse_sublayer(name)
    assert result is None or isinstance(result, Sublayer)


@given(
    st.integers(0, 99),
    st.sampled_from([(b, p) for b, ps in PLACEMENTS["all_linear"].items() for p in ps]),
    st.sampled_from(["", "base_model.model.", "module."]),
    st.booleans(),
)
def test_parser_round_trips_generated_names(layer, sublayer, prefix, lavis):
    block, proj = sublayer
    regex = target_modules_regex({block: [proj]})
    # Build the name from the regex's own alternatives, then check both directions agree.
    suffix = {
        ("self_attn", "output"): "attention.output.dense",
        ("cross_attn", "output"): "crossattention.output.dense",
        ("ffn_query", "intermediate"): "intermediate_query.dense",
        ("ffn_query", "output"): "output_query.dense",
        ("ffn_text", "intermediate"): "intermediate.dense",
        ("ffn_text", "output"): "output.dense",
    }.get(sublayer) or f"{'crossattention' if block == 'cross_attn' else 'attention'}.{'self' if lavis else 'attention'}.{proj}"
    name = f"{prefix}{'Qformer.bert' if lavis else 'qformer'}.encoder.layer.{layer}.{suffix}"
    assert parse_sublayer(name) == Sublayer(layer, block, proj)
    assert re.fullmatch(regex, name)
