"""Importance scores and how concentrated the allocation is, and how alike allocations are across runs."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from .selection import STEP_KEYS, StepSelector, comparable_rows, select_step, sorted_rows, with_component


def normalized_importance(
    records: pd.DataFrame, step: StepSelector = None, include_structural: bool = False
) -> pd.DataFrame:
    """Importance scores made comparable across module types, per run, step and module.

    Raw AdaLoRA scores differ by about 1000x between module types, so two normalisations are given:

    - ``importance_share = score_m / sum_m' score_m'`` over the run's modules at that step;
    - ``score_vs_block_median = score_m / median of the scores of m's block`` (within its component) at that step.

    Rows with a NaN score (final phase: peft cleared the scores) are dropped, so ``step="final"`` is
    usually empty; the default keeps every step. Structural rows are excluded unless ``include_structural``.
    """
    rows = with_component(comparable_rows(select_step(records, step), include_structural).dropna(subset=["score"]))
    score = rows["score"]
    total = score.groupby([rows[k] for k in STEP_KEYS], observed=True).transform("sum")
    block_median = score.groupby([rows[k] for k in [*STEP_KEYS, "component", "block"]], observed=True).transform("median")
    columns = [*STEP_KEYS, "module", "component", "sublayer", "layer", "block", "proj", "score"]
    out = rows[columns].assign(importance_share=score / total, score_vs_block_median=score / block_median)
    return sorted_rows(out, [*STEP_KEYS, "module"])


def allocation_entropy(
    records: pd.DataFrame, step: StepSelector = None, include_structural: bool = False
) -> pd.DataFrame:
    """How evenly the kept rank is spread over modules, per run and step.

    With ``p_m = r_m / sum_m' r_m`` over the ``n`` modules: ``entropy = -sum_m p_m ln p_m`` (nats,
    ``0 ln 0 = 0``) and ``normalized_entropy = entropy / ln n``: 1 when every module keeps the same
    rank, 0 when one module keeps all of it; NaN when no rank is kept or ``n < 2``.
    Columns ``run, benchmark, seed, step, n_modules, total_rank, entropy, normalized_entropy``.
    Structural rows are excluded (from ``n`` too) unless ``include_structural``.
    """
    rows = comparable_rows(select_step(records, step), include_structural)
    rank = rows["rank"].astype("float64")
    p = rank / rank.groupby([rows[k] for k in STEP_KEYS]).transform("sum")
    surprise = (-p * np.log(p.where(p > 0))).fillna(0.0)
    out = (
        rows.assign(rank=rank, surprise=surprise)
        .groupby(STEP_KEYS, as_index=False)
        .agg(n_modules=("rank", "size"), total_rank=("rank", "sum"), entropy=("surprise", "sum"))
    )
    out["entropy"] = out["entropy"].where(out["total_rank"] > 0)
    n = out["n_modules"].astype("float64")
    out["normalized_entropy"] = out["entropy"] / np.log(n.where(n > 1))
    return sorted_rows(out, STEP_KEYS)


def _spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rho of two aligned series; NaN when either is constant (no ranking to compare)."""
    if x.nunique() < 2 or y.nunique() < 2:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def allocation_correlation(
    records: pd.DataFrame, step: StepSelector = "final", include_structural: bool = False
) -> pd.DataFrame:
    """Spearman correlation of per-module kept ranks between every pair of benchmarks.

    Each benchmark's rank of a module is the mean over its runs (seeds) at ``step``; rho is computed over
    the modules both benchmarks adapted (``n_modules``). Columns ``benchmark_a, benchmark_b, spearman,
    n_modules``. Structural rows are excluded unless ``include_structural`` (their rank is 0 everywhere
    and would inflate rho). Compare with :func:`seed_correlation`, the seed-to-seed baseline.
    """
    rows = comparable_rows(select_step(records, step), include_structural)
    mean_rank = rows.assign(rank=rows["rank"].astype("float64")).pivot_table(
        index="module", columns="benchmark", values="rank", aggfunc="mean"
    )
    pairs = []
    for a, b in combinations(sorted(mean_rank.columns), 2):
        both = mean_rank[[a, b]].dropna()
        pairs.append((a, b, _spearman(both[a], both[b]), len(both)))
    return pd.DataFrame(pairs, columns=["benchmark_a", "benchmark_b", "spearman", "n_modules"])


def seed_correlation(
    records: pd.DataFrame, step: StepSelector = "final", include_structural: bool = False
) -> pd.DataFrame:
    """Spearman correlation of per-module kept ranks between every pair of seeds of one benchmark.

    The baseline for :func:`allocation_correlation`: how stable an allocation is when only the seed
    changes. Columns ``benchmark, seed_a, seed_b, spearman, n_modules``; ranks of several runs with the
    same benchmark and seed are averaged. Structural rows are excluded unless ``include_structural``.
    """
    rows = comparable_rows(select_step(records, step), include_structural)
    pairs = []
    for benchmark, bench_rows in rows.groupby("benchmark"):
        mean_rank = bench_rows.assign(rank=bench_rows["rank"].astype("float64")).pivot_table(
            index="module", columns="seed", values="rank", aggfunc="mean"
        )
        for a, b in combinations(sorted(mean_rank.columns), 2):
            both = mean_rank[[a, b]].dropna()
            pairs.append((benchmark, a, b, _spearman(both[a], both[b]), len(both)))
    return pd.DataFrame(pairs, columns=["benchmark", "seed_a", "seed_b", "spearman", "n_modules"])
