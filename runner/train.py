"""Train, save and evaluate one run of a sweep.

A run folder holds ``config.json`` (the run's settings and package versions), ``status.json``
(``running``, ``finished`` or ``failed``, with the error), the budget records and ``run.json``
(AdaLoRA and routed AdaLoRA runs), ``adapter/`` (what the method trained: peft's ``save_pretrained``, with
``routing.json`` for routed adapters, or MemVP's weights and config), ``metrics.json`` and
``predictions.jsonl``. Metrics are computed on a fresh base model with the saved adapter loaded
back, so they belong to exactly the weights that were saved.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from qformer_budget.benchmarks import load_benchmark
from qformer_budget.peft_hooks import AdaLoraBudgetCallback, AdaLoraSetup, TrainingPlan, add_adalora, load_adapter, save_adapter
from qformer_budget.peft_hooks.recorder import package_versions
from qformer_budget.core.adalora_rules import AdaLoraSchedule
from qformer_budget.core.atomic import write_json_atomic
from qformer_budget.peft_hooks.setup import seeded
from qformer_budget.core.grammar import target_modules_regex
from qformer_budget.vl_methods.memvp import MemVPConfig, add_memvp, load_memvp, save_memvp
from qformer_budget.vl_methods.routing import RoutingConfig, add_routed_adalora, add_routed_lora, load_routed, save_routed

from .collate import InstructBlipCollator
from .config import MethodSpec, ModelSection, RunSpec
from .evaluate import evaluate
from .presets import load_preset
from .tiny import load_tiny_checkpoint

STATUS_FILE = "status.json"


class QuietProgress(ProgressCallback):
    """The Trainer's progress bar without the log lines it prints under it; the logs go to ``train_log.json``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def read_status(run_dir: Path) -> str | None:
    """The run's state (``running``, ``finished``, ``failed``), None if it never started."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))["state"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_status(run_dir: Path, state: str, **details: Any) -> None:
    write_json_atomic(run_dir / STATUS_FILE, {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")} | details)


def load_model(section: ModelSection, device: str) -> tuple[torch.nn.Module, Any, bool]:
    """Base model, processor, and whether its LM is decoder-only; ``tiny`` is the shipped offline checkpoint."""
    if section.preset == "tiny":
        model, processor = load_tiny_checkpoint()
    else:
        model, processor = load_preset(section.preset, section.path, device=device)
    return model.to(device), processor, bool(model.config.use_decoder_only_language_model)


def adalora_setup(method: MethodSpec, plan: TrainingPlan) -> AdaLoraSetup:
    schedule = AdaLoraSchedule.from_fractions(
        plan.total_optimizer_steps, method.warmup_fraction, method.final_fraction, method.deltaT
    )
    return AdaLoraSetup.from_plan(
        plan,
        placement=method.placement,
        init_r=method.init_r,
        target_r=method.target_r,
        tinit=schedule.tinit,
        tfinal=schedule.tfinal,
        deltaT=schedule.deltaT,
        lora_alpha=method.lora_alpha,
    )


def attach_adapter(model: torch.nn.Module, method: MethodSpec, plan: TrainingPlan, seed: int) -> torch.nn.Module:
    """``method`` on ``model``, everything else frozen, the adapter's initialisation drawn from ``seed``.

    AdaLoRA through ``add_adalora``; plain LoRA at a fixed rank on the same sublayers; their routed
    variants (``vl_methods.routing``); MemVP (``vl_methods.memvp``) with its defaults.
    """
    if method.name == "memvp":
        return add_memvp(model, MemVPConfig(), seed=seed)
    if method.records_budget:
        setup = adalora_setup(method, plan)
        if method.name == "adalora":
            return add_adalora(model, setup, seed=seed)
        return add_routed_adalora(model, setup, RoutingConfig(variant=method.routing), seed=seed)
    config = LoraConfig(r=method.rank, lora_alpha=method.lora_alpha, lora_dropout=0.0,
                        target_modules=target_modules_regex(method.placement))
    if method.name == "routed_lora":
        return add_routed_lora(model, config, RoutingConfig(variant=method.routing), seed=seed)
    with seeded(seed):
        return get_peft_model(model, config)


def save_trained(model: torch.nn.Module, method: MethodSpec, folder: Path) -> None:
    """Write what ``method`` trained into ``folder``, in the form :func:`load_trained` reads."""
    if method.name == "memvp":
        save_memvp(model, folder)
    elif method.routed:
        save_routed(model, folder)
    else:
        save_adapter(model, folder)


def load_trained(base: torch.nn.Module, method: MethodSpec, folder: Path) -> torch.nn.Module:
    """``base`` with what :func:`save_trained` wrote into ``folder`` put back."""
    if method.name == "memvp":
        return load_memvp(base, folder)
    if method.routed:
        return load_routed(base, folder)
    return load_adapter(base, folder)


def _sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _limit(examples: list, limit: int | None) -> list:
    return examples if limit is None else examples[:limit]


def train_run(spec: RunSpec, progress: bool = True) -> dict[str, float]:
    """Train, save and evaluate one run; returns its metrics. Status is ``failed`` if anything raises."""
    run_dir = spec.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", spec.to_dict() | {"versions": package_versions()})
    _write_status(run_dir, "running")
    started = time.perf_counter()
    callback = None
    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, processor, decoder_only = load_model(spec.model, device)
        root = Path(spec.data.root) / spec.benchmark
        train_set = _limit(load_benchmark(spec.benchmark, root, spec.data.train_split), spec.data.max_train_examples)
        eval_set = _limit(load_benchmark(spec.benchmark, root, spec.eval_split), spec.data.max_eval_examples)
        training = spec.training
        plan = TrainingPlan(len(train_set), training.batch_size, epochs=training.epochs,
                            gradient_accumulation_steps=training.gradient_accumulation)
        peft_model = attach_adapter(model, spec.method, plan, spec.seed)
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        collator = InstructBlipCollator(processor, training.max_prompt_tokens, decoder_only)
        callbacks = []
        if spec.method.records_budget:
            callback = AdaLoraBudgetCallback(
                benchmark=spec.benchmark, seed=spec.seed, record_every=spec.method.record_every,
                meta={"method": spec.method.tag, "preset": spec.model.preset},
            )
            callbacks.append(callback)
        args = TrainingArguments(
            output_dir=str(run_dir), per_device_train_batch_size=training.batch_size,
            gradient_accumulation_steps=training.gradient_accumulation, num_train_epochs=training.epochs,
            learning_rate=training.learning_rate, weight_decay=training.weight_decay, seed=spec.seed,
            lr_scheduler_type="linear", save_strategy="no", logging_steps=max(1, math.ceil(plan.total_optimizer_steps / 10)),
            report_to=[], use_cpu=device == "cpu", bf16=device == "cuda" and training.bf16_on_gpu,
            remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=not progress,
        )
        trainer = Trainer(
            model=peft_model, args=args, train_dataset=train_set, data_collator=collator, callbacks=callbacks
        )
        if progress:
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(QuietProgress)
        trainer.train()
        write_json_atomic(run_dir / "train_log.json", {"log_history": trainer.state.log_history})
        save_trained(peft_model, spec.method, run_dir / "adapter")
        train_seconds = time.perf_counter() - started

        base, _, _ = load_model(spec.model, device)
        saved = load_trained(base, spec.method, run_dir / "adapter").to(device)
        metrics, predictions = evaluate(saved, collator, eval_set, batch_size=2 * training.batch_size,
                                        max_new_tokens=training.max_new_tokens, num_beams=training.num_beams)
        with open(run_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in predictions)
        report = {
            "benchmark": spec.benchmark, "split": spec.eval_split, "seed": spec.seed, "method": spec.method.tag,
            "metrics": metrics, "adapter_sha256": _sha256(run_dir / "adapter"),
            "trainable_parameters": trainable, "train_examples": len(train_set),
            "optimizer_steps": plan.total_optimizer_steps,
            "train_seconds": round(train_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
        }
        write_json_atomic(run_dir / "metrics.json", report)
        _write_status(run_dir, "finished", seconds=report["total_seconds"])
        return metrics
    except BaseException as exc:
        if callback is not None:
            callback.close("failed")
        _write_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
