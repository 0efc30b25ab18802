"""A training process killed with SIGKILL keeps every record flushed before the kill.

Kill moments: just before each durable filesystem step of a whole run (every part renamed into
place, the compaction, the removal of the parts, both writes of run.json) and at random times.
"""

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qformer_budget.analysis import RecordError, load_runs

HARNESS = Path(__file__).with_name("crash_harness.py")
N_MODULES = 120
RANDOM_MOMENTS = 8


@pytest.fixture(scope="module")
def harness():
    process = subprocess.Popen(
        [sys.executable, str(HARNESS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=HARNESS.parent,
    )

    def run(request: dict) -> dict:
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        return json.loads(process.stdout.readline())

    yield run
    process.stdin.close()
    process.wait(timeout=60)


def _check_intact(run_dir: Path, flushed: dict[str, int]) -> int:
    """The run reads, has no half step, forms a gap-free prefix and holds every flushed row; returns rows read."""
    if not (run_dir / "run.json").exists():
        assert not flushed, "parts were flushed before run.json"
        with pytest.raises((RecordError, FileNotFoundError)):  # killed before the recorder started
            load_runs(run_dir)
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = load_runs(run_dir)
    per_step = records.groupby("step").size()
    assert (per_step == N_MODULES).all(), "a step is half-recorded"
    assert per_step.index.tolist() == list(range(1, len(per_step) + 1)), "the steps are not a gap-free prefix"
    assert len(records) >= sum(flushed.values()), "a flushed record was lost"
    parts = run_dir / "records"
    if parts.is_dir() and not (run_dir / "records.parquet").exists():
        assert len(pd.read_parquet(parts)) == len(records)  # plain pandas reads it too
    return len(records)


@pytest.fixture(scope="module")
def reference(harness, tmp_path_factory):
    """An unkilled run: its duration, its number of durable steps and its rows."""
    run_dir = tmp_path_factory.mktemp("crash") / "reference"
    started = time.monotonic()
    answer = harness({"run_dir": str(run_dir), "kill_before_write": 0})
    assert not answer["killed"]
    return {"seconds": time.monotonic() - started, "durable_steps": answer["durable_steps"], "rows": _check_intact(run_dir, {})}


@pytest.mark.slow
def test_sigkill_before_every_durable_step(harness, reference, tmp_path):
    total_rows, durable_steps = reference["rows"], reference["durable_steps"]
    assert durable_steps >= 6  # run.json twice, at least two parts, the compaction and the removal of the parts
    for moment in range(1, durable_steps + 1):
        run_dir = tmp_path / f"kill{moment:02d}"
        answer = harness({"run_dir": str(run_dir), "kill_before_write": moment})
        assert answer["killed"], moment
        rows = _check_intact(run_dir, answer["flushed"])
        assert rows <= total_rows
    assert rows == total_rows  # the last kill came just before rewriting run.json: every row is there


@pytest.mark.slow
def test_sigkill_at_random_moments(harness, reference, tmp_path):
    rng = np.random.default_rng(20261123)
    for moment, delay in enumerate(rng.uniform(0, reference["seconds"], size=RANDOM_MOMENTS)):
        run_dir = tmp_path / f"kill{moment:02d}"
        answer = harness({"run_dir": str(run_dir), "kill_after": float(delay)})
        _check_intact(run_dir, answer["flushed"])
