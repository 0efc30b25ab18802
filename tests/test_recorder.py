import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from qformer_budget.analysis import load_runs
from qformer_budget.benchmarks.synthetic_vqa import generate_examples
from qformer_budget.core.adalora_rules import kept_directions
from qformer_budget.core.schema import COLUMN_NAMES, SCHEMA_VERSION
from qformer_budget.peft_hooks import (
    AdaLoraSetup,
    BudgetRecorder,
    add_adalora,
    find_adalora_model,
    load_adapter,
    save_adapter,
)
from qformer_budget.peft_hooks import sinks as sinks_module
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.tiny import build_tiny_instructblip

from tiny_training import record_random_steps, spied_loop_run, tiny_adalora, tiny_setup, train_with_trainer

SETUP = tiny_setup(total_step=40)  # tinit 5, tfinal 5, deltaT 5: masks at 10, 15, ..., 30 and the final one at 35


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    return spied_loop_run(tmp_path_factory.mktemp("loop") / "run", SETUP)


def test_recorded_scores_and_masks_are_pefts_own(loop_run):
    mask_records = [r for r in loop_run["records"] if r.mask_step]
    calls = loop_run["spy"].calls
    assert [r.global_step for r in mask_records] == [10, 15, 20, 25, 30, 35]
    assert len(calls) == len(mask_records)
    for record, call in zip(mask_records, calls):
        assert record.budget == call["budget"]
        np.testing.assert_array_equal(record.direction_scores, call["scores"])  # bit for bit
        assert record.threshold == call["threshold"]
        kept = np.array([call["pattern"][f"{m.module}.lora_E.default"] for m in record.modules])
        np.testing.assert_array_equal(record.direction_kept, kept)
        np.testing.assert_array_equal(record.direction_kept, record.direction_scores > record.threshold)


def test_final_ranks_equal_pefts_rank_pattern(loop_run, tmp_path):
    model, final = loop_run["model"], loop_run["records"][-1]
    pattern = model.peft_config["default"].rank_pattern
    expected = [sum(pattern[f"{m.module}.lora_E.default"]) for m in final.modules]
    assert final.global_step == SETUP.total_step - 1
    assert final.ranks.tolist() == expected
    save_adapter(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["rank_pattern"]
    assert [sum(saved[f"{m.module}.lora_E"]) for m in final.modules] == expected
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert [tensors[f"base_model.model.{m.module}.lora_E"].shape[0] for m in final.modules] == expected
    # save_pretrained renamed the live keys (dropped ".default"); the recorder reads that form too.
    assert all(not key.endswith(".default") for key in model.peft_config["default"].rank_pattern)
    modules = [m.module for m in final.modules]
    renamed = kept_directions(model.peft_config["default"].rank_pattern, modules, "default", SETUP.init_r)
    np.testing.assert_array_equal(renamed, final.direction_kept)


def test_a_saved_adapter_reloads_to_the_same_model(loop_run, tmp_path):
    model = loop_run["model"].eval()
    save_adapter(model, tmp_path)
    base, processor = build_tiny_instructblip(seed=0)
    reloaded = load_adapter(base, tmp_path).eval()
    batch = _one_batch(processor)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-5)
    ranks = {n: p.shape[0] for n, p in reloaded.named_parameters() if ".lora_E." in n}
    assert sorted(ranks.values()) == sorted(loop_run["records"][-1].ranks.tolist())


def test_budget_follows_pefts_cubic_schedule(loop_run):
    allocator = find_adalora_model(loop_run["model"]).rankallocator
    n = len(loop_run["records"][0].modules)
    init_budget, target_budget = SETUP.init_r * n, SETUP.target_r * n
    end = SETUP.total_step - SETUP.tfinal
    for record in loop_run["records"]:
        s = record.global_step
        if s <= SETUP.tinit:
            by_hand = init_budget
        elif s > end:
            by_hand = target_budget
        else:
            by_hand = int((init_budget - target_budget) * (1 - (s - SETUP.tinit) / (end - SETUP.tinit)) ** 3 + target_budget)
        assert record.budget == by_hand == allocator.budget_schedule(s)[0]
        if record.mask_step:
            assert record.ranks.sum() == record.budget
    assert loop_run["records"][-1].ranks.sum() == target_budget


def test_steps_recorded_and_phases(loop_run):
    records = loop_run["records"]
    assert [r.global_step for r in records] == [0, 5, 10, 15, 20, 25, 30, 35, 39]
    assert [r.phase for r in records] == ["warmup"] * 2 + ["budgeting"] * 6 + ["final"]
    first_mask = next(r for r in records if r.mask_step)
    assert all((r.ranks == SETUP.init_r).all() for r in records if r.global_step < first_mask.global_step)


def test_importance_is_captured_before_peft_clears_it(loop_run):
    final_mask = next(r for r in loop_run["records"] if r.global_step == SETUP.total_step - SETUP.tfinal)
    assert np.isfinite(final_mask.scores).all() and (final_mask.scores > 0).all()
    assert not find_adalora_model(loop_run["model"]).rankallocator.exp_avg_ipt  # peft has cleared them
    assert np.isnan(loop_run["records"][-1].scores).all()


def test_records_read_with_plain_pandas_and_load_runs(loop_run):
    plain = pd.read_parquet(loop_run["dir"] / "records.parquet")
    assert tuple(plain.columns) == COLUMN_NAMES
    assert len(plain) == 9 * 120 and (plain["schema_version"] == SCHEMA_VERSION).all()
    loaded = load_runs(loop_run["dir"])
    for column in ["benchmark", "seed", "step", "module", "layer", "block", "proj", "rank", "init_r", "score", "budget"]:
        assert column in loaded.columns
    last = loaded[loaded["step"] == SETUP.total_step]
    assert last["rank"].tolist() == loop_run["records"][-1].ranks.tolist()
    meta = json.loads((loop_run["dir"] / "run.json").read_text())
    assert meta["status"] == "finished" and meta["recorded_steps"] == 9 and meta["schema_version"] == SCHEMA_VERSION
    assert not (loop_run["dir"] / "records").exists()


@pytest.mark.slow
def test_trainer_and_loop_give_the_same_records(loop_run, tmp_path):
    train_with_trainer(tmp_path, SETUP)
    from_trainer = load_runs(tmp_path).drop(columns="run")
    from_loop = load_runs(loop_run["dir"]).drop(columns="run")
    pd.testing.assert_frame_equal(from_trainer, from_loop)


def _one_batch(processor):
    return InstructBlipCollator(processor)(generate_examples(4, seed=0))


def test_step_must_increase_and_needs_gradients(tmp_path):
    model, processor = tiny_adalora(tiny_setup(), seed=0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with BudgetRecorder(tmp_path / "run") as recorder:
        with pytest.raises(RuntimeError, match=r"has no gradient: call step\(\) after optimizer.step\(\) and before"):
            recorder.step(model, 0)
        model(**_one_batch(processor)).loss.backward()
        optimizer.step()
        recorder.step(model, 0)
        with pytest.raises(ValueError, match="got global_step 0 after 0: call it once per optimizer step"):
            recorder.step(model, 0)
    assert len(load_runs(tmp_path / "run")) == 120  # the one good step is kept


def _train_steps(model, processor, recorder, steps):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    batch = _one_batch(processor)
    for step in steps:
        model(**batch).loss.backward()
        optimizer.step()
        recorder.step(model, step)
        optimizer.zero_grad()


def test_records_are_readable_while_training_runs(tmp_path):
    model, processor = tiny_adalora(tiny_setup(), seed=0)
    recorder = BudgetRecorder(tmp_path, record_every=1)
    _train_steps(model, processor, recorder, range(3))
    deadline = time.monotonic() + 10
    while len(list((tmp_path / "records").glob("part-*.parquet"))) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    live = pd.read_parquet(tmp_path / "records")  # plain pandas, no qformer-budget code
    assert len(live) % 120 == 0 and 120 <= len(live) <= 360
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    recorder.close()
    assert len(load_runs(tmp_path)) == 360


def test_only_rank_zero_writes_but_every_rank_allocates(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    model, processor = tiny_adalora(tiny_setup(total_step=12, tinit=1, tfinal=1, deltaT=2), seed=0)
    with BudgetRecorder(tmp_path / "rank1") as recorder:
        _train_steps(model, processor, recorder, range(12))
    assert not (tmp_path / "rank1").exists()
    assert model.peft_config["default"].rank_pattern is not None


def test_existing_records_are_never_overwritten(loop_run, tmp_path):
    before = (loop_run["dir"] / "records.parquet").read_bytes()
    model, processor = tiny_adalora(tiny_setup(), seed=0)
    recorder = BudgetRecorder(loop_run["dir"])
    with pytest.raises(FileExistsError, match="already holds budget records"):
        _train_steps(model, processor, recorder, range(1))
    assert (loop_run["dir"] / "records.parquet").read_bytes() == before


def test_a_failing_writer_is_reported_and_earlier_parts_survive(tmp_path, monkeypatch):
    model, processor = tiny_adalora(tiny_setup(), seed=0)
    recorder = BudgetRecorder(tmp_path, record_every=1)
    _train_steps(model, processor, recorder, range(1))
    sink = recorder.sinks[0]
    deadline = time.monotonic() + 10
    while sink._steps_written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)

    def disk_full(table, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sinks_module, "write_parquet_atomic", disk_full)
    _train_steps(model, processor, recorder, [1])
    with pytest.raises(RuntimeError, match=r"writing budget records under .*records failed: .*No space left.*the 1 steps written before are intact"):
        recorder.close()
    # The step written before is compacted, and run.json says the run failed and why.
    assert len(pd.read_parquet(tmp_path / "records.parquet")) == 120 and not (tmp_path / "records").exists()
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["status"] == "failed" and "No space left on device" in meta["error"]


def test_directions_kept_between_masks_are_the_last_masks(loop_run):
    records = loop_run["records"]
    last_mask = None
    for record in records:
        assert not record.direction_kept.flags.writeable  # shared between records, so frozen
        if record.mask_step:
            last_mask = record
        elif last_mask is not None:
            np.testing.assert_array_equal(record.direction_kept, last_mask.direction_kept)
    assert last_mask is not None and records[-1].global_step > last_mask.global_step


def test_a_loop_that_stops_before_its_schedule_ends_closes_stopped_early_with_a_warning(tmp_path):
    model, _ = build_tiny_instructblip(seed=0)
    model = add_adalora(model, AdaLoraSetup(total_step=18, tinit=2, tfinal=4, deltaT=2), seed=0)
    recorder = BudgetRecorder(tmp_path / "run")
    record_random_steps(recorder, model, range(7))  # steps 0..6 of 18
    with pytest.warns(RuntimeWarning, match=r"closed after step 6 of a 18-step AdaLoRA schedule \(final mask at step "
                                            r"14\): the run is recorded as 'stopped_early'"):
        recorder.close()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "stopped_early"
    assert set(load_runs(tmp_path / "run", columns=["step"]).status) == {"stopped_early"}


def test_the_records_seed_is_the_adapters_and_a_contradicting_label_is_refused(tmp_path):
    setup = AdaLoraSetup(total_step=18, tinit=2, tfinal=4, deltaT=2)
    model = add_adalora(build_tiny_instructblip(seed=0)[0], setup, seed=5)
    recorder = BudgetRecorder(tmp_path / "run", record_every=1)
    record_random_steps(recorder, model, range(1))
    assert recorder.seed == 5 and json.loads((tmp_path / "run" / "run.json").read_text())["seed"] == 5
    other = add_adalora(build_tiny_instructblip(seed=0)[0], setup, seed=5)
    with pytest.raises(ValueError, match=r"BudgetRecorder\(seed=3\) would label the records with a seed that did not "
                                         r"make them: add_adalora drew the adapter from seed 5; pass seed=5"):
        record_random_steps(BudgetRecorder(None, seed=3), other, range(1))
