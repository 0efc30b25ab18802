"""A real two-process run (torchrun and accelerate launch, gloo on CPU) with a plain Trainer and AdaLoraBudgetCallback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qformer_budget.analysis import load_runs

SCRIPT = Path(__file__).with_name("distributed_training.py")
STEPS = 20


LAUNCHERS = {  # the README's CPU commands; accelerate's --cpu would start one process, --multi_gpu starts two
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    "accelerate": [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.fixture(scope="module", params=list(LAUNCHERS))
def two_processes(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"ddp-{request.param}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SCRIPT.parent), *sys.path]), OMP_NUM_THREADS="1")
    subprocess.run(
        [*LAUNCHERS[request.param], str(SCRIPT), str(out), "--steps", str(STEPS)],
        env=env, check=True, capture_output=True, timeout=600,
    )
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return {"out": out, "reports": reports, "records": load_runs(out / "run")}


@pytest.mark.slow
def test_both_processes_allocate_identically(two_processes):
    first, second = two_processes["reports"]
    assert (first["rank"], second["rank"], first["world_size"]) == (0, 1, 2)
    assert first["patterns"].keys() == second["patterns"].keys() == {str(step) for step in range(1, STEPS + 1)}
    assert first["patterns"] == second["patterns"]
    assert any(first["patterns"].values())  # masks happened, so the comparison compared something


@pytest.mark.slow
def test_only_rank_zero_writes_and_records_are_complete(two_processes):
    first, second = two_processes["reports"]
    assert (first["sinks"], second["sinks"]) == (1, 0)
    run_dirs = sorted(p.parent for p in two_processes["out"].rglob("run.json"))
    assert run_dirs == [two_processes["out"] / "run"]
    records = two_processes["records"]
    assert records["status"].unique().tolist() == ["finished"]
    per_step = records.groupby("step").size()
    assert per_step.index.tolist() == list(range(1, STEPS + 1)) and (per_step == 120).all()


@pytest.mark.slow
def test_records_hold_the_allocation_both_processes_made(two_processes):
    records = two_processes["records"]
    final = records[records["step"] == STEPS].set_index("module")
    pattern = two_processes["reports"][0]["patterns"][str(STEPS)]
    for key, kept in pattern.items():
        module = key.removesuffix(".lora_E.default")
        np.testing.assert_array_equal(final.loc[module, "direction_kept"], kept)
    assert final["rank"].sum() == final["budget"].iloc[0]
