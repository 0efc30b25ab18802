"""Train, save and evaluate one run of a sweep.

A run folder holds ``config.json`` (the run's settings and package versions), ``status.json``
(``running``, ``finished`` or ``failed``, with the error), the budget records and ``run.json``
(AdaLoRA and routed AdaLoRA runs), ``adapter/`` (what the method trained: peft's ``save_pretrained``, with
``routing.json`` for routed adapters, or MemVP's weights and config), ``metrics.json`` and
``predictions.jsonl``. Metrics are computed on a fresh base model with the saved adapter loaded
back, so they belong to exactly the weights that were saved.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from qformer_budget.benchmarks import load_benchmark
from qformer_budget.core.atomic import atomic_write, write_json_atomic
from qformer_budget.core.run_folder import closing_status, dotted_items, package_versions
from qformer_budget.peft_hooks import AdaLoraBudgetCallback, TrainingPlan

from .collate import InstructBlipCollator
from .config import ModelSection, RunSpec
from .evaluate import evaluate
from .methods import get_method
from .preemption import PreemptionCallback, raise_if_stopped
from .presets import TINY_PRESET, load_preset
from .tiny import load_tiny_checkpoint

STATUS_FILE = "status.json"
ADAPTER_DIR = "adapter"


class QuietProgress(ProgressCallback):
    """The Trainer's progress bar without the log lines it prints under it; the logs go to ``train_log.json``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def read_status_file(run_dir: Path) -> dict[str, Any]:
    """The run's ``status.json``: ``{}`` if it never started, state ``unreadable`` (with the error) if damaged."""
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        return {"state": "unreadable", "error": f"{run_dir / STATUS_FILE}: {exc}"}
    return status if isinstance(status, dict) else {"state": "unreadable", "error": f"{run_dir / STATUS_FILE}: not an object"}


def config_differences(spec: RunSpec) -> list[str]:
    """How the settings ``spec.run_dir/config.json`` recorded differ from ``spec``'s, one ``key: old -> new``
    each (package versions aside); empty when they agree or when no config was recorded."""
    recorded_file = spec.run_dir / "config.json"
    if not recorded_file.is_file():
        return []
    recorded = dotted_items(json.loads(recorded_file.read_text(encoding="utf-8")))
    current = dotted_items(json.loads(json.dumps(spec.to_dict())))
    return [
        f"{key}: {recorded.get(key, '(absent)')!r} -> {current.get(key, '(absent)')!r}"
        for key in sorted(recorded.keys() | current.keys())
        if not key.startswith("versions.") and recorded.get(key, "(absent)") != current.get(key, "(absent)")
    ]


def read_status(run_dir: Path) -> str | None:
    """The run's state (``running``, ``finished``, ``failed``, ``preempted``), None if it never started."""
    return read_status_file(run_dir).get("state")


def _write_status(run_dir: Path, state: str, **details: Any) -> None:
    write_json_atomic(run_dir / STATUS_FILE, {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")} | details)


def default_device() -> str:
    """Where runs train: the GPU if there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# Base model, processor, and whether its LM is decoder-only, for a run's model section on a device.
ModelLoader = Callable[[ModelSection, str], tuple[torch.nn.Module, Any, bool]]


def load_model(section: ModelSection, device: str) -> tuple[torch.nn.Module, Any, bool]:
    """Base model, processor, and whether its LM is decoder-only; ``tiny`` is the shipped offline checkpoint."""
    if section.preset == TINY_PRESET.name:
        model, processor = load_tiny_checkpoint()
    else:
        model, processor = load_preset(section.preset, section.path, device=device)
    return model.to(device), processor, bool(model.config.use_decoder_only_language_model)


def _sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def load_split(
    spec: RunSpec, split: str, limit: int | None, missing_images: dict[Path, str] | None = None
) -> list:
    """The examples of the run's benchmark's ``split``, cut to ``limit`` (``missing_images``: see
    ``load_benchmark``)."""
    examples = load_benchmark(spec.benchmark, Path(spec.data.root) / spec.benchmark, split, missing_images)
    return examples if limit is None else examples[:limit]


def load_data(spec: RunSpec) -> tuple[list, list]:
    """The run's training and evaluation examples, each cut to the config's limit."""
    (train_split, train_limit), (eval_split, eval_limit) = spec.splits
    return load_split(spec, train_split, train_limit), load_split(spec, eval_split, eval_limit)


def train(
    spec: RunSpec, model: torch.nn.Module, collator: InstructBlipCollator, train_set: list, device: str, progress: bool,
    resume_from: str | None = None, callbacks: Sequence[TrainerCallback] = (),
) -> tuple[torch.nn.Module, TrainingPlan, list[dict]]:
    """Put the run's method on ``model`` and train it with the Trainer (AdaLoRA's budget recorded into the run
    folder, then ``callbacks``), from the checkpoint ``resume_from`` if given; returns the trained model, the plan
    and the Trainer's log. The records are closed ``failed`` if training raises; a stop request
    (``runner.preemption``) ends training with a checkpoint, the records closed ``preempted``, and raises
    ``Preempted``."""
    training = spec.training
    plan = TrainingPlan(len(train_set), training.batch_size, epochs=training.epochs,
                        gradient_accumulation_steps=training.gradient_accumulation)
    trained = get_method(spec.method.name).attach(model, spec.method, plan, spec.seed)
    budget = []
    if spec.method.records_budget:
        budget.append(AdaLoraBudgetCallback(
            benchmark=spec.benchmark, seed=spec.seed, record_every=spec.method.record_every,
            meta={"method": spec.method.tag, "preset": spec.model.preset},
        ))
    callbacks = [PreemptionCallback(budget), *budget, *callbacks]
    args = TrainingArguments(
        output_dir=str(spec.run_dir), per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation, num_train_epochs=training.epochs,
        learning_rate=training.learning_rate, weight_decay=training.weight_decay, seed=spec.seed,
        lr_scheduler_type="linear", save_strategy="no", logging_steps=max(1, math.ceil(plan.total_optimizer_steps / 10)),
        report_to=[], use_cpu=device == "cpu", bf16=device == "cuda" and training.bf16_on_gpu,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=not progress,
    )
    trainer = Trainer(model=trained, args=args, train_dataset=train_set, data_collator=collator, callbacks=callbacks)
    if progress:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(QuietProgress)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except BaseException as exc:
        for callback in budget:
            callback.close(closing_status(exc))
        raise
    raise_if_stopped()
    return trained, plan, trainer.state.log_history


def load_saved(spec: RunSpec, device: str, load: ModelLoader = load_model) -> torch.nn.Module:
    """The adapter saved in the run folder, loaded back onto a fresh base model from ``load``."""
    base, _, _ = load(spec.model, device)
    return get_method(spec.method.name).load(base, spec.run_dir / ADAPTER_DIR).to(device)


def train_run(
    spec: RunSpec, progress: bool = True, resume_from: str | None = None, load: ModelLoader = load_model,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, float]:
    """Train (from the checkpoint ``resume_from`` of a stopped attempt, if given), save and evaluate one run;
    returns its metrics. Status is ``failed`` if anything raises, ``preempted`` if the scheduler stopped it.

    ``load`` gives the base model (a rehearsal passes a builder of random weights), ``callbacks`` go to the
    Trainer after the run's own. The trained model is released before a fresh base model is loaded for
    evaluation, so one base model is in memory at a time; ``metrics.json`` gives each phase's seconds.
    """
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", spec.to_dict() | {"versions": package_versions()})
    _write_status(run_dir, "running")
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(phase: str) -> None:  # the seconds since the previous phase ended
        seconds[phase] = time.perf_counter() - started - sum(seconds.values())

    try:
        device = default_device()
        train_set, eval_set = load_data(spec)
        model, processor, decoder_only = load(spec.model, device)
        lap("load")
        collator = InstructBlipCollator(processor, spec.training.max_prompt_tokens, decoder_only)
        trained, plan, log_history = train(spec, model, collator, train_set, device, progress, resume_from, callbacks)
        lap("train")
        trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
        write_json_atomic(run_dir / "train_log.json", {"log_history": log_history})
        get_method(spec.method.name).save(trained, run_dir / ADAPTER_DIR)
        del model, trained
        gc.collect()  # the Trainer leaves reference cycles to the trained model
        lap("save")
        train_seconds = time.perf_counter() - started

        saved = load_saved(spec, device, load)
        lap("reload")
        training = spec.training
        metrics, predictions = evaluate(saved, collator, eval_set, batch_size=2 * training.batch_size,
                                        max_new_tokens=training.max_new_tokens, num_beams=training.num_beams)
        lap("evaluate")
        with atomic_write(run_dir / "predictions.jsonl") as f:
            f.writelines(json.dumps(row) + "\n" for row in predictions)
        report = {
            "benchmark": spec.benchmark, "split": spec.eval_split, "seed": spec.seed, "method": spec.method.tag,
            "metrics": metrics, "adapter_sha256": _sha256(run_dir / ADAPTER_DIR),
            "trainable_parameters": trainable, "train_examples": len(train_set),
            "optimizer_steps": plan.total_optimizer_steps,
            "seconds": {phase: round(t, 1) for phase, t in seconds.items()},
            "train_seconds": round(train_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
        }
        write_json_atomic(run_dir / "metrics.json", report)
        _write_status(run_dir, "finished", seconds=report["total_seconds"])
        return metrics
    except BaseException as exc:
        _write_status(run_dir, closing_status(exc), error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
