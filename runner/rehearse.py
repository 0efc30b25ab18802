"""``qformer-budget rehearse PRESET``: the sweep's own code path at a preset's real size, with random weights.

A real checkpoint is not needed to learn whether a run fits a machine and how long its steps take: the
architecture is enough. The rehearsal builds the preset's architecture (``presets.build_architecture``, the LM
head untied as in a checkpoint) with random weights in the preset's dtype, under that default dtype so that
FlanT5-XL's 4 B parameters never exist in float32, on the GPU if there is one; downloads nothing; fits the tiny
processor's tokenizers to the preset (``tiny.fitted_tiny_processor``: T5 presets only); and writes one synthetic
benchmark into a temporary folder. Then ``train.train_run`` runs as a sweep runs it, with a builder in place of
the checkpoint loader: the Trainer with AdaLoRA (``paper_all``, ``init_r`` 12 to 4) and the budget callback for
a few optimizer steps at batch 1, masking and recording every step of the budgeting phase (``deltaT`` 1), the
adapter saved through the method registry, a fresh base built again from the same seed with the adapter loaded
back, and a few examples evaluated (5 beams, up to 30 new tokens, as the paper's config).

The report sets the measured peak memory (CPU: the peak resident set size, ``ru_maxrss``, shown with the size
before the rehearsal, after the imports; GPU: ``torch.cuda.max_memory_allocated``) and the median step time
beside the dry run's estimate (``runner.memory``) for the same preset, batch, dtype and token lengths; on a CPU
the estimate also counts what the process holds before the model is built, as its resident set size does.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from qformer_budget.benchmarks.synthetic import write_synthetic
from qformer_budget.core.run_folder import read_record_table, read_run_meta
from qformer_budget.peft_hooks.model import seeded

from .collate import InstructBlipCollator
from .config import EVAL_SPLITS, DataSection, ModelSection, RunSpec, TrainingSection
from .memory import MemoryEstimate, estimate_peak_memory
from .methods import AdaLoraSettings
from .presets import BlipModel, build_architecture, freeze_except_qformer, get_preset
from .tiny import fitted_tiny_processor
from .train import default_device, load_data, train_run

# The paper's AdaLoRA (runner/configs/adalora_four_benchmarks.toml), masking at every budgeting step so that a
# few steps reach the budget.
METHOD = AdaLoraSettings(placement="paper_all", init_r=12, target_r=4, deltaT=1, record_every=1)
TRAINING = TrainingSection(epochs=1, batch_size=1, max_prompt_tokens=128, max_new_tokens=30, num_beams=5)
IMAGE_SIZE = 64  # of the synthetic images; the processor resizes them to the preset's
# Benchmarks whose evaluation takes any output; Flickr30k's caption scorers refuse the empty captions that random
# weights generate.
BENCHMARKS = ("vizwiz", "scienceqa", "iconqa")


class RehearsalRefused(ValueError):
    """A rehearsal that cannot run here; the message says why, on one line."""


class StepProbe(TrainerCallback):
    """The seconds of each optimizer step (forward, backward, optimizer and AdaLoRA's update, which the budget
    callback runs before this one's ``on_step_end``), and the peak memory when training ends."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.step_seconds: list[float] = []
        self.train_peak = 0
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self._started)

    def on_train_end(self, args, state, control, **kwargs):
        self.train_peak = peak_memory(self.device)


def peak_memory(device: str) -> int:
    """Peak bytes so far: ``torch.cuda.max_memory_allocated`` on a GPU, the peak resident set size on a CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB, macOS bytes


def available_memory(device: str) -> int:
    """Bytes free for the rehearsal: the GPU's free memory, or the CPU's ``MemAvailable`` (all of it elsewhere)."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def build_random(name: str, device: str, seed: int) -> BlipModel:
    """The preset's architecture with weights drawn from ``seed``, in the preset's dtype on ``device``, vision
    encoder and LM frozen as in a loaded checkpoint; built under that default dtype, so no float32 copy exists."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(get_preset(name).dtype)
    try:
        with seeded(seed):
            model = build_architecture(name, device)
    finally:
        torch.set_default_dtype(previous)
    freeze_except_qformer(model)
    return model


@dataclass(frozen=True)
class RehearsalReport:
    """What a rehearsal measured, beside the dry run's estimate."""

    preset: str
    device: str
    dtype: torch.dtype
    parameters: int
    build_seconds: float
    train_examples: int
    prompt_tokens: int  # the longest prompt, in LM tokens after the query tokens
    target_tokens: int  # the longest target, with its end token
    step_seconds: list[float]
    modules: int
    mask_steps: int
    kept_rank: tuple[int, int]  # summed over the modules: before the first mask, after the last step
    phase_seconds: dict[str, float]  # train_run's phases: load, train, save, reload, evaluate
    predictions: int
    metrics: dict[str, float]
    baseline_bytes: int  # the peak resident size before the rehearsal, after the imports
    built_bytes: int  # the peak once the model is built
    train_peak_bytes: int
    peak_bytes: int  # through evaluation
    estimate: MemoryEstimate
    run_dir: Path | None  # None: the output was a temporary folder, removed

    @property
    def ratio(self) -> float:
        """Measured training peak over the estimate."""
        return self.train_peak_bytes / self.estimate.total_bytes

    def text(self) -> str:
        """The report, one line per phase."""
        dtype = str(self.dtype).removeprefix("torch.")
        measure = "torch.cuda.max_memory_allocated" if self.device == "cuda" else "peak resident set size"
        steps, estimate, seconds = self.step_seconds, self.estimate, self.phase_seconds
        metrics = ", ".join(f"{name} {value:.3f}" for name, value in self.metrics.items())
        terms = [("process", estimate.process_bytes), ("weights", estimate.weights_bytes),
                 ("adapter", estimate.adapter_bytes), ("optimizer", estimate.optimizer_bytes),
                 ("activations", estimate.activation_bytes)]
        where = "removed with its temporary folder" if self.run_dir is None else str(self.run_dir)
        return "\n".join([
            f"rehearsal of {self.preset} on {self.device}: {dtype}, random weights, nothing downloaded",
            f"  model        {self.parameters:,} parameters, built in {self.build_seconds:.1f} s",
            (f"  data         {self.train_examples} training examples, batch {TRAINING.batch_size}; prompts up to "
             f"{self.prompt_tokens} tokens, targets up to {self.target_tokens}"),
            (f"  steps        {len(steps)}: median {statistics.median(steps):.2f} s (min {min(steps):.2f}, max "
             f"{max(steps):.2f}); {METHOD.tag} on {self.modules} modules, {self.mask_steps} mask steps recorded, "
             f"kept rank {self.kept_rank[0]} -> {self.kept_rank[1]}"),
            f"  save         {seconds['save']:.1f} s",
            f"  reload       {seconds['reload']:.1f} s (a fresh base built, the adapter loaded back)",
            (f"  evaluation   {self.predictions} predictions in {seconds['evaluate']:.1f} s "
             f"({TRAINING.num_beams} beams, up to {TRAINING.max_new_tokens} new tokens): {metrics}"),
            (f"  memory       {_gib(self.train_peak_bytes)} peak in training, {_gib(self.peak_bytes)} through "
             f"evaluation, {_gib(self.built_bytes)} once built ({measure}); {_gib(self.baseline_bytes)} resident "
             "after the imports"),
            (f"  estimate     {_gib(estimate.total_bytes)} ("
             + ", ".join(f"{name} {_gib(n)}" for name, n in terms if n)
             + f"): measured / estimate = {self.ratio:.2f}"),
            f"  run folder   {where}",
        ])


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def rehearse(
    preset_name: str, out: str | Path | None = None, steps: int = 6, eval_examples: int = 2,
    benchmark: str = "vizwiz", seed: int = 0, progress: bool = False,
) -> RehearsalReport:
    """Rehearse ``preset_name`` for ``steps`` optimizer steps and ``eval_examples`` evaluated examples of the
    synthetic ``benchmark`` (written to a temporary folder), keeping the run folder in ``out`` (new or empty) if
    given. RehearsalRefused says, before anything is built, why it cannot run: an unknown or LLaMA preset, a
    benchmark not in :data:`BENCHMARKS`, too few steps for a mask or no example to evaluate, ``out`` not empty,
    or more memory needed than the device has available."""
    baseline = peak_memory("cpu")
    device = default_device()
    try:
        preset = get_preset(preset_name)
        processor = fitted_tiny_processor(preset)
        METHOD.schedule(steps)  # a valid schedule masks at least once, at its final mask step
    except ValueError as exc:
        raise RehearsalRefused(str(exc)) from None
    if benchmark not in BENCHMARKS:
        raise RehearsalRefused(f"rehearse evaluates {', '.join(BENCHMARKS)}, not {benchmark!r}")
    if eval_examples < 1:
        raise RehearsalRefused(f"a rehearsal evaluates at least 1 example, not {eval_examples}")
    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        raise RehearsalRefused(f"{out} is not empty; a rehearsal writes into a new or empty folder")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="qformer-budget-rehearse-") as temporary:
        data = DataSection(root=str(Path(temporary) / "data"), max_train_examples=steps * TRAINING.batch_size,
                           max_eval_examples=eval_examples)
        runs = Path(temporary) / "runs" if out is None else Path(out).resolve()
        spec = RunSpec(benchmark, seed, METHOD, ModelSection(preset.name), data, TRAINING, runs)
        write_synthetic(benchmark, Path(data.root) / benchmark, seed=seed, image_size=IMAGE_SIZE,
                        sizes={"train": data.max_train_examples, EVAL_SPLITS[benchmark]: eval_examples})
        collator = InstructBlipCollator(processor, TRAINING.max_prompt_tokens)
        prompt_tokens, target_tokens = _token_lengths(collator, load_data(spec)[0])
        process = peak_memory(device) if device == "cpu" else 0  # what this process holds before the model
        estimate = estimate_peak_memory(preset.name, METHOD, TRAINING.batch_size, preset.dtype, prompt_tokens,
                                        target_tokens, process_bytes=process)
        needed, free = estimate.total_bytes - process, available_memory(device)
        if needed > free:
            raise RehearsalRefused(f"{preset.name} needs about {_gib(needed)} more by the dry run's estimate, and "
                                   f"the {device} has {_gib(free)} available")

        builds: list[tuple[float, int, int]] = []  # seconds, parameters and peak memory of each build

        def build(section: ModelSection, device: str) -> tuple[BlipModel, object, bool]:
            started = time.perf_counter()
            model = build_random(section.preset, device, seed)
            parameters = sum(p.numel() for p in model.parameters())
            builds.append((time.perf_counter() - started, parameters, peak_memory(device)))
            return model, processor, bool(model.config.use_decoder_only_language_model)

        probe = StepProbe(device)
        metrics = train_run(spec, progress=progress, load=build, callbacks=[probe])
        saved = json.loads((spec.run_dir / "metrics.json").read_text(encoding="utf-8"))
        records = read_record_table(spec.run_dir, read_run_meta(spec.run_dir)).select(
            ["step", "mask_step", "module", "rank", "init_r"]
        ).to_pandas()
        last = records[records.step == records.step.max()]
        (build_seconds, parameters, built_bytes), _ = builds
        return RehearsalReport(
            preset=preset.name, device=device, dtype=preset.dtype, parameters=parameters,
            build_seconds=build_seconds, train_examples=saved["train_examples"], prompt_tokens=prompt_tokens,
            target_tokens=target_tokens, step_seconds=probe.step_seconds, modules=records.module.nunique(),
            mask_steps=records.loc[records.mask_step, "step"].nunique(),
            kept_rank=(int(last.init_r.sum()), int(last["rank"].sum())), phase_seconds=saved["seconds"],
            predictions=_count_lines(spec.run_dir / "predictions.jsonl"), metrics=metrics,
            baseline_bytes=baseline, built_bytes=built_bytes, train_peak_bytes=probe.train_peak,
            peak_bytes=peak_memory(device), estimate=estimate, run_dir=None if out is None else spec.run_dir,
        )


def _token_lengths(collator: InstructBlipCollator, examples: list) -> tuple[int, int]:
    """The longest prompt (LM tokens after the query tokens) and the longest target of ``examples``' batches."""
    prompts, targets = [], []
    for start in range(0, len(examples), TRAINING.batch_size):
        batch = collator(examples[start : start + TRAINING.batch_size])
        prompts.append(batch["input_ids"].shape[1] - collator.num_query_tokens)
        targets.append(batch["labels"].shape[1])
    return max(prompts), max(targets)


def _count_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())
