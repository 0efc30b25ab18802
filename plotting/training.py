"""Over training: rank trajectories per block with the AdaLoRA phases, and the budget schedule."""

from __future__ import annotations

import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from qformer_budget.core.grammar import in_block_order

from .style import MASK_STEP_COLOR, PHASE_COLORS, block_color


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
