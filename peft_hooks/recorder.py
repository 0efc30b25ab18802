"""The budget recorder: drives peft's AdaLoRA allocation and records it, step by step.

``BudgetRecorder.step(model, global_step)`` replaces your call to
``model.base_model.update_and_allocate(global_step)``: call it after ``optimizer.step()`` and
before ``optimizer.zero_grad()``, once per optimizer step, with 0-based steps.

Scores are read from peft's own rank allocator with peft's element and triplet formulas, in the
same rounding order, so they are bit for bit the numbers peft masks with. At the final mask step
(``total_step - tfinal``) peft masks with the averages it already holds and then clears them, so
they are read before the call there and after the call everywhere else.

On the training thread a recorded step costs one vectorised score computation and a few small
copies; turning the step into table rows and writing them happens in the sinks' own threads.
``fast_allocator=True`` also swaps peft's allocator for :class:`FastRankAllocator` (same masks,
several times faster).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch
from peft.tuners.adalora import AdaLoraModel

from qformer_budget.core.adalora_rules import AdaLoraSchedule, kept_directions, threshold_rank
from qformer_budget.core.records import ModuleInfo, StepRecord
from qformer_budget.core.run_folder import closing_status, package_versions
from qformer_budget.core.schema import SCHEMA_VERSION

from .fast_allocator import DictTripletScores, FastRankAllocator, use_fast_allocator
from .model import adapter_seed, allocator_parameters, find_adalora_model
from .peft_internals import AdaLoraLayer, allocator_averages, update_once_per_step
from .sinks import ParquetSink, RecordSink


def is_main_process() -> bool:
    """True unless torch.distributed runs and this is not the process of rank 0."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def adapted_modules(adalora: AdaLoraModel, adapter: str) -> tuple[ModuleInfo, ...]:
    """The modules carrying the adapter, in model order."""
    found = []
    for name, module in adalora.model.named_modules():
        if isinstance(module, AdaLoraLayer) and adapter in module.lora_E:
            found.append(ModuleInfo(name, module.in_features, module.out_features))
    return tuple(found)


def triplet_scores(
    adalora: AdaLoraModel, modules: tuple[ModuleInfo, ...], adapter: str, scorer: DictTripletScores | None = None
) -> torch.Tensor | None:
    """AdaLoRA's triplet score of every direction, ``(n_modules, init_r)``, as the allocator computes it for masking.

    None when the allocator holds no importance averages (before the first update, after they are cleared).
    ``scorer`` (for peft's allocator) can be kept across calls to reuse its buffer.
    """
    allocator = adalora.rankallocator
    if isinstance(allocator, FastRankAllocator):
        return allocator.triplet_scores(modules)
    return (scorer or DictTripletScores(modules, adapter, adalora.peft_config[adapter].init_r))(allocator)


class BudgetRecorder:
    """Drives AdaLoRA's allocation and records rank and importance of every adapted module.

    Records are taken on every step that is a multiple of ``record_every`` (default: the
    config's ``deltaT``), on every mask step, and on the last step. Use it as a context manager,
    or call :meth:`close`; only the process of rank 0 writes.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike | None,
        *,
        benchmark: str = "unspecified",
        seed: int | None = None,
        record_every: int | None = None,
        sinks: list[RecordSink] | None = None,
        meta: dict[str, Any] | None = None,
        fast_allocator: bool = False,
        resume_from_step: int | None = None,
    ) -> None:
        """``seed``: the records' seed label; it seeds nothing. It defaults to the seed ``add_adalora`` drew the
        adapter from (0 if there is none), and one that contradicts that seed is refused at the first step.
        ``fast_allocator``: swap peft's rank allocator for :class:`FastRankAllocator` at the first step.
        ``resume_from_step``: the 0-based step a resumed run continues at (see ``peft_hooks.resume``);
        the records continue in ``run_dir`` and the stopped session's rows from that step on are superseded.
        """
        if record_every is not None and record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {record_every}")
        self.benchmark = benchmark
        self.seed = None if seed is None else int(seed)
        self.record_every = record_every
        self.meta = dict(meta or {})
        self.fast_allocator = fast_allocator
        self.resume_from_step = resume_from_step
        self.sinks: list[RecordSink] = []
        if is_main_process():
            if run_dir is not None:
                self.sinks.append(ParquetSink(run_dir))
            self.sinks.extend(sinks or [])
        self._modules: tuple[ModuleInfo, ...] | None = None
        self._dict_scores: DictTripletScores | None = None
        self._kept_for: tuple[dict[str, Any] | None, np.ndarray] | None = None
        self._last_step: int | None = None if resume_from_step is None else resume_from_step - 1
        self._closed = False

    def _start(self, adalora: AdaLoraModel) -> None:
        if self.resume_from_step is None and allocator_averages(adalora.rankallocator)["exp_avg_ipt"]:
            raise RuntimeError(
                "AdaLoRA's update_and_allocate already ran before this BudgetRecorder's first step: it would update "
                "the importance averages twice. BudgetRecorder.step calls it once per step: remove your own call to "
                "update_and_allocate (or start the recorder on a fresh model)"
            )
        drawn = adapter_seed(adalora)
        if self.seed is None:
            self.seed = 0 if drawn is None else drawn
        elif drawn is not None and drawn != self.seed:
            raise ValueError(
                f"BudgetRecorder(seed={self.seed}) would label the records with a seed that did not make them: "
                f"add_adalora drew the adapter from seed {drawn}; pass seed={drawn} or leave seed out"
            )
        update_once_per_step(adalora)
        if self.fast_allocator:
            use_fast_allocator(adalora)
        adapter = adalora.trainable_adapter_name
        self._modules = adapted_modules(adalora, adapter)
        self._lora_params = list(allocator_parameters(adalora).items())  # update_ipt reads their gradients
        config = adalora.peft_config[adapter]
        self._schedule = AdaLoraSchedule(config.total_step, config.tinit, config.tfinal, config.deltaT)
        self._dict_scores = DictTripletScores(self._modules, adapter, config.init_r)
        if self.record_every is None:
            self.record_every = config.deltaT
        meta = {
            "schema_version": SCHEMA_VERSION,
            "benchmark": self.benchmark,
            "seed": self.seed,
            "record_every": self.record_every,
            "adalora": {
                key: getattr(config, key)
                for key in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight")
            }
            | {"total_step": config.total_step, "target_modules": str(config.target_modules)},
            "modules": [m.module for m in self._modules],
            "allocator": type(adalora.rankallocator).__name__,
            "versions": package_versions(),
        } | self.meta
        for sink in self.sinks:
            if self.resume_from_step is None:
                sink.start(meta)
            else:
                sink.resume(meta, self.resume_from_step)

    def step(self, model: torch.nn.Module, global_step: int) -> StepRecord | None:
        """Run peft's ``update_and_allocate(global_step)`` and record the step if it is due."""
        if self._closed:
            raise RuntimeError("this BudgetRecorder is closed")
        if self._last_step is not None and global_step <= self._last_step:
            raise ValueError(
                f"step() got global_step {global_step} after {self._last_step}: call it once per optimizer step "
                "with increasing 0-based steps (not once per micro-batch)"
            )
        adalora = find_adalora_model(model)
        if self._modules is None:
            self._start(adalora)
        config = adalora.peft_config[adalora.trainable_adapter_name]
        schedule = self._schedule
        if global_step < schedule.final_mask_step:
            self._check_gradients()

        due = bool(schedule.is_recorded(global_step, self.record_every))
        # peft masks the final time with the averages it holds, then clears them: read them before there.
        final_mask = global_step == schedule.final_mask_step
        scores = self._triplet_scores(adalora) if due and final_mask else None
        if isinstance(adalora.rankallocator, FastRankAllocator):
            adalora.rankallocator.score_next_update = due  # the element scores come out of the update pass
        adalora.update_and_allocate(global_step)
        self._last_step = global_step
        if not due:
            return None
        if global_step < schedule.final_mask_step:
            scores = self._triplet_scores(adalora)
        record = self._make_record(adalora, config, schedule, global_step, scores)
        for sink in self.sinks:
            sink.write(record)
        return record

    def _triplet_scores(self, adalora: AdaLoraModel) -> torch.Tensor | None:
        """:func:`triplet_scores`, reusing this recorder's layout and buffer for peft's own allocator."""
        return triplet_scores(adalora, self._modules, adalora.trainable_adapter_name, self._dict_scores)

    def _kept_directions(self, rank_pattern: dict[str, Any] | None, adapter: str, init_r: int) -> np.ndarray:
        """``kept_directions``, computed again only when peft assigned a new rank_pattern (it does on mask steps)."""
        if self._kept_for is None or self._kept_for[0] is not rank_pattern:
            kept = kept_directions(rank_pattern, [m.module for m in self._modules], adapter, init_r)
            kept.flags.writeable = False  # shared by the records of every step until the next mask
            self._kept_for = (rank_pattern, kept)
        return self._kept_for[1]

    def _make_record(
        self, adalora: AdaLoraModel, config, schedule: AdaLoraSchedule, global_step: int, scores: torch.Tensor | None
    ) -> StepRecord:
        allocator = adalora.rankallocator
        budget, _ = allocator.budget_schedule(global_step)
        mask_step = bool(schedule.is_mask_step(global_step))
        threshold = float("nan")
        if mask_step and scores is not None:
            k = threshold_rank(allocator.init_bgt, budget)
            threshold = torch.kthvalue(scores.reshape(-1), k=k)[0].item()
        return StepRecord(
            benchmark=self.benchmark,
            seed=self.seed,
            global_step=global_step,
            phase=schedule.phase(global_step),
            mask_step=mask_step,
            budget=int(budget),
            threshold=threshold,
            init_r=config.init_r,
            modules=self._modules,
            direction_kept=self._kept_directions(config.rank_pattern, adalora.trainable_adapter_name, config.init_r),
            direction_scores=None if scores is None else scores.detach().to("cpu", torch.float32).numpy(),
        )

    def _check_gradients(self) -> None:
        for name, param in self._lora_params:
            if param.grad is None:
                raise RuntimeError(
                    f"AdaLoRA parameter {name} has no gradient: call step() after optimizer.step() and before "
                    "optimizer.zero_grad() (with the Trainer, AdaLoraBudgetCallback does this in on_optimizer_step)"
                )

    def close(self, status: str = "finished") -> None:
        """Flush and close every sink; safe to call more than once.

        A run closed ``finished`` before its schedule's last step closes ``stopped_early`` instead, with a
        warning naming the step: its budget may never have reached the target.
        """
        if self._closed:
            return
        self._closed = True
        if status == "finished" and self._modules is not None and self._last_step < self._schedule.total_step - 1:
            schedule = self._schedule
            warnings.warn(
                f"BudgetRecorder closed after step {self._last_step} of a {schedule.total_step}-step AdaLoRA schedule "
                f"(final mask at step {schedule.final_mask_step}): the run is recorded as 'stopped_early', not "
                "'finished'; set total_step to the steps the loop takes (AdaLoraSetup.from_plan)",
                RuntimeWarning,
                stacklevel=2,
            )
            status = "stopped_early"
        errors = []
        for sink in self.sinks:
            try:
                sink.close(status)
            except Exception as exc:  # close every sink before reporting
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> BudgetRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(closing_status(exc))

