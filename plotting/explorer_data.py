"""Pure data preparation for the interactive explorer (``plotting.explorer``): tidy records in, tables out.

The explorer shows every benchmark's layer x sublayer allocation at a chosen recorded step. A study-size
sweep records thousands of steps, so the steps are thinned to an even sample that always keeps the first
and the last (:func:`thin_steps`); the heatmap cells and the trajectories are computed on those steps only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qformer_budget.analysis import mark_structural

from .figure_data import SUBLAYER_COLUMNS, component_rows, heatmap_column, plain_labels

# Enough for the slider to follow AdaLoRA's budgeting phase; a study-size report stays a few MB.
HEATMAP_STEPS = 40
TRAJECTORY_STEPS = 200

CELL_COLUMNS = [
    "benchmark", "step", "phase", "layer", "column", "sublayer", "module", "rank", "rank_min", "rank_max", "init_r", "score",
    "budget", "threshold", "n_seeds", "structural",
]


def thin_steps(steps, max_steps: int) -> np.ndarray:
    """At most ``max_steps`` of the sorted unique ``steps``, evenly spaced, the first and the last included."""
    if max_steps < 2:
        raise ValueError(f"max_steps must be at least 2 (the first and the last step); got {max_steps}")
    unique = np.unique(np.asarray(steps))
    if len(unique) <= max_steps:
        return unique
    return unique[np.unique(np.linspace(0, len(unique) - 1, max_steps).round().astype(int))]


def thinned_records(records: pd.DataFrame, max_steps: int) -> pd.DataFrame:
    """The rows of ``records`` at each benchmark's :func:`thin_steps` of its recorded steps."""
    keep = [
        rows[rows["step"].isin(thin_steps(rows["step"], max_steps))]
        for _, rows in records.groupby("benchmark", sort=True, observed=True)
    ]
    if not keep:
        raise ValueError("no records to explore: the table is empty")
    return pd.concat(keep, ignore_index=True)


def allocation_cells(records: pd.DataFrame, max_steps: int = HEATMAP_STEPS, component: str = "qformer") -> pd.DataFrame:
    """One row per benchmark, thinned recorded step and module of ``component`` in a layer: the heatmap cells
    of the explorer.

    Columns ``CELL_COLUMNS``: ``phase`` is the step's AdaLoRA phase, ``column`` is the heatmap column (``self_attn.query``, ...); ``rank`` and
    ``score`` are means over the seeds recorded at that step (``score`` NaN once peft cleared the scores),
    ``rank_min``/``rank_max`` their range; ``budget`` and ``threshold`` (NaN off mask steps) are the
    step's, averaged over seeds; ``structural`` flags the last layer's text FFN (no task gradient).
    """
    rows = plain_labels(mark_structural(thinned_records(component_rows(records, component), max_steps)))
    rows = rows.assign(layer=rows["layer"].astype("int64"), column=heatmap_column(rows), rank=rows["rank"].astype("float64"))
    cells = rows.groupby(["benchmark", "step", "layer", "column"], as_index=False, sort=True).agg(
        phase=("phase", "first"),
        sublayer=("sublayer", "first"),
        module=("module", "first"),
        rank=("rank", "mean"),
        rank_min=("rank", "min"),
        rank_max=("rank", "max"),
        init_r=("init_r", "max"),
        score=("score", "mean"),
        budget=("budget", "mean"),
        threshold=("threshold", "mean"),
        n_seeds=("seed", "nunique"),
        structural=("structural", "any"),
    )
    unknown = sorted(set(cells["column"]) - set(SUBLAYER_COLUMNS)) if component == "qformer" else []
    if unknown:
        raise ValueError(f"records hold sublayers outside the grammar's heatmap columns: {unknown}")
    return cells[CELL_COLUMNS]


def cell_grid(
    cells: pd.DataFrame, value: str, n_layers: int, columns: list[str] | tuple[str, ...] = SUBLAYER_COLUMNS
) -> np.ndarray:
    """``value`` of one benchmark's cells at one step as a layer x ``columns`` array (NaN: no module)."""
    grid = cells.pivot(index="layer", columns="column", values=value)
    return grid.reindex(index=range(n_layers), columns=list(columns)).to_numpy()
