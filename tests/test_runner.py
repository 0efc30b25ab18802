import json
import shutil

import pytest

from qformer_budget.analysis import load_metrics, load_runs
from qformer_budget.cli import main
from qformer_budget.runner.sweep import run_sweep
from qformer_budget.runner.train import _sha256, read_status

from sweeps import sweep_config

METHODS = """
[[methods]]
name = "adalora"
placement = "all_linear"
init_r = 4
target_r = 2
deltaT = 1

[[methods]]
name = "lora"
placement = "self_attn_qv"
rank = 2
"""


def runner_sweep(tmp_path, out="runs", data="data"):
    return sweep_config(tmp_path, METHODS, ["iconqa", "vizwiz"], 48, 12, out=out, data=data)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    config = runner_sweep(tmp_path)
    return tmp_path, config, run_sweep(config, progress=False)


@pytest.mark.slow
def test_sweep_writes_complete_run_folders(finished_sweep):
    tmp_path, config, report = finished_sweep
    assert len(report.finished) == 4 and not report.failed
    adalora = tmp_path / "runs" / "iconqa" / "adalora-all_linear-r4to2" / "seed0"
    for name in ["config.json", "status.json", "run.json", "records.parquet", "metrics.json", "predictions.jsonl", "adapter/adapter_config.json"]:
        assert (adalora / name).exists(), name
    lora = tmp_path / "runs" / "vizwiz" / "lora-self_attn_qv-r2" / "seed0"
    assert (lora / "metrics.json").exists() and not (lora / "records.parquet").exists()
    report_json = json.loads((adalora / "metrics.json").read_text())
    assert 0 <= report_json["metrics"]["accuracy"] <= 1 and report_json["metrics"]["examples"] == 12
    assert report_json["adapter_sha256"] == _sha256(adalora / "adapter")  # evaluated weights are the saved ones
    assert len((adalora / "predictions.jsonl").read_text().splitlines()) == 12
    assert json.loads((adalora / "config.json").read_text())["method"]["tag"] == "adalora-all_linear-r4to2"
    metrics = load_metrics(tmp_path / "runs")
    assert sorted(metrics["metric"]) == ["accuracy", "accuracy", "vqa_accuracy", "vqa_accuracy"]
    records = load_runs(tmp_path / "runs")
    assert set(records["benchmark"]) == {"iconqa", "vizwiz"}
    final = records[records["step"] == records["step"].max()]
    assert final.groupby("benchmark")["rank"].sum().to_dict() == {"iconqa": 240, "vizwiz": 240}


@pytest.mark.slow
def test_finished_runs_are_skipped_on_rerun(finished_sweep):
    tmp_path, config, _ = finished_sweep
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")}
    again = run_sweep(config, progress=False)
    assert len(again.skipped) == 4 and not again.finished and not again.failed
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")} == before


@pytest.mark.slow
def test_a_failed_run_is_reported_and_the_sweep_goes_on(finished_sweep):
    tmp_path, _, _ = finished_sweep
    broken_data = tmp_path / "broken-data"
    shutil.copytree(tmp_path / "data", broken_data)
    missing = sorted((broken_data / "vizwiz" / "train").iterdir())[0]
    missing.unlink()
    config = runner_sweep(tmp_path, out="runs-broken", data="broken-data")
    report = run_sweep(config, progress=False)
    assert len(report.finished) == 2 and len(report.failed) == 2
    assert all("vizwiz" in str(path) and missing.name in error for path, error in report.failed.items())
    failed_dir = next(iter(report.failed))
    assert read_status(failed_dir) == "failed"
    assert missing.name in json.loads((failed_dir / "status.json").read_text())["error"]

    shutil.copy(tmp_path / "data" / "vizwiz" / "train" / missing.name, missing)  # repair, then rerun
    rerun = run_sweep(config, progress=False)
    assert len(rerun.finished) == 2 and len(rerun.skipped) == 2 and not rerun.failed
    set_aside = list(failed_dir.parent.glob("seed0.unfinished-*"))
    assert len(set_aside) == 1 and read_status(set_aside[0]) == "failed"  # the failed attempt is kept


@pytest.mark.slow
def test_a_finished_run_under_other_settings_is_never_reused_silently(finished_sweep, capsys):
    tmp_path, config, _ = finished_sweep
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")}
    changed = run_sweep(config.with_sizes(epochs=2.0), progress=False)
    assert not changed.finished and not changed.skipped and len(changed.failed) == 4
    for error in changed.failed.values():
        assert error.startswith("finished under other settings (training.epochs: 1.0 -> 2.0); it is kept and not "
                                "reused: move it away, or give the sweep another out (--out)")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")} == before  # kept as it was
    assert main(["run", str(config.source), "--epochs", "2", "--no-progress"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_a_config_whose_paths_do_not_exist_fails_once_before_any_run_folder(tmp_path, capsys):
    config = tmp_path / "unedited.toml"
    config.write_text(f'[sweep]\nout = "{tmp_path / "out"}"\nbenchmarks = ["iconqa", "vizwiz"]\n'
                      '[model]\npreset = "instructblip-flan-t5-xl"\npath = "/path/to/instructblip-flan-t5-xl"\n'
                      '[data]\nroot = "/path/to/data"\n[[methods]]\nname = "adalora"\n')
    for _ in range(2):  # a rerun adds nothing either
        assert main(["run", str(config)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1
        assert ("no run can start: [model] path /path/to/instructblip-flan-t5-xl is not a folder; [data] root has no "
                "iconqa/ folder") in error
        assert not (tmp_path / "out").exists()
