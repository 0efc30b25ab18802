"""Statistics over seeds: bootstrap intervals of block shares and permutation tests between benchmarks."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from .selection import sorted_rows


def _seed_shares(shares: pd.DataFrame) -> pd.DataFrame:
    """``shares`` checked to hold one share per benchmark, seed and block (the unit of resampling)."""
    keys = ["benchmark", "seed", "block"]
    duplicated = shares.duplicated(keys)
    if duplicated.any():
        duplicates = shares.loc[duplicated, keys].to_dict("records")
        raise ValueError(
            "shares must hold one row per benchmark, seed and block (one step per run, e.g. "
            f"block_share(records, step='final')); duplicated: {duplicates[:3]}"
        )
    return shares.dropna(subset=["share"])


def bootstrap_block_share(
    shares: pd.DataFrame, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Mean block share over seeds per benchmark, with a seed-bootstrap percentile confidence interval.

    ``shares`` is a :func:`block_share` table at one step per run. For each benchmark and block, the
    ``n`` seeds' shares are resampled ``n_boot`` times with replacement (``numpy.random.default_rng(seed)``),
    and ``ci_low, ci_high`` are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    resampled means. With 2 or 3 seeds the interval is crude (2 seeds give only 3 distinct means, so it
    spans the two shares); with one seed it is NaN.
    Columns ``benchmark, block, n_seeds, mean, ci_low, ci_high``.
    """
    table = _seed_shares(shares)
    rng = np.random.default_rng(seed)
    quantiles = [(1 - confidence) / 2, (1 + confidence) / 2]
    rows = []
    for (benchmark, block), group in sorted_rows(table, ["benchmark", "block", "seed"]).groupby(
        ["benchmark", "block"], sort=False
    ):
        values = group["share"].to_numpy(dtype="float64")
        n = len(values)
        if n > 1:
            means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
            low, high = np.quantile(means, quantiles)
        else:
            low = high = float("nan")
        rows.append((benchmark, block, n, values.mean(), float(low), float(high)))
    return pd.DataFrame(rows, columns=["benchmark", "block", "n_seeds", "mean", "ci_low", "ci_high"])


def _abs_mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.mean(x, axis=axis) - np.mean(y, axis=axis))


def _block_values(table: pd.DataFrame, benchmark: str, block: str) -> np.ndarray:
    values = table.loc[(table["benchmark"] == benchmark) & (table["block"] == block), "share"]
    if values.empty:
        raise ValueError(f"no share of block {block!r} for benchmark {benchmark!r}")
    return values.to_numpy(dtype="float64")


def permutation_test(
    shares: pd.DataFrame,
    benchmark_a: str,
    benchmark_b: str,
    block: str,
    n_permutations: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """Does one block's share differ between two benchmarks? A permutation test over seeds.

    ``difference = mean_a - mean_b`` of the block's share over each benchmark's seeds. The two-sided
    p-value is the fraction of relabelings of the pooled seeds into groups of the same sizes whose
    ``|mean_a - mean_b|`` is at least the observed one (scipy.stats.permutation_test). All
    ``C(n_a + n_b, n_a)`` relabelings are enumerated when there are at most ``n_permutations`` of them
    (``exact``), else ``n_permutations`` random ones (``numpy.random.default_rng(seed)``) with
    ``p = (count + 1) / (n_permutations + 1)``. The smallest possible p is ``2 / C(n_a + n_b, n_a)``:
    1/3 with 2 seeds each, 0.029 with 4 each. With a single seed on either side there is nothing to
    permute and ``p_value`` is NaN. One row with columns ``benchmark_a, benchmark_b, block,
    n_seeds_a, n_seeds_b, mean_a, mean_b, difference, p_value, exact, n_relabelings``.
    """
    table = _seed_shares(shares)
    a = _block_values(table, benchmark_a, block)
    b = _block_values(table, benchmark_b, block)
    n_distinct = math.comb(len(a) + len(b), len(a))
    p_value = float("nan")
    if min(len(a), len(b)) >= 2:
        p_value = stats.permutation_test(
            (a, b),
            _abs_mean_difference,
            permutation_type="independent",
            vectorized=True,
            n_resamples=n_permutations,
            alternative="greater",
            rng=np.random.default_rng(seed),
        ).pvalue
    exact = n_distinct <= n_permutations
    row = {
        "benchmark_a": benchmark_a,
        "benchmark_b": benchmark_b,
        "block": block,
        "n_seeds_a": len(a),
        "n_seeds_b": len(b),
        "mean_a": a.mean(),
        "mean_b": b.mean(),
        "difference": a.mean() - b.mean(),
        "p_value": float(p_value),
        "exact": exact,
        "n_relabelings": n_distinct if exact else n_permutations,
    }
    return pd.DataFrame([row])


def compare_benchmarks(shares: pd.DataFrame, n_permutations: int = 10000, seed: int = 0) -> pd.DataFrame:
    """:func:`permutation_test` for every pair of benchmarks and every block, beside the seed spread.

    ``spread_a`` and ``spread_b`` are the range (max - min) of the block's share over each benchmark's
    seeds; ``exceeds_seed_spread`` is ``|difference| > max(spread_a, spread_b)``: a benchmark difference
    smaller than the seed-to-seed difference is no evidence, whatever its p-value. It is NA when either
    benchmark has a single seed, since a spread of one seed says nothing.
    """
    table = _seed_shares(shares)
    spread = table.groupby(["benchmark", "block"])["share"].agg(lambda s: s.max() - s.min())
    blocks = sorted_rows(table[["block"]].drop_duplicates(), ["block"])["block"]
    tests = []
    for a, b in combinations(sorted(table["benchmark"].unique()), 2):
        for block in blocks:
            if (a, block) in spread.index and (b, block) in spread.index:
                test = permutation_test(table, a, b, block, n_permutations=n_permutations, seed=seed)
                tests.append(test.assign(spread_a=spread[a, block], spread_b=spread[b, block]))
    columns = [
        "benchmark_a",
        "benchmark_b",
        "block",
        "n_seeds_a",
        "n_seeds_b",
        "mean_a",
        "mean_b",
        "difference",
        "p_value",
        "exact",
        "n_relabelings",
        "spread_a",
        "spread_b",
    ]
    out = pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(columns=columns)
    exceeds = out["difference"].abs() > out[["spread_a", "spread_b"]].max(axis=1)
    single_seed = out[["n_seeds_a", "n_seeds_b"]].min(axis=1) < 2
    out["exceeds_seed_spread"] = exceeds.astype("boolean").mask(single_seed)
    return out
