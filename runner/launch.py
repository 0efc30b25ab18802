"""Start a sweep's workers on a scheduler through submitit: a Slurm array job, or processes on this machine.

Every worker is an ordinary sweep worker (``run_sweep``): runs are claimed, so workers never train a run
twice and a dead worker's run is taken over. Slurm gets one array task per run (task ``i`` takes run ``i``);
the local launcher starts ``local_workers`` processes that take runs as they come, splitting the cores.

On preemption (SIGTERM) or before the time limit (submitit asks Slurm for ``USR2``), the worker stops after
the current optimizer step with a checkpoint, closes the run as ``preempted`` and frees its claim; then
submitit requeues the task, which resumes the run from the checkpoint.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import submitit

from qformer_budget.core.run_folder import Preempted

from .config import LauncherSection, SweepConfig, load_config
from .preemption import STOP
from .sweep import SweepReport, run_sweep

LAUNCHERS = ("slurm", "local")


@dataclass
class SweepWorker(submitit.helpers.Checkpointable):
    """One worker of a sweep, as submitit runs it; requeued with the same arguments after a preemption."""

    config: Path
    out: Path
    shard: tuple[int, int] | None
    threads: int | None

    def __call__(self) -> str:
        config = load_config(self.config).with_paths(out=self.out)
        requeue = signal.getsignal(submitit.JobEnvironment._usr_sig())  # submitit's: checkpoint and requeue
        # Stop after the current step, then requeue: on submitit's signal before the time limit, and on the
        # SIGTERM Slurm sends when it preempts the job (which submitit alone would let pass).
        signal.signal(submitit.JobEnvironment._usr_sig(), STOP.request)
        signal.signal(signal.SIGTERM, STOP.request)
        try:
            report = run_sweep(config, progress=False, shard=self.shard, threads=self.threads)
        except Preempted:
            if callable(requeue):
                requeue(submitit.JobEnvironment._usr_sig(), None)  # the run is closed and its claim freed by now
            raise
        return report.summary()


def executor(config: SweepConfig, launcher: str) -> submitit.Executor:
    """A submitit executor for ``launcher``, its logs under ``OUT/submitit``."""
    folder = config.out / "submitit"
    settings: LauncherSection = config.launcher
    if launcher == "slurm":
        chosen = submitit.SlurmExecutor(folder=folder)
        chosen.update_parameters(
            partition=settings.partition, gpus_per_node=settings.gpus_per_run, cpus_per_task=settings.cpus_per_run,
            mem=f"{settings.mem_gb}GB", time=settings.time_min, array_parallelism=settings.array_parallelism,
            signal_delay_s=120, additional_parameters=dict(settings.sbatch),
        )
        return chosen
    if launcher == "local":
        chosen = submitit.LocalExecutor(folder=folder)
        chosen.update_parameters(timeout_min=settings.time_min)
        return chosen
    raise ValueError(f"unknown launcher {launcher!r}; launchers are {', '.join(LAUNCHERS)}")


def sweep_workers(config: SweepConfig, launcher: str) -> list[SweepWorker]:
    """Slurm: one worker per run (task ``i`` takes run ``i``), with ``cpus_per_run`` threads. Local:
    ``local_workers`` workers taking runs as they come, splitting this machine's cores between them."""
    if launcher == "slurm":
        count = len(config.runs())
        return [SweepWorker(config.source, config.out, (i, count), config.launcher.cpus_per_run) for i in range(count)]
    count = config.launcher.local_workers
    threads = max(1, (os.cpu_count() or 1) // count)
    return [SweepWorker(config.source, config.out, None, threads) for _ in range(count)]


def launch(config: SweepConfig, launcher: str) -> list[submitit.Job]:
    """Submit the sweep's workers; returns their jobs (Slurm: one array task per run)."""
    chosen = executor(config, launcher)
    with chosen.batch():
        jobs = [chosen.submit(worker) for worker in sweep_workers(config, launcher)]
    return jobs


def wait(jobs: list[submitit.Job]) -> list[str]:
    """Each job's report, once all are done; a failed job raises submitit's error, which names it."""
    return [job.result() for job in jobs]


__all__ = ["LAUNCHERS", "SweepReport", "SweepWorker", "executor", "launch", "sweep_workers", "wait"]
