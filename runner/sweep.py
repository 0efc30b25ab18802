"""Run a sweep: every run of the grid, skipping finished ones, going on past failed ones.

Several workers can run one sweep side by side (processes on one machine, or jobs of a scheduler): each
run is claimed before it starts (``runner.claims``), a run another live worker holds is left to it, and a
dead worker's run is taken over. ``shard=(i, n)`` gives a worker every n-th run from the i-th.
"""

from __future__ import annotations

import fcntl
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qformer_budget.benchmarks.synthetic import write_synthetic
from qformer_budget.core.atomic import write_json_atomic
from qformer_budget.core.layout import set_aside_path

from .claims import try_claim
from .config import RunSpec, SweepConfig
from .preemption import resumable_checkpoint
from .config import ConfigError
from .train import config_differences, read_status, train_run

logger = logging.getLogger(__name__)
SYNTHETIC_MARKER = ".synthetic-complete"
GRID_FILE = "sweep.json"


@dataclass
class SweepReport:
    finished: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    held: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"{len(self.finished)} finished, {len(self.skipped)} skipped (already finished), "
            f"{len(self.held)} left to the live workers holding them, {len(self.failed)} failed"
        ]
        lines += [f"  FAILED {path}: {error}" for path, error in self.failed.items()]
        return "\n".join(lines)


def ensure_synthetic_data(config: SweepConfig) -> None:
    """Write the synthetic benchmarks the sweep needs under its data root, once (a marker says they are whole).

    Workers starting together take turns on a lock, so one writes and the others find the marker.
    """
    config.data_root.mkdir(parents=True, exist_ok=True)
    with open(config.data_root / ".synthetic.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for benchmark in config.sweep.benchmarks:
            root = config.data_root / benchmark
            if not (root / SYNTHETIC_MARKER).exists():
                write_synthetic(benchmark, root, seed=0)
                (root / SYNTHETIC_MARKER).touch()


def shard_of(runs: list[RunSpec], shard: tuple[int, int] | None) -> list[RunSpec]:
    """Every ``n``-th run from the ``i``-th for ``shard=(i, n)``; all runs for None."""
    if shard is None:
        return runs
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return runs[index::count]


def write_grid(config: SweepConfig) -> None:
    """Keep the sweep's grid in ``OUT/sweep.json``, for ``qformer-budget status``."""
    config.out.mkdir(parents=True, exist_ok=True)
    runs = [{"benchmark": s.benchmark, "method": s.method.tag, "seed": s.seed, "run_dir": str(s.run_dir)} for s in config.runs()]
    write_json_atomic(config.out / GRID_FILE, {"config": str(config.source), "runs": runs})


def run_sweep(
    config: SweepConfig, progress: bool = True, shard: tuple[int, int] | None = None, threads: int | None = None
) -> SweepReport:
    """Train and evaluate every run of ``config`` (of its ``shard``) that no live worker holds; a failed run is
    reported and the sweep goes on. ``threads``: CPU threads for this worker (workers sharing a machine
    should split its cores; by default torch takes them all)."""
    runs = shard_of(config.runs(), shard)
    if threads is not None:
        torch.set_num_threads(threads)
    if config.data.synthetic:
        ensure_synthetic_data(config)
    check_inputs_exist(config)
    write_grid(config)
    report = SweepReport()
    bar = tqdm(runs, desc="sweep", unit="run", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(f"{spec.benchmark}/{spec.method.tag}/seed{spec.seed}")
        if read_status(spec.run_dir) == "finished":
            _skip_finished(spec, report)
            continue
        claim = try_claim(spec.run_dir)
        if claim is None:
            report.held.append(spec.run_dir)
            continue
        with claim:
            state = read_status(spec.run_dir)
            if state == "finished":  # finished by the worker that held it a moment ago
                _skip_finished(spec, report)
                continue
            resume_from = None
            if state == "preempted":  # stopped with a checkpoint: continue it exactly, under the same settings
                if differences := config_differences(spec):
                    report.failed[spec.run_dir] = _stale(differences, "was preempted under other settings")
                    continue
                resume_from = resumable_checkpoint(spec.run_dir)
            if spec.run_dir.exists() and resume_from is None:  # an attempt whose worker is gone: keep it, start clean
                aside = set_aside_path(spec.run_dir, time.strftime("%Y%m%d-%H%M%S"))
                spec.run_dir.rename(aside)
                logger.warning("set aside the unfinished run %s as %s", spec.run_dir, aside)
            try:
                train_run(spec, progress=progress, resume_from=resume_from)
            except Exception as exc:  # one broken run must not stop the sweep
                report.failed[spec.run_dir] = f"{type(exc).__name__}: {exc}"
                logger.error("run %s failed: %s", spec.run_dir, exc)
            else:
                report.finished.append(spec.run_dir)
    return report


def check_inputs_exist(config: SweepConfig) -> None:
    """Refuse, before any run folder exists, a sweep none of whose runs could start: a model folder or a
    benchmark's data folder that is not there (an unedited ``/path/to`` path), all of them named at once."""
    missing = []
    if config.model.path is not None and not Path(config.model.path).is_dir():
        missing.append(f"[model] path {config.model.path} is not a folder")
    missing += [
        f"[data] root has no {benchmark}/ folder ({config.data_root / benchmark})"
        for benchmark in config.sweep.benchmarks
        if not (config.data_root / benchmark).is_dir()
    ]
    if missing:
        raise ConfigError(f"{config.source}: no run can start: {'; '.join(missing)} (qformer-budget run --dry-run checks more)")


def _skip_finished(spec: RunSpec, report: SweepReport) -> None:
    """A finished run is kept, and skipped only if it finished under the settings the config gives now."""
    if differences := config_differences(spec):
        report.failed[spec.run_dir] = _stale(differences, "finished under other settings")
    else:
        report.skipped.append(spec.run_dir)


def _stale(differences: list[str], what: str) -> str:
    return (
        f"{what} ({'; '.join(differences)}); it is kept and not reused: move it away, or give the sweep "
        "another out (--out)"
    )
