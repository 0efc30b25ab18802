"""Several workers on one sweep: each run claimed once, dead workers' runs taken over, stops recorded."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from qformer_budget.analysis import load_runs
from qformer_budget.cli import main
from qformer_budget.runner import claims
from qformer_budget.runner.claims import claim_path, read_claim, try_claim
from qformer_budget.runner.launch import launch, sweep_workers
from qformer_budget.runner.status import sweep_status
from qformer_budget.runner.sweep import shard_of

from sweeps import sweep_config

ADALORA = '[[methods]]\nname = "adalora"\ninit_r = 4\ntarget_r = 2\ndeltaT = 1\n'


def test_a_claim_is_taken_once_and_released(tmp_path):
    run_dir = tmp_path / "runs" / "seed0"
    claim = try_claim(run_dir)
    assert claim is not None and try_claim(run_dir) is None  # this process is alive: its claim holds
    held = read_claim(run_dir)
    assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
    claim.release()
    assert not claim_path(run_dir).exists()
    again = try_claim(run_dir)
    assert again is not None
    again.release()


def test_a_dead_workers_claim_is_taken_over(tmp_path):
    run_dir = tmp_path / "runs" / "seed0"
    worker = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"token": "t", "host": socket.gethostname(), "pid": int(worker.stdout), "process_start": "1", "heartbeat": time.time()}
    claim_path(run_dir).parent.mkdir(parents=True)
    claim_path(run_dir).write_text(json.dumps(dead))
    claim = try_claim(run_dir)
    assert claim is not None and read_claim(run_dir)["pid"] == os.getpid()
    claim.release()


@pytest.mark.parametrize("age, taken", [(10.0, False), (claims.STALE_AFTER_SECONDS + 60, True)])
def test_another_hosts_claim_lives_by_its_heartbeat(tmp_path, age, taken):
    run_dir = tmp_path / "runs" / "seed0"
    claim_path(run_dir).parent.mkdir(parents=True)
    claim_path(run_dir).write_text(json.dumps({"token": "t", "host": "node-17", "pid": 1, "heartbeat": time.time() - age}))
    claim = try_claim(run_dir)
    assert (claim is not None) == taken
    if claim is not None:
        claim.release()


def test_shards_split_the_grid(tmp_path):
    config = sweep_config(tmp_path, ADALORA, ["iconqa", "vizwiz"], 16, 8)
    config = config.with_seeds([0, 1])
    runs = config.runs()
    shards = [shard_of(runs, (i, 3)) for i in range(3)]
    assert sorted(r.run_dir for shard in shards for r in shard) == sorted(r.run_dir for r in runs)
    with pytest.raises(ValueError, match="shard must be I/N with 0 <= I < N, got 3/3"):
        shard_of(runs, (3, 3))
    with pytest.raises(SystemExit):
        main(["run", str(config.source), "--shard", "1-2"])


def test_workers_split_the_cores_locally_and_take_one_run_each_on_slurm(tmp_path):
    config = sweep_config(tmp_path, ADALORA + "[launcher]\nlocal_workers = 2\ncpus_per_run = 6\n", ["iconqa", "vizwiz"], 16, 8)
    local = sweep_workers(config, "local")
    assert [(w.shard, w.threads) for w in local] == [(None, max(1, os.cpu_count() // 2))] * 2
    slurm = sweep_workers(config, "slurm")
    assert [(w.shard, w.threads) for w in slurm] == [((0, 2), 6), ((1, 2), 6)]


def _start_worker(config_file: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "qformer_budget.cli", "run", str(config_file), "--no-progress", "--threads", "1", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_until(condition, what: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {seconds} s")
        time.sleep(0.05)


def _finished(out: Path) -> int:
    return sum(json.loads(p.read_text())["state"] == "finished" for p in out.rglob("status.json"))


@pytest.mark.slow
def test_two_workers_on_one_config_finish_every_run_once(tmp_path):
    config = sweep_config(tmp_path, ADALORA, ["iconqa", "vizwiz"], 16, 8).with_seeds([0, 1])
    config_file = config.source
    config_file.write_text(config_file.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    workers = [_start_worker(config_file), _start_worker(config_file)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n\n".join(outputs)
    finished = [int(out.split(" finished,")[0].rsplit("\n", 1)[-1]) for out in outputs]
    assert sum(finished) == 4 and min(finished) >= 1, outputs  # both worked, and no run twice
    out = tmp_path / "runs"
    assert _finished(out) == 4
    assert not list(out.rglob("*.unfinished-*")) and not list(out.rglob("*.claim"))
    assert set(sweep_status(out)["state"]) == {"finished"}


@pytest.mark.slow
def test_a_killed_workers_run_is_taken_over_and_a_stopped_one_resumed(tmp_path):
    config = sweep_config(tmp_path, ADALORA, ["iconqa"], 320, 8)
    out = tmp_path / "runs"
    run_dir = config.runs()[0].run_dir

    def training() -> bool:
        return (run_dir / "records").is_dir() and any((run_dir / "records").glob("part-*.parquet"))

    killed = _start_worker(config.source)
    _wait_until(training, "record part of the first worker")
    assert sweep_status(out)["state"].tolist() == ["running"]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert sweep_status(out)["state"].tolist() == ["stopped"]

    stopped = _start_worker(config.source)  # takes the dead worker's run over, then is stopped itself
    # Stopped once it trains: the dead attempt is set aside and the new one has recorded.
    _wait_until(lambda: list(out.rglob("seed0.unfinished-*")) and training(), "takeover")
    assert read_claim(run_dir)["pid"] == stopped.pid
    stopped.send_signal(signal.SIGTERM)
    output = stopped.communicate(timeout=300)[0]
    assert stopped.returncode == 128 + signal.SIGTERM, output
    assert "the current run closed as preempted" in output
    assert json.loads((run_dir / "status.json").read_text())["state"] == "preempted"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "preempted"  # records compacted
    assert (run_dir / "records.parquet").is_file() and not claim_path(run_dir).exists()
    assert sweep_status(out)["state"].tolist() == ["preempted"]
    assert len(list(out.rglob("seed0.unfinished-*"))) == 1  # the killed worker's attempt, kept

    finisher = _start_worker(config.source)
    output = finisher.communicate(timeout=600)[0]
    assert finisher.returncode == 0, output
    assert sweep_status(out)["state"].tolist() == ["finished"]
    assert len(list(out.rglob("seed0.unfinished-*"))) == 1  # the stopped attempt was resumed, not set aside
    assert json.loads((run_dir / "run.json").read_text())["resumes"][0]["global_step"] > 0


@pytest.mark.slow
def test_two_local_submitit_workers_finish_a_two_by_two_sweep_once(tmp_path, capsys):
    """submitit's local executor: the real submitit path (pickled worker, its own processes), no cluster."""
    config = sweep_config(tmp_path, ADALORA + "[launcher]\nlocal_workers = 2\ntime_min = 30\n", ["iconqa", "vizwiz"], 16, 8)
    config.source.write_text(config.source.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    assert main(["run", str(config.source), "--launcher", "local"]) == 0
    printed = capsys.readouterr().out
    summaries = re.findall(r"worker \d+: (\d+) finished, \d+ skipped .*?, (\d+) left to the live workers", printed)
    assert len(summaries) == 2 and sum(int(finished) for finished, _ in summaries) == 4, printed
    out = tmp_path / "runs"
    assert _finished(out) == 4 and not list(out.rglob("*.unfinished-*")) and not list(out.rglob("*.claim"))
    assert set(sweep_status(out)["state"]) == {"finished"}


def test_slurm_gets_one_array_task_per_run_with_the_launcher_table(tmp_path, monkeypatch, capsys):
    """submitit's Slurm executor, with stand-ins for srun and sbatch that keep the batch script they get."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    launcher = (
        '[launcher]\npartition = "gpu"\ngpus_per_run = 1\ncpus_per_run = 6\nmem_gb = 40\ntime_min = 720\n'
        'array_parallelism = 3\nsbatch = { account = "lab", qos = "normal" }\n'
    )
    config = sweep_config(tmp_path, ADALORA + launcher, ["iconqa", "vizwiz"], 16, 8)
    config.source.write_text(config.source.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    assert main(["run", str(config.source), "--launcher", "slurm"]) == 0
    assert "4 slurm workers submitted: jobs 4242_0, 4242_1, 4242_2, 4242_3" in capsys.readouterr().out
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("--array=0-3%3", "--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=6", "--mem=40GB",
                 "--time=720", "--signal=USR2@120", "--account=lab", "--qos=normal"):
        assert f"#SBATCH {line}\n" in script, line
    pickles = list((tmp_path / "runs" / "submitit").glob("4242_*_submitted.pkl"))
    assert len(pickles) == 4  # one pickled worker per array task


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGTERM mid-training, then the same command again: records, rank pattern, adapter and metrics equal an
    uninterrupted run's."""
    straight = sweep_config(tmp_path, ADALORA, ["iconqa"], 320, 8, out="straight")
    stopped = sweep_config(tmp_path, ADALORA, ["iconqa"], 320, 8, out="stopped")
    worker = _start_worker(straight.source)
    assert worker.wait(timeout=600) == 0
    run_dir = stopped.runs()[0].run_dir

    def some_steps_recorded() -> bool:
        parts = sorted((run_dir / "records").glob("part-*.parquet")) if (run_dir / "records").is_dir() else []
        return len(parts) >= 3

    worker = _start_worker(stopped.source)
    _wait_until(some_steps_recorded, "three record parts")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=300) == 128 + signal.SIGTERM
    assert json.loads((run_dir / "status.json").read_text())["state"] == "preempted"
    assert list(run_dir.glob("checkpoint-*/qformer_budget_state.safetensors"))
    worker = _start_worker(stopped.source)
    assert worker.wait(timeout=600) == 0

    a, b = (load_runs(spec.runs()[0].run_dir).drop(columns=["run", "status"]) for spec in (straight, stopped))
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)
    first, second = (spec.runs()[0].run_dir / "adapter" for spec in (straight, stopped))
    config_a, config_b = (json.loads((d / "adapter_config.json").read_text()) for d in (first, second))
    assert config_a["rank_pattern"] == config_b["rank_pattern"]
    tensors_a, tensors_b = (load_file(str(d / "adapter_model.safetensors")) for d in (first, second))
    assert tensors_a.keys() == tensors_b.keys()
    assert all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    metrics_a, metrics_b = (json.loads((spec.runs()[0].run_dir / "metrics.json").read_text())["metrics"]
                            for spec in (straight, stopped))
    assert metrics_a == metrics_b


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["USR2", "TERM"])
def test_a_preempted_submitit_job_requeues_and_resumes_exactly(tmp_path, stop):
    """submitit's own requeue path after Slurm's signals: USR2 before the time limit, SIGTERM on preemption."""
    straight = sweep_config(tmp_path, ADALORA, ["iconqa"], 320, 8, out="straight")
    assert _start_worker(straight.source).wait(timeout=600) == 0
    preempted = sweep_config(tmp_path, ADALORA + "[launcher]\nlocal_workers = 1\ntime_min = 60\n", ["iconqa"], 320, 8,
                             out="preempted")
    run_dir = preempted.runs()[0].run_dir
    (job,) = launch(preempted, "local")
    assert job.submission().function.threads == os.cpu_count()  # one worker: all cores
    _wait_until(lambda: (run_dir / "records").is_dir() and len(list((run_dir / "records").glob("part-*"))) >= 3,
                "three record parts")
    task = read_claim(run_dir)["pid"]  # the task process; its claim names it
    os.kill(task, getattr(signal, f"SIG{stop}"))
    assert "1 finished" in job.result()  # the requeued task
    assert read_claim(run_dir) is None and "requeue" in job.stdout().lower()
    assert json.loads((run_dir / "run.json").read_text())["resumes"][0]["global_step"] > 0
    pd.testing.assert_frame_equal(
        load_runs(run_dir).drop(columns=["run", "status"]),
        load_runs(straight.runs()[0].run_dir).drop(columns=["run", "status"]),
    )
    assert not list((tmp_path / "preempted").rglob("*.unfinished-*"))
