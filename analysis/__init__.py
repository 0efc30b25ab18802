"""The read side of qformer-budget: load records into tidy tables, compute metrics, draw figures.

Nothing here imports torch or peft.
"""

from .load import RecordError, find_runs, load_metrics, load_runs, read_run
from .schema import COLUMNS, RECORD_SCHEMA, SCHEMA_VERSION
from .tables import SUBLAYER_COLUMNS, last_recorded_step, rank_heatmap_data

__all__ = [
    "COLUMNS",
    "RECORD_SCHEMA",
    "RecordError",
    "SCHEMA_VERSION",
    "SUBLAYER_COLUMNS",
    "find_runs",
    "last_recorded_step",
    "load_metrics",
    "load_runs",
    "rank_heatmap_data",
    "read_run",
]
