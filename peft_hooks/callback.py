"""The transformers Trainer integration that peft does not ship.

The Trainer never calls AdaLoRA's ``update_and_allocate``, so without this callback AdaLoRA
trains with no allocation at all. ``on_optimizer_step`` is the one moment that works: gradients
still exist (``on_step_end`` comes after ``zero_grad``) and ``state.global_step`` is the 0-based
index of the optimizer step just taken.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from .recorder import BudgetRecorder
from .setup import find_adalora_model
from .sinks import RecordSink


class AdaLoraBudgetCallback(TrainerCallback):
    """Drives AdaLoRA's allocation inside ``Trainer`` and records it.

    Records go to ``run_dir`` (default: the Trainer's ``output_dir``); ``seed`` defaults to
    ``args.seed``. Call :meth:`close` with ``"failed"`` if ``train()`` raises.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike | None = None,
        *,
        benchmark: str = "unspecified",
        seed: int | None = None,
        record_every: int | None = None,
        sinks: list[RecordSink] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.benchmark = benchmark
        self.seed = seed
        self.record_every = record_every
        self.sinks = sinks
        self.meta = meta
        self.recorder: BudgetRecorder | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        adalora = find_adalora_model(model)
        config = adalora.peft_config[adalora.trainable_adapter_name]
        if config.total_step != state.max_steps:
            raise ValueError(
                f"AdaLoRA total_step ({config.total_step}) differs from the Trainer's number of optimizer steps "
                f"({state.max_steps}): the budget schedule would end at the wrong step. Build the setup with "
                "total_step=TrainingPlan(...).total_optimizer_steps or set TrainingArguments.max_steps"
            )
        self.recorder = BudgetRecorder(
            self.run_dir if self.run_dir is not None else args.output_dir,
            benchmark=self.benchmark,
            seed=args.seed if self.seed is None else self.seed,
            record_every=self.record_every,
            sinks=self.sinks,
            meta=self.meta,
        )

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.recorder.step(model, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.close("finished")

    def close(self, status: str = "finished") -> None:
        if self.recorder is not None:
            self.recorder.close(status)
