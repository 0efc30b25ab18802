"""Plots: each takes data prepared by ``qformer_budget.plotting.figure_data`` and ``ax=None`` and returns the Axes it drew on.

``plot_heatmap_grid`` draws several Axes and returns its Figure instead. Conventions shared by every plot:

- one colour per block, :data:`BLOCK_COLORS` (Okabe-Ito, colour-blind safe), in the grammar's block order;
- labels are the naming grammar's (``self_attn``, ``L03``, ``cross_attn.value``);
- a layer x sublayer cell with no module (NaN: odd layers' cross-attention) is hatched grey, never a colour
  that could read as 0;
- structural cells (the last layer's text FFN, which gets no task gradient) get a black-and-white dotted
  outline and the legend entry ``structural zero``: their values are architecture, not findings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.cbook import boxplot_stats
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from qformer_budget.core.grammar import BLOCK_PROJS, BLOCKS, in_block_order

from .figure_data import structural_cells

# One colour per block, defined once and used by every figure.
BLOCK_COLORS: dict[str, str] = dict(zip(BLOCKS, ("#0072B2", "#E69F00", "#009E73", "#CC79A7"), strict=True))
OTHER_BLOCK_COLOR = "0.5"  # a block outside the grammar (should not happen)
PHASE_COLORS: dict[str, str] = {"warmup": "#ececec", "budgeting": "#ffffff", "final": "#d9d9d9"}
MASK_STEP_COLOR = "#D55E00"

EMPTY_CELL_HATCH = "////"
EMPTY_CELL_COLOR = "0.85"
STRUCTURAL_LABEL = "structural zero"
EMPTY_LABEL = "no module"


def block_color(block: str) -> str:
    """The colour of ``block`` in every figure."""
    return BLOCK_COLORS.get(block, OTHER_BLOCK_COLOR)


# --- layer x sublayer tables ---


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
    legend entry ``structural zero``: ``structural=True`` marks ``qformer_budget.plotting.figure_data.structural_cells(table)``,
    a bool DataFrame marks its True cells, False marks none. The colour bar is right of the heatmap,
    the legend (``no module``, ``structural zero``) under the colour bar.
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


# --- over training steps ---


def _one_benchmark(data: pd.DataFrame, what: str) -> None:
    if "benchmark" in data.columns and data["benchmark"].nunique() > 1:
        raise ValueError(
            f"{what} draws one benchmark at a time; got {sorted(data['benchmark'].unique())} "
            "(filter the table first)"
        )


def _shade_phases(ax: Axes, phases: pd.DataFrame | None, benchmark: str | None) -> list[Patch]:
    """Shade the phase spans (``qformer_budget.plotting.figure_data.phase_spans``); returns one legend handle per phase."""
    if phases is None or phases.empty:
        return []
    if benchmark is not None and "benchmark" in phases.columns:
        phases = phases[phases["benchmark"] == benchmark]
    handles = []
    for phase, start, end in zip(phases["phase"], phases["start"], phases["end"], strict=True):
        color = PHASE_COLORS.get(phase, "#f5f5f5")
        ax.axvspan(start, end, facecolor=color, edgecolor="none", zorder=0, gid=f"phase:{phase}")
        handles.append(Patch(facecolor=color, edgecolor="0.6", linewidth=0.6, label=f"{phase} phase"))
    for start in phases["start"].iloc[1:]:
        ax.axvline(start, color="0.6", linewidth=0.6, linestyle="--", zorder=0.5, gid="phase-boundary")
    return handles


def plot_rank_trajectories(
    data: pd.DataFrame,
    phases: pd.DataFrame | None = None,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    ylabel: str = "share of kept rank",
) -> Axes:
    """Per block, ``value`` over steps (``qformer_budget.plotting.figure_data.trajectory_data``, one benchmark).

    Each seed is a thin line (``gid="seed"``), the mean over seeds a thick line (``gid="mean"``, the legend
    entry) in the block's colour; with one seed only its thick line is drawn.
    ``phases`` (``qformer_budget.plotting.figure_data.phase_spans``) shades warmup, budgeting and final.
    """
    _one_benchmark(data, "plot_rank_trajectories")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    benchmark = str(data["benchmark"].iloc[0]) if "benchmark" in data.columns and len(data) else None
    phase_handles = _shade_phases(ax, phases, benchmark)
    block_handles = []
    n_seeds = data.loc[data["line"] == "seed", "seed"].nunique()
    for block in in_block_order(data["block"]):
        rows = data[data["block"] == block]
        color = block_color(block)
        if n_seeds > 1:  # with one seed its line is the mean
            for _, seed_rows in rows[rows["line"] == "seed"].groupby("seed", sort=True):
                ax.plot(seed_rows["step"], seed_rows["value"], color=color, linewidth=0.8, alpha=0.55,
                        zorder=2, gid="seed")
        mean = rows[rows["line"] == "mean"]
        (line,) = ax.plot(mean["step"], mean["value"], color=color, linewidth=2.4, zorder=3, label=block,
                          gid="mean")
        block_handles.append(line)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    if len(data) and data["step"].max() > data["step"].min():
        ax.set_xlim(data["step"].min(), data["step"].max())
    line_handles = [
        Line2D([], [], color="0.3", linewidth=0.8, alpha=0.55, label=f"each seed (n={n_seeds})"),
        Line2D([], [], color="0.3", linewidth=2.4, label="mean over seeds"),
    ] if n_seeds > 1 else [Line2D([], [], color="0.3", linewidth=2.4, label="1 seed")]
    ax.legend(
        handles=[*block_handles, *line_handles, *phase_handles], loc="upper left",
        bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
    )
    if title:
        ax.set_title(title)
    return ax


def plot_budget_schedule(
    data: pd.DataFrame,
    phases: pd.DataFrame | None = None,
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> Axes:
    """The recorded budget and the kept total rank over steps (``qformer_budget.plotting.figure_data.budget_schedule_data``).

    One benchmark: the budget is a thick grey line (``gid="budget"``), each run's kept total rank a thin black
    line (``gid="kept"``) with its mask steps marked (``gid="mask"``); ``phases`` shades warmup, budgeting and
    final (``gid="phase:<phase>"``, boundaries ``gid="phase-boundary"``).
    """
    _one_benchmark(data, "plot_budget_schedule")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    benchmark = str(data["benchmark"].iloc[0]) if "benchmark" in data.columns and len(data) else None
    phase_handles = _shade_phases(ax, phases, benchmark)
    runs = list(data.groupby("run", sort=True))
    for i, (_, rows) in enumerate(runs):
        first = i == 0
        ax.plot(rows["step"], rows["budget"], color="0.65", linewidth=4, solid_capstyle="butt", zorder=2,
                label="budget (schedule)" if first else None, gid="budget")
    for i, (_, rows) in enumerate(runs):
        first = i == 0
        ax.plot(rows["step"], rows["total_rank"], color="black", linewidth=0.9, zorder=3,
                label=f"kept total rank ({len(runs)} run{'s' if len(runs) != 1 else ''})" if first else None,
                gid="kept")
        masked = rows[rows["mask_step"]]
        ax.plot(masked["step"], masked["total_rank"], linestyle="none", marker="o", markersize=2.6,
                color=MASK_STEP_COLOR, zorder=4, label="mask step" if first else None, gid="mask")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("total rank (directions kept)")
    ax.set_ylim(bottom=0)
    if len(data) and data["step"].max() > data["step"].min():
        ax.set_xlim(data["step"].min(), data["step"].max())
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, *phase_handles], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    if title:
        ax.set_title(title)
    return ax


# --- importance and block shares ---


def plot_importance(
    data: pd.DataFrame, ax: Axes | None = None, *, title: str | None = None, jitter_seed: int = 0
) -> Axes:
    """Distributions of module importance scores per block, on a log y axis (``tables.importance_data``).

    Each box is one block of one benchmark (quartiles and 1.5 IQR whiskers of ``log10_score``), each point
    one module of one seed (deterministic jitter from ``jitter_seed``). Structural modules are drawn beside
    their box as black crosses (``structural zero``) and left out of the boxes; scores <= 0 cannot sit on a
    log axis and are counted in a note. With several benchmarks, each block holds one box per benchmark
    (benchmarks on the x ticks, blocks above).
    """
    if ax is None:
        n_boxes = data["block"].nunique() * max(data["benchmark"].nunique(), 1)
        _, ax = plt.subplots(figsize=(max(5.0, 0.55 * n_boxes + 2.5), 4.2))
    rng = np.random.default_rng(jitter_seed)
    benchmarks = sorted(data["benchmark"].unique())
    blocks = in_block_order(data["block"])
    width = len(benchmarks) + 1
    positions, tick_labels, stats, box_colors = [], [], [], []
    structural_x, structural_y = [], []
    for i, block in enumerate(blocks):
        for j, benchmark in enumerate(benchmarks):
            pos = i * width + j
            rows = data[(data["block"] == block) & (data["benchmark"] == benchmark)]
            normal = rows[~rows["structural"]]
            logs = normal["log10_score"].dropna().to_numpy(dtype=float)
            if logs.size:
                (stat,) = boxplot_stats(logs)
                for key in ("med", "q1", "q3", "whislo", "whishi", "mean"):
                    stat[key] = 10.0 ** stat[key]
                stat["fliers"] = []
                stats.append(stat)
                positions.append(pos)
                box_colors.append(block_color(block))
                offsets = rng.uniform(-0.22, 0.22, size=logs.size)
                ax.scatter(pos + offsets, 10.0**logs, s=6, color=block_color(block), edgecolors="none",
                           alpha=0.6, zorder=3, gid="modules")
            special = rows[rows["structural"]]["log10_score"].dropna().to_numpy(dtype=float)
            structural_x += [pos + 0.4] * special.size  # beside the box, not in it
            structural_y += list(10.0**special)
            tick_labels.append((pos, benchmark))
    if stats:
        boxes = ax.bxp(stats, positions=positions, widths=0.56, patch_artist=True, showfliers=False,
                       manage_ticks=False, medianprops={"color": "black", "linewidth": 1.4})
        for patch, color in zip(boxes["boxes"], box_colors, strict=True):
            patch.set_facecolor(mcolors.to_rgba(color, 0.35))
            patch.set_edgecolor(color)
    if structural_x:
        ax.scatter(structural_x, structural_y, marker="x", s=18, color="black", linewidths=0.9, zorder=4,
                   label=STRUCTURAL_LABEL, gid="structural")
    ax.set_yscale("log")
    if len(benchmarks) > 1:
        ax.set_xticks([p for p, _ in tick_labels], [b for _, b in tick_labels], rotation=60, ha="right",
                      fontsize=8)
        blocks_axis = ax.secondary_xaxis("top")
        blocks_axis.set_xticks([i * width + (len(benchmarks) - 1) / 2 for i in range(len(blocks))], blocks,
                               fontsize=8, fontweight="bold")
        blocks_axis.tick_params(length=0)
        for i in range(1, len(blocks)):
            ax.axvline(i * width - 1, color="0.85", linewidth=0.8, zorder=0)
    else:
        ax.set_xticks([i * width for i in range(len(blocks))], blocks, fontsize=9)
    ax.set_xlim(-0.8, (len(blocks) - 1) * width + len(benchmarks) - 0.2)
    ax.set_ylabel("module importance score (log scale)")
    nonpositive = int((data["score"] <= 0).sum())
    if nonpositive:
        ax.text(0.01, 0.01, f"{nonpositive} score(s) <= 0 not shown", transform=ax.transAxes, fontsize=7,
                va="bottom")
    if structural_x:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return ax


def plot_block_share_ci(
    data: pd.DataFrame,
    seed_shares: pd.DataFrame | None = None,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Grouped bars of mean block share per benchmark with their confidence intervals.

    ``data`` is ``qformer_budget.plotting.figure_data.block_share_ci_data`` (``benchmark, block, mean, ci_low, ci_high``):
    one group of bars per benchmark, one bar per block in the block's colour, an error bar from
    ``ci_low`` to ``ci_high`` where the interval is defined (2+ seeds). ``seed_shares``
    (``analysis.block_share`` at the final step) adds each seed's share as a dot.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 1.5 * data["benchmark"].nunique() + 2.5), 4))
    benchmarks = sorted(data["benchmark"].unique())
    blocks = in_block_order(data["block"])
    bar = 0.8 / max(len(blocks), 1)
    for k, block in enumerate(blocks):
        rows = data[data["block"] == block].set_index("benchmark").reindex(benchmarks)
        x = np.arange(len(benchmarks)) + (k - (len(blocks) - 1) / 2) * bar
        mean = rows["mean"].to_numpy(dtype=float)
        ax.bar(x, mean, width=bar * 0.92, color=block_color(block), label=block, zorder=2)
        low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
        has_ci = np.isfinite(low) & np.isfinite(high)
        if has_ci.any():
            yerr = [mean[has_ci] - low[has_ci], high[has_ci] - mean[has_ci]]
            ax.errorbar(x[has_ci], mean[has_ci], yerr=yerr, fmt="none", ecolor="black", elinewidth=1.0,
                        capsize=2.5, zorder=3)
        if seed_shares is not None:
            seeds = seed_shares[seed_shares["block"] == block]
            where = {b: i for i, b in enumerate(benchmarks)}
            seeds = seeds[seeds["benchmark"].isin(where)]
            seed_x = seeds["benchmark"].map(where).to_numpy(dtype=float) + (k - (len(blocks) - 1) / 2) * bar
            ax.scatter(seed_x, seeds["share"], s=9, color="white", edgecolors="black", linewidths=0.6,
                       zorder=4, gid="seeds")
    handles, _ = ax.get_legend_handles_labels()
    if (data[["ci_low", "ci_high"]].notna().all(axis=1)).any():
        level = f"{data['confidence'].iloc[0]:.0%} " if "confidence" in data.columns else ""
        handles.append(Line2D([], [], color="black", linewidth=1.0, marker="_", markersize=6,
                              label=f"{level}seed-bootstrap CI"))
    if seed_shares is not None:
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=3.5, markerfacecolor="white",
                              markeredgecolor="black", label="each seed"))
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    ax.set_ylabel(ylabel or "share of kept rank")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", color="0.9", zorder=0)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return ax
