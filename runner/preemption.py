"""Stopping a run when the scheduler says so, at a step boundary, with a checkpoint to resume from exactly.

A stop request (SIGTERM, or submitit's preemption signal) made while the Trainer trains is honoured after
the current optimizer step: the Trainer saves a checkpoint (adapter, optimizer, scheduler, RNG and, for
AdaLoRA, the budget state), the budget records close as ``preempted``, and :class:`Preempted` is raised.
The next worker to take the run resumes from that checkpoint (``trainer.train(resume_from_checkpoint=...)``),
and its records continue the stopped ones. A request outside training (loading, evaluating) raises at once.
"""

from __future__ import annotations

import signal
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from qformer_budget.core.run_folder import Preempted


class StopRequest:
    """The one pending stop of this process; the signal handler and the Trainer callback share it."""

    def __init__(self) -> None:
        self.training = False
        self.reason: str | None = None

    def request(self, signum: int, frame=None) -> None:
        """A signal handler: stop after the current step while training, else now."""
        self.reason = f"stopped by signal {signal.Signals(signum).name}"
        if not self.training:
            raise Preempted(self.reason)


STOP = StopRequest()


class PreemptionCallback(TrainerCallback):
    """Turns a pending stop into a checkpoint and an early end of training; put it before the other callbacks."""

    def __init__(self, budget_callbacks: list) -> None:
        self.budget_callbacks = budget_callbacks

    def on_train_begin(self, args, state, control, **kwargs):
        STOP.training = True

    def on_step_end(self, args, state, control, **kwargs):
        if STOP.reason is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        STOP.training = False
        if STOP.reason is not None:
            for callback in self.budget_callbacks:  # before their own on_train_end would close as finished
                callback.close("preempted")


def raise_if_stopped() -> None:
    """After training returned: raise :class:`Preempted` if it ended on a stop request."""
    if STOP.reason is not None:
        raise Preempted(STOP.reason)


def resumable_checkpoint(run_dir: Path) -> str | None:
    """The newest Trainer checkpoint in ``run_dir``, if a stopped attempt left one."""
    return get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None


__all__ = ["STOP", "PreemptionCallback", "StopRequest", "raise_if_stopped", "resumable_checkpoint"]
