"""The Weights & Biases and MLflow sinks, checked by reading what they logged back from disk.

W&B runs offline and its run file (LevelDB-style log blocks holding protobuf records) is parsed here;
MLflow logs to a file store and is read back through its client.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from wandb.proto import wandb_internal_pb2

from qformer_budget.analysis import load_runs
from qformer_budget.core.grammar import BLOCKS
from qformer_budget.core.records import ModuleInfo, StepRecord
from qformer_budget.peft_hooks.tracking import ALLOCATION_STEP, MlflowSink, WandbSink

from tiny_training import tiny_setup, train_with_loop

SETUP = tiny_setup(total_step=30)
MASK_STEPS = [11, 16, 21, 26]


def _mlflow_uri(root: Path) -> str:
    return (root / "mlruns").as_uri()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store needs no database packages
        patch.setenv("WANDB_SILENT", "true")
        sinks = [
            WandbSink(project="qformer-budget-tests", mode="offline", dir=str(root)),
            MlflowSink(tracking_uri=_mlflow_uri(root), experiment="tests"),
        ]
        train_with_loop(root / "run", SETUP, sinks=sinks)
        client = MlflowClient(tracking_uri=_mlflow_uri(root))
        experiment = client.get_experiment_by_name("tests")
        (mlflow_run,) = client.search_runs([experiment.experiment_id])
        mlflow_series = {
            tag: {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, tag)}
            for tag in mlflow_run.data.metrics
        }
        artifacts = [a.path for a in client.list_artifacts(mlflow_run.info.run_id, "heatmap")]
    (wandb_file,) = root.glob("wandb/offline-run-*/run-*.wandb")
    return {
        "records": load_runs(root / "run"),
        "wandb": _wandb_records(wandb_file),
        "mlflow_run": mlflow_run,
        "mlflow": mlflow_series,
        "mlflow_artifacts": artifacts,
    }


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file: a 7-byte header, then 32 KiB blocks of chunks
    (4-byte checksum, 2-byte length, 1-byte type: 1 whole, 2 first, 3 middle, 4 last)."""
    data, block, position, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _wandb_history(records: list) -> list[dict]:
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.WhichOneof("record_type") == "history"
    ]


def _wandb_series(history: list[dict], tag: str) -> dict[int, float]:
    return {row[ALLOCATION_STEP]: row[tag] for row in history if tag in row}


def _expected(records) -> dict[str, dict[int, float]]:
    """The tag series the live views must show, computed from the Parquet records."""
    expected = {"budget/total": records.groupby("step")["budget"].first().astype(float).to_dict()}
    block_ranks = records.groupby(["block", "step"])["rank"].sum()
    for block in BLOCKS:
        expected[f"rank/{block}"] = block_ranks[block].astype(float).to_dict()
    for label, rows in records.groupby("sublayer"):
        expected[f"rank/{label}"] = dict(zip(rows["step"], rows["rank"].astype(float)))
    masks = records[records["mask_step"]].groupby("step")["threshold"].first()
    expected["budget/threshold"] = masks.to_dict()
    return expected


def test_wandb_history_matches_the_records(logged):
    history = _wandb_history(logged["wandb"])
    records = logged["records"]
    assert [row[ALLOCATION_STEP] for row in history] == sorted(records["step"].unique())
    for tag, series in _expected(records).items():
        logged_series = _wandb_series(history, tag)
        assert logged_series.keys() == series.keys(), tag
        np.testing.assert_allclose(list(logged_series.values()), list(series.values()), rtol=1e-6, err_msg=tag)
    for row in history:
        shares = [row[f"share/{block}"] for block in BLOCKS]
        assert sum(shares) == pytest.approx(1.0)


def test_wandb_heatmap_images_at_mask_steps_and_run_metadata(logged):
    history = _wandb_history(logged["wandb"])
    images = {row[ALLOCATION_STEP]: row for row in history if "heatmap/rank/_type" in row}
    assert sorted(images) == MASK_STEPS
    assert all(row["heatmap/rank/_type"] == "image-file" and row["heatmap/rank/width"] >= 400 for row in images.values())
    kinds = [record.WhichOneof("record_type") for record in logged["wandb"]]
    assert kinds[-1] == "exit" and logged["wandb"][-1].exit.exit_code == 0
    (run,) = [record.run for record in logged["wandb"] if record.WhichOneof("record_type") == "run"]
    assert run.display_name == "synthetic_vqa seed 0"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["qformer_budget"]["adalora"]["target_r"] == SETUP.target_r
    axes = [record.metric for record in logged["wandb"] if record.WhichOneof("record_type") == "metric"]
    assert {(m.glob_name, m.step_metric) for m in axes if m.glob_name} >= {("rank/*", ALLOCATION_STEP)}


def test_mlflow_metrics_match_the_records(logged):
    records = logged["records"]
    for tag, series in _expected(records).items():
        assert logged["mlflow"][tag].keys() == series.keys(), tag
        np.testing.assert_allclose(
            [logged["mlflow"][tag][step] for step in series], list(series.values()), rtol=1e-6, err_msg=tag
        )
    with_scores = records[records["direction_scores"].notna()]
    sums = with_scores.groupby(["block", "step"])["score"].sum()
    for block in BLOCKS:
        assert sorted(logged["mlflow"][f"score/{block}"]) == sorted(sums[block].index)


def test_mlflow_run_heatmaps_params_and_status(logged):
    run = logged["mlflow_run"]
    assert run.info.status == "FINISHED" and run.info.run_name == "synthetic_vqa seed 0"
    assert run.data.tags["benchmark"] == "synthetic_vqa"
    assert run.data.params["qformer_budget.adalora.init_r"] == str(SETUP.init_r)
    assert logged["mlflow_artifacts"] == [f"heatmap/rank_step{step:06d}.png" for step in MASK_STEPS]


def _two_module_record(step: int) -> StepRecord:
    modules = (
        ModuleInfo("qformer.encoder.layer.0.attention.attention.query", 8, 8),
        ModuleInfo("qformer.encoder.layer.0.crossattention.attention.key", 16, 8),
    )
    kept = np.array([[True, True], [True, False]])
    return StepRecord("scienceqa", 1, step - 1, "budgeting", False, 3, float("nan"), 2, modules, kept, None)


def test_mlflow_logs_into_an_active_run_and_leaves_it_open(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(_mlflow_uri(tmp_path))
    try:
        with mlflow.start_run() as active:
            sink = MlflowSink()
            sink.start({"benchmark": "scienceqa", "seed": 1})
            sink.write(_two_module_record(step=5))
            sink.close("failed")
            assert MlflowClient().get_run(active.info.run_id).info.status == "RUNNING"
        values = MlflowClient().get_run(active.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(None)
    assert values["rank/self_attn"] == 2.0 and values["rank/L00.cross_attn.key"] == 1.0
    assert values["share/cross_attn"] == pytest.approx(1 / 3)


def test_mlflow_marks_a_failed_recording(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    sink = MlflowSink(tracking_uri=_mlflow_uri(tmp_path))
    sink.start({"benchmark": "scienceqa", "seed": 1})
    sink.write(_two_module_record(step=5))
    run_id = sink.run_id
    sink.close("failed")
    assert MlflowClient(tracking_uri=_mlflow_uri(tmp_path)).get_run(run_id).info.status == "FAILED"


@pytest.mark.parametrize(
    ("sink_class", "package", "extra"), [(WandbSink, "wandb", "wandb"), (MlflowSink, "mlflow", "mlflow")]
)
def test_missing_tracker_is_a_clear_import_error(monkeypatch, sink_class, package, extra):
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ImportError, match=rf'{sink_class.__name__} needs {package}: pip install "qformer-budget\[{extra}\]"'):
        sink_class()


def test_write_needs_start(tmp_path):
    sink = WandbSink(mode="offline", dir=str(tmp_path))
    sink.close("finished")  # closing an unstarted sink is a no-op
    with pytest.raises(RuntimeError, match=r"WandbSink.write\(\) called before start\(\)"):
        sink.write(_two_module_record(step=5))


def test_mlflow_refuses_a_file_store_without_the_setting_the_readme_names(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(MlflowException, match="MLFLOW_ALLOW_FILE_STORE=true"):
        MlflowSink(tracking_uri=_mlflow_uri(tmp_path), experiment="tests").start({"benchmark": "scienceqa", "seed": 1})
    assert "MLFLOW_ALLOW_FILE_STORE=true" in (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
