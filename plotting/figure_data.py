"""Pure data preparation for figures: tidy records in, tables out (no drawing)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qformer_budget.analysis import (
    block_share,
    bootstrap_block_share,
    component_share,
    last_recorded_step,
    last_scored_step,
    mark_structural,
    rank_trajectories,
    select_step,
)
from qformer_budget.analysis.selection import COMPONENT_ORDER, component_of
from qformer_budget.core.grammar import COMPONENT_TITLES, STRUCTURAL_BLOCK, block_order, component_columns

# Heatmap columns in grammar order: self-attention, cross-attention, query FFN, text FFN.
SUBLAYER_COLUMNS: tuple[str, ...] = tuple(component_columns("qformer", ()))


def heatmap_column(rows: pd.DataFrame) -> pd.Series:
    """Each row's heatmap column, ``block.proj`` (one of ``SUBLAYER_COLUMNS``), from string or categorical labels."""
    return rows["block"].astype(str) + "." + rows["proj"].astype(str)


def plain_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its categorical columns as strings (frames with different categories then concatenate)."""
    return frame.astype({name: str for name in frame.select_dtypes("category").columns})


def component_rows(records: pd.DataFrame, component: str) -> pd.DataFrame:
    """The rows of one component that sit in a layer (the projection and the LM head have none)."""
    of_component = (component_of(records) == component).to_numpy()
    rows = (records if of_component.all() else records[of_component]).dropna(subset=["layer"])
    if rows.empty:
        raise ValueError(f"no {COMPONENT_TITLES.get(component, component)} records to draw: no row of component "
                         f"{component!r} has a layer")
    return rows


def rank_heatmap_data(records: pd.DataFrame, value: str = "rank", component: str = "qformer") -> pd.DataFrame:
    """Layer x sublayer table of one component's ``value`` at each run's last recorded step, averaged over runs.

    Rows are every layer from 0 to the deepest recorded one; columns are ``SUBLAYER_COLUMNS`` for the
    Q-Former, the recorded ``block.proj`` pairs in grammar order for the LLM and the vision encoder
    (``grammar.component_columns``); a cell is NaN where no adapted module exists (e.g. cross-attention in
    odd layers), never 0. ``table.attrs["component"]`` says whose table it is.
    """
    rows = last_recorded_step(component_rows(records, component))
    column = heatmap_column(rows)
    cells = rows.assign(column=column).pivot_table(index="layer", columns="column", values=value, aggfunc="mean")
    layers = range(int(rows["layer"].max()) + 1)
    table = cells.reindex(index=layers, columns=component_columns(component, column.unique()))
    table.index.name = "layer"
    table.columns.name = "sublayer"
    table = table.astype(float)
    table.attrs["component"] = component
    return table


# --- structural cells ---


def structural_cells(table: pd.DataFrame, last_layer: int | None = None) -> pd.DataFrame:
    """Bool mask of a layer x sublayer table (heatmap or difference): True on the structural cells.

    The structural cells are the text FFN (``ffn_text.*`` columns) of the last Q-Former layer, the same
    rule as :func:`analysis.mark_structural`: only the query positions of the last layer reach the
    LLM, so its text FFN gets no task gradient and its rank is a property of the architecture, not a
    finding. ``last_layer`` defaults to the table's deepest row; pass the model's last layer when the
    placement left the deepest layers out. Cells without a module (NaN) are never structural, nor are the
    cells of another component's table (``table.attrs["component"]``).
    """
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    deepest = table.index.max() if last_layer is None else last_layer
    if len(table) and deepest in table.index and table.attrs.get("component", "qformer") == "qformer":
        text_ffn = [c for c in table.columns if str(c).startswith(f"{STRUCTURAL_BLOCK}.")]
        mask.loc[deepest, text_ffn] = table.loc[deepest, text_ffn].notna().to_numpy()
    return mask


# --- small multiples and differences ---


def heatmap_tables(records: pd.DataFrame, value: str = "rank", component: str = "qformer") -> dict[str, pd.DataFrame]:
    """One :func:`rank_heatmap_data` table of ``component`` per benchmark (sorted by name), for ``plot_heatmap_grid``.

    Every table has the rows of the deepest layer and the columns recorded in any benchmark, so the panels line up.
    """
    rows_of_component = component_rows(records, component)
    layers = pd.RangeIndex(int(rows_of_component["layer"].max()) + 1, name="layer")
    columns = component_columns(component, heatmap_column(rows_of_component).unique())
    tables = {}
    for benchmark, rows in sorted(rows_of_component.groupby("benchmark", observed=True), key=lambda item: str(item[0])):
        table = rank_heatmap_data(rows, value, component)
        tables[str(benchmark)] = table.reindex(index=layers, columns=pd.Index(columns, name="sublayer"))
        tables[str(benchmark)].attrs["component"] = component
    return tables


def rank_difference_data(
    records: pd.DataFrame, benchmark_a: str, benchmark_b: str, value: str = "rank"
) -> pd.DataFrame:
    """Layer x sublayer table of ``value(a) - value(b)``, each the mean over its runs' last recorded step.

    Same rows and columns as :func:`rank_heatmap_data`; a cell is NaN where either benchmark has no
    module there (a true difference of 0 stays 0).
    """
    tables = heatmap_tables(records[records["benchmark"].isin([benchmark_a, benchmark_b])], value)
    missing = [b for b in (benchmark_a, benchmark_b) if b not in tables]
    if missing:
        raise ValueError(
            f"no Q-Former records of benchmark(s) {missing}; benchmarks present: {sorted(tables)}"
        )
    return tables[benchmark_a] - tables[benchmark_b]


# --- over training steps ---

_PHASE_ORDER = {"warmup": 0, "budgeting": 1, "final": 2}


def phase_spans(records: pd.DataFrame) -> pd.DataFrame:
    """Step spans of the AdaLoRA phases per benchmark, from the ``phase`` column, for shading.

    Columns ``benchmark, phase, start, end``: ``start`` is the first recorded step of the phase in any of
    the benchmark's runs and ``end`` the ``start`` of the next phase (or the last recorded step), so
    the spans tile the recorded steps. The true boundary lies between the last recorded step of one
    phase and the first of the next.
    """
    firsts = records.groupby(["benchmark", "phase"], as_index=False, observed=True).agg(
        start=("step", "min"), last=("step", "max")
    )
    rows = []
    for benchmark, group in firsts.groupby("benchmark", sort=True, observed=True):
        order = group["phase"].map(_PHASE_ORDER).fillna(len(_PHASE_ORDER))
        group = group.assign(order=order).sort_values(["start", "order"])
        starts = group["start"].tolist()
        ends = starts[1:] + [int(group["last"].max())]
        rows += [
            (str(benchmark), str(phase), int(start), int(end))
            for phase, start, end in zip(group["phase"], starts, ends, strict=True)
        ]
    return pd.DataFrame(rows, columns=["benchmark", "phase", "start", "end"])


def trajectory_data(
    records: pd.DataFrame,
    value: str = "share",
    normalize: str = "rank",
    include_structural: bool = False,
    by: str = "block",
    component: str = "qformer",
) -> pd.DataFrame:
    """Per block (of ``component``) or per component over recorded steps: each seed's ``value`` and the mean
    over seeds, for trajectory plots.

    ``value`` is ``"share"`` (share of the kept rank, normalised as in :func:`analysis.block_share`, within
    the component; with ``by="component"`` as in :func:`analysis.component_share`, of the whole budget) or
    ``"rank"`` (sum of the kept ranks). Columns ``benchmark, line, seed, step, <by>, value, n_seeds``: rows
    with ``line == "seed"`` hold one seed (``n_seeds`` 1), rows with ``line == "mean"`` the mean over the
    seeds recorded at that step (``seed`` is NA). Structural rows are left out unless ``include_structural``.
    """

    if value not in ("share", "rank"):
        raise ValueError(f"value must be 'share' or 'rank'; got {value!r}")
    if by not in ("block", "component"):
        raise ValueError(f"by must be 'block' or 'component'; got {by!r}")
    per_run = rank_trajectories(records, by, normalize, include_structural)  # type: ignore[arg-type]
    if by == "block":
        per_run = per_run[(per_run["component"] == component).to_numpy()]
    seeds = per_run.rename(columns={value: "value"})[["benchmark", "seed", "step", by, "value"]]
    seeds = seeds.assign(line="seed", n_seeds=1)
    means = seeds.groupby(["benchmark", "step", by], as_index=False, sort=False, observed=True).agg(
        value=("value", "mean"), n_seeds=("seed", "nunique")
    )
    means = means.assign(line="mean", seed=pd.NA)
    out = pd.concat([seeds, means], ignore_index=True)
    out["seed"] = out["seed"].astype("Int64")
    out["value"] = out["value"].astype("float64")
    columns = ["benchmark", "line", "seed", "step", by, "value", "n_seeds"]
    return _in_block_order(out[columns], ["benchmark", "line", "seed", by, "step"])


def budget_schedule_data(records: pd.DataFrame) -> pd.DataFrame:
    """The recorded budget and the kept total rank per run and recorded step.

    Columns ``run, benchmark, seed, step, phase, mask_step, budget, total_rank, n_modules``:
    ``budget`` is ``budget_schedule``'s total at that step, ``total_rank`` the sum of the kept ranks of
    every adapted module (structural ones included: AdaLoRA allocates over all of them).
    """
    rows = records.assign(rank=records["rank"].astype("int64"), mask_step=records["mask_step"].astype(bool))
    out = rows.groupby(["run", "benchmark", "seed", "step"], as_index=False, observed=True).agg(
        phase=("phase", "first"),
        mask_step=("mask_step", "any"),
        budget=("budget", "first"),
        total_rank=("rank", "sum"),
        n_modules=("module", "size"),
    )
    return out.sort_values(["benchmark", "seed", "run", "step"]).reset_index(drop=True)


# --- importance and block shares ---


def importance_data(
    records: pd.DataFrame, step: int | None = None, include_structural: bool = True
) -> pd.DataFrame:
    """Module importance scores at one step per run, for distributions on a log scale.

    ``step=None`` takes each run's last recorded step that still has scores (peft clears them in the
    final phase, so this is usually the final mask step); an ``int`` takes that step in every run.
    Q-Former modules only. Columns ``run, benchmark, seed, step, module, sublayer, layer, block, proj, score,
    log10_score, structural``: ``log10_score`` is NaN where ``score <= 0`` (no place on a log axis); ``structural``
    flags the last layer's text FFN (:func:`analysis.mark_structural`), kept unless
    ``include_structural`` is False so that plots can mark it. Rows with no score or no block are dropped.
    """

    rows = records[(component_of(records) == "qformer").to_numpy()].dropna(subset=["block", "layer"])
    rows = last_scored_step(rows) if step is None else select_step(rows.dropna(subset=["score"]), step)
    if "structural" not in rows.columns:
        rows = mark_structural(rows)
    if not include_structural:
        rows = rows[~rows["structural"]]
    score = rows["score"].astype("float64")
    log10 = np.log10(score.where(score > 0))
    columns = ["run", "benchmark", "seed", "step", "module", "sublayer", "layer", "block", "proj"]
    out = rows[columns].assign(score=score, log10_score=log10, structural=rows["structural"].astype(bool))
    return _in_block_order(out, ["benchmark", "seed", "run", "block", "layer", "proj"])


def final_shares(
    records: pd.DataFrame, normalize: str = "rank", include_structural: bool = False, by: str = "block",
    component: str = "qformer",
) -> pd.DataFrame:
    """Each run's final share per block of ``component`` (:func:`analysis.block_share`) or, with
    ``by="component"``, per component (:func:`analysis.component_share`), without the other unit's column."""
    if by == "component":
        return component_share(records, "final", normalize, include_structural)  # type: ignore[arg-type]
    shares = block_share(records, "final", normalize, include_structural)  # type: ignore[arg-type]
    return shares[(shares["component"] == component).to_numpy()].drop(columns="component")


def block_share_ci_data(
    records: pd.DataFrame,
    normalize: str = "rank",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    include_structural: bool = False,
    by: str = "block",
    component: str = "qformer",
) -> pd.DataFrame:
    """Mean final block (or component) share per benchmark with a seed-bootstrap confidence interval, for bar charts.

    :func:`final_shares` with ``normalize`` (``"rank"``, ``"module"`` or ``"parameter"``), then
    :func:`analysis.bootstrap_block_share`. Columns ``benchmark, <by>, normalize, confidence, n_seeds, mean,
    ci_low, ci_high``; the interval is NaN with one seed, and with 2 or 3 seeds it is crude (see
    ``bootstrap_block_share``). Structural rows are left out unless ``include_structural``.
    """

    shares = final_shares(records, normalize, include_structural, by, component)
    ci = bootstrap_block_share(shares, n_boot=n_boot, confidence=confidence, seed=seed)
    ci.insert(2, "normalize", normalize)
    ci.insert(3, "confidence", float(confidence))
    return _in_block_order(ci, ["benchmark", by])


def _in_block_order(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``frame`` sorted by ``keys``, blocks in grammar order (unknown blocks last)."""

    def key(col: pd.Series) -> pd.Series:
        if col.name == "block":
            return col.map(block_order(col.dropna()))
        if col.name == "component":
            return col.map(COMPONENT_ORDER)
        if col.name == "line":
            return col.map({"seed": 0, "mean": 1})
        return col

    return frame.sort_values(keys, key=key, kind="stable").reset_index(drop=True)
