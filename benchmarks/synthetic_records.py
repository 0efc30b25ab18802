"""Realistic synthetic record sets: run folders as the recorder writes them, without any training.

For testing and timing the read side at the scale of a real study (4 benchmarks x 5 seeds x 20,000
steps x 120 modules). Every run is a finished run folder (``run.json`` + ``records.parquet`` in
``qformer_budget.core.schema.RECORD_SCHEMA``) that :func:`analysis.load_runs` reads like a recorded one:

- the 120 Linear layers of InstructBLIP's Q-Former (transformers names, model order, real widths:
  768 hidden, 3072 FFN, 1408-wide image features into the cross-attention key and value);
- peft's cubic budget schedule (``RankAllocator.budget_schedule``) and the recorder's rule for which
  steps are recorded (every ``record_every`` steps, every mask step, the final mask step, the last step);
- per-direction triplet scores drawn log-normal, with means that depend on the block and the benchmark
  and a slow AR(1) drift over steps; the last layer's text FFN scores exactly 0 (the structural zero);
- at each mask step peft's rule: threshold = k-th smallest score with ``k = init_bgt - budget``, keep the
  directions scoring above it; kept directions hold until the next mask and are frozen after the final
  mask step, where the scores become null (peft clears them).

    python -m qformer_budget.benchmarks.synthetic_records OUT [--benchmarks scienceqa iconqa] [--seeds 2] [--total-step 400]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qformer_budget.core.adalora_rules import (
    FINAL_FRACTION,
    WARMUP_FRACTION,
    AdaLoraSchedule,
    check_ranks,
    threshold_rank,
)
from qformer_budget.core.atomic import temporary_name
from qformer_budget.core.grammar import is_structural, sublayer_label, target_modules_regex
from qformer_budget.core.layout import adalora_tag, run_path
from qformer_budget.core.run_folder import package_versions, write_run_meta
from qformer_budget.core.schema import (
    COMPACTED_PARTS_KEY,
    PHASES,
    RECORD_SCHEMA,
    RECORDS_FILE,
    RESUMES_APPLIED_KEY,
    SCHEMA_VERSION,
)

BENCHMARKS: tuple[str, ...] = ("scienceqa", "iconqa", "flickr30k", "vizwiz")

# Mean log triplet score per block; with the spreads below, single scores span about 1000x.
BLOCK_LOG_MEAN: dict[str, float] = {
    "self_attn": -8.6,
    "cross_attn": -8.2,
    "ffn_query": -7.8,
    "ffn_text": -8.8,
}

# What each benchmark adds to a block's mean log score: captioning leans on the image (cross-attention),
# science questions on the instruction text (text FFN). Benchmarks not listed add nothing.
BENCHMARK_BLOCK_SHIFT: dict[str, dict[str, float]] = {
    "scienceqa": {"self_attn": 0.2, "cross_attn": -0.3, "ffn_query": 0.0, "ffn_text": 0.9},
    "iconqa": {"self_attn": 0.0, "cross_attn": 0.5, "ffn_query": 0.3, "ffn_text": 0.2},
    "flickr30k": {"self_attn": -0.2, "cross_attn": 1.0, "ffn_query": 0.4, "ffn_text": -0.4},
    "vizwiz": {"self_attn": 0.3, "cross_attn": 0.6, "ffn_query": -0.2, "ffn_text": 0.4},
}

LAYER_LOG_SLOPE = 0.08  # deeper layers score higher, per layer
MODULE_LOG_SD = 0.5  # spread of a module's mean around its block's, per run
DIRECTION_LOG_SD = 0.8  # spread of a direction's mean around its module's, per run
DRIFT_LOG_SD = 0.4  # stationary spread of the slow drift of each direction's score
DRIFT_CORRELATION = 0.98  # AR(1) coefficient of the drift from one recorded step to the next

# Parquet row group size: bounds the memory of writing a run, lets filters on steps skip whole groups.
ROWS_PER_GROUP = 131_072


@dataclass(frozen=True)
class QFormerModule:
    """One adapted Linear of the Q-Former, as the recorder sees it."""

    module: str
    layer: int
    block: str
    proj: str
    in_features: int
    out_features: int


def qformer_modules(
    num_layers: int = 12,
    hidden: int = 768,
    intermediate: int = 3072,
    encoder_hidden: int = 1408,
    cross_attention_frequency: int = 2,
) -> tuple[QFormerModule, ...]:
    """Every Linear of InstructBLIP's Q-Former in model order (``named_modules``): 120 with the defaults."""
    modules = []
    for layer in range(num_layers):
        prefix = f"qformer.encoder.layer.{layer}."

        def add(suffix: str, block: str, proj: str, in_features: int, out_features: int) -> None:
            modules.append(QFormerModule(prefix + suffix, layer, block, proj, in_features, out_features))

        for proj in ("query", "key", "value"):
            add(f"attention.attention.{proj}", "self_attn", proj, hidden, hidden)
        add("attention.output.dense", "self_attn", "output", hidden, hidden)
        if layer % cross_attention_frequency == 0:
            add("crossattention.attention.query", "cross_attn", "query", hidden, hidden)
            add("crossattention.attention.key", "cross_attn", "key", encoder_hidden, hidden)
            add("crossattention.attention.value", "cross_attn", "value", encoder_hidden, hidden)
            add("crossattention.output.dense", "cross_attn", "output", hidden, hidden)
        add("intermediate.dense", "ffn_text", "intermediate", hidden, intermediate)
        add("output.dense", "ffn_text", "output", intermediate, hidden)
        add("intermediate_query.dense", "ffn_query", "intermediate", hidden, intermediate)
        add("output_query.dense", "ffn_query", "output", intermediate, hidden)
    return tuple(modules)


@dataclass(frozen=True)
class Schedule(AdaLoraSchedule):
    """AdaLoRA's schedule with the ranks, and the recorder's ``record_every``."""

    init_r: int
    target_r: int
    record_every: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranks(self.init_r, self.target_r)
        if self.record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {self.record_every}")

    @property
    def method_tag(self) -> str:
        """The runner's folder name of this configuration: AdaLoRA on every Q-Former Linear."""
        return adalora_tag("adalora", "all_linear", self.init_r, self.target_r)

    def budget_of(self, global_step: int, n_modules: int) -> int:
        """The budget at ``global_step`` with ``n_modules`` adapted modules."""
        return self.budget(global_step, self.init_r * n_modules, self.target_r * n_modules)

    def recorded_steps(self) -> np.ndarray:
        """The 0-based steps the recorder records."""
        steps = np.arange(self.total_step)
        return steps[self.is_recorded(steps, self.record_every)]


def _direction_scores(
    rng: np.random.Generator, benchmark: str, modules: Sequence[QFormerModule], n_steps: int, init_r: int
) -> np.ndarray:
    """Triplet scores ``(n_steps, n_modules, init_r)`` float32: log-normal, drifting, structural zeros."""
    shift = BENCHMARK_BLOCK_SHIFT.get(benchmark, {})
    n_modules = len(modules)
    mean = [BLOCK_LOG_MEAN[m.block] + shift.get(m.block, 0.0) + LAYER_LOG_SLOPE * m.layer for m in modules]
    module_mean = np.array(mean) + rng.normal(0.0, MODULE_LOG_SD, n_modules)
    direction_mean = module_mean[:, None] + rng.normal(0.0, DIRECTION_LOG_SD, (n_modules, init_r))
    innovation_sd = DRIFT_LOG_SD * np.sqrt(1 - DRIFT_CORRELATION**2)
    innovations = rng.normal(0.0, innovation_sd, (n_steps, n_modules, init_r))
    innovations[0] *= DRIFT_LOG_SD / innovation_sd  # start the drift at its stationary spread
    drift = innovations  # accumulated in place: drift[t] = correlation * drift[t - 1] + innovation[t]
    for row in range(1, n_steps):
        drift[row] += DRIFT_CORRELATION * drift[row - 1]
    scores = np.exp(direction_mean[None] + drift).astype(np.float32)
    deepest = max(m.layer for m in modules)
    structural = [i for i, m in enumerate(modules) if is_structural(m.block, m.layer, deepest)]
    scores[:, structural] = 0.0
    return scores


def _mask(scores: np.ndarray, budgets: np.ndarray, init_bgt: int) -> tuple[np.ndarray, np.ndarray]:
    """peft's ``mask_to_budget`` on each row of ``scores (n, directions)``: kept directions and thresholds."""
    k = threshold_rank(init_bgt, budgets)  # 1-based, as torch.kthvalue
    thresholds = np.take_along_axis(np.sort(scores, axis=1), (k - 1)[:, None], axis=1)
    return scores > thresholds, thresholds[:, 0].astype(np.float64)


def _simulate_run(
    benchmark: str, modules: Sequence[QFormerModule], schedule: Schedule, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The simulated allocation: per recorded step arrays, and per step, module and direction arrays."""
    n_modules, r = len(modules), schedule.init_r
    global_steps = schedule.recorded_steps()
    n_steps = len(global_steps)
    scores = _direction_scores(rng, benchmark, modules, n_steps, r).reshape(n_steps, n_modules * r)
    budgets = np.array([schedule.budget_of(int(g), n_modules) for g in global_steps], dtype=np.int64)
    mask_step = schedule.is_mask_step(global_steps)
    kept_at_mask, mask_thresholds = _mask(scores[mask_step], budgets[mask_step], r * n_modules)
    # Kept directions hold from one mask step to the next; before the first mask (warmup) all are kept.
    kept_rows = np.ones_like(scores, dtype=bool)
    kept_rows[mask_step] = kept_at_mask
    last_mask_row = np.maximum.accumulate(np.where(mask_step, np.arange(n_steps), 0))
    kept = kept_rows[last_mask_row]
    thresholds = np.full(n_steps, np.nan)
    thresholds[mask_step] = mask_thresholds
    steps = {
        "global_step": global_steps,
        "mask_step": mask_step,
        "phase": schedule.phase_index(global_steps).astype(np.int32),
        "budget": budgets,
        "threshold": thresholds,
        "has_scores": global_steps <= schedule.final_mask_step,  # peft clears its scores after the final mask
    }
    shape = (n_steps, n_modules, r)
    return steps, {"scores": scores.reshape(shape), "kept": kept.reshape(shape)}


def _list_array(values: np.ndarray, valid: np.ndarray | None = None) -> pa.ListArray:
    """A list column from ``values (rows, r)``; rows where ``valid`` is False are null."""
    rows, r = values.shape
    offsets = pa.array(np.arange(0, (rows + 1) * r, r, dtype=np.int32))
    mask = None if valid is None else pa.array(~valid)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)), mask=mask)


def _repeated_strings(labels: Sequence[str], codes: np.ndarray) -> pa.Array:
    """``labels[codes]`` as a plain string column, built through a dictionary (no Python loop per row)."""
    dictionary = pa.array(list(labels), pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), dictionary).cast(pa.string())


def _chunk_table(
    benchmark: str,
    seed: int,
    modules: Sequence[QFormerModule],
    init_r: int,
    steps: dict[str, np.ndarray],
    directions: dict[str, np.ndarray],
) -> pa.Table:
    """The rows of some recorded steps (one per step and module, modules in model order) in RECORD_SCHEMA."""
    n_steps, n_modules = len(steps["global_step"]), len(modules)
    n = n_steps * n_modules

    def per_step(values: np.ndarray, dtype) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=dtype), n_modules)

    def per_module(values: Sequence, dtype) -> np.ndarray:
        return np.tile(np.asarray(values, dtype=dtype), n_steps)

    module_codes = per_module(np.arange(n_modules), np.int32)
    sublayers = [sublayer_label(m.layer, m.block, m.proj) for m in modules]
    has_scores = per_step(steps["has_scores"], bool)
    scores = directions["scores"].reshape(n, init_r)
    kept = directions["kept"].reshape(n, init_r)
    score_sums = np.where(has_scores, scores.astype(np.float64).sum(axis=1), np.nan)
    columns = {
        "schema_version": pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int16)),
        "benchmark": _repeated_strings([benchmark], np.zeros(n, np.int32)),
        "seed": pa.array(np.full(n, seed, dtype=np.int64)),
        "step": pa.array(per_step(steps["global_step"] + 1, np.int64)),
        "global_step": pa.array(per_step(steps["global_step"], np.int64)),
        "phase": _repeated_strings(PHASES, per_step(steps["phase"], np.int32)),
        "mask_step": pa.array(per_step(steps["mask_step"], bool)),
        "module": _repeated_strings([m.module for m in modules], module_codes),
        "component": _repeated_strings(["qformer"], np.zeros(n, np.int32)),
        "sublayer": _repeated_strings(sublayers, module_codes),
        "layer": pa.array(per_module([m.layer for m in modules], np.int16)),
        "block": _repeated_strings([m.block for m in modules], module_codes),
        "proj": _repeated_strings([m.proj for m in modules], module_codes),
        "in_features": pa.array(per_module([m.in_features for m in modules], np.int32)),
        "out_features": pa.array(per_module([m.out_features for m in modules], np.int32)),
        "init_r": pa.array(np.full(n, init_r, dtype=np.int16)),
        "rank": pa.array(kept.sum(axis=1).astype(np.int16)),
        "score": pa.array(score_sums),
        "direction_scores": _list_array(scores, has_scores),
        "direction_kept": _list_array(kept),
        "budget": pa.array(per_step(steps["budget"], np.int64)),
        "threshold": pa.array(per_step(steps["threshold"], np.float64)),
    }
    return pa.Table.from_pydict(columns, schema=RECORD_SCHEMA)


def run_folder(out_dir: str | os.PathLike, benchmark: str, seed: int, schedule: Schedule) -> Path:
    """Where the runner puts a run: ``<out_dir>/<benchmark>/<method tag>/seed<seed>``."""
    return run_path(Path(out_dir), benchmark, schedule.method_tag, seed)


def write_synthetic_run(
    run_dir: str | os.PathLike,
    benchmark: str,
    seed: int,
    schedule: Schedule,
    modules: Sequence[QFormerModule] | None = None,
    rng_seed: int = 0,
) -> Path:
    """Write one finished synthetic run folder (``run.json`` + ``records.parquet``); returns its path."""
    run_dir = Path(run_dir)
    modules = tuple(modules or qformer_modules())
    unknown = sorted({m.block for m in modules} - set(BLOCK_LOG_MEAN))
    if unknown:
        raise ValueError(f"modules in unknown blocks {unknown}; blocks are {tuple(BLOCK_LOG_MEAN)}")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    benchmark_key = int.from_bytes(benchmark.encode(), "little")
    rng = np.random.default_rng([rng_seed, benchmark_key, seed])
    steps, directions = _simulate_run(benchmark, modules, schedule, rng)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps_per_group = max(1, ROWS_PER_GROUP // len(modules))
    group_starts = range(0, len(steps["global_step"]), steps_per_group)
    # The metadata a closed ParquetSink leaves: each row group stands for one compacted part.
    schema = RECORD_SCHEMA.with_metadata(
        RECORD_SCHEMA.metadata | {COMPACTED_PARTS_KEY: str(len(group_starts)).encode(), RESUMES_APPLIED_KEY: b"0"}
    )
    records_file = run_dir / RECORDS_FILE
    written = temporary_name(records_file)
    with pq.ParquetWriter(written, schema, compression="zstd") as writer:
        for start in group_starts:
            chunk = slice(start, start + steps_per_group)
            table = _chunk_table(
                benchmark,
                seed,
                modules,
                schedule.init_r,
                {key: values[chunk] for key, values in steps.items()},
                {key: values[chunk] for key, values in directions.items()},
            )
            writer.write_table(table, row_group_size=len(table))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": benchmark,
        "seed": seed,
        "record_every": schedule.record_every,
        "adalora": {
            "init_r": schedule.init_r,
            "target_r": schedule.target_r,
            "tinit": schedule.tinit,
            "tfinal": schedule.tfinal,
            "deltaT": schedule.deltaT,
            "beta1": 0.85,
            "beta2": 0.85,
            "orth_reg_weight": 0.5,
            "total_step": schedule.total_step,
            "target_modules": target_modules_regex("all_linear"),
        },
        "modules": [m.module for m in modules],
        "versions": package_versions(),
        "method": schedule.method_tag,
        "preset": "synthetic",
        "synthetic": {"generator": "qformer_budget.benchmarks.synthetic_records", "rng_seed": rng_seed},
        "status": "finished",
        "started": started,
        "recorded_steps": int(len(steps["global_step"])),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.replace(written, records_file)
    write_run_meta(run_dir, meta)
    return run_dir


def write_synthetic_runs(
    out_dir: str | os.PathLike,
    benchmarks: Sequence[str] = BENCHMARKS,
    seeds: int | Sequence[int] = 5,
    total_step: int = 20_000,
    record_every: int = 10,
    init_r: int = 12,
    target_r: int = 4,
    tinit: int | None = None,
    tfinal: int | None = None,
    deltaT: int = 10,
    modules: Sequence[QFormerModule] | None = None,
    rng_seed: int = 0,
) -> list[Path]:
    """Write one synthetic run per benchmark and seed below ``out_dir``, laid out as the runner does.

    Run folders are ``<out_dir>/<benchmark>/adalora-all_linear-r<init_r>to<target_r>/seed<seed>``.
    ``seeds`` is a count (seeds ``0..n-1``) or the seeds themselves. ``tinit`` and ``tfinal`` default to
    the runner's 10 % warmup and 20 % final phase. The same arguments write the same records.
    Returns the run folders in writing order.
    """
    default = AdaLoraSchedule.from_fractions(total_step, WARMUP_FRACTION, FINAL_FRACTION, deltaT)
    tinit = default.tinit if tinit is None else tinit
    tfinal = default.tfinal if tfinal is None else tfinal
    schedule = Schedule(total_step, tinit, tfinal, deltaT, init_r, target_r, record_every)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    modules = tuple(modules or qformer_modules())
    return [
        write_synthetic_run(run_folder(out_dir, b, seed, schedule), b, seed, schedule, modules, rng_seed)
        for b in benchmarks
        for seed in seed_list
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write the run folders into")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds per benchmark")
    parser.add_argument("--total-step", type=int, default=20_000)
    parser.add_argument("--record-every", type=int, default=10)
    parser.add_argument("--rng-seed", type=int, default=0)
    options = parser.parse_args(argv)
    started = time.perf_counter()
    runs = write_synthetic_runs(
        options.out,
        options.benchmarks,
        options.seeds,
        options.total_step,
        options.record_every,
        rng_seed=options.rng_seed,
    )
    print(f"wrote {len(runs)} runs below {options.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
