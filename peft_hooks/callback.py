"""The transformers Trainer integration that peft does not ship.

The Trainer never calls AdaLoRA's ``update_and_allocate``, so without this callback AdaLoRA
trains with no allocation at all. ``on_optimizer_step`` is the one moment that works: gradients
still exist (``on_step_end`` comes after ``zero_grad``) and ``state.global_step`` is the 0-based
index of the optimizer step just taken.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .model import adapter_seed, find_adalora_model
from .recorder import BudgetRecorder
from .resume import BUDGET_STATE_FILE, load_budget_state, save_budget_state, untrimmed_adapter_saves
from .sinks import RecordSink


class AdaLoraBudgetCallback(TrainerCallback):
    """Drives AdaLoRA's allocation inside ``Trainer`` and records it.

    Records go to ``run_dir`` (default: the Trainer's ``output_dir``); ``seed``, the records' label, defaults
    to the seed ``add_adalora`` drew the adapter from, else to ``args.seed``. ``fast_allocator=True`` swaps peft's rank allocator for the faster, equivalent
    :class:`~peft_hooks.fast_allocator.FastRankAllocator`. Call :meth:`close` with ``"failed"`` if
    ``train()`` raises.
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
        fast_allocator: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.benchmark = benchmark
        self.seed = seed
        self.record_every = record_every
        self.sinks = sinks
        self.meta = meta
        self.fast_allocator = fast_allocator
        self.recorder: BudgetRecorder | None = None
        self._untrimmed = None  # the untrimmed_adapter_saves context while a checkpoint is being saved

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        adalora = find_adalora_model(model)
        config = adalora.peft_config[adalora.trainable_adapter_name]
        if config.total_step != state.max_steps:
            raise ValueError(
                f"AdaLoRA total_step ({config.total_step}) differs from the Trainer's number of optimizer steps "
                f"({state.max_steps}): the budget schedule would end at the wrong step. Build the setup with "
                "total_step=TrainingPlan(...).total_optimizer_steps or set TrainingArguments.max_steps"
            )
        resume_from_step = None
        if state.global_step > 0:  # train(resume_from_checkpoint=...) restored the Trainer's state
            checkpoint = _checkpoint_dir(args, state)
            resume_from_step = load_budget_state(model, checkpoint)
            if resume_from_step != state.global_step:
                raise ValueError(
                    f"{checkpoint / BUDGET_STATE_FILE}: saved at step {resume_from_step}, the Trainer resumes at "
                    f"step {state.global_step}"
                )
        self.recorder = BudgetRecorder(
            self.run_dir if self.run_dir is not None else args.output_dir,
            benchmark=self.benchmark,
            seed=args.seed if self.seed is None and adapter_seed(adalora) is None else self.seed,
            record_every=self.record_every,
            sinks=self.sinks,
            meta=self.meta,
            fast_allocator=self.fast_allocator,
            resume_from_step=resume_from_step,
        )

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self._end_untrimmed_saves()  # a save that never came: peft's final phase needs the pattern back
        self.recorder.step(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._prepare_checkpoint(control, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._prepare_checkpoint(control, model)

    def _prepare_checkpoint(self, control, model) -> None:
        """A checkpoint is about to be saved: make peft save the untrimmed adapter, which resumes."""
        if control.should_save and self._untrimmed is None:
            self._untrimmed = untrimmed_adapter_saves(model)
            self._untrimmed.__enter__()

    def _end_untrimmed_saves(self) -> None:
        if self._untrimmed is not None:
            self._untrimmed.__exit__(None, None, None)
            self._untrimmed = None

    def on_save(self, args, state, control, model=None, **kwargs):
        """Beside the Trainer's checkpoint, save what AdaLoRA needs to resume exactly (``peft_hooks.resume``)."""
        self._end_untrimmed_saves()
        checkpoint = _checkpoint_dir(args, state)
        if args.should_save and checkpoint.is_dir():
            save_budget_state(model, checkpoint, steps_done=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.close("finished")

    def close(self, status: str = "finished") -> None:
        if self.recorder is not None:
            self.recorder.close(status)


def _checkpoint_dir(args, state) -> Path:
    """The folder the Trainer saves the checkpoint of the current step in."""
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
