"""The fast allocator against peft's own: two tiny models trained in lockstep, one allocator each."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from qformer_budget.analysis import load_runs
from qformer_budget.peft_hooks import (
    FastRankAllocator,
    find_adalora_model,
    triplet_scores,
    use_fast_allocator,
)
from qformer_budget.peft_hooks.recorder import adapted_modules
from qformer_budget.runner.collate import InstructBlipCollator

from tiny_training import BATCH, LEARNING_RATE, FixedOrder, tiny_adalora, tiny_setup, train_with_loop

# Close enough for equal float32 results, far below the differences between directions (no atol: scores are ~1e-12).
EXACT_ENOUGH = dict(rtol=1e-6, atol=0.0)

SCHEDULES = {
    "deltaT 2": dict(total_step=12, tinit=1, tfinal=2, deltaT=2, init_r=6, target_r=2),
    "mask every step, r 4 -> 1": dict(total_step=10, tinit=0, tfinal=2, deltaT=1, init_r=4, target_r=1),
    "deltaT 3, long final phase": dict(total_step=14, tinit=2, tfinal=4, deltaT=3, init_r=8, target_r=3),
}


class Run:
    """One tiny AdaLoRA model with its optimizer, trained one step at a time on a fixed batch order."""

    def __init__(self, setup, seed: int) -> None:
        self.model, processor = tiny_adalora(setup, seed)
        self.adalora = find_adalora_model(self.model)
        self.modules = adapted_modules(self.adalora, "default")
        self.collate = InstructBlipCollator(processor)
        self.examples = iter(FixedOrder(setup.total_step, seed))
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=LEARNING_RATE, weight_decay=0.0, fused=True
        )

    def train_step(self) -> None:
        batch = self.collate([next(self.examples) for _ in range(BATCH)])
        self.model(**batch).loss.backward()
        self.optimizer.step()

    def scores(self):
        return triplet_scores(self.adalora, self.modules, "default")

    @property
    def allocator(self):
        return self.adalora.rankallocator

    @property
    def rank_pattern(self):
        return self.adalora.peft_config["default"].rank_pattern

    def lora_e(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if ".lora_E." in n}


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _assert_same_state(reference: Run, fast: Run, step: int) -> None:
    assert reference.rank_pattern == fast.rank_pattern, f"rank_pattern at step {step}"
    for name in ("exp_avg_ipt", "exp_avg_unc"):  # peft only writes ipt; the fast allocator keeps none
        ours, theirs = getattr(fast.allocator, name), getattr(reference.allocator, name)
        assert list(ours) == list(theirs), f"{name} keys at step {step}"
        if theirs:
            torch.testing.assert_close(_flat(ours.values()), _flat(theirs.values()), **EXACT_ENOUGH)
    reference_e, fast_e = reference.lora_e(), fast.lora_e()
    assert list(reference_e) == list(fast_e)
    reference_e, fast_e = _flat(reference_e.values()), _flat(fast_e.values())
    assert torch.equal(fast_e == 0, reference_e == 0), f"masked lora_E entries at step {step}"
    torch.testing.assert_close(fast_e, reference_e, **EXACT_ENOUGH)


def _train_in_lockstep(setup, seed: int, swap_at: int = 0) -> dict[str, list[int]]:
    """Train peft's allocator and the fast one side by side, comparing everything after every step.

    The fast allocator replaces peft's at step ``swap_at`` (0: from the start). Returns the steps
    at which each check ran, so that callers can assert that the schedule was covered.
    """
    reference, fast = Run(setup, seed), Run(setup, seed)
    final_mask_step = setup.total_step - setup.tfinal
    covered: dict[str, list[int]] = {"mask": [], "scores": [], "final phase": []}
    for step in range(setup.total_step):
        if step == swap_at:
            assert isinstance(use_fast_allocator(fast.model), FastRankAllocator)
        reference.train_step()
        fast.train_step()
        if step == final_mask_step:  # peft masks with the averages it holds, then clears them
            torch.testing.assert_close(fast.scores(), reference.scores(), **EXACT_ENOUGH)
            covered["scores"].append(step)
        reference.adalora.update_and_allocate(step)
        fast.adalora.update_and_allocate(step)
        _assert_same_state(reference, fast, step)
        reference_scores, fast_scores = reference.scores(), fast.scores()
        assert (reference_scores is None) == (fast_scores is None) == (step >= final_mask_step), step
        if reference_scores is not None:
            torch.testing.assert_close(fast_scores, reference_scores, **EXACT_ENOUGH)
            covered["scores"].append(step)
        if step > final_mask_step:
            covered["final phase"].append(step)
        elif reference.allocator.budget_schedule(step)[1] or step == final_mask_step:
            covered["mask"].append(step)
        reference.optimizer.zero_grad()
        fast.optimizer.zero_grad()
    assert isinstance(fast.allocator, FastRankAllocator) and not isinstance(reference.allocator, FastRankAllocator)
    final_ranks = [sum(kept) for kept in fast.rank_pattern.values()]
    assert sum(final_ranks) == setup.target_r * len(fast.modules)
    assert len(set(final_ranks)) > 1  # the allocation is not uniform: the comparison had something to compare
    return covered


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fast_allocator_matches_pefts_at_every_step(schedule, seed):
    setup = tiny_setup(**SCHEDULES[schedule])
    covered = _train_in_lockstep(setup, seed)
    final_mask_step = setup.total_step - setup.tfinal
    assert covered["mask"][-1] == final_mask_step and len(covered["mask"]) >= 3
    assert covered["final phase"] == list(range(final_mask_step + 1, setup.total_step))
    assert covered["scores"] == [*range(final_mask_step), final_mask_step]


def test_fast_allocator_swapped_in_mid_run_takes_over_pefts_averages():
    setup = tiny_setup(**SCHEDULES["deltaT 2"])
    covered = _train_in_lockstep(setup, seed=2, swap_at=5)
    assert covered["mask"][0] < 5 < covered["mask"][-1]


def test_use_fast_allocator_is_idempotent_and_accepts_the_inner_model():
    model, _ = tiny_adalora(tiny_setup(), seed=0)
    adalora = find_adalora_model(model)
    fast = use_fast_allocator(adalora)
    assert adalora.rankallocator is fast and use_fast_allocator(model) is fast
    assert fast.peft_config is adalora.peft_config["default"]
    assert (fast.init_bgt, fast.target_bgt) == (6 * 120, 2 * 120)
    assert not fast.exp_avg_ipt and fast.triplet_scores() is None


def test_fast_allocator_refuses_a_model_it_was_not_built_for():
    model, _ = tiny_adalora(tiny_setup(), seed=0)
    other, _ = tiny_adalora(tiny_setup(), seed=0)
    fast = use_fast_allocator(model)
    with pytest.raises(ValueError, match="built for another model"):
        fast.update_ipt(find_adalora_model(other).model)


def _scores_frame(run_dir) -> tuple[pd.DataFrame, np.ndarray]:
    frame = load_runs(run_dir).drop(columns="run")
    scores = frame.pop("direction_scores")
    recorded = np.stack([s if s is not None else np.full(6, np.nan, np.float32) for s in scores])
    return frame, recorded


def test_recorder_with_fast_allocator_records_what_the_default_recorder_records(tmp_path):
    setup = tiny_setup(total_step=16, tinit=2, tfinal=3, deltaT=2)
    fast_model, fast_records = train_with_loop(tmp_path / "fast", setup, record_every=1, fast_allocator=True)
    _, peft_records = train_with_loop(tmp_path / "peft", setup, record_every=1)
    assert isinstance(find_adalora_model(fast_model).rankallocator, FastRankAllocator)
    assert len(fast_records) == len(peft_records) == setup.total_step
    fast_frame, fast_scores = _scores_frame(tmp_path / "fast")
    peft_frame, peft_scores = _scores_frame(tmp_path / "peft")
    score_columns = ["score", "threshold"]
    pd.testing.assert_frame_equal(fast_frame.drop(columns=score_columns), peft_frame.drop(columns=score_columns))
    pd.testing.assert_frame_equal(fast_frame[score_columns], peft_frame[score_columns], check_exact=False, **EXACT_ENOUGH)
    np.testing.assert_allclose(fast_scores, peft_scores, **EXACT_ENOUGH)
    scored_rows = 120 * (setup.total_step - setup.tfinal + 1)  # up to the final mask step; then cleared
    assert np.isfinite(peft_scores[:scored_rows]).all() and np.isnan(peft_scores[scored_rows:]).all()
    assert peft_frame["mask_step"].sum() == 120 * 6  # steps 4, 6, 8, 10, 12 and the final mask at 13
    assert json.loads((tmp_path / "fast" / "run.json").read_text())["allocator"] == "FastRankAllocator"
    assert json.loads((tmp_path / "peft" / "run.json").read_text())["allocator"] == "RankAllocator"
