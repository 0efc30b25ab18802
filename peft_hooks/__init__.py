"""The training side of qformer-budget: Q-Former sublayer taxonomy, AdaLoRA setup, budget recorder, sinks.

Names are imported on first use, so that ``peft_hooks.taxonomy`` (pure Python) can be used by
``analysis`` without importing torch or peft.
"""

from importlib import import_module

_EXPORTS = {
    "AdaLoraBudgetCallback": "callback",
    "AdaLoraPeftModel": "setup",
    "AdaLoraSetup": "setup",
    "TrainingPlan": "setup",
    "add_adalora": "setup",
    "find_adalora_model": "setup",
    "save_adapter": "setup",
    "load_adapter": "setup",
    "FastRankAllocator": "fast_allocator",
    "use_fast_allocator": "fast_allocator",
    "BudgetRecorder": "recorder",
    "is_main_process": "recorder",
    "triplet_scores": "recorder",
    "ModuleInfo": "records",
    "StepRecord": "records",
    "ParquetSink": "sinks",
    "RecordSink": "sinks",
    "LiveViewSink": "live",
    "TensorBoardSink": "tensorboard",
    "WandbSink": "tracking",
    "MlflowSink": "tracking",
    "BLOCKS": "taxonomy",
    "BLOCK_PROJS": "taxonomy",
    "PLACEMENTS": "taxonomy",
    "Sublayer": "taxonomy",
    "parse_sublayer": "taxonomy",
    "qformer_sublayers": "taxonomy",
    "resolve_placement": "taxonomy",
    "sublayer_label": "taxonomy",
    "target_modules_regex": "taxonomy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
