import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from qformer_budget.analysis import load_runs
from qformer_budget.analysis.replay import rank_pattern_for_lora, replay_allocation
from qformer_budget.peft_hooks import find_adalora_model
from qformer_budget.runner.tiny import build_tiny_instructblip

from tiny_training import tiny_setup, train_with_loop

SETUP = tiny_setup(total_step=40)  # masks at global steps 10, 15, ..., 30 and the final one at 35
FINAL_MASK_STEP = SETUP.total_step - SETUP.tfinal + 1  # the 1-based ``step`` column


class MaskPatternSpy:
    """Keeps the budget and rank_pattern of each of peft's own mask_to_budget calls."""

    def __init__(self, model):
        allocator = find_adalora_model(model).rankallocator
        original = allocator.mask_to_budget
        self.calls = []

        def mask(inner_model, budget):
            pattern = original(inner_model, budget)
            self.calls.append({"budget": budget, "pattern": pattern})
            return pattern

        allocator.mask_to_budget = mask


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("replay") / "run"
    spies = []
    train_with_loop(run_dir, SETUP, on_model=lambda m: spies.append(MaskPatternSpy(m)))
    records = load_runs(run_dir)
    mask_steps = sorted(records.loc[records["mask_step"], "step"].unique().tolist())
    return {"records": records, "spy": spies[0], "mask_steps": mask_steps}


def _kept(frame: pd.DataFrame, column: str = "kept") -> np.ndarray:
    return np.array([np.asarray(k, dtype=bool) for k in frame[column]])


def test_replay_reproduces_the_recorded_masks_at_every_mask_step(run):
    records = run["records"]
    assert run["mask_steps"] == [11, 16, 21, 26, 31, 36]
    for step in run["mask_steps"]:
        recorded = records[records["step"] == step].reset_index(drop=True)
        replayed = replay_allocation(records, step=step)
        assert replayed["module"].tolist() == recorded["module"].tolist()
        np.testing.assert_array_equal(_kept(replayed), _kept(recorded, "direction_kept"))
        assert replayed["rank"].tolist() == recorded["rank"].tolist()
        assert (replayed["threshold"] == recorded["threshold"]).all()  # bit for bit
        assert (replayed["budget"] == recorded["budget"]).all()


def test_replay_equals_pefts_own_rank_pattern(run):
    records, calls = run["records"], run["spy"].calls
    assert len(calls) == len(run["mask_steps"])
    for step, call in zip(run["mask_steps"], calls):
        replayed = replay_allocation(records, step=step)
        assert replayed["budget"].iloc[0] == call["budget"]
        pefts = np.array([call["pattern"][f"{m}.lora_E.default"] for m in replayed["module"]])
        np.testing.assert_array_equal(_kept(replayed), pefts)


def test_default_is_each_runs_final_mask_step(run):
    records = run["records"]
    other = records.assign(run=records["run"] + "-copy")
    replayed = replay_allocation(pd.concat([records, other], ignore_index=True))
    assert replayed["run"].nunique() == 2 and (replayed["step"] == FINAL_MASK_STEP).all()
    assert replayed.columns.tolist() == [
        "run", "benchmark", "seed", "step", "module", "sublayer", "layer", "block", "proj", "init_r",
        "rank", "kept", "threshold", "budget",
    ]
    final = records[records["step"] == SETUP.total_step]  # the final phase keeps the last mask
    assert replayed.groupby("run")["rank"].sum().tolist() == [final["rank"].sum()] * 2


@pytest.mark.parametrize("step", [11, 26, 36])
def test_other_budgets_keep_exactly_the_budget_and_nest(run, step):
    records = run["records"]
    scores = np.concatenate(records.loc[records["step"] == step, "direction_scores"].map(np.asarray).tolist())
    n_modules = len(scores) // SETUP.init_r
    previous = None
    for target_r in (0, 1, 2, 3):
        replayed = replay_allocation(records, step=step, target_r=target_r)
        threshold = np.float32(replayed["threshold"].iloc[0])
        assert (scores == threshold).sum() == 1  # no ties at the threshold, so the budget is met exactly
        assert replayed["rank"].sum() == replayed["budget"].iloc[0] == target_r * n_modules
        kept = _kept(replayed)
        if previous is not None:
            assert not (previous & ~kept).any()  # what a smaller budget keeps, a larger one keeps too
        previous = kept
    by_budget = replay_allocation(records, step=step, budget=2 * n_modules)
    np.testing.assert_array_equal(_kept(by_budget), _kept(replay_allocation(records, step=step, target_r=2)))


def _synthetic(scores: np.ndarray, budget: int) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame({
        "run": "synthetic", "benchmark": "b", "seed": 0, "step": 1, "phase": "budgeting", "mask_step": True,
        "module": [f"m{i}" for i in range(n)], "sublayer": [f"m{i}" for i in range(n)], "layer": None,
        "block": "other", "proj": "p", "init_r": scores.shape[1], "direction_scores": list(scores),
        "budget": budget,
    })


def test_ties_and_nan_are_masked_as_torch_masks_them():
    rng = np.random.default_rng(0)
    scores = rng.choice(np.float32([0, 1e-9, 2.5e-9, 3e-9, np.nan]), size=(20, 6)).astype(np.float32)
    flat = torch.from_numpy(scores.reshape(-1))
    for budget in range(scores.size):
        threshold = torch.kthvalue(flat, k=scores.size - budget)[0].item()
        pefts = ~(torch.from_numpy(scores) <= threshold)
        replayed = replay_allocation(_synthetic(scores, budget))
        np.testing.assert_array_equal(_kept(replayed), pefts.numpy())
        assert replayed["rank"].sum() <= budget or np.isnan(threshold)


def test_errors_name_what_is_wrong(run):
    records = run["records"]
    name = records["run"].iloc[0]
    with pytest.raises(ValueError, match=rf"step 40 of run {name} has no direction scores \(phase final\)"):
        replay_allocation(records, step=SETUP.total_step)
    with pytest.raises(ValueError, match=r"budget 720 is outside \[0, 720\)"):
        replay_allocation(records, budget=720)
    with pytest.raises(ValueError, match=r"budget -1 is outside \[0, 720\)"):
        replay_allocation(records, budget=-1)
    with pytest.raises(ValueError, match=r"target_r=6 x 120 modules = 720 is outside \[0, 720\)"):
        replay_allocation(records, target_r=6)
    with pytest.raises(ValueError, match=r"recorded budget 720 is outside"):
        replay_allocation(records, step=1)  # warmup: peft does not mask at the full budget
    with pytest.raises(ValueError, match="give budget or target_r, not both"):
        replay_allocation(records, budget=100, target_r=1)
    with pytest.raises(ValueError, match=rf"run {name} has no recorded step 12"):
        replay_allocation(records, step=12)
    with pytest.raises(ValueError, match=r"no mask step with recorded scores"):
        replay_allocation(records[~records["mask_step"]])
    with pytest.raises(ValueError, match=r"records lack columns \['direction_scores'\]"):
        replay_allocation(records.drop(columns="direction_scores"))


def test_rank_pattern_refuses_mixed_runs_and_empty_allocations(run):
    replayed = replay_allocation(run["records"])
    mixed = pd.concat([replayed, replayed.assign(run="other")])
    with pytest.raises(ValueError, match=r"one run's allocation, got 2 runs: \[.*'other'\]"):
        rank_pattern_for_lora(mixed)
    with pytest.raises(ValueError, match="keeps no direction in any module"):
        rank_pattern_for_lora(replay_allocation(run["records"], target_r=0))
    two_steps = pd.concat([replayed, replay_allocation(run["records"], step=11)])
    with pytest.raises(ValueError, match="lists modules more than once"):
        rank_pattern_for_lora(two_steps)


def test_rank_pattern_gives_lora_exactly_the_replayed_ranks(run):
    allocation = replay_allocation(run["records"], target_r=2)
    ranks = dict(zip(allocation["module"], allocation["rank"].astype(int)))
    assert 0 < sum(r == 0 for r in ranks.values()) < len(ranks)  # some modules pruned away, some kept
    spec = rank_pattern_for_lora(allocation)
    assert spec["r"] in pd.Series([r for r in ranks.values() if r > 0]).mode().tolist()
    assert spec["rank_pattern"] == {m: r for m, r in ranks.items() if r > 0}
    model = get_peft_model(build_tiny_instructblip(seed=0)[0], LoraConfig(**spec))
    base = model.base_model.model
    for module, rank in ranks.items():
        layer = base.get_submodule(module)
        if rank == 0:
            assert not isinstance(layer, LoraLayer), module
        else:
            assert layer.lora_A["default"].weight.shape[0] == rank, module
    adapted = [n for n, m in base.named_modules() if isinstance(m, LoraLayer)]
    assert sorted(adapted) == sorted(m for m, r in ranks.items() if r > 0)


def test_replay_imports_neither_torch_nor_peft():
    code = (
        "import sys, qformer_budget.analysis.replay;"
        "bad = [m for m in ('torch', 'peft', 'transformers') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
