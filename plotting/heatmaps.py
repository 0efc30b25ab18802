"""Layer x sublayer heatmaps: ranks or importance, side by side per benchmark, and differences.

seaborn's ``heatmap`` colours, masks and annotates the cells (cell centres at ``i + 0.5``); on top of it go
the hatched background of empty cells, the structural outlines, the block separators and names, the legend.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.patches import Patch, Rectangle

from qformer_budget.core.grammar import COMPONENT_TITLES

from .figure_data import structural_cells
from .style import EMPTY_CELL_COLOR, EMPTY_CELL_HATCH, EMPTY_LABEL, STRUCTURAL_LABEL


def _structural_mask(table: pd.DataFrame, structural: pd.DataFrame | bool) -> np.ndarray:
    """The structural cells of ``table`` as a bool array; a cell with no module (NaN) is never structural."""
    if structural is True:
        structural = structural_cells(table)
    if structural is False or structural is None:
        return np.zeros(table.shape, dtype=bool)
    mask = structural.reindex(index=table.index, columns=table.columns, fill_value=False).to_numpy(dtype=bool)
    return mask & table.notna().to_numpy()


def _scale_top(values: np.ndarray) -> float:
    """The end of a colour scale: the largest finite value, or 1 when there is none above 0."""
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


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


# Under the colour bar, the legend needs no room of its own (``bbox_inches="tight"``, layout engines alike).
_UNDER_COLORBAR = {"loc": "upper left", "bbox_to_anchor": (-0.3, -0.03), "borderaxespad": 0}


def _cell_legend(ax: Axes, any_structural: bool, placement: dict) -> None:
    """The cell legend (``no module``, ``no task gradient`` if any) on ``ax``, placed by ``placement``."""
    handles: list = [Patch(facecolor=EMPTY_CELL_COLOR, hatch=EMPTY_CELL_HATCH, edgecolor="0.6")]
    labels = [EMPTY_LABEL]
    if any_structural:
        handles.append(_structural_handle())
        labels.append(STRUCTURAL_LABEL)
    ax.legend(handles, labels, handler_map={tuple: HandlerTuple(ndivide=1)}, fontsize=7, frameon=False,
              **placement)


def _draw_cells(ax: Axes, table: pd.DataFrame, *, structural: np.ndarray, signed: bool, ylabels: bool,
                fontsize: float, separator: str = "white", **heatmap_kws) -> None:
    """The shared layer x sublayer drawing: ``sns.heatmap`` (``heatmap_kws``: scale, colour map, colour bar)
    over a hatched background, then the structural outlines, the tick labels and the blocks."""
    n_rows, n_cols = table.shape
    ax.add_patch(Rectangle((0, 0), n_cols, n_rows, facecolor=EMPTY_CELL_COLOR, hatch=EMPTY_CELL_HATCH,
                           edgecolor="0.6", linewidth=0, zorder=0))
    sns.heatmap(
        table, mask=table.isna(), annot=table.map(lambda value: _format_cell(value, signed)), fmt="",
        annot_kws={"fontsize": fontsize}, xticklabels=[str(c).split(".", 1)[-1] for c in table.columns],
        yticklabels=[f"L{int(layer):02d}" for layer in table.index] if ylabels else False, ax=ax,
        **heatmap_kws,
    )
    for text in ax.texts:  # seaborn writes each value at its cell's centre
        col, row = (int(coordinate) for coordinate in text.get_position())
        if structural[row, col]:
            text.set_style("italic")
    for row, col in zip(*np.nonzero(structural), strict=True):
        for outline in _structural_handle():
            ax.add_patch(Rectangle((col + 0.06, row + 0.06), 0.88, 0.88, facecolor="none", zorder=4,
                                   edgecolor=outline.get_edgecolor(), linewidth=outline.get_linewidth(),
                                   linestyle=outline.get_linestyle(), gid="structural"))
    plt.setp(ax.get_xticklabels(), rotation=60, ha="right", fontsize=8)
    plt.setp(ax.get_yticklabels(), rotation=0, fontsize=8)
    component = COMPONENT_TITLES.get(table.attrs.get("component", "qformer"), "Q-Former")
    ax.set(xlabel="", ylabel=f"{component} layer" if ylabels else "")
    blocks = [str(column).split(".", 1)[0] for column in table.columns]
    if len(set(blocks)) > 1 and all("." in str(column) for column in table.columns):
        starts = np.flatnonzero([i == 0 or blocks[i] != blocks[i - 1] for i in range(len(blocks))])
        edges = np.append(starts, len(blocks))
        for edge in edges[1:-1]:
            ax.axvline(edge, color=separator, linewidth=2 if separator == "white" else 1.2, zorder=2)
        blocks_axis = ax.secondary_xaxis("top")
        blocks_axis.set_xticks((edges[:-1] + edges[1:]) / 2, [blocks[i] for i in starts], fontsize=8,
                               fontweight="bold")
        blocks_axis.tick_params(length=0)
        blocks_axis.spines["top"].set_visible(False)


def _single_heatmap(table: pd.DataFrame, ax: Axes | None, *, structural: pd.DataFrame | bool,
                    title: str | None, colorbar: bool, legend: bool, label: str, **cells_kws) -> Axes:
    """One heatmap on ``ax`` (or a new figure) with its colour bar right of it and the legend under that."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8.0, 0.42 * len(table) + 1.6))
    mask = _structural_mask(table, structural)
    _draw_cells(
        ax, table, structural=mask, fontsize=7, cbar=colorbar,
        cbar_kws={"label": label, "fraction": 0.04, "pad": 0.02, "shrink": 0.8, "anchor": (0.0, 1.0)},
        **cells_kws,
    )
    if legend and colorbar:  # the colour bar of the mesh seaborn just drew
        _cell_legend(ax.collections[-1].colorbar.ax, bool(mask.any()), _UNDER_COLORBAR)
    elif legend:
        _cell_legend(ax, bool(mask.any()), {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)})
    if title:
        ax.set_title(title)
    return ax


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
    """Draw a layer x sublayer table (from ``rank_heatmap_data``) as an annotated ``sns.heatmap``.

    Cells with no module (NaN) are masked over a hatched grey background, so they cannot be mistaken for
    rank 0. Structural cells get a black-and-white dotted outline (two patches with ``gid="structural"``),
    italic values and the legend entry ``no task gradient``: ``structural=True`` marks
    ``qformer_budget.plotting.figure_data.structural_cells(table)``, a bool DataFrame marks its True cells,
    False marks none. The colour bar is right of the heatmap, the legend (``no module``, ``no task gradient``)
    under the colour bar. The colour scale runs from 0 to ``vmax`` (default: the table's maximum);
    ``colorbar`` and ``legend`` can be left out when the caller draws shared ones.
    """
    top = vmax if vmax is not None else _scale_top(table.to_numpy(dtype=float))
    return _single_heatmap(
        table, ax, structural=structural, title=title, colorbar=colorbar, legend=legend, label=label,
        vmin=0, vmax=top, cmap=cmap, signed=False, ylabels=ylabels,
    )


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
    """Small multiples: one heatmap panel per table (e.g. per benchmark) on a ``sns.FacetGrid``.

    ``tables`` maps a panel title to a layer x sublayer table
    (``qformer_budget.plotting.figure_data.heatmap_tables``); the panels show the rows and columns of all
    tables, in order of appearance, ``ncols`` per row. All panels share one colour scale (0 to ``vmax``,
    default the largest value of any table), one colour bar right of the first row with the legend under
    it, and only the first column names the layers. Returns the FacetGrid's Figure; its heatmap Axes are
    ``figure.axes`` in the order of ``tables``.
    """
    if not tables:
        raise ValueError("no tables to draw")
    names = list(tables)
    ncols = min(ncols or len(names), len(names))
    tidy = pd.concat(
        [
            pd.MultiIndex.from_product([table.index, table.columns], names=["layer", "sublayer"])
            .to_frame(index=False)
            .assign(panel=name, value=table.to_numpy(dtype=float).ravel(),
                    structural=_structural_mask(table, structural).ravel())
            for name, table in tables.items()
        ],
        ignore_index=True,
    )
    layers, sublayers = tidy["layer"].unique(), tidy["sublayer"].unique()
    top = vmax if vmax is not None else _scale_top(tidy["value"].to_numpy())
    height = 0.3 * len(layers) + 1.7
    grid = sns.FacetGrid(
        tidy, col="panel", col_order=names, col_wrap=ncols, height=height,
        aspect=(3.9 + 1.4 / ncols) / height, sharex=False, sharey=False,
    )
    # A child of the first row's last panel, so that FacetGrid's tight layout makes room for it.
    cbar_ax = grid.axes[ncols - 1].inset_axes((1.04, 0.2, 0.05, 0.8))

    def draw_panel(data: pd.DataFrame, color) -> None:  # FacetGrid passes a color: the colour map is used
        i = names.index(data["panel"].iloc[0])
        cells = data.pivot(index="layer", columns="sublayer", values="value")
        cells = cells.reindex(index=layers, columns=sublayers)
        mask = data.pivot(index="layer", columns="sublayer", values="structural")
        _draw_cells(
            plt.gca(), cells, structural=_structural_mask(cells, mask), signed=False, ylabels=i % ncols == 0,
            fontsize=6, vmin=0, vmax=top, cmap=cmap, cbar=i == 0, cbar_ax=cbar_ax, cbar_kws={"label": label},
        )

    grid.map_dataframe(draw_panel)
    grid.set_titles("{col_name}", size=10)
    _cell_legend(cbar_ax, bool(tidy["structural"].any()), _UNDER_COLORBAR)
    if title:
        grid.figure.suptitle(title)
    grid.tight_layout()
    return grid.figure


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
    top = vmax if vmax is not None else _scale_top(np.abs(table.to_numpy(dtype=float)))
    return _single_heatmap(
        table, ax, structural=structural, title=title, colorbar=True, legend=True, label=label,
        vmin=-top, vmax=top, cmap=cmap, signed=True, ylabels=True, separator="0.25",
    )
