"""Run a sweep: every run of the grid, skipping finished ones, going on past failed ones."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from qformer_budget.benchmarks.synthetic import write_synthetic
from qformer_budget.core.run_folder import set_aside_path

from .config import RunSpec, SweepConfig
from .train import read_status, train_run

logger = logging.getLogger(__name__)
SYNTHETIC_MARKER = ".synthetic-complete"


@dataclass
class SweepReport:
    finished: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.finished)} finished, {len(self.skipped)} skipped (already finished), {len(self.failed)} failed"]
        lines += [f"  FAILED {path}: {error}" for path, error in self.failed.items()]
        return "\n".join(lines)


def ensure_synthetic_data(config: SweepConfig) -> None:
    """Write the synthetic benchmarks the sweep needs under its data root, once (a marker says they are whole)."""
    for benchmark in config.sweep.benchmarks:
        root = config.data_root / benchmark
        if not (root / SYNTHETIC_MARKER).exists():
            write_synthetic(benchmark, root, seed=0)
            (root / SYNTHETIC_MARKER).touch()


def _set_aside(run_dir: Path) -> Path:
    """Move an unfinished run folder out of the way, so its records are kept and the rerun starts clean."""
    aside = set_aside_path(run_dir, time.strftime("%Y%m%d-%H%M%S"))
    run_dir.rename(aside)
    return aside


def run_sweep(config: SweepConfig, progress: bool = True) -> SweepReport:
    """Train and evaluate every run of ``config``; a failed run is reported and the sweep goes on."""
    if config.data.synthetic:
        ensure_synthetic_data(config)
    report = SweepReport()
    runs: list[RunSpec] = config.runs()
    bar = tqdm(runs, desc="sweep", unit="run", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(f"{spec.benchmark}/{spec.method.tag}/seed{spec.seed}")
        state = read_status(spec.run_dir)
        if state == "finished":
            report.skipped.append(spec.run_dir)
            continue
        if spec.run_dir.exists():
            logger.warning("set aside the unfinished run %s as %s", spec.run_dir, _set_aside(spec.run_dir))
        try:
            train_run(spec, progress=progress)
        except Exception as exc:  # one broken run must not stop the sweep
            report.failed[spec.run_dir] = f"{type(exc).__name__}: {exc}"
            logger.error("run %s failed: %s", spec.run_dir, exc)
        else:
            report.finished.append(spec.run_dir)
    return report
