"""Statistics over seeds: bootstrap intervals of block or component shares and permutation tests between benchmarks.

Each function takes a :func:`block_share` table (its unit is the ``component`` and ``block``) or a
:func:`component_share` table (its unit is the ``component``), at one step per run.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from .selection import sorted_rows


def share_units(shares: pd.DataFrame) -> list[str]:
    """The columns naming what each share is of: ``component, block`` (``block`` alone in tables made
    without components) for block shares, ``component`` for component shares."""
    if "block" in shares.columns:
        return ["component", "block"] if "component" in shares.columns else ["block"]
    if "component" in shares.columns:
        return ["component"]
    raise ValueError("shares must be a block_share or component_share table: it has no block or component column")


def _seed_shares(shares: pd.DataFrame) -> pd.DataFrame:
    """``shares`` checked to hold one share per benchmark, seed and unit (the unit of resampling)."""
    keys = ["benchmark", "seed", *share_units(shares)]
    duplicated = shares.duplicated(keys)
    if duplicated.any():
        duplicates = shares.loc[duplicated, keys].to_dict("records")
        raise ValueError(
            f"shares must hold one row per {', '.join(keys[:-1])} and {keys[-1]} (one step per run, e.g. "
            f"block_share(records, step='final')); duplicated: {duplicates[:3]}"
        )
    return shares.dropna(subset=["share"])


def bootstrap_block_share(
    shares: pd.DataFrame, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Mean block (or component) share over seeds per benchmark, with a seed-bootstrap percentile confidence interval.

    ``shares`` is a :func:`block_share` or :func:`component_share` table at one step per run. For each
    benchmark and block (or component), the
    ``n`` seeds' shares are resampled ``n_boot`` times with replacement (``numpy.random.default_rng(seed)``),
    and ``ci_low, ci_high`` are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    resampled means. With 2 or 3 seeds the interval is crude (2 seeds give only 3 distinct means, so it
    spans the two shares); with one seed it is NaN.
    Columns ``benchmark, component, block, n_seeds, mean, ci_low, ci_high`` (no ``block`` for component shares).
    """
    table = _seed_shares(shares)
    units = share_units(table)
    rng = np.random.default_rng(seed)
    quantiles = [(1 - confidence) / 2, (1 + confidence) / 2]
    rows = []
    for (benchmark, *unit), group in sorted_rows(table, ["benchmark", *units, "seed"]).groupby(
        ["benchmark", *units], sort=False, observed=True
    ):
        values = group["share"].to_numpy(dtype="float64")
        n = len(values)
        if n > 1:
            means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
            low, high = np.quantile(means, quantiles)
        else:
            low = high = float("nan")
        rows.append((benchmark, *unit, n, values.mean(), float(low), float(high)))
    return pd.DataFrame(rows, columns=["benchmark", *units, "n_seeds", "mean", "ci_low", "ci_high"])


def _abs_mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.mean(x, axis=axis) - np.mean(y, axis=axis))


def _unit_of(table: pd.DataFrame, block: str | None, component: str | None) -> dict[str, str]:
    """The unit a test is about, ``{column: value}``, checked against the table's units."""
    units = share_units(table)
    if units == ["component"]:
        if block is not None or component is None:
            raise ValueError("component shares: give component= (and no block)")
        return {"component": component}
    if block is None:
        raise ValueError("block shares: give block= (and component= where two components have that block)")
    if "component" not in units and component is not None:
        raise ValueError("these block shares have no component column: give block= only")
    if "component" in units and component is None:
        components = sorted(set(table.loc[table["block"] == block, "component"].astype(str)))
        if len(components) > 1:
            raise ValueError(f"block {block!r} is in components {components}: give component= too")
        component = components[0] if components else None
    return {"block": block} if component is None else {"component": component, "block": block}


def _unit_values(table: pd.DataFrame, benchmark: str, unit: dict[str, str]) -> np.ndarray:
    rows = table["benchmark"] == benchmark
    for column, value in unit.items():
        rows &= table[column] == value
    if not rows.any():
        what = " ".join(f"{column} {value!r}" for column, value in unit.items())
        raise ValueError(f"no share of {what} for benchmark {benchmark!r}")
    return table.loc[rows, "share"].to_numpy(dtype="float64")


def permutation_test(
    shares: pd.DataFrame,
    benchmark_a: str,
    benchmark_b: str,
    block: str | None = None,
    n_permutations: int = 10000,
    seed: int = 0,
    *,
    component: str | None = None,
) -> pd.DataFrame:
    """Does one block's (or component's) share differ between two benchmarks? A permutation test over seeds.

    On a :func:`block_share` table give ``block`` (and ``component`` when several components have a block
    of that name); on a :func:`component_share` table give ``component``.

    ``difference = mean_a - mean_b`` of the block's share over each benchmark's seeds. The two-sided
    p-value is the fraction of relabelings of the pooled seeds into groups of the same sizes whose
    ``|mean_a - mean_b|`` is at least the observed one (scipy.stats.permutation_test). All
    ``C(n_a + n_b, n_a)`` relabelings are enumerated when there are at most ``n_permutations`` of them
    (``exact``), else ``n_permutations`` random ones (``numpy.random.default_rng(seed)``) with
    ``p = (count + 1) / (n_permutations + 1)``. The smallest possible p is ``2 / C(n_a + n_b, n_a)``:
    1/3 with 2 seeds each, 0.029 with 4 each. With a single seed on either side there is nothing to
    permute and ``p_value`` is NaN. One row with columns ``benchmark_a, benchmark_b, component, block,
    n_seeds_a, n_seeds_b, mean_a, mean_b, difference, p_value, exact, n_relabelings`` (the unit's columns).
    """
    table = _seed_shares(shares)
    unit = _unit_of(table, block, component)
    a = _unit_values(table, benchmark_a, unit)
    b = _unit_values(table, benchmark_b, unit)
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
        **unit,
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
    """:func:`permutation_test` for every pair of benchmarks and every block (or component), beside the seed spread.

    ``spread_a`` and ``spread_b`` are the range (max - min) of the unit's share over each benchmark's
    seeds; ``exceeds_seed_spread`` is ``|difference| > max(spread_a, spread_b)``: a benchmark difference
    smaller than the seed-to-seed difference is no evidence, whatever its p-value. It is NA when either
    benchmark has a single seed, since a spread of one seed says nothing.
    """
    table = _seed_shares(shares)
    units = share_units(table)
    spread = table.groupby(["benchmark", *units], observed=True)["share"].agg(lambda s: s.max() - s.min())
    unit_values = list(sorted_rows(table[units].drop_duplicates(), units).itertuples(index=False, name=None))
    tests = []
    for a, b in combinations(sorted(table["benchmark"].unique()), 2):
        for unit in unit_values:
            if (a, *unit) in spread.index and (b, *unit) in spread.index:
                test = permutation_test(
                    table, a, b, n_permutations=n_permutations, seed=seed, **dict(zip(units, unit, strict=True))
                )
                tests.append(test.assign(spread_a=spread[(a, *unit)], spread_b=spread[(b, *unit)]))
    columns = [
        "benchmark_a",
        "benchmark_b",
        *units,
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
