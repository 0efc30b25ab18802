"""Replay AdaLoRA's allocation offline from recorded triplet scores, for the recorded or any other budget.

peft masks with one global threshold (``RankAllocator.mask_to_budget``): the k-th smallest of all
triplet scores, ``k = init_r * n_modules - budget`` (1-based, as ``torch.kthvalue``), and masks every
direction whose score is ``<=`` that threshold. Replaying the same rule on the recorded float32
scores gives peft's masks bit for bit, and asking for another budget shows where AdaLoRA's ranking
would have put it. Ties at the threshold are all masked, as in peft, so fewer than ``budget``
directions can be kept.
"""

from __future__ import annotations

import operator
from collections import Counter

import numpy as np
import pandas as pd

from qformer_budget.core.adalora_rules import threshold_rank

_NEEDED = ("run", "benchmark", "seed", "step", "phase", "mask_step", "module", "sublayer", "layer", "block",
           "proj", "init_r", "direction_scores", "budget")
_OUT = ["run", "benchmark", "seed", "step", "module", "sublayer", "layer", "block", "proj", "init_r"]


def replay_allocation(
    records: pd.DataFrame, step: int | None = None, budget: int | None = None, target_r: int | None = None
) -> pd.DataFrame:
    """AdaLoRA's allocation recomputed from each run's recorded direction scores at one recorded step.

    ``step`` is the 1-based ``step`` column (default: each run's last mask step with scores). The total
    budget (directions kept over all modules) is ``budget``, or ``target_r`` times the number of modules,
    or by default the budget recorded at that step. Returns one row per run and module: ``run, benchmark,
    seed, step, module, sublayer, layer, block, proj, init_r, rank, kept, threshold, budget``, where
    ``kept`` is the list of kept directions and ``rank`` their number.
    """
    if budget is not None and target_r is not None:
        raise ValueError(f"give budget or target_r, not both (got budget={budget}, target_r={target_r})")
    missing = [c for c in _NEEDED if c not in records.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}; load them with analysis.load_runs")
    if records.empty:
        raise ValueError("no records to replay")
    runs = records.groupby("run", sort=False)
    frames = [_replay_run(run, rows, step, budget, target_r) for run, rows in runs]
    return pd.concat(frames, ignore_index=True)


def _replay_run(run: str, rows: pd.DataFrame, step: int | None, budget: int | None, target_r: int | None):
    if step is None:
        candidates = rows.loc[rows["mask_step"] & rows["direction_scores"].notna(), "step"]
        if candidates.empty:
            raise ValueError(f"run {run}: no mask step with recorded scores to replay; pass step=")
        step = int(candidates.max())
    at = rows[rows["step"] == step]
    if at.empty:
        recorded = sorted(rows["step"].unique().tolist())
        raise ValueError(f"run {run} has no recorded step {step}; recorded steps: {recorded}")
    if at["direction_scores"].isna().any():
        raise ValueError(
            f"step {step} of run {run} has no direction scores (phase {at['phase'].iloc[0]}): "
            "peft clears them after the final mask step, so only steps up to it can be replayed"
        )
    n_modules = len(at)
    per_module = [np.asarray(s, dtype=np.float32) for s in at["direction_scores"]]
    scores = np.concatenate(per_module)
    init_budget = scores.size  # peft's init_bgt: init_r directions per module
    if target_r is not None:
        total, asked = operator.index(target_r) * n_modules, f"target_r={target_r} x {n_modules} modules = "
    elif budget is not None:
        total, asked = operator.index(budget), "budget "
    else:
        total, asked = int(at["budget"].iloc[0]), "recorded budget "
    if not 0 <= total < init_budget:
        raise ValueError(
            f"run {run}, step {step}: {asked}{total} is outside [0, {init_budget}) "
            f"(init_r x {n_modules} modules); peft masks at least one direction, "
            "so pass a smaller budget or target_r"
        )
    k = threshold_rank(init_budget, total)
    # k-th smallest, 1-based like torch.kthvalue; float32 throughout, NaN sorts last as in torch.
    threshold = np.partition(scores, k - 1)[k - 1]
    kept = [~(s <= threshold) for s in per_module]  # peft's ~(score <= threshold): a NaN score is kept
    out = at[_OUT].reset_index(drop=True)
    out["rank"] = np.array([m.sum() for m in kept], dtype=np.int16)
    out["kept"] = [m.tolist() for m in kept]
    out["threshold"] = float(threshold)
    out["budget"] = np.int64(total)
    return out


def rank_pattern_for_lora(allocation: pd.DataFrame) -> dict:
    """A static allocation for plain LoRA: ``LoraConfig(**rank_pattern_for_lora(allocation))``.

    Returns ``{"target_modules": [...], "rank_pattern": {module: rank}, "r": most common rank}`` for one
    run's allocation (from :func:`replay_allocation`, or any frame with ``run, module, rank``).
    LoRA cannot have rank 0, so modules AdaLoRA pruned to rank 0 are left out of ``target_modules``
    and stay unadapted. peft reads ``rank_pattern`` keys as regexes anchored at the module name's end;
    full module names select exactly their own module.
    """
    missing = [c for c in ("run", "module", "rank") if c not in allocation.columns]
    if missing:
        raise ValueError(f"allocation lacks columns {missing}; make it with replay_allocation")
    runs = allocation["run"].unique().tolist()
    if len(runs) != 1:
        raise ValueError(f"rank_pattern_for_lora takes one run's allocation, got {len(runs)} runs: {runs}")
    duplicated = allocation.loc[allocation["module"].duplicated(), "module"].unique().tolist()
    if duplicated:
        raise ValueError(f"allocation lists modules more than once (several steps?): {duplicated[:3]}")
    adapted = allocation[allocation["rank"] > 0]
    if adapted.empty:
        raise ValueError(f"run {runs[0]}: the allocation keeps no direction in any module")
    ranks = {module: int(rank) for module, rank in zip(adapted["module"], adapted["rank"])}
    return {
        "target_modules": list(ranks),
        "rank_pattern": ranks,
        "r": Counter(ranks.values()).most_common(1)[0][0],
    }
