"""Distributions: module importance on a log scale, and block shares with their seed-bootstrap intervals."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, PathPatch

from .style import STRUCTURAL_LABEL, unit_levels, unit_of


def _by_block(data: pd.DataFrame) -> dict:
    """The grouping of every plot here: benchmarks on x (sorted), one dodged slot per block (or component) in
    its colour."""
    unit = unit_of(data)
    blocks, palette = unit_levels(data, unit)
    return {"x": "benchmark", "order": sorted(data["benchmark"].unique()), "hue": unit, "hue_order": blocks,
            "palette": palette}


def _strips(ax: Axes, data: pd.DataFrame, gid: str, **stripplot_kws) -> list[PathCollection]:
    """``sns.stripplot`` without jitter, dodged like the boxes and bars; its collections, tagged ``gid``. Even
    without jitter, seaborn draws (zeros) from numpy's global random generator: its state is restored."""
    before = len(ax.collections)
    state = np.random.get_state()
    try:
        sns.stripplot(data=data, dodge=True, jitter=False, legend=False, ax=ax, **stripplot_kws)
    finally:
        np.random.set_state(state)
    strips = ax.collections[before:]
    for strip in strips:
        strip.set_gid(gid)
    return strips


def _box_style(color) -> dict:
    """A box of ``color``: a light fill and an edge in the colour (the points on it stay visible)."""
    return {"facecolor": mcolors.to_rgba(color, 0.35), "edgecolor": color}


def plot_importance(
    data: pd.DataFrame, ax: Axes | None = None, *, title: str | None = None, jitter_seed: int = 0
) -> Axes:
    """Distributions of module importance scores per benchmark and block, log y axis (``importance_data``).

    One group per benchmark (as in the block-share bars), one ``sns.boxplot`` box per block in its colour
    (quartiles and 1.5 IQR whiskers of the log scores), each point one module of one seed (``sns.stripplot``,
    ``gid="modules"``, with a jitter drawn from ``jitter_seed``, so reruns are identical and numpy's global
    generator is left alone). Structural modules are drawn beside their box as black crosses
    (``gid="structural"``, ``no task gradient``) and left out of the boxes; scores <= 0 cannot sit on a log
    axis and are counted in a note.
    """
    grouping = _by_block(data)
    n_slots = len(grouping["order"]) * len(grouping["hue_order"])
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 0.55 * n_slots + 2.5), 4.2))
    on_log_axis = data[data["log10_score"].notna()]
    normal, structural = on_log_axis[~on_log_axis["structural"]], on_log_axis[on_log_axis["structural"]]
    slot = 0.8 / max(len(grouping["hue_order"]), 1)  # seaborn's dodge: 0.8 per benchmark, split per block
    with warnings.catch_warnings():
        # seaborn 0.13.2 passes matplotlib's deprecated vert= to bxp (seaborn issue 3804, fixed by its PR 3820,
        # not yet released); the boxes are the same.
        warnings.filterwarnings("ignore", message="vert: bool was deprecated", category=DeprecationWarning)
        sns.boxplot(data=normal, y="score", log_scale=True, saturation=1, gap=0.3, showfliers=False,
                    linecolor="black", medianprops={"linewidth": 1.4}, legend=False, ax=ax, **grouping)
    for box in (p for p in ax.patches if isinstance(p, PathPatch)):
        box.set(**_box_style(box.get_facecolor()))
    rng = np.random.default_rng(jitter_seed)
    for strip in _strips(ax, normal, "modules", y="score", size=6**0.5, alpha=0.6, zorder=3, **grouping):
        offsets = strip.get_offsets()
        offsets[:, 0] += rng.uniform(-0.3 * slot, 0.3 * slot, size=len(offsets))
        strip.set_offsets(offsets)
    handles = [Patch(**_box_style(color), label=block) for block, color in grouping["palette"].items()]
    if len(structural):
        black = dict(grouping, palette=dict.fromkeys(grouping["hue_order"], "black"))
        crosses = _strips(ax, structural, "structural", y="score", marker="x", size=18**0.5, linewidth=0.9,
                          zorder=4, **black)
        for strip in crosses:
            strip.set_offsets(strip.get_offsets() + np.array([0.5 * slot, 0]))  # beside the box, in the gap
        handles.append(next(strip for strip in crosses if len(strip.get_offsets())))
        handles[-1].set_label(STRUCTURAL_LABEL)
    ax.set(xlabel="", ylabel="module importance score (log scale)")
    nonpositive = int((data["score"] <= 0).sum())
    if nonpositive:
        ax.text(0.01, 0.01, f"{nonpositive} score(s) <= 0 not shown", transform=ax.transAxes, fontsize=7,
                va="bottom")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
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
    """Grouped bars (``sns.barplot``) of mean block share per benchmark with their confidence intervals.

    ``data`` is ``qformer_budget.plotting.figure_data.block_share_ci_data``
    (``benchmark, block, mean, ci_low, ci_high``; ``component`` in place of ``block`` for component shares):
    one group of bars per benchmark, one bar per block in the block's colour, an error bar from the table's ``ci_low`` to ``ci_high`` where the interval is defined
    (2+ seeds; seaborn computes no interval of its own). ``seed_shares`` (``analysis.block_share`` at the
    final step) adds each seed's share as a dot (``sns.stripplot``, ``gid="seeds"``).
    """
    grouping = _by_block(data)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(grouping["order"]) + 2.5), 4))
    sns.barplot(data=data, y="mean", errorbar=None, saturation=1, gap=0.08, legend=False, zorder=2, ax=ax,
                **grouping)
    table = data.set_index(["benchmark", grouping["hue"]])
    for block, bars in zip(grouping["hue_order"], list(ax.containers), strict=True):  # one per block
        bars.set_label(block)
        x = np.array([bar.get_x() + bar.get_width() / 2 for bar in bars])
        rows = table.reindex([(grouping["order"][round(centre)], block) for centre in x])
        mean, low, high = (rows[column].to_numpy(dtype=float) for column in ("mean", "ci_low", "ci_high"))
        has_ci = np.isfinite(low) & np.isfinite(high)
        if has_ci.any():
            yerr = [mean[has_ci] - low[has_ci], high[has_ci] - mean[has_ci]]
            ax.errorbar(x[has_ci], mean[has_ci], yerr=yerr, fmt="none", ecolor="black", elinewidth=1.0,
                        capsize=2.5, zorder=3)
    handles, _ = ax.get_legend_handles_labels()
    if (data[["ci_low", "ci_high"]].notna().all(axis=1)).any():
        level = f"{data['confidence'].iloc[0]:.0%} " if "confidence" in data.columns else ""
        handles.append(Line2D([], [], color="black", linewidth=1.0, marker="_", markersize=6,
                              label=f"{level}seed-bootstrap CI"))
    if seed_shares is not None:
        seeds = seed_shares[seed_shares["benchmark"].isin(grouping["order"])]
        white = dict(grouping, palette=dict.fromkeys(grouping["hue_order"], "white"))
        _strips(ax, seeds, "seeds", y="share", size=3, edgecolor="black", linewidth=0.6, zorder=4, **white)
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=3.5, markerfacecolor="white",
                              markeredgecolor="black", label="each seed"))
    ax.set(xlabel="", ylabel=ylabel or "share of kept rank")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", color="0.9", zorder=0)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if title:
        ax.set_title(title)
    return ax
