"""Over training (``sns.lineplot``): rank trajectories per block with the AdaLoRA phases, budget schedule."""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .style import MASK_STEP_COLOR, PHASE_COLORS, unit_levels, unit_of


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


def _start(data: pd.DataFrame, phases: pd.DataFrame | None, ax: Axes | None, what: str
           ) -> tuple[Axes, list[Patch]]:
    """Check that ``data`` holds one benchmark, make ``ax`` if needed and shade the benchmark's phases;
    returns ``ax`` and the phases' legend handles."""
    if "benchmark" in data.columns and data["benchmark"].nunique() > 1:
        raise ValueError(
            f"{what} draws one benchmark at a time; got {sorted(data['benchmark'].unique())} "
            "(filter the table first)"
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    benchmark = str(data["benchmark"].iloc[0]) if "benchmark" in data.columns and len(data) else None
    return ax, _shade_phases(ax, phases, benchmark)


def _lines(ax: Axes, data: pd.DataFrame, gid: str, label: str | None = None, **lineplot_kws) -> list[Line2D]:
    """``sns.lineplot`` of the rows as they are over ``step`` (no aggregation, no seaborn legend): the lines
    it drew, each tagged ``gid``, the first one carrying ``label`` for the legend."""
    if data.empty:  # nothing to draw (and no hue levels for seaborn to map)
        return []
    before = len(ax.lines)
    sns.lineplot(data=data, x="step", estimator=None, legend=False, ax=ax, **lineplot_kws)
    lines = ax.lines[before:]
    for line in lines:
        line.set_gid(gid)
    if lines and label:
        lines[0].set_label(label)
    return lines


def _step_axes(ax: Axes, data: pd.DataFrame, ylabel: str, title: str | None, handles: list) -> None:
    """Labels, limits (y from 0, x over the recorded steps), the legend right of ``ax`` and the title."""
    ax.set(xlabel="optimizer step", ylabel=ylabel)
    ax.set_ylim(bottom=0)
    if len(data) and data["step"].max() > data["step"].min():
        ax.set_xlim(data["step"].min(), data["step"].max())
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title)


def plot_rank_trajectories(
    data: pd.DataFrame,
    phases: pd.DataFrame | None = None,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    ylabel: str = "share of kept rank",
) -> Axes:
    """Per block (or component), ``value`` over steps (``qformer_budget.plotting.figure_data.trajectory_data``,
    one benchmark).

    ``sns.lineplot`` in the block's (component's) colour: each seed is a thin line (``gid="seed"``), the precomputed mean
    over seeds a thick line (``gid="mean"``, the legend entry); with one seed only its thick line is drawn.
    ``phases`` (``qformer_budget.plotting.figure_data.phase_spans``) shades warmup, budgeting and final.
    """
    ax, phase_handles = _start(data, phases, ax, "plot_rank_trajectories")
    unit = unit_of(data)
    blocks, palette = unit_levels(data, unit)
    by_block = {"y": "value", "hue": unit, "hue_order": blocks, "palette": palette}
    n_seeds = data.loc[data["line"] == "seed", "seed"].nunique()
    if n_seeds > 1:  # with one seed its line is the mean
        _lines(ax, data[data["line"] == "seed"], "seed", units="seed", linewidth=0.8, alpha=0.55, zorder=2,
               **by_block)
    means = _lines(ax, data[data["line"] == "mean"], "mean", linewidth=2.4, zorder=3, **by_block)
    for line, block in zip(means, blocks, strict=True):  # seaborn draws the hue levels in order
        line.set_label(block)
    line_handles = [
        Line2D([], [], color="0.3", linewidth=0.8, alpha=0.55, label=f"each seed (n={n_seeds})"),
        Line2D([], [], color="0.3", linewidth=2.4, label="mean over seeds"),
    ] if n_seeds > 1 else [Line2D([], [], color="0.3", linewidth=2.4, label="1 seed")]
    _step_axes(ax, data, ylabel, title, [*means, *line_handles, *phase_handles])
    return ax


def plot_budget_schedule(
    data: pd.DataFrame,
    phases: pd.DataFrame | None = None,
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> Axes:
    """The recorded budget and the kept total rank over steps (``qformer_budget.plotting.figure_data.budget_schedule_data``).

    One benchmark, ``sns.lineplot`` per run: the budget is a thick grey line (``gid="budget"``), each run's
    kept total rank a thin black line (``gid="kept"``) with its mask steps marked (``gid="mask"``); ``phases``
    shades warmup, budgeting and final (``gid="phase:<phase>"``, boundaries ``gid="phase-boundary"``).
    """
    ax, phase_handles = _start(data, phases, ax, "plot_budget_schedule")
    n_runs = data["run"].nunique()
    _lines(ax, data, "budget", "budget (schedule)", y="budget", units="run", color="0.65", linewidth=4,
           solid_capstyle="butt", zorder=2)
    _lines(ax, data, "kept", f"kept total rank ({n_runs} run{'s' if n_runs != 1 else ''})", y="total_rank",
           units="run", color="black", linewidth=0.9, zorder=3)
    _lines(ax, data[data["mask_step"]], "mask", "mask step", y="total_rank", units="run", linestyle="none",
           marker="o", markersize=2.6, color=MASK_STEP_COLOR, markeredgecolor=MASK_STEP_COLOR, zorder=4)
    handles, _ = ax.get_legend_handles_labels()
    _step_axes(ax, data, "total rank (directions kept)", title, [*handles, *phase_handles])
    return ax
