"""The read side of qformer-budget: load records into tidy tables and compute metrics.

Nothing here imports torch, peft or matplotlib; figures are drawn by :mod:`qformer_budget.plotting`.
"""

from qformer_budget.core.run_folder import RecordError
from qformer_budget.core.schema import COLUMNS, RECORD_SCHEMA, SCHEMA_VERSION

from .load import STRING_COLUMNS, RecordWarning, find_runs, load_metrics, load_runs, read_run
from .metrics import (
    allocation_correlation,
    allocation_entropy,
    block_share,
    bootstrap_block_share,
    compare_benchmarks,
    last_recorded_step,
    layer_share,
    mark_structural,
    module_summary,
    normalized_importance,
    permutation_test,
    rank_retention,
    rank_trajectories,
    run_summary,
    seed_correlation,
    select_step,
    settle_step,
    to_xarray,
)
from .replay import rank_pattern_for_lora, replay_allocation

__all__ = [
    "COLUMNS",
    "RECORD_SCHEMA",
    "SCHEMA_VERSION",
    "STRING_COLUMNS",
    "RecordError",
    "RecordWarning",
    "allocation_correlation",
    "allocation_entropy",
    "block_share",
    "bootstrap_block_share",
    "compare_benchmarks",
    "find_runs",
    "last_recorded_step",
    "layer_share",
    "load_metrics",
    "load_runs",
    "mark_structural",
    "module_summary",
    "normalized_importance",
    "permutation_test",
    "rank_pattern_for_lora",
    "rank_retention",
    "rank_trajectories",
    "read_run",
    "replay_allocation",
    "run_summary",
    "seed_correlation",
    "select_step",
    "settle_step",
    "to_xarray",
]
