"""A run stopped mid-schedule and resumed gives the uninterrupted run's records and rank pattern exactly.

Both paths: the Trainer's ``resume_from_checkpoint`` with only AdaLoraBudgetCallback added, and a
hand-written loop with save_budget_state / load_budget_state. In each, the stopped session goes on
recording past its checkpoint; those rows must be superseded, never read twice.
"""

import contextlib
import time

import pandas as pd
import pytest
import torch
from transformers import Trainer, TrainerCallback

from qformer_budget.analysis import RecordWarning, load_runs
from qformer_budget.peft_hooks import AdaLoraBudgetCallback, BudgetRecorder
from qformer_budget.peft_hooks.resume import (
    BUDGET_STATE_FILE,
    BudgetStateError,
    load_budget_state,
    save_budget_state,
)
from qformer_budget.runner.collate import InstructBlipCollator

from tiny_training import (
    BATCH,
    LEARNING_RATE,
    FixedOrder,
    record_random_steps,
    tiny_adalora,
    tiny_setup,
    train_with_loop,
    trainer_arguments,
)

SETUP = tiny_setup(total_step=30)
CHECKPOINT_STEP = 13  # mid-budgeting, between mask steps 11 and 16, with a rank pattern in force
STOPPED_AT = 18  # the interrupted session records five more steps, including a mask step


def _comparable(records: pd.DataFrame) -> pd.DataFrame:
    return records.drop(columns=["run", "status"]).sort_values(["step", "module"]).reset_index(drop=True)


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _assert_same_training(resumed, uninterrupted) -> None:
    config = lambda model: model.peft_config["default"]  # noqa: E731
    assert config(resumed).rank_pattern == config(uninterrupted).rank_pattern
    expected = _lora_state(uninterrupted)
    for name, value in _lora_state(resumed).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


# --- the Trainer -------------------------------------------------------------------------------


class StopAt(TrainerCallback):
    """Ends training after ``step`` optimizer steps, as if the job had been stopped there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def _trainer(output_dir, callbacks, save_steps=None):
    model, processor = tiny_adalora(SETUP, seed=0)
    args = trainer_arguments(output_dir, SETUP, seed=0)
    if save_steps is not None:
        args.save_strategy, args.save_steps = "steps", save_steps
    trainer = Trainer(
        model=model, args=args, train_dataset=FixedOrder(SETUP.total_step, 0),
        data_collator=InstructBlipCollator(processor), callbacks=callbacks,
    )
    return trainer, model


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-trainer")
    full, full_model = _trainer(root / "full", [AdaLoraBudgetCallback(benchmark="x", record_every=1)])
    full.train()
    interrupted, _ = _trainer(
        root / "resumed", [AdaLoraBudgetCallback(benchmark="x", record_every=1), StopAt(STOPPED_AT)],
        save_steps=CHECKPOINT_STEP,
    )
    interrupted.train()
    stopped_records = load_runs(root / "resumed")
    resumed, resumed_model = _trainer(
        root / "resumed", [AdaLoraBudgetCallback(benchmark="x", record_every=1)], save_steps=CHECKPOINT_STEP
    )
    resumed.train(resume_from_checkpoint=str(root / "resumed" / f"checkpoint-{CHECKPOINT_STEP}"))
    return {
        "root": root, "full": full_model, "resumed": resumed_model, "stopped_records": stopped_records,
        "full_records": load_runs(root / "full"), "resumed_records": load_runs(root / "resumed"),
    }


@pytest.mark.slow
def test_trainer_resume_reproduces_the_records_without_duplicates(trainer_runs):
    assert trainer_runs["stopped_records"]["step"].max() == STOPPED_AT
    resumed = trainer_runs["resumed_records"]
    assert resumed.groupby("step").size().eq(120).all()
    pd.testing.assert_frame_equal(_comparable(resumed), _comparable(trainer_runs["full_records"]))


@pytest.mark.slow
def test_trainer_resume_reproduces_the_rank_pattern_and_adapter(trainer_runs):
    _assert_same_training(trainer_runs["resumed"], trainer_runs["full"])
    root = trainer_runs["root"]
    assert (root / "resumed" / f"checkpoint-{CHECKPOINT_STEP}" / BUDGET_STATE_FILE).is_file()
    assert (root / "resumed" / f"checkpoint-{2 * CHECKPOINT_STEP}" / BUDGET_STATE_FILE).is_file()


@pytest.mark.slow
def test_trainer_resume_without_budget_state_is_a_clear_error(trainer_runs):
    checkpoint = trainer_runs["root"] / "resumed" / f"checkpoint-{2 * CHECKPOINT_STEP}"
    (checkpoint / BUDGET_STATE_FILE).unlink()
    trainer, _ = _trainer(trainer_runs["root"] / "resumed", [AdaLoraBudgetCallback(benchmark="x")])
    with pytest.raises(FileNotFoundError, match=rf"checkpoint-{2 * CHECKPOINT_STEP}/{BUDGET_STATE_FILE}: no qformer-budget state"):
        trainer.train(resume_from_checkpoint=str(checkpoint))


# --- a hand-written loop -------------------------------------------------------------------------


def _loop(run_dir, checkpoint_dir, start: int, stop: int, save_at: int | None, close: bool):
    """Train steps ``start``..``stop - 1``; resumes from ``checkpoint_dir`` when ``start`` > 0."""
    model, processor = tiny_adalora(SETUP, seed=0)
    collate = InstructBlipCollator(processor)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE, weight_decay=0.0, fused=True
    )
    if start:
        assert load_budget_state(model, checkpoint_dir) == start
        optimizer.load_state_dict(torch.load(checkpoint_dir / "optimizer.pt", weights_only=True))
    examples = iter(FixedOrder(SETUP.total_step, 0))
    for _ in range(start * BATCH):
        next(examples)
    recorder = BudgetRecorder(run_dir, benchmark="synthetic_vqa", seed=0, record_every=1,
                              resume_from_step=start or None)
    model.train()
    for step in range(start, stop):
        model(**collate([next(examples) for _ in range(BATCH)])).loss.backward()
        optimizer.step()
        recorder.step(model, step)
        optimizer.zero_grad()
        if step + 1 == save_at:
            save_budget_state(model, checkpoint_dir, steps_done=step + 1)
            torch.save(optimizer.state_dict(), checkpoint_dir / "optimizer.pt")
    if close:
        recorder.close()
    else:  # killed: wait until the writer thread has flushed the steps, then abandon the recorder
        deadline = time.monotonic() + 60
        while recorder.sinks[0]._steps_written < stop - start:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        recorder.sinks[0]._lock.release()  # as the kernel drops a killed process's lock on the run folder
    return model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resume-loop") / "full"
    model, _ = train_with_loop(run_dir, SETUP, record_every=1)
    return model, load_runs(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("stopped", ["closed", "killed"])
def test_loop_resume_reproduces_the_run(uninterrupted, tmp_path, stopped):
    run_dir, checkpoint_dir = tmp_path / "run", tmp_path / "checkpoint"
    checkpoint_dir.mkdir()
    with pytest.warns(RecordWarning) if stopped == "killed" else contextlib.nullcontext():
        _loop(run_dir, checkpoint_dir, 0, STOPPED_AT, save_at=CHECKPOINT_STEP, close=stopped == "closed")
        load_runs(run_dir)  # the stopped session's records: a killed one never closed the run
    resumed = _loop(run_dir, checkpoint_dir, CHECKPOINT_STEP, SETUP.total_step, save_at=None, close=True)
    model, records = uninterrupted
    _assert_same_training(resumed, model)
    pd.testing.assert_frame_equal(_comparable(load_runs(run_dir)), _comparable(records))


def test_budget_state_from_other_settings_is_refused(tmp_path):
    model, _ = tiny_adalora(SETUP, seed=0)
    save_budget_state(model, tmp_path, steps_done=3)
    other, _ = tiny_adalora(tiny_setup(total_step=30, target_r=1), seed=0)
    with pytest.raises(BudgetStateError, match=rf"{BUDGET_STATE_FILE}: saved with target_r=2, this model has target_r=1"):
        load_budget_state(other, tmp_path)
    (tmp_path / BUDGET_STATE_FILE).write_bytes(b"\x00" * 40)
    with pytest.raises(BudgetStateError, match=rf"{BUDGET_STATE_FILE}: not a readable budget state"):
        load_budget_state(model, tmp_path)


def test_resuming_into_another_runs_folder_is_refused(tmp_path):
    train_with_loop(tmp_path / "run", tiny_setup(total_step=12, tinit=2, tfinal=2, deltaT=2), record_every=4)
    model, _ = tiny_adalora(tiny_setup(total_step=12, tinit=2, tfinal=2, deltaT=2), seed=0)
    recorder = BudgetRecorder(tmp_path / "run", benchmark="another", seed=0, resume_from_step=4)
    with pytest.raises(ValueError, match=r"run.json: benchmark was 'synthetic_vqa', the resumed run has 'another'"):
        recorder.step(model, 4)


def test_save_budget_state_refuses_a_step_count_the_recorder_disagrees_with(tmp_path):
    model, _ = tiny_adalora(SETUP, seed=0)
    record_random_steps(BudgetRecorder(None, record_every=1), model, range(3))
    with pytest.raises(ValueError, match=r"got steps_done=2, but the last step updated was 2: pass steps_done=3, the "
                                         r"number of optimizer steps taken \(not the 0-based step of the last one\)"):
        save_budget_state(model, tmp_path, steps_done=2)  # the 0-based step just taken: resuming would repeat it
    assert not (tmp_path / BUDGET_STATE_FILE).exists()
    save_budget_state(model, tmp_path, steps_done=3)
    assert load_budget_state(model, tmp_path) == 3
    with pytest.raises(TypeError):
        save_budget_state(model, tmp_path, 3)  # the count only by its keyword
