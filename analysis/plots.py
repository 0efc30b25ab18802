"""Plots: each takes prepared tidy data and ``ax=None`` and returns the Axes it drew on."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Patch, Rectangle

from peft_hooks.taxonomy import BLOCK_PROJS, BLOCKS

EMPTY_CELL_HATCH = "////"
EMPTY_CELL_COLOR = "0.85"


def plot_rank_heatmap(
    table: pd.DataFrame, ax: Axes | None = None, *, title: str | None = None, vmax: float | None = None
) -> Axes:
    """Draw a layer x sublayer table (from ``rank_heatmap_data``) as an annotated heatmap.

    Cells with no module (NaN) are hatched grey, so they cannot be mistaken for rank 0.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.42 * len(table) + 1.6))
    values = table.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    ax.add_patch(
        Rectangle(
            (-0.5, -0.5), n_cols, n_rows, facecolor=EMPTY_CELL_COLOR, hatch=EMPTY_CELL_HATCH,
            edgecolor="0.6", linewidth=0, zorder=0,
        )
    )
    finite = values[np.isfinite(values)]
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap="viridis", vmin=0,
        vmax=vmax if vmax is not None else (finite.max() if finite.size else 1), aspect="auto", zorder=1,
    )
    for (row, col), value in np.ndenumerate(values):
        if np.isfinite(value):
            shade = image.norm(value)
            text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
            ax.text(col, row, text, ha="center", va="center", fontsize=7, color="black" if shade > 0.6 else "white")
    ax.set_xticks(range(n_cols), [c.split(".", 1)[1] for c in table.columns], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), [f"L{int(layer):02d}" for layer in table.index], fontsize=8)
    starts = np.cumsum([0] + [len(BLOCK_PROJS[b]) for b in BLOCKS])
    for edge in starts[1:-1]:
        ax.axvline(edge - 0.5, color="white", linewidth=2, zorder=2)
    blocks_axis = ax.secondary_xaxis("top")
    blocks_axis.set_xticks((starts[:-1] + starts[1:]) / 2 - 0.5, BLOCKS, fontsize=8, fontweight="bold")
    blocks_axis.tick_params(length=0)
    ax.set_xlim(-0.5, n_cols - 0.5)
    ax.set_ylim(n_rows - 0.5, -0.5)
    ax.set_ylabel("Q-Former layer")
    ax.figure.colorbar(image, ax=ax, label="rank", fraction=0.04, pad=0.02)
    ax.legend(
        handles=[Patch(facecolor=EMPTY_CELL_COLOR, hatch=EMPTY_CELL_HATCH, edgecolor="0.6", label="no module")],
        loc="upper left", bbox_to_anchor=(1.12, 1.0), fontsize=7, frameon=False,
    )
    if title:
        ax.set_title(title)
    return ax
