"""Figures of the budget records: pure figure data, the plot functions, and regenerating every figure.

A leaf: nothing else in qformer-budget imports it when it loads (the live-view sinks load it when they draw).
Modules: ``figure_data`` (tidy records in, tables out), ``style`` (colours and conventions), ``heatmaps``,
``training`` (trajectories, budget schedule), ``distributions`` (importance, block-share intervals), ``figures``;
``explorer`` and ``explorer_data``: the interactive plotly views (``explore``, ``qformer-budget report``).
"""

from .distributions import plot_block_share_ci, plot_importance
from .explorer import Explorer, explore, write_report
from .figures import regenerate_figures
from .heatmaps import plot_heatmap_grid, plot_rank_difference, plot_rank_heatmap
from .style import BLOCK_COLORS, STRUCTURAL_LABEL, block_color
from .training import plot_budget_schedule, plot_rank_trajectories

__all__ = [
    "BLOCK_COLORS",
    "STRUCTURAL_LABEL",
    "Explorer",
    "block_color",
    "explore",
    "plot_block_share_ci",
    "plot_budget_schedule",
    "plot_heatmap_grid",
    "plot_importance",
    "plot_rank_difference",
    "plot_rank_heatmap",
    "plot_rank_trajectories",
    "regenerate_figures",
    "write_report",
]
