"""The read side of qformer-budget: load records into tidy tables and compute metrics.

Modules: ``load`` (records into pandas), ``selection`` (one step per run, structural zeros; the conventions
of every metric), ``shares`` (the budget per component, block, layer, module), ``importance`` (scores, concentration,
correlation), ``statistics`` (over seeds), ``summaries`` (per run and module, xarray), ``replay`` (AdaLoRA's
masks recomputed).

Nothing here imports torch, peft or matplotlib; figures are drawn by :mod:`qformer_budget.plotting`.
"""

from qformer_budget.core.run_folder import RecordError
from qformer_budget.core.schema import COLUMNS, RECORD_SCHEMA, SCHEMA_VERSION

from .importance import allocation_correlation, allocation_entropy, normalized_importance, seed_correlation
from .load import STRING_COLUMNS, RecordWarning, find_runs, load_metrics, load_runs, read_run
from .replay import rank_pattern_for_lora, replay_allocation
from .selection import last_recorded_step, last_scored_step, mark_structural, select_step
from .shares import (
    NORMALIZATIONS,
    block_share,
    component_share,
    layer_share,
    rank_retention,
    rank_trajectories,
    settle_step,
)
from .statistics import bootstrap_block_share, compare_benchmarks, permutation_test
from .summaries import module_summary, run_summary, to_xarray

__all__ = [
    "COLUMNS",
    "NORMALIZATIONS",
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
    "component_share",
    "find_runs",
    "last_recorded_step",
    "last_scored_step",
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
