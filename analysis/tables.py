"""Pure data preparation for figures: tidy records in, tables out (no drawing)."""

from __future__ import annotations

import pandas as pd

from peft_hooks.taxonomy import BLOCK_PROJS, BLOCKS

# Heatmap columns in grammar order: self-attention, cross-attention, query FFN, text FFN.
SUBLAYER_COLUMNS: tuple[str, ...] = tuple(f"{block}.{proj}" for block in BLOCKS for proj in BLOCK_PROJS[block])


def last_recorded_step(records: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last recorded step."""
    last = records.groupby("run")["step"].transform("max")
    return records[records["step"] == last]


def rank_heatmap_data(records: pd.DataFrame, value: str = "rank") -> pd.DataFrame:
    """Layer x sublayer table of ``value`` at each run's last recorded step, averaged over runs.

    Rows are every layer from 0 to the deepest recorded one, columns are ``SUBLAYER_COLUMNS``;
    a cell is NaN where no adapted module exists (e.g. cross-attention in odd layers), never 0.
    """
    rows = last_recorded_step(records.dropna(subset=["layer"]))
    if rows.empty:
        raise ValueError("no Q-Former records to draw: the table has no rows with a layer")
    cells = rows.assign(column=rows["block"] + "." + rows["proj"]).pivot_table(
        index="layer", columns="column", values=value, aggfunc="mean"
    )
    layers = range(int(rows["layer"].max()) + 1)
    table = cells.reindex(index=layers, columns=list(SUBLAYER_COLUMNS))
    table.index.name = "layer"
    table.columns.name = "sublayer"
    return table.astype(float)
