"""``qformer-budget run CONFIG --dry-run``: check a sweep before it takes a GPU, and say what each run will cost.

The dry run reads every record of every benchmark split the sweep uses with the benchmark's own loader (listing
every missing image, not only the first), opens the header of every image the runs will read, and checks the
model folder's ``config.json`` against the preset (``presets.read_checkpoint_config`` and
``architecture_mismatches``, the rules ``load_checkpoint`` applies before it reads any weight). It reads no weight
and writes nothing: no run folder, and no synthetic data (missing synthetic data is a problem to report).

For every run it works out the training examples, the optimizer steps (``TrainingPlan``, the Trainer's
arithmetic), AdaLoRA's phases and mask steps (``AdaLoraSchedule``), the trainable parameters and the peak memory
per GPU (``runner.memory``, on the meta device), and the size of the budget records: recorded steps (the
recorder's rule, ``AdaLoraSchedule.is_recorded``) x adapted modules x :data:`BYTES_PER_RECORD_ROW`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qformer_budget.benchmarks import Example
from qformer_budget.core.adalora_rules import AdaLoraSchedule
from qformer_budget.peft_hooks import TrainingPlan

from .config import RunSpec, SweepConfig
from .memory import MemoryEstimate, estimate_peak_memory
from .methods import MethodSettings
from .params import target_linears, trainable_parameters
from .presets import (
    TINY_CHECKPOINT_DIR,
    TINY_PRESET,
    ModelPreset,
    architecture_mismatches,
    get_preset,
    read_checkpoint_config,
)
from .sweep import SYNTHETIC_MARKER
from .train import load_split

# Bytes of records.parquet per row (one adapted module at one recorded step), measured on the tiny demo
# (`qformer-budget demo --seeds 0`, 2026-11-30): 4 runs of 6,000 rows each (50 recorded steps x 120 modules,
# init_r 12), 1,487,712 bytes in all, 61.1 to 62.7 bytes per row. Study-size synthetic records compress to 45.9.
BYTES_PER_RECORD_ROW = 62


@dataclass(frozen=True)
class RunPlan:
    """What one run will do and cost; None where a problem (in the report's list) leaves it unknown."""

    spec: RunSpec
    train_examples: int | None
    optimizer_steps: int | None
    schedule: AdaLoraSchedule | None  # AdaLoRA variants only
    trainable: int | None
    memory: MemoryEstimate | None
    modules: int | None  # the modules the recorder records (AdaLoRA variants)

    def steps_by_phase(self) -> tuple[int, int, int]:
        """Optimizer steps in warm-up, budget reduction and final phase (``AdaLoraSchedule.phase_index``)."""
        return tuple(int(n) for n in np.bincount(self.schedule.phase_index(self._steps()), minlength=3))

    def mask_steps(self) -> int:
        return int(np.sum(self.schedule.is_mask_step(self._steps())))

    def recorded_steps(self) -> int:
        """Steps the recorder records, at its default interval ``deltaT`` unless the method sets ``record_every``."""
        record_every = self.spec.method.record_every or self.spec.method.deltaT
        return int(np.sum(self.schedule.is_recorded(self._steps(), record_every)))

    def _steps(self) -> np.ndarray:
        return np.arange(self.schedule.total_step)


@dataclass
class DryRunReport:
    """The sweep's runs as planned, and every problem found."""

    config: SweepConfig
    preset: ModelPreset | None
    model: str  # the preset and the config.json checked
    runs: list[RunPlan] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        """One block per run, then every problem as a numbered list, or ``dry run: no problems``."""
        lines = [f"dry run of {self.config.source}: {len(self.runs)} runs; model {self.model}"]
        dtype = "?" if self.preset is None else str(self.preset.dtype).removeprefix("torch.")
        for plan in self.runs:
            lines += _format_run(plan, dtype)
        problems = self.problems
        if not problems:
            return "\n".join([*lines, "dry run: no problems"])
        lines.append(f"dry run: {len(problems)} problem{'s' if len(problems) > 1 else ''}")
        return "\n".join(lines + [f"  {i}. {problem}" for i, problem in enumerate(problems, 1)])


def dry_run(config: SweepConfig) -> DryRunReport:
    """Check ``config``'s data and model folder and plan each of its runs, reading no weight and writing nothing."""
    runs = config.runs()
    preset, model, problems = _check_model(config)
    report = DryRunReport(config, preset, model, problems=problems)
    train_examples = {}
    for benchmark in config.sweep.benchmarks:
        spec = next(spec for spec in runs if spec.benchmark == benchmark)
        train_examples[benchmark] = _check_data(spec, config.data.synthetic, report.problems)
    methods = {method.tag: _method_costs(config, preset, method, report.problems) for method in config.methods}
    for spec in runs:
        report.runs.append(_plan_run(spec, train_examples[spec.benchmark], *methods[spec.method.tag], report.problems))
    report.problems = list(dict.fromkeys(report.problems))  # a split checked twice, a file both splits share
    return report


def _check_model(config: SweepConfig) -> tuple[ModelPreset | None, str, list[str]]:
    """The preset, what was checked, and the problems of the model section and its folder's ``config.json``."""
    where = f"{config.source.name} [model]"
    try:
        preset = get_preset(config.model.preset)
    except ValueError as exc:
        return None, config.model.preset, [f"{where}.preset: {exc}"]
    if preset is TINY_PRESET:
        folder = TINY_CHECKPOINT_DIR
    elif config.model.path is None:
        return preset, preset.name, [f"{where}.path: not set; preset {preset.name!r} loads a local checkpoint folder"]
    else:
        folder = Path(config.model.path).resolve()
    config_file = folder / "config.json"
    try:
        found = read_checkpoint_config(folder, preset.model_class)
    except (OSError, ValueError) as exc:
        return preset, f"{preset.name} ({config_file})", [str(exc)]
    mismatches = architecture_mismatches(found, preset.config_factory())
    return preset, f"{preset.name} ({config_file})", [f"{config_file}: {mismatch}" for mismatch in mismatches]


def _check_data(spec: RunSpec, synthetic: bool, problems: list[str]) -> int | None:
    """Read the run's training and evaluation splits and check their images, adding to ``problems``; returns
    the number of training examples (None if there are none to train on)."""
    root = Path(spec.data.root) / spec.benchmark
    if synthetic and not (root / SYNTHETIC_MARKER).exists():
        problems.append(
            f"{root}: no synthetic {spec.benchmark} data ({SYNTHETIC_MARKER} is missing); a real run writes it there "
            "([data].synthetic = true), a dry run writes nothing"
        )
        return None
    train, _ = (_check_split(spec, split, limit, problems) for split, limit in spec.splits)  # both splits checked
    return train


def _check_split(spec: RunSpec, split: str, limit: int | None, problems: list[str]) -> int | None:
    """Read ``split`` of the run's benchmark, cut to ``limit``, and check its images; returns its size, None
    if it cannot be read or is empty."""
    root = Path(spec.data.root) / spec.benchmark
    missing: dict[Path, str] = {}
    try:
        examples = load_split(spec, split, limit, missing)
    except (OSError, ValueError) as exc:
        problems.append(f"{spec.benchmark} data under {root}: {exc}")  # the same for both splits of a broken file
        return None
    problems.extend(missing.values())
    problems.extend(_image_problems(examples, missing))
    if not examples:
        problems.append(f"{spec.benchmark} {split} split under {root}: no examples")
    return len(examples) or None


def _image_problems(examples: list[Example], missing: dict[Path, str]) -> list[str]:
    """Each image that does not open (header only); the missing ones the loader listed are not repeated."""
    problems = []
    for example in examples:
        if example.image_path in missing:
            continue
        try:
            example.verify_image()
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _method_costs(
    config: SweepConfig, preset: ModelPreset | None, method: MethodSettings, problems: list[str]
) -> tuple[int | None, MemoryEstimate | None, int | None]:
    """Trainable parameters, peak memory per GPU and (AdaLoRA variants) recorded modules of ``method``."""
    if preset is None:
        return None, None, None
    training = config.training
    try:
        trainable = trainable_parameters(preset.name, method)
        memory = estimate_peak_memory(
            preset.name, method, training.batch_size, preset.dtype, training.max_prompt_tokens, training.max_new_tokens
        )
        modules = len(target_linears(preset.name, method.placement)) if method.records_budget else None
    except ValueError as exc:
        problems.append(f"{config.source.name} [[methods]] {method.tag}: {exc}")
        return None, None, None
    return trainable, memory, modules


def _plan_run(
    spec: RunSpec, train_examples: int | None, trainable: int | None, memory: MemoryEstimate | None,
    modules: int | None, problems: list[str],
) -> RunPlan:
    steps, schedule = None, None
    if train_examples is not None:
        training = spec.training
        steps = TrainingPlan(train_examples, training.batch_size, epochs=training.epochs,
                             gradient_accumulation_steps=training.gradient_accumulation).total_optimizer_steps
        if spec.method.records_budget:
            try:
                schedule = spec.method.schedule(steps)
            except ValueError as exc:
                problems.append(f"{spec.run_dir}: {spec.method.tag} on {steps} optimizer steps: {exc}")
    return RunPlan(spec, train_examples, steps, schedule, trainable, memory, modules)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _known(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _format_run(plan: RunPlan, dtype: str) -> list[str]:
    spec, training = plan.spec, plan.spec.training
    method = spec.method
    batches = f"{training.epochs:g} epochs, batch {training.batch_size} x {training.gradient_accumulation} accumulated"
    lines = [
        str(spec.run_dir),
        f"  train examples   {_known(plan.train_examples)} ({spec.benchmark} {spec.data.train_split})",
        f"  optimizer steps  {_known(plan.optimizer_steps)} ({batches})",
    ]
    if not method.records_budget:
        lines.append(f"  AdaLoRA phases   none: {method.name} has no AdaLoRA schedule")
    elif plan.schedule is None:
        lines.append("  AdaLoRA phases   ?")
    else:
        warmup, budgeting, final = plan.steps_by_phase()
        lines.append(f"  AdaLoRA phases   warm-up {warmup}, budget reduction {budgeting}, final {final} steps; "
                     f"{plan.mask_steps()} mask steps")
    lines.append(f"  trainable        {_known(plan.trainable)} parameters")
    memory = plan.memory
    if memory is None:
        lines.append("  peak memory/GPU  ?")
    else:
        lines.append(
            f"  peak memory/GPU  {_size(memory.total_bytes)} (batch {training.batch_size}, {dtype}): weights "
            f"{_size(memory.weights_bytes)}, adapter + gradients {_size(memory.adapter_bytes)}, optimizer "
            f"{_size(memory.optimizer_bytes)}, activations {_size(memory.activation_bytes)}"
        )
    if not method.records_budget:
        lines.append("  records on disk  none: only AdaLoRA variants record a budget")
    elif plan.schedule is None or plan.modules is None:
        lines.append("  records on disk  ?")
    else:
        steps = plan.recorded_steps()
        lines.append(f"  records on disk  ~{_size(steps * plan.modules * BYTES_PER_RECORD_ROW)} ({steps} recorded "
                     f"steps x {plan.modules} modules x {BYTES_PER_RECORD_ROW} B)")
    return lines
