"""A training process killed with SIGKILL keeps every record flushed before the kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis import load_runs

TRAINING_SCRIPT = Path(__file__).with_name("tiny_training.py")


def _wait_for_parts(parts_dir: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(parts_dir.glob("part-*.parquet"))) < count:
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no records appeared"
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.parametrize("moment", range(3))
def test_sigkill_mid_training_leaves_a_readable_record(tmp_path, moment):
    rng = np.random.default_rng(moment)
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TRAINING_SCRIPT.parent), *sys.path]))
    process = subprocess.Popen(
        [sys.executable, str(TRAINING_SCRIPT), str(run_dir), "--steps", "200", "--delay", "0.02", "--record-every", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_parts(run_dir / "records", 1 + 4 * moment, process)
        time.sleep(float(rng.uniform(0, 0.5)))
        flushed = {p: pq.read_table(p).num_rows for p in (run_dir / "records").glob("part-*.parquet")}
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    records = load_runs(run_dir)
    assert len(records) >= sum(flushed.values()) > 0
    per_step = records.groupby("step").size()
    assert (per_step == 120).all()  # no step is half-recorded
    assert per_step.index.tolist() == list(range(1, len(per_step) + 1))  # a gap-free prefix of the run
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    assert len(pd.read_parquet(run_dir / "records")) == len(records)  # plain pandas reads it too
