"""The training side of qformer-budget: AdaLoRA setup, the budget recorder, the Trainer callback, the sinks.

It imports the core (grammar, schema, run-folder format, AdaLoRA rules) and never the read side;
matplotlib is loaded only when a live-view sink draws a heatmap.
"""

from qformer_budget.core.grammar import (
    BLOCK_PROJS,
    BLOCKS,
    COMPONENT_PLACEMENTS,
    COMPONENTS,
    PLACEMENTS,
    ModulePosition,
    Sublayer,
    parse_module,
    parse_sublayer,
    placement_regexes,
    qformer_sublayers,
    resolve_placement,
    sublayer_label,
    target_modules_regex,
)
from qformer_budget.core.records import ModuleInfo, StepRecord

from .adapter_io import load_adapter, save_adapter
from .callback import AdaLoraBudgetCallback
from .config import AdaLoraSetup, TrainingPlan
from .fast_allocator import FastRankAllocator, use_fast_allocator
from .live import LiveViewSink
from .model import AdaLoraPeftModel, add_adalora, find_adalora_model
from .recorder import BudgetRecorder, is_main_process, triplet_scores
from .sinks import ParquetSink, RecordSink
from .tensorboard import TensorBoardSink
from .tracking import MlflowSink, WandbSink

__all__ = [
    "BLOCKS",
    "BLOCK_PROJS",
    "COMPONENTS",
    "COMPONENT_PLACEMENTS",
    "PLACEMENTS",
    "AdaLoraBudgetCallback",
    "AdaLoraPeftModel",
    "AdaLoraSetup",
    "BudgetRecorder",
    "FastRankAllocator",
    "LiveViewSink",
    "MlflowSink",
    "ModuleInfo",
    "ModulePosition",
    "ParquetSink",
    "RecordSink",
    "StepRecord",
    "Sublayer",
    "TensorBoardSink",
    "TrainingPlan",
    "WandbSink",
    "add_adalora",
    "find_adalora_model",
    "is_main_process",
    "load_adapter",
    "parse_module",
    "parse_sublayer",
    "placement_regexes",
    "qformer_sublayers",
    "resolve_placement",
    "save_adapter",
    "sublayer_label",
    "target_modules_regex",
    "triplet_scores",
    "use_fast_allocator",
]
