import itertools
import re

import pytest
import torch
from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

from qformer_budget.runner.params import (
    JOINT_PLACEMENT,
    TABLE_PLACEMENTS,
    census,
    format_table,
    full_qformer_parameters,
    parameter_table,
    per_unit_rank,
    target_linears,
)
from qformer_budget.runner.presets import (
    PRESETS,
    build_on_meta,
    freeze_except_qformer,
    load_checkpoint,
    load_preset,
)
from qformer_budget.runner.tiny import build_tiny_instructblip

# Kim et al. 2024: Q-Former LoRA parameters per unit of rank.
PAPER_QFORMER_UNITS = {
    "self_attn_qv": 36_864, "cross_attn_qkvo": 44_544, "ffn_text_query": 184_320, "paper_all": 265_728,
}


@pytest.mark.parametrize("preset", ["instructblip-flan-t5-xl", "instructblip-vicuna-7b"])
def test_qformer_placements_reproduce_the_papers_counts(preset):
    units = {placement: per_unit_rank(preset, placement) for placement in PAPER_QFORMER_UNITS}
    assert units == PAPER_QFORMER_UNITS
    assert per_unit_rank(preset, "qformer_all") == 265_728
    assert len(target_linears(preset, "paper_all")) == 12 * 2 + 6 * 4 + 12 * 4


def test_rank_8_is_about_one_percent_of_full_qformer_fine_tuning():
    presets = ["instructblip-flan-t5-xl", "instructblip-vicuna-7b"]
    table = parameter_table(presets, ranks=(8,), placements=("paper_all",))
    assert table.trainable.tolist() == [2_125_824, 2_125_824]
    for preset in table.preset:
        assert 187e6 <= census(preset).full_qformer <= 189e6
    assert table.share_of_full_qformer_pct.between(1.1, 1.15).all()
    assert (table.share_of_model_pct < 0.06).all()


def test_adalora_trains_one_singular_value_per_rank_and_module():
    table = parameter_table(["instructblip-flan-t5-xl"], methods=("lora", "adalora"))
    lora = table[table.method == "lora"].set_index(["placement", "rank"])
    adalora = table[table.method == "adalora"].set_index(["placement", "rank"])
    ranks = lora.index.get_level_values("rank").to_series(index=lora.index)
    assert (adalora.trainable - lora.trainable).equals(ranks * lora.modules)
    assert len(table) == len(TABLE_PLACEMENTS) * 4 * 2  # placements x ranks x methods


def test_routed_adapters_train_what_plain_ones_train_and_memvp_has_one_row_per_preset():
    methods = ("lora", "adalora", "routed_lora", "routed_adalora", "memvp")
    table = parameter_table(["instructblip-flan-t5-xl", "instructblip-vicuna-7b"], methods=methods)
    by_method = {m: table[table.method == m].set_index(["preset", "placement", "rank"]).trainable for m in methods[:4]}
    assert by_method["routed_lora"].equals(by_method["lora"]) and by_method["routed_adalora"].equals(by_method["adalora"])
    memvp = table[table.method == "memvp"].set_index("preset")
    assert memvp["rank"].isna().all() and set(memvp.placement) == {"llm_ffn_memory"}
    # Projector 768 -> 128 -> d with biases, then P_k and P_v of 40 rows each (MemVP's defaults).
    for preset, d, ffn_blocks in [("instructblip-flan-t5-xl", 2048, 48), ("instructblip-vicuna-7b", 4096, 32)]:
        assert memvp.loc[preset, "trainable"] == 768 * 128 + 128 + 128 * d + d + 2 * 40 * d
        assert memvp.loc[preset, "modules"] == ffn_blocks
    line = next(line for line in format_table(table).splitlines() if "memvp" in line)
    assert [cell.strip() for cell in line.split("|")][3:5] == ["memvp", "-"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_meta_build_holds_every_shape_and_no_memory(name):
    model = build_on_meta(name)
    assert all(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))
    qformer = model.config.qformer_config
    assert (qformer.hidden_size, qformer.num_hidden_layers, qformer.intermediate_size) == (768, 12, 3072)
    assert (qformer.cross_attention_frequency, qformer.encoder_hidden_size) == (2, 1408)
    assert model.query_tokens.shape[1] == 32
    assert model.config.vision_config.num_hidden_layers == 39
    if PRESETS[name].llm_family == "t5":  # FlanT5 checkpoints hold an LM head apart from the shared embedding
        assert model.language_model.lm_head.weight is not model.language_model.shared.weight
    freeze_except_qformer(model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == full_qformer_parameters(model)


def test_blip2_qformer_has_no_text_ffn():
    assert per_unit_rank("blip2-flan-t5-xl", "ffn_text_query") == 12 * 2 * (768 + 3072)  # query FFN only
    assert per_unit_rank("blip2-flan-t5-xl", "self_attn_qv") == PAPER_QFORMER_UNITS["self_attn_qv"]
    assert not any(t.name.endswith(".intermediate.dense") for t in census("blip2-flan-t5-xl").linears)


def _llm_units_from_config(text) -> dict[str, int]:
    """LoRA parameters per unit rank of the paper's LLM placements, from the text config's dimensions."""
    if text.model_type == "t5":
        inner = text.num_heads * text.d_kv
        attention_blocks = text.num_layers + 2 * text.num_decoder_layers  # encoder self; decoder self, cross
        attn = attention_blocks * 2 * (text.d_model + inner)  # q and v
        ffn = (text.num_layers + text.num_decoder_layers) * 3 * (text.d_model + text.d_ff)  # wi_0, wi_1, wo
    else:
        q_out = text.num_attention_heads * text.head_dim
        v_out = text.num_key_value_heads * text.head_dim
        attn = text.num_hidden_layers * (2 * text.hidden_size + q_out + v_out)
        ffn = text.num_hidden_layers * 3 * (text.hidden_size + text.intermediate_size)  # gate, up, down
    if text.model_type == "t5":  # every projection: q k v o of each attention block
        all_attn = attention_blocks * 4 * (text.d_model + inner)
    else:
        all_attn = text.num_hidden_layers * 2 * (2 * text.hidden_size + q_out + v_out)  # q, o; k, v
    return {"llm_attn": attn, "llm_ffn": ffn, "llm_all": attn + ffn, "llm_all_linear": all_attn + ffn}


@pytest.mark.parametrize("name", ["instructblip-flan-t5-xl", "instructblip-vicuna-7b", "blip2-flan-t5-xl"])
def test_llm_placements_match_the_config_dimensions(name):
    expected = _llm_units_from_config(PRESETS[name].config_factory().text_config)
    assert {placement: per_unit_rank(name, placement) for placement in expected} == expected
    combined = per_unit_rank(name, "qformer_all+llm_all")
    assert combined == per_unit_rank(name, "paper_all") + expected["llm_all"]
    assert all(t.name.startswith("language_model.") for t in target_linears(name, "llm_all_linear"))
    joint = per_unit_rank(name, JOINT_PLACEMENT)  # the joint study's table row: every Q-Former and LLM Linear
    assert joint == per_unit_rank(name, "all_linear") + expected["llm_all_linear"]
    table = parameter_table([name], ranks=(8,), placements=(JOINT_PLACEMENT,))
    assert table["trainable"].tolist() == [8 * joint]


def test_format_table_prints_one_line_per_row():
    table = parameter_table(["instructblip-flan-t5-xl"], ranks=(8,), placements=("paper_all", "llm_attn"))
    lines = format_table(table).splitlines()
    assert len(lines) == 2 + len(table)
    assert lines[0].startswith("| preset") and "2,125,824" in lines[2]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model, processor = build_tiny_instructblip(seed=0)
    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model


def test_load_checkpoint_freezes_vision_and_llm(tiny_checkpoint):
    folder, original = tiny_checkpoint
    model, processor = load_checkpoint(folder, InstructBlipForConditionalGeneration, expected=original.config)
    assert isinstance(processor, InstructBlipProcessor)
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == full_qformer_parameters(model)
    loaded = model.state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in original.state_dict().items())


def test_loading_errors_name_what_is_wrong(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint
    with pytest.raises(ValueError, match="unknown preset 'instructblip-t5'.*instructblip-flan-t5-xl"):
        load_preset("instructblip-t5", folder)
    with pytest.raises(ValueError, match="known presets"):
        build_on_meta("vicuna")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing"))):
        load_preset("instructblip-flan-t5-xl", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} has no config.json")):
        load_preset("instructblip-flan-t5-xl", tmp_path)
    mismatch = re.escape(str(folder)) + ".*qformer_config.hidden_size is 32, expected 768"
    with pytest.raises(ValueError, match=mismatch):
        load_preset("instructblip-flan-t5-xl", folder)
    wrong_type = "model_type is 'instructblip', but Blip2ForConditionalGeneration needs 'blip-2'"
    with pytest.raises(ValueError, match=wrong_type):
        load_preset("blip2-flan-t5-xl", folder)
    with pytest.raises(ValueError, match="unknown placement 'llm_mlp'"):
        per_unit_rank("instructblip-vicuna-7b", "paper_all+llm_mlp")
    with pytest.raises(ValueError, match="unknown method 'dora'"):
        per_unit_rank("instructblip-vicuna-7b", "paper_all", method="dora")
