"""Where every run of a sweep stands: finished, running (and who holds it), preempted, failed, not started."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd

from qformer_budget.core.run_folder import RecordError, read_record_file, read_run_meta, record_files

from .claims import claim_path, is_live, read_claim
from .sweep import GRID_FILE
from .train import read_status_file

STATUS_COLUMNS = ["benchmark", "method", "seed", "state", "detail"]


def _last_step(run_dir: Path) -> str:
    """The last recorded step of a run's records, or why there is none to tell."""
    try:
        files = record_files(run_dir, read_run_meta(run_dir))
        steps = [read_record_file(f.path, ["step"]).column("step").to_pylist() for f in files[-1:]]
    except RecordError:
        return "no records yet"
    return f"step {max(steps[0])}" if steps and steps[0] else "no records yet"


def run_state(run_dir: Path) -> tuple[str, str]:
    """``(state, detail)`` of one run folder of a sweep."""
    claim = read_claim(run_dir)
    status = read_status_file(run_dir)
    state = status.get("state")
    if claim is not None and is_live(claim, claim_path(run_dir)):
        beat = claim.get("heartbeat")
        ago = f", heartbeat {time.time() - float(beat):.0f} s ago" if beat else ""
        job = f", job {claim['job_id']}" if claim.get("job_id") else ""
        return "running", f"held by {claim.get('host')} pid {claim.get('pid')}{job}{ago}; {_last_step(run_dir)}"
    if state == "finished":
        return "finished", f"{status.get('seconds', '?')} s"
    if state in ("failed", "preempted", "unreadable"):
        return state, status.get("error", "")
    if state == "running" or run_dir.exists():
        return "stopped", "its worker is gone; the next worker sets this attempt aside and runs it again"
    return "not started", ""


def sweep_status(out: str | os.PathLike) -> pd.DataFrame:
    """One row per run of the sweep written to ``out`` (its ``sweep.json``): ``benchmark, method, seed, state, detail``."""
    grid_file = Path(out) / GRID_FILE
    try:
        grid = json.loads(grid_file.read_text(encoding="utf-8"))["runs"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{grid_file}: no sweep has started in {out} (qformer-budget run writes it)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{grid_file}: not a readable sweep grid ({exc})") from exc
    rows = [(r["benchmark"], r["method"], r["seed"], *run_state(Path(r["run_dir"]))) for r in grid]
    return pd.DataFrame(rows, columns=STATUS_COLUMNS)


def format_status(table: pd.DataFrame) -> str:
    counts = table["state"].value_counts()
    summary = ", ".join(f"{counts[state]} {state}" for state in counts.index)
    return table.to_string(index=False) + f"\n{len(table)} runs: {summary}"
