"""Layer x sublayer heatmaps: ranks or importance, side by side per benchmark, and differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch, Rectangle

from qformer_budget.core.grammar import BLOCK_PROJS, BLOCKS

from .figure_data import structural_cells
from .style import EMPTY_CELL_COLOR, EMPTY_CELL_HATCH, EMPTY_LABEL, STRUCTURAL_LABEL


def _structural_mask(table: pd.DataFrame, structural: pd.DataFrame | bool) -> np.ndarray:
    if structural is True:
        structural = structural_cells(table)
    if structural is False or structural is None:
        return np.zeros(table.shape, dtype=bool)
    return structural.reindex(index=table.index, columns=table.columns, fill_value=False).to_numpy(dtype=bool)


def _format_cell(value: float, signed: bool) -> str:
    if value == 0:
        return "0"
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if text in ("0.0", "-0.0"):
        text = f"{value:.2f}"
    return ("+" + text) if signed and value > 0 else text


def _structural_handle():
    return (
        Patch(facecolor="none", edgecolor="black", linewidth=1.6),
        Patch(facecolor="none", edgecolor="white", linewidth=1.6, linestyle=(0, (1.5, 1.5))),
    )


def _cell_legend_handles(any_structural: bool) -> tuple[list, list[str]]:
    handles: list = [Patch(facecolor=EMPTY_CELL_COLOR, hatch=EMPTY_CELL_HATCH, edgecolor="0.6")]
    labels = [EMPTY_LABEL]
    if any_structural:
        handles.append(_structural_handle())
        labels.append(STRUCTURAL_LABEL)
    return handles, labels


def _draw_cells(
    ax: Axes,
    table: pd.DataFrame,
    *,
    cmap,
    norm: mcolors.Normalize,
    structural: np.ndarray,
    signed: bool,
    ylabels: bool,
    fontsize: float,
    separator: str = "white",
):
    """The shared layer x sublayer drawing: hatched background, cells, annotations, ticks, block labels."""
    values = table.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    ax.add_patch(
        Rectangle(
            (-0.5, -0.5), n_cols, n_rows, facecolor=EMPTY_CELL_COLOR, hatch=EMPTY_CELL_HATCH,
            edgecolor="0.6", linewidth=0, zorder=0,
        )
    )
    cmap = plt.get_cmap(cmap)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", zorder=1)
    for (row, col), value in np.ndenumerate(values):
        if not np.isfinite(value):
            continue
        red, green, blue, _ = cmap(norm(value))
        dark_cell = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
        ax.text(
            col, row, _format_cell(value, signed), ha="center", va="center", fontsize=fontsize,
            color="white" if dark_cell else "black", style="italic" if structural[row, col] else "normal",
            zorder=3,
        )
    for row, col in zip(*np.nonzero(structural & np.isfinite(values)), strict=True):
        black, white = _structural_handle()
        for outline in (black, white):
            ax.add_patch(
                Rectangle(
                    (col - 0.44, row - 0.44), 0.88, 0.88, facecolor="none", edgecolor=outline.get_edgecolor(),
                    linewidth=outline.get_linewidth(), linestyle=outline.get_linestyle(), zorder=4,
                    gid="structural",
                )
            )
    ax.set_xticks(range(n_cols), [str(c).split(".", 1)[-1] for c in table.columns], rotation=60, ha="right",
                  fontsize=8)
    layer_labels = [f"L{int(layer):02d}" for layer in table.index] if ylabels else []
    ax.set_yticks(range(n_rows), layer_labels, fontsize=8)
    if not ylabels:
        ax.tick_params(axis="y", length=0)
    starts = np.cumsum([0] + [len(BLOCK_PROJS[b]) for b in BLOCKS])
    if tuple(table.columns) == tuple(f"{b}.{p}" for b in BLOCKS for p in BLOCK_PROJS[b]):
        for edge in starts[1:-1]:
            ax.axvline(edge - 0.5, color=separator, linewidth=2 if separator == "white" else 1.2, zorder=2)
        blocks_axis = ax.secondary_xaxis("top")
        blocks_axis.set_xticks((starts[:-1] + starts[1:]) / 2 - 0.5, BLOCKS, fontsize=8, fontweight="bold")
        blocks_axis.tick_params(length=0)
    ax.set_xlim(-0.5, n_cols - 0.5)
    ax.set_ylim(n_rows - 0.5, -0.5)
    if ylabels:
        ax.set_ylabel("Q-Former layer")
    return image


def _colorbar_and_legend(ax: Axes, image, label: str, legend: tuple[list, list[str]] | None, colorbar: bool):
    """The colour bar right of ``ax``, the cell legend under it (or right of ``ax`` without a colour bar).

    Under the colour bar, the legend needs no room of its own, with ``bbox_inches="tight"`` and with a
    constrained layout alike.
    """
    kwargs = {"handler_map": {tuple: HandlerTuple(ndivide=1)}, "fontsize": 7, "frameon": False}
    if colorbar:
        bar = ax.figure.colorbar(
            image, ax=ax, label=label, fraction=0.04, pad=0.02, shrink=0.8, anchor=(0.0, 1.0)
        )
        if legend:
            bar.ax.legend(*legend, loc="upper left", bbox_to_anchor=(-0.3, -0.03), borderaxespad=0, **kwargs)
    elif legend:
        ax.legend(*legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), **kwargs)


def _heatmap_figsize(table: pd.DataFrame) -> tuple[float, float]:
    return 8.0, 0.42 * len(table) + 1.6


def plot_rank_heatmap(
    table: pd.DataFrame,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    vmax: float | None = None,
    structural: pd.DataFrame | bool = True,
    colorbar: bool = True,
    legend: bool = True,
    ylabels: bool = True,
    label: str = "rank",
    cmap: str = "viridis",
) -> Axes:
    """Draw a layer x sublayer table (from ``rank_heatmap_data``) as an annotated heatmap.

    Cells with no module (NaN) are hatched grey, so they cannot be mistaken for rank 0. Structural cells
    get a black-and-white dotted outline (two patches with ``gid="structural"``), italic values and the
    legend entry ``no task gradient``: ``structural=True`` marks ``qformer_budget.plotting.figure_data.structural_cells(table)``,
    a bool DataFrame marks its True cells, False marks none. The colour bar is right of the heatmap,
    the legend (``no module``, ``no task gradient``) under the colour bar.
    The colour scale runs from 0 to ``vmax`` (default: the table's maximum); ``colorbar`` and ``legend``
    can be left out when the caller draws shared ones (see :func:`plot_heatmap_grid`).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=_heatmap_figsize(table))
    values = table.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    top = vmax if vmax is not None else (finite.max() if finite.size and finite.max() > 0 else 1)
    mask = _structural_mask(table, structural)
    image = _draw_cells(
        ax, table, cmap=cmap, norm=mcolors.Normalize(0, top), structural=mask, signed=False, ylabels=ylabels,
        fontsize=7,
    )
    handles, labels = _cell_legend_handles(bool((mask & np.isfinite(values)).any()))
    _colorbar_and_legend(ax, image, label, (handles, labels) if legend else None, colorbar)
    if title:
        ax.set_title(title)
    return ax


def plot_heatmap_grid(
    tables: dict[str, pd.DataFrame],
    *,
    vmax: float | None = None,
    ncols: int | None = None,
    title: str | None = None,
    structural: bool = True,
    label: str = "rank",
    cmap: str = "viridis",
) -> Figure:
    """Small multiples: one :func:`plot_rank_heatmap` panel per table (e.g. per benchmark), side by side.

    ``tables`` maps a panel title to a layer x sublayer table (``qformer_budget.plotting.figure_data.heatmap_tables``). All
    panels share one colour scale (0 to ``vmax``, default the largest value of any table), one colour bar
    and one legend. Returns the Figure; its heatmap Axes are ``figure.axes[:len(tables)]`` in the order of
    ``tables`` (the colour bar and block-label axes follow).
    """
    if not tables:
        raise ValueError("no tables to draw")
    names = list(tables)
    ncols = ncols or len(names)
    nrows = -(-len(names) // ncols)
    finite = [t.to_numpy(dtype=float) for t in tables.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in finite])
    top = vmax if vmax is not None else (finite.max() if finite.size and finite.max() > 0 else 1)
    n_layers = max(len(t) for t in tables.values())
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.9 * ncols + 1.4, (0.3 * n_layers + 1.7) * nrows + (0.5 if title else 0)),
        squeeze=False, layout="constrained",
    )
    any_structural = False
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_visible(False)
            continue
        table = tables[names[i]]
        mask = _structural_mask(table, structural)
        any_structural |= bool((mask & np.isfinite(table.to_numpy(dtype=float))).any())
        image = _draw_cells(
            ax, table, cmap=cmap, norm=mcolors.Normalize(0, top), structural=mask, signed=False,
            ylabels=i % ncols == 0, fontsize=6,
        )
        ax.set_title(names[i], fontsize=10)
    visible = [ax for ax in axes.flat[: len(names)]]
    fig.colorbar(image, ax=visible, label=label, fraction=0.04 / ncols * 2, pad=0.01, aspect=30)
    handles, labels = _cell_legend_handles(any_structural)
    fig.legend(
        handles, labels, handler_map={tuple: HandlerTuple(ndivide=1)}, loc="outside lower center",
        ncols=len(labels), fontsize=8, frameon=False,
    )
    if title:
        fig.suptitle(title)
    return fig


def plot_rank_difference(
    table: pd.DataFrame,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    vmax: float | None = None,
    structural: pd.DataFrame | bool = True,
    label: str = "rank difference",
    cmap: str = "RdBu_r",
) -> Axes:
    """Draw a layer x sublayer difference table (``rank_difference_data``) on a diverging scale centred at 0.

    The colour scale runs from ``-vmax`` to ``vmax`` (default: the largest absolute difference), 0 is white;
    positive values are red. Blocks are separated by dark lines (white ones would vanish near 0). Empty
    cells are hatched and structural cells outlined as in :func:`plot_rank_heatmap`; values are annotated
    with their sign.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=_heatmap_figsize(table))
    values = table.to_numpy(dtype=float)
    finite = np.abs(values[np.isfinite(values)])
    top = vmax if vmax is not None else (finite.max() if finite.size and finite.max() > 0 else 1)
    mask = _structural_mask(table, structural)
    image = _draw_cells(
        ax, table, cmap=cmap, norm=mcolors.Normalize(-top, top), structural=mask, signed=True, ylabels=True,
        fontsize=7, separator="0.25",
    )
    handles, labels = _cell_legend_handles(bool((mask & np.isfinite(values)).any()))
    _colorbar_and_legend(ax, image, label, (handles, labels), True)
    if title:
        ax.set_title(title)
    return ax
