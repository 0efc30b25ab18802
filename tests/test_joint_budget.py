"""One AdaLoRA budget over the Q-Former and the LLM, version-1 records, and AdaLoRA on a plain LLaMA."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from peft import get_peft_model
from torch.utils.data import IterableDataset
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration, Trainer

from qformer_budget.analysis import RecordError, load_runs
from qformer_budget.core.records import ModuleInfo, StepRecord
from qformer_budget.core.schema import COLUMN_NAMES, RECORDS_FILE, RUN_META_FILE, SCHEMA_VERSION
from qformer_budget.peft_hooks import (
    AdaLoraBudgetCallback,
    AdaLoraSetup,
    BudgetRecorder,
    add_adalora,
    parse_module,
    target_modules_regex,
)
from qformer_budget.peft_hooks.sinks import ParquetSink
from qformer_budget.plotting.explorer import explore
from qformer_budget.plotting.figures import regenerate_figures

from tiny_training import (
    ListSink,
    PeftMaskSpy,
    spied_loop_run,
    tiny_setup,
    train_with_trainer,
    trainer_arguments,
)

JOINT = tiny_setup(total_step=30, placement="paper_all+llm_all")  # masks at 10, 15, 20 and the final one at 25


def assert_records_are_pefts(model, records, spy):
    """Every mask step's scores, threshold and kept directions are peft's own; the last ranks its rank_pattern."""
    mask_records = [r for r in records if r.mask_step]
    assert [r.global_step for r in mask_records] == [10, 15, 20, 25] and len(spy.calls) == 4
    for record, call in zip(mask_records, spy.calls):
        assert record.budget == call["budget"] and record.threshold == call["threshold"]
        np.testing.assert_array_equal(record.direction_scores, call["scores"])  # bit for bit
        kept = np.array([call["pattern"][f"{m.module}.lora_E.default"] for m in record.modules])
        np.testing.assert_array_equal(record.direction_kept, kept)
    pattern = model.peft_config["default"].rank_pattern
    final = records[-1]
    assert final.ranks.tolist() == [sum(pattern[f"{m.module}.lora_E.default"]) for m in final.modules]


@pytest.fixture(scope="module")
def joint_loop(tmp_path_factory):
    return spied_loop_run(tmp_path_factory.mktemp("joint") / "run", JOINT)


def test_a_joint_loop_run_records_both_components_as_peft_allocates_them(joint_loop):
    assert_records_are_pefts(joint_loop["model"], joint_loop["records"], joint_loop["spy"])
    records = load_runs(joint_loop["dir"])
    assert set(records["component"]) == {"qformer", "llm"}
    base = joint_loop["model"].base_model.model
    expected = {
        component: sum(1 for name, _ in base.named_modules() if re.fullmatch(regex, name))
        for component, regex in (("qformer", target_modules_regex("paper_all")), ("llm", target_modules_regex("llm_all")))
    }
    assert records.groupby("component")["module"].nunique().to_dict() == expected
    for row in records.drop_duplicates("module").itertuples():
        position = parse_module(row.module)
        assert (row.component, row.block, row.proj, row.sublayer) == (
            position.component, position.block, position.proj, position.label)
    final = records[records["step"] == records["step"].max()]
    # One budget: the masks moved rank between the components, not within each one separately.
    assert final["rank"].sum() == final["budget"].iloc[0]
    mean_rank = final.groupby("component")["rank"].mean()
    assert mean_rank["qformer"] != mean_rank["llm"]


def test_a_joint_trainer_run_records_both_components_as_peft_allocates_them(joint_loop, tmp_path):
    spies, kept = [], ListSink()
    model, _ = train_with_trainer(tmp_path, JOINT, on_model=lambda m: spies.append(PeftMaskSpy(m)), sinks=[kept])
    assert_records_are_pefts(model, kept.records, spies[0])
    from_trainer = load_runs(tmp_path).drop(columns="run")
    pd.testing.assert_frame_equal(from_trainer, load_runs(joint_loop["dir"]).drop(columns="run"))


# --- version-1 records: two early and two late steps of a demo run that qformer-budget wrote before version 2 ---

V1_RUN = Path(__file__).parent / "data" / "v1-run"


def test_version_1_records_load_unchanged_as_qformer_records(tmp_path):
    raw = pq.read_table(V1_RUN / RECORDS_FILE)
    assert raw.schema.metadata[b"qformer_budget.schema_version"] == b"1" and "component" not in raw.column_names
    run = tmp_path / "v1"
    shutil.copytree(V1_RUN, run)
    loaded = load_runs(run)
    assert (loaded["component"] == "qformer").all() and (loaded["schema_version"] == 1).all()
    recorded = loaded.drop(columns=["run", "component", "status"])
    pd.testing.assert_frame_equal(recorded, raw.to_pandas()[recorded.columns])
    assert list(loaded.columns) == ["run", *COLUMN_NAMES, "status"]
    # Filters may name the new column; labels may be categorical.
    filters = [("component", "==", "qformer"), ("step", ">", 230)]
    filtered = load_runs(run, columns=["step", "component", "rank"], filters=filters)
    assert len(filtered) == 2 * raw.num_rows // 4 and filtered["step"].min() > 230
    assert load_runs(run, filters=[("component", "==", "llm")]).empty
    categorical = load_runs(run, columns=["component", "block"], categorical=True)
    assert list(categorical["component"].cat.categories) == ["qformer"]


def test_a_version_1_file_that_claims_version_2_values_is_refused(tmp_path):
    run = tmp_path / "v1"
    shutil.copytree(V1_RUN, run)
    table = pq.read_table(run / RECORDS_FILE)
    twos = pa.array(np.full(table.num_rows, 2, dtype=np.int16))
    table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version", twos)
    pq.write_table(table.replace_schema_metadata(None), run / RECORDS_FILE)
    with pytest.raises(RecordError, match=r"v1/records.parquet: column schema_version holds \[2\], but its columns are version 1's"):
        load_runs(run)


def test_a_resumed_version_1_run_is_compacted_as_version_2(tmp_path):
    """The writer appends version-2 parts to a version-1 run; compaction gives one version-2 file with both."""
    run = tmp_path / "v1"
    shutil.copytree(V1_RUN, run)
    meta = json.loads((run / RUN_META_FILE).read_text())
    before = load_runs(run)
    sink = ParquetSink(run)
    last = int(before["global_step"].max())
    sink.resume(meta | {"schema_version": SCHEMA_VERSION}, last + 1)
    modules = tuple(ModuleInfo(m, 8, 8) for m in meta["modules"])
    kept = np.ones((len(modules), int(before["init_r"].iloc[0])), dtype=bool)
    sink.write(StepRecord(
        benchmark=meta["benchmark"], seed=meta["seed"], global_step=last + 1, phase="final", mask_step=False,
        budget=int(kept.sum()), threshold=float("nan"), init_r=kept.shape[1], modules=modules, direction_kept=kept,
        direction_scores=None,
    ))
    sink.close("finished")
    after = load_runs(run)
    assert pq.read_schema(run / RECORDS_FILE).metadata[b"qformer_budget.schema_version"] == b"2"
    assert json.loads((run / RUN_META_FILE).read_text())["schema_version"] == 2
    assert (after["component"] == "qformer").all() and len(after) == len(before) + len(modules)
    assert set(after["schema_version"]) == {2}  # the compacted file stores every row in version 2's form
    pd.testing.assert_frame_equal(  # and the rows read before are the same rows
        after[after["global_step"] <= last].drop(columns=["schema_version", "status"]),
        before.drop(columns=["schema_version", "status"]),
    )


# --- beyond InstructBLIP: a plain LLaMA fine-tuned with AdaLoRA ---

LLAMA = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2)


class Tokens(IterableDataset):
    """Seeded random token sequences, the labels being the inputs (causal language modelling)."""

    def __init__(self, steps: int, batch: int = 4) -> None:
        self.ids = torch.randint(0, LLAMA.vocab_size, (steps * batch, 12), generator=torch.Generator().manual_seed(0))

    def __iter__(self):
        for ids in self.ids:
            yield {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("wrap", ["add_adalora", "get_peft_model"])
def test_the_callback_records_a_plain_llama_under_the_llm_grammar(tmp_path, wrap):
    total_step = 20
    setup = AdaLoraSetup(total_step=total_step, placement="llm_all_linear", tinit=4, tfinal=4, deltaT=4, init_r=4,
                         target_r=2)
    torch.manual_seed(0)
    base = LlamaForCausalLM(LLAMA)
    if wrap == "add_adalora":
        model = add_adalora(base, setup, seed=0)
    else:  # the user's own peft model, as peft documents it
        config = setup.to_peft_config()
        config.task_type = "CAUSAL_LM"
        model = get_peft_model(base, config)
    spy = PeftMaskSpy(model)
    kept = ListSink()
    callback = AdaLoraBudgetCallback(benchmark="tokens", sinks=[kept])
    args = trainer_arguments(tmp_path, setup)
    Trainer(model=model, args=args, train_dataset=Tokens(total_step), callbacks=[callback]).train()
    records = load_runs(tmp_path)
    assert set(records["component"]) == {"llm"} and records["layer"].notna().all()
    assert records["module"].nunique() == 2 * 7  # q k v o gate up down in each of 2 layers
    assert set(records["sublayer"]) == {f"llm.L{layer:02d}.{block}.{proj}" for layer in range(2)
                                        for block, projs in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                                                             ("mlp", ("gate_proj", "up_proj", "down_proj")))
                                        for proj in projs}
    pattern = model.peft_config["default"].rank_pattern
    final = kept.records[-1]
    assert final.ranks.tolist() == [sum(pattern[f"{m.module}.lora_E.default"]) for m in final.modules]
    for record, call in zip([r for r in kept.records if r.mask_step], spy.calls, strict=True):
        np.testing.assert_array_equal(record.direction_scores, call["scores"])
        assert record.threshold == call["threshold"]
    if wrap == "add_adalora":  # the figures and the explorer of a run without a Q-Former: the LLM's own
        written = {path.name for path in regenerate_figures(tmp_path, tmp_path / "figures", workers=1)}
        assert {"rank_heatmap_llm_tokens.png", "budget_schedule_tokens.png"} <= written
        assert not any(name.startswith(("component_share", "rank_trajectory")) for name in written)
        assert "the Q-Former's figures: these runs adapted no Q-Former sublayer" in (tmp_path / "figures" / "index.md").read_text()
        views = explore(records, n_boot=20).figures
        assert list(views) == ["heatmap-llm-tokens", "trajectory-tokens", "block-shares"]
        assert [trace.name for trace in views["block-shares"].data] == ["self_attn", "mlp"]


def test_the_recorder_records_a_plain_t5_in_a_hand_written_loop(tmp_path):
    """A seq2seq LM: encoder and decoder blocks told apart, ranks and scores as peft allocates them."""
    total_step = 16
    setup = AdaLoraSetup(total_step=total_step, placement="llm_all", tinit=3, tfinal=3, deltaT=3, init_r=4, target_r=2)
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                             num_decoder_layers=2, num_heads=4, decoder_start_token_id=0))
    model = add_adalora(t5, setup, seed=0)
    spy = PeftMaskSpy(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(1, 50, (total_step, 4, 8), generator=torch.Generator().manual_seed(1))
    records = []
    with BudgetRecorder(tmp_path / "t5", benchmark="copy") as recorder:
        for step in range(total_step):
            model(input_ids=ids[step], labels=ids[step]).loss.backward()
            optimizer.step()
            if (record := recorder.step(model, step)) is not None:
                records.append(record)
            optimizer.zero_grad()
    loaded = load_runs(tmp_path / "t5")
    assert set(loaded["component"]) == {"llm"}
    assert set(loaded["block"]) == {"enc_self_attn", "enc_ffn", "dec_self_attn", "dec_cross_attn", "dec_ffn"}
    pattern = model.peft_config["default"].rank_pattern
    assert records[-1].ranks.tolist() == [sum(pattern[f"{m.module}.lora_E.default"]) for m in records[-1].modules]
    for record, call in zip([r for r in records if r.mask_step], spy.calls, strict=True):
        np.testing.assert_array_equal(record.direction_scores, call["scores"])
