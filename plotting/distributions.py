"""Distributions: module importance on a log scale, and block shares with their seed-bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.cbook import boxplot_stats
from matplotlib.lines import Line2D

from qformer_budget.core.grammar import in_block_order

from .style import STRUCTURAL_LABEL, block_color


def plot_importance(
    data: pd.DataFrame, ax: Axes | None = None, *, title: str | None = None, jitter_seed: int = 0
) -> Axes:
    """Distributions of module importance scores per block, on a log y axis (``tables.importance_data``).

    Each box is one block of one benchmark (quartiles and 1.5 IQR whiskers of ``log10_score``), each point
    one module of one seed (deterministic jitter from ``jitter_seed``). Structural modules are drawn beside
    their box as black crosses (``no task gradient``) and left out of the boxes; scores <= 0 cannot sit on a
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
