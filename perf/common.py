"""What the benchmark scripts share: turn order, fresh child processes, peak memory, synthetic record sets."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pyarrow.parquet as pq

from qformer_budget.analysis import find_runs
from qformer_budget.benchmarks.synthetic_records import write_synthetic_runs

T = TypeVar("T")


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """``items`` starting at ``turn`` (mod their number), so that no variant always runs first."""
    start = turn % len(items)
    return [*items[start:], *items[:start]]


def peak_rss_mib() -> float:
    """This process's peak resident memory: ``VmHWM`` from /proc (``ru_maxrss`` would carry over the
    parent's peak across fork and exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux KiB; an upper bound


def run_child(script: str, *args: str) -> tuple[str, float]:
    """Run ``script --child ARGS`` in a fresh Python process: its last line of output, and its wall time
    (start-up and imports included)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, script, "--child", *args], check=True, capture_output=True, text=True)
    return out.stdout.splitlines()[-1], time.perf_counter() - started


def record_rows(runs_dir: Path) -> int:
    """Record rows of every run below ``runs_dir``, from the Parquet footers."""
    return sum(pq.ParquetFile(run / "records.parquet").metadata.num_rows for run in find_runs(runs_dir))


def ensure_synthetic_runs(folder: Path, **settings) -> None:
    """Write a synthetic record set into ``folder`` (``write_synthetic_runs(**settings)``) unless it holds runs."""
    if folder.exists() and any(folder.rglob("run.json")):
        return
    started = time.perf_counter()
    runs = write_synthetic_runs(folder, **settings)
    print(f"wrote {len(runs)} synthetic runs to {folder} in {time.perf_counter() - started:.1f} s")
