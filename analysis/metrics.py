"""Metrics of where AdaLoRA puts its rank budget: tidy records in, tidy tables out (no drawing, no I/O).

Every function takes the records of ``analysis.load_runs`` (one row per adapted module per recorded
step) or a table made here, and returns a long table whose group keys are the run identity
(``run, benchmark, seed``) plus what the metric is about (``step``, ``block``, ``layer``, ``module``).

Conventions:

- ``step="final"`` selects each run's last recorded step, an ``int`` selects that step in every run
  (a run without it is an error), ``None`` keeps every recorded step.
- Structural zeros are not findings: only the query positions of the last Q-Former layer reach the LLM,
  so the text FFN (``ffn_text``) of the deepest layer gets exactly zero task gradient.
  :func:`mark_structural` flags those rows; metrics that compare blocks, layers or modules leave them
  out unless ``include_structural=True``; per-module tables keep them with the ``structural`` flag.
- Modules that do not exist (cross-attention of odd layers) have no rows and never get any: a
  table here has no row for them, and :func:`to_xarray` holds NaN there, never 0.
- Modules outside the Q-Former (no ``block``/``layer``) are left out of block and layer metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import combinations
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import stats

from qformer_budget.core.adalora_rules import adapter_parameters
from qformer_budget.core.grammar import ATTENTION_PROJS, FFN_PROJS, block_order, in_block_order, is_structural


if TYPE_CHECKING:
    import xarray

RUN_KEYS: tuple[str, ...] = ("run", "benchmark", "seed")
NORMALIZATIONS: tuple[str, ...] = ("rank", "module", "parameter")

StepSelector = int | Literal["final"] | None
Normalization = Literal["rank", "module", "parameter"]
Unit = Literal["block", "layer", "layer_block"]

_UNIT_KEYS: dict[str, tuple[str, ...]] = {
    "block": ("block",),
    "layer": ("layer",),
    "layer_block": ("layer", "block"),
}
_PROJ_ORDER: tuple[str, ...] = tuple(dict.fromkeys(ATTENTION_PROJS + FFN_PROJS))
_STEP_KEYS = [*RUN_KEYS, "step"]


# --- selection helpers ---


def last_recorded_step(records: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last recorded step."""
    last = records.groupby("run")["step"].transform("max")
    return records[records["step"] == last]


def select_step(records: pd.DataFrame, step: StepSelector = "final") -> pd.DataFrame:
    """The rows of one step per run: ``"final"`` (each run's last), an ``int`` (that step), ``None`` (all)."""
    if step is None:
        return records
    if isinstance(step, str):
        if step != "final":
            raise ValueError(f"step must be 'final', an int or None; got {step!r}")
        return last_recorded_step(records)
    at_step = records["step"] == step
    missing = sorted(set(records["run"]) - set(records.loc[at_step, "run"]))
    if missing:
        raise ValueError(
            f"step {step} is not recorded in runs {missing}; use step='final' or filter the runs"
        )
    return records[at_step]


def _structural_mask(records: pd.DataFrame, last_layer: int | None = None) -> pd.Series:
    """True on the text FFN of the last layer (``last_layer``, default: each run's deepest recorded one)."""
    deepest = records.groupby("run")["layer"].transform("max") if last_layer is None else last_layer
    return is_structural(records["block"], records["layer"], deepest).astype(bool)


def mark_structural(records: pd.DataFrame, last_layer: int | None = None) -> pd.DataFrame:
    """Add a bool column ``structural``: True for the text FFN (``ffn_text``) of the last Q-Former layer.

    Only the query positions of the last layer reach the LLM, so its text FFN gets exactly zero task
    gradient: its zero importance and rank are a property of the architecture, not a finding.
    ``last_layer`` defaults to each run's deepest recorded layer; pass the model's last layer when the
    placement left the deepest layers out. Metrics here use an existing ``structural`` column as is.
    """
    return records.assign(structural=_structural_mask(records, last_layer))


def _comparable(records: pd.DataFrame, include_structural: bool) -> pd.DataFrame:
    """The records with their ``structural`` flag, structural rows dropped unless asked for."""
    marked = records if "structural" in records.columns else mark_structural(records)
    return marked if include_structural else marked[~marked["structural"]]


def _sort_key(column: pd.Series) -> pd.Series:
    """What :func:`_sorted` orders a column by: its values (a categorical's values, not its category
    order), blocks in grammar order with unknown blocks after them, alphabetically."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = pd.Series(column.cat.categories, name=column.name)
        category_key = _sort_key(categories).rank(method="dense").to_numpy()
        codes = column.cat.codes.to_numpy()
        return pd.Series(np.where(codes >= 0, category_key[codes], np.nan), index=column.index)
    if column.name == "block":
        return column.map(block_order(column.dropna()))
    return column


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``frame`` sorted by ``keys``, blocks in grammar order (self_attn, cross_attn, ffn_query, ffn_text)."""
    return frame.sort_values(keys, key=_sort_key).reset_index(drop=True)


def _in_grammar_order(present: Iterable[str], order: tuple[str, ...]) -> list[str]:
    """The distinct values of ``present`` in the grammar's ``order``, unknown ones after, sorted."""
    values = set(present)
    return [v for v in order if v in values] + sorted(values - set(order))


def _group_ids(keys: list[pd.Series | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Group number of each row over the key columns (no missing values), numbered in order of first
    appearance, and the first row of each group: what ``groupby`` computes, without its per-call cost."""
    ids = np.zeros(len(keys[0]), dtype=np.int64)
    n_groups = 1
    for key in keys:
        if isinstance(key, pd.Series) and isinstance(key.dtype, pd.CategoricalDtype):
            codes, n_values = key.cat.codes.to_numpy(dtype=np.int64), len(key.cat.categories)
        else:
            codes, uniques = pd.factorize(key)
            n_values = len(uniques)
        if n_groups * n_values >= 2**62:  # renumber densely before the combined number could overflow
            ids, uniques = pd.factorize(ids)
            n_groups = len(uniques)
        ids = ids * n_values + codes
        n_groups *= n_values
    ids, _ = pd.factorize(ids)
    # Numbered by first appearance: a row starts a group exactly where the running maximum grows.
    running_max = np.maximum.accumulate(ids)
    first_rows = np.flatnonzero(np.diff(running_max, prepend=-1) > 0)
    return ids, first_rows


# --- shares of the budget ---


def _unit_totals(
    records: pd.DataFrame, unit: Unit, normalize: Normalization, include_structural: bool
) -> pd.DataFrame:
    """Per run, step and unit: kept rank, module count and share of the budget (see :func:`block_share`).

    Grouped with integer group numbers and ``np.bincount`` rather than ``groupby``: this runs on
    millions of rows (every recorded step of every run) for trajectories.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}; got {normalize!r}")
    if unit not in _UNIT_KEYS:
        raise ValueError(f"unit must be one of {tuple(_UNIT_KEYS)}; got {unit!r}")
    unit_keys = list(_UNIT_KEYS[unit])
    keys = [*_STEP_KEYS, *unit_keys]
    keep = records[keys].notna().all(axis=1)  # groupby leaves out rows with a missing key
    if not include_structural:
        structural = records["structural"] if "structural" in records.columns else _structural_mask(records)
        keep &= ~structural.astype(bool)
    values = ["rank", "in_features", "out_features"] if normalize == "parameter" else ["rank"]
    rows = records.loc[keep.to_numpy(), keys + values]
    step_ids, _ = _group_ids([rows[k] for k in _STEP_KEYS])
    unit_ids, first_rows = _group_ids([step_ids, *(rows[k] for k in unit_keys)])
    rank = rows["rank"].to_numpy(dtype="float64")
    amount = rank
    if normalize == "parameter":
        in_features, out_features = (rows[c].to_numpy(dtype="int64") for c in ("in_features", "out_features"))
        amount = adapter_parameters(in_features, out_features, rank, singular_values=True)
    n_units = len(first_rows)
    n_modules = np.bincount(unit_ids, minlength=n_units)
    unit_amount = np.bincount(unit_ids, weights=amount, minlength=n_units)
    if normalize == "module":
        unit_amount = unit_amount / n_modules
    step_of_unit = step_ids[first_rows]
    step_amount = np.bincount(step_of_unit, weights=unit_amount)
    with np.errstate(invalid="ignore", divide="ignore"):  # no rank kept at a step: NaN shares, as 0 / 0
        share = unit_amount / step_amount[step_of_unit]
    out = rows.iloc[first_rows][keys].reset_index(drop=True)
    out["rank"] = np.bincount(unit_ids, weights=rank, minlength=n_units)
    out["n_modules"] = n_modules.astype("int64")
    out["share"] = share
    if "layer" in unit_keys:
        out["layer"] = out["layer"].astype("int64")
    return _sorted(out, keys)


def block_share(
    records: pd.DataFrame,
    step: StepSelector = "final",
    normalize: Normalization = "rank",
    include_structural: bool = False,
) -> pd.DataFrame:
    """Share of the kept rank budget per block: columns ``run, benchmark, seed, step, block, share``.

    With ``r_m`` the kept rank of module ``m`` and ``M_b`` the modules of block ``b``:

    - ``"rank"``: ``share_b = sum_{m in M_b} r_m / sum_m r_m``;
    - ``"module"``: ``share_b = mean_{m in M_b} r_m / sum_b' mean_{m in M_b'} r_m``, so that
      cross-attention, present in half the layers only, is not penalised for having fewer modules;
    - ``"parameter"``: ``share_b = sum_{m in M_b} p_m / sum_m p_m`` with the kept adapter parameters
      ``p_m = r_m * (in_features + out_features + 1)`` (A, B and the singular values), since FFN
      matrices are larger than attention ones.

    Shares sum to 1 per run and step (NaN when no rank is kept). Structural rows (see
    :func:`mark_structural`) are excluded from numerator and denominator unless ``include_structural``.
    """
    totals = _unit_totals(select_step(records, step), "block", normalize, include_structural)
    return totals[[*_STEP_KEYS, "block", "share"]]


def layer_share(
    records: pd.DataFrame,
    step: StepSelector = "final",
    normalize: Normalization = "rank",
    by_block: bool = False,
    include_structural: bool = False,
) -> pd.DataFrame:
    """Share of the kept rank budget per layer (or per layer and block with ``by_block``).

    The same three normalisations as :func:`block_share`, with the layer (or the layer x block cell)
    in place of the block: ``"module"`` divides by the number of modules of the layer, which is larger
    in the even layers that hold cross-attention. Shares sum to 1 per run and step; absent cells (odd
    layers' cross-attention) have no row. Structural rows are excluded unless ``include_structural``.
    """
    unit: Unit = "layer_block" if by_block else "layer"
    totals = _unit_totals(select_step(records, step), unit, normalize, include_structural)
    return totals[[*_STEP_KEYS, *_UNIT_KEYS[unit], "share"]]


def rank_trajectories(
    records: pd.DataFrame,
    by: Unit = "block",
    normalize: Normalization = "rank",
    include_structural: bool = False,
) -> pd.DataFrame:
    """Kept rank and budget share per run, recorded step and block (or layer), for trajectory plots.

    Columns ``run, benchmark, seed, step, <by>, rank, n_modules, share``: ``rank`` is the sum of kept
    ranks of the unit's modules, ``share`` as in :func:`block_share` with ``normalize``. ``by`` is
    ``"block"``, ``"layer"`` or ``"layer_block"``. Structural rows are excluded unless ``include_structural``.
    """
    return _unit_totals(records, by, normalize, include_structural)


def settle_step(
    records: pd.DataFrame,
    tolerance: float = 0.02,
    by: Unit = "block",
    normalize: Normalization = "rank",
    include_structural: bool = False,
) -> pd.DataFrame:
    """The step from which each block's (or layer's) budget share stays near its final share.

    ``settle_step`` is the first recorded step ``s`` such that ``|share_t - share_final| <= tolerance``
    (absolute) for every recorded step ``t >= s`` of the run; a share that leaves the band and comes
    back settles only at its last return. Columns ``run, benchmark, seed, <by>, settle_step, final_share``.
    Shares as in :func:`rank_trajectories`.
    """
    unit_keys = list(_UNIT_KEYS[by])
    keys = [*RUN_KEYS, *unit_keys]
    trajectory = _unit_totals(records, by, normalize, include_structural).sort_values([*keys, "step"])
    final_share = trajectory.groupby(keys)["share"].transform("last")
    outside = ((trajectory["share"] - final_share).abs() > tolerance).astype(int)
    # Number of out-of-band steps at or after each step: the run has settled where it is 0.
    outside_from_here = outside.iloc[::-1].groupby([trajectory[k] for k in keys]).cumsum()
    settled = trajectory.assign(final_share=final_share)[outside_from_here.reindex(trajectory.index) == 0]
    out = settled.groupby(keys, as_index=False).agg(
        settle_step=("step", "min"), final_share=("final_share", "first")
    )
    return _sorted(out, keys)


def rank_retention(
    records: pd.DataFrame,
    step: StepSelector = "final",
    by: Literal["module", "block"] = "module",
    include_structural: bool = False,
) -> pd.DataFrame:
    """Kept fraction of the initial rank: ``retention = rank / init_r`` per module, or its mean per block.

    ``by="module"``: one row per run and module (``structural`` flag, ``init_r``, ``rank``, ``retention``).
    ``by="block"``: ``retention`` is the mean over the block's modules, with ``n_modules``.
    Structural rows are excluded unless ``include_structural``.
    """
    rows = _comparable(select_step(records, step), include_structural)
    retention = rows["rank"].astype("float64") / rows["init_r"].astype("float64")
    if by == "module":
        columns = [
            *_STEP_KEYS,
            "module",
            "sublayer",
            "layer",
            "block",
            "proj",
            "structural",
            "init_r",
            "rank",
        ]
        return _sorted(rows[columns].assign(retention=retention), [*RUN_KEYS, "module"])
    if by == "block":
        out = (
            rows.dropna(subset=["block"])
            .assign(retention=retention)
            .groupby([*_STEP_KEYS, "block"], as_index=False)
            .agg(n_modules=("retention", "size"), retention=("retention", "mean"))
        )
        return _sorted(out, [*_STEP_KEYS, "block"])
    raise ValueError(f"by must be 'module' or 'block'; got {by!r}")


# --- importance and concentration ---


def normalized_importance(
    records: pd.DataFrame, step: StepSelector = None, include_structural: bool = False
) -> pd.DataFrame:
    """Importance scores made comparable across module types, per run, step and module.

    Raw AdaLoRA scores differ by about 1000x between module types, so two normalisations are given:

    - ``importance_share = score_m / sum_m' score_m'`` over the run's modules at that step;
    - ``score_vs_block_median = score_m / median of the scores of m's block`` at that step.

    Rows with a NaN score (final phase: peft cleared the scores) are dropped, so ``step="final"`` is
    usually empty; the default keeps every step. Structural rows are excluded unless ``include_structural``.
    """
    rows = _comparable(select_step(records, step), include_structural).dropna(subset=["score"])
    score = rows["score"]
    total = score.groupby([rows[k] for k in _STEP_KEYS]).transform("sum")
    block_median = score.groupby([rows[k] for k in [*_STEP_KEYS, "block"]]).transform("median")
    columns = [*_STEP_KEYS, "module", "sublayer", "layer", "block", "proj", "score"]
    out = rows[columns].assign(importance_share=score / total, score_vs_block_median=score / block_median)
    return _sorted(out, [*_STEP_KEYS, "module"])


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
    rows = _comparable(select_step(records, step), include_structural)
    rank = rows["rank"].astype("float64")
    p = rank / rank.groupby([rows[k] for k in _STEP_KEYS]).transform("sum")
    surprise = (-p * np.log(p.where(p > 0))).fillna(0.0)
    out = (
        rows.assign(rank=rank, surprise=surprise)
        .groupby(_STEP_KEYS, as_index=False)
        .agg(n_modules=("rank", "size"), total_rank=("rank", "sum"), entropy=("surprise", "sum"))
    )
    out["entropy"] = out["entropy"].where(out["total_rank"] > 0)
    n = out["n_modules"].astype("float64")
    out["normalized_entropy"] = out["entropy"] / np.log(n.where(n > 1))
    return _sorted(out, _STEP_KEYS)


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
    rows = _comparable(select_step(records, step), include_structural)
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
    rows = _comparable(select_step(records, step), include_structural)
    pairs = []
    for benchmark, bench_rows in rows.groupby("benchmark"):
        mean_rank = bench_rows.assign(rank=bench_rows["rank"].astype("float64")).pivot_table(
            index="module", columns="seed", values="rank", aggfunc="mean"
        )
        for a, b in combinations(sorted(mean_rank.columns), 2):
            both = mean_rank[[a, b]].dropna()
            pairs.append((benchmark, a, b, _spearman(both[a], both[b]), len(both)))
    return pd.DataFrame(pairs, columns=["benchmark", "seed_a", "seed_b", "spearman", "n_modules"])


# --- statistics over seeds ---


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
    for (benchmark, block), group in _sorted(table, ["benchmark", "block", "seed"]).groupby(
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
    blocks = _sorted(table[["block"]].drop_duplicates(), ["block"])["block"]
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


# --- summaries and views ---


def module_summary(records: pd.DataFrame) -> pd.DataFrame:
    """One row per run and module: where it sits, its final rank and retention, its mean importance.

    Columns ``run, benchmark, seed, module, sublayer, layer, block, proj, structural, init_r,
    final_step, final_rank, retention, mean_importance_share``: ``retention = final_rank / init_r`` and
    ``mean_importance_share`` is the mean over the steps with scores of :func:`normalized_importance`'s
    ``importance_share``. Structural rows are kept and flagged.
    """
    final = rank_retention(records, step="final", include_structural=True)
    importance = (
        normalized_importance(records, include_structural=True)
        .groupby([*RUN_KEYS, "module"], as_index=False)
        .agg(mean_importance_share=("importance_share", "mean"))
    )
    out = final.rename(columns={"step": "final_step", "rank": "final_rank"}).merge(
        importance, on=[*RUN_KEYS, "module"], how="left"
    )
    columns = [
        *RUN_KEYS,
        "module",
        "sublayer",
        "layer",
        "block",
        "proj",
        "structural",
        "init_r",
        "final_step",
        "final_rank",
        "retention",
        "mean_importance_share",
    ]
    return out[columns]


def run_summary(
    records: pd.DataFrame,
    normalize: Normalization = "rank",
    tolerance: float = 0.02,
    include_structural: bool = False,
) -> pd.DataFrame:
    """One row per run: budget, kept rank, concentration, block shares and settle steps at the last step.

    Columns ``run, benchmark, seed, final_step, n_modules, budget, total_rank`` (over all adapted
    modules, as AdaLoRA allocates), ``normalized_entropy`` (:func:`allocation_entropy`), then
    ``share_<block>`` (:func:`block_share` with ``normalize``) and ``settle_step_<block>``
    (:func:`settle_step` with ``tolerance``) for each block present. Entropy, shares and settle steps
    exclude structural rows unless ``include_structural``.
    """
    final = select_step(records, "final")
    out = final.groupby(list(RUN_KEYS), as_index=False).agg(
        final_step=("step", "max"),
        n_modules=("module", "size"),
        budget=("budget", "first"),
        total_rank=("rank", "sum"),
    )
    entropy = allocation_entropy(records, step="final", include_structural=include_structural)
    shares = block_share(records, "final", normalize, include_structural)
    settle = settle_step(records, tolerance, "block", normalize, include_structural)
    blocks = in_block_order(shares["block"])
    wide_shares = shares.pivot(index=list(RUN_KEYS), columns="block", values="share")[blocks]
    wide_settle = settle.pivot(index=list(RUN_KEYS), columns="block", values="settle_step")[blocks]
    out = (
        out.merge(entropy[[*RUN_KEYS, "normalized_entropy"]], on=list(RUN_KEYS), how="left")
        .merge(wide_shares.add_prefix("share_").reset_index(), on=list(RUN_KEYS), how="left")
        .merge(wide_settle.add_prefix("settle_step_").reset_index(), on=list(RUN_KEYS), how="left")
    )
    return _sorted(out, list(RUN_KEYS))


def to_xarray(records: pd.DataFrame, value: str = "rank") -> xarray.DataArray:
    """``value`` as an ``xarray.DataArray`` with dims ``(benchmark, seed, step, layer, block, proj)``.

    A labelled N-d view of the records: cells without a module (odd layers' cross-attention, FFN
    blocks' attention projections, steps a run did not record) are NaN, never 0. All rows are kept,
    structural ones included (:func:`mark_structural` gives the mask). Each benchmark and seed must be
    one run. Needs the optional xarray (``pip install "qformer-budget[analysis]"``).
    """
    try:
        import xarray as xr
    except ImportError as exc:
        raise ImportError('to_xarray needs xarray: pip install "qformer-budget[analysis]"') from exc
    dims = ["benchmark", "seed", "step", "layer", "block", "proj"]
    rows = records.dropna(subset=["layer", "block", "proj"])
    runs_per_seed = rows.groupby(["benchmark", "seed"])["run"].nunique()
    if (runs_per_seed > 1).any():
        raise ValueError(
            f"several runs share a benchmark and seed: {runs_per_seed[runs_per_seed > 1].index.tolist()}; "
            "select one configuration first"
        )
    cells = rows.astype({"layer": "int64", value: "float64"}).set_index(dims)[value]
    array = xr.DataArray.from_series(cells)
    blocks = in_block_order(rows["block"])
    projs = _in_grammar_order(rows["proj"], _PROJ_ORDER)
    return array.reindex(block=blocks, proj=projs)
