"""Hand-made run folders for reader and analysis tests: written by the real sink, no training."""

from __future__ import annotations

import numpy as np

from qformer_budget.core.records import ModuleInfo, StepRecord
from qformer_budget.core.schema import SCHEMA_VERSION
from qformer_budget.peft_hooks.sinks import ParquetSink

# A two-layer Q-Former slice for hand-computed metrics, as (layer, block, proj, in_features, out_features):
# attention 8 -> 8, FFN intermediate 8 -> 32. Layer 1 is the deepest, so its text FFN is the structural
# zero, and it has no cross-attention.
SMALL_QFORMER = [
    (0, "self_attn", "query", 8, 8),
    (0, "cross_attn", "query", 8, 8),
    (0, "ffn_query", "intermediate", 8, 32),
    (0, "ffn_text", "intermediate", 8, 32),
    (1, "self_attn", "query", 8, 8),
    (1, "ffn_query", "intermediate", 8, 32),
    (1, "ffn_text", "intermediate", 8, 32),
]


def fake_modules(layers: int = 2) -> tuple[ModuleInfo, ...]:
    names = []
    for layer in range(layers):
        prefix = f"qformer.encoder.layer.{layer}."
        names += [prefix + f"attention.attention.{p}" for p in ("query", "key", "value")] + [prefix + "attention.output.dense"]
        if layer % 2 == 0:
            names += [prefix + f"crossattention.attention.{p}" for p in ("query", "key", "value")]
            names += [prefix + "crossattention.output.dense"]
        names += [prefix + "intermediate_query.dense", prefix + "output_query.dense"]
        names += [prefix + "intermediate.dense", prefix + "output.dense"]
    return tuple(ModuleInfo(n, 8, 8) for n in names)


def fake_record(global_step: int, kept: np.ndarray, benchmark="bench", seed=0, modules=None, scores=None) -> StepRecord:
    modules = modules or fake_modules()
    init_r = kept.shape[1]
    return StepRecord(
        benchmark=benchmark, seed=seed, global_step=global_step, phase="budgeting", mask_step=True,
        budget=int(kept.sum()), threshold=0.5, init_r=init_r, modules=modules, direction_kept=kept,
        direction_scores=scores if scores is not None else np.ones(kept.shape, dtype=np.float32),
    )


def write_fake_run(run_dir, records: list[StepRecord], close: bool = True) -> None:
    sink = ParquetSink(run_dir)
    sink.start({"schema_version": SCHEMA_VERSION, "benchmark": records[0].benchmark, "seed": records[0].seed})
    for record in records:
        sink.write(record)
    if close:
        sink.close("finished")
