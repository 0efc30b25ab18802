"""The read side of qformer-budget: load records into tidy tables, compute metrics, draw figures.

Nothing here imports torch or peft.
"""

from .load import STRING_COLUMNS, RecordError, RecordWarning, find_runs, load_metrics, load_runs, read_run
from .metrics import (
    allocation_correlation,
    allocation_entropy,
    block_share,
    bootstrap_block_share,
    compare_benchmarks,
    layer_share,
    mark_structural,
    module_summary,
    normalized_importance,
    permutation_test,
    rank_retention,
    rank_trajectories,
    run_summary,
    seed_correlation,
    settle_step,
    to_xarray,
)
from .replay import rank_pattern_for_lora, replay_allocation
from .schema import COLUMNS, RECORD_SCHEMA, SCHEMA_VERSION
from .figures import regenerate_figures
from .tables import (
    SUBLAYER_COLUMNS,
    block_share_ci_data,
    budget_schedule_data,
    heatmap_tables,
    importance_data,
    last_recorded_step,
    phase_spans,
    rank_difference_data,
    rank_heatmap_data,
    structural_cells,
    trajectory_data,
)


def __getattr__(name: str):
    """``write_synthetic_runs`` is imported on first use: only tests and benchmarks need it, and
    ``python -m analysis.synthetic_records`` must not find it imported already."""
    if name == "write_synthetic_runs":
        from .synthetic_records import write_synthetic_runs

        return write_synthetic_runs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "block_share_ci_data",
    "budget_schedule_data",
    "heatmap_tables",
    "importance_data",
    "phase_spans",
    "rank_difference_data",
    "regenerate_figures",
    "structural_cells",
    "trajectory_data",
    "allocation_correlation",
    "allocation_entropy",
    "block_share",
    "bootstrap_block_share",
    "compare_benchmarks",
    "layer_share",
    "mark_structural",
    "module_summary",
    "normalized_importance",
    "permutation_test",
    "rank_pattern_for_lora",
    "rank_retention",
    "rank_trajectories",
    "replay_allocation",
    "run_summary",
    "seed_correlation",
    "settle_step",
    "to_xarray",
    "COLUMNS",
    "RECORD_SCHEMA",
    "RecordError",
    "RecordWarning",
    "SCHEMA_VERSION",
    "STRING_COLUMNS",
    "SUBLAYER_COLUMNS",
    "find_runs",
    "last_recorded_step",
    "load_metrics",
    "load_runs",
    "rank_heatmap_data",
    "read_run",
    "write_synthetic_runs",
]
