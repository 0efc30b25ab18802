import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from qformer_budget.analysis import RecordError, RecordWarning, load_runs

from fake_runs import fake_modules, fake_record, write_fake_run

MODULES = fake_modules()


def kept_with_rank(rank: int, init_r: int = 4) -> np.ndarray:
    kept = np.zeros((len(MODULES), init_r), dtype=bool)
    kept[:, :rank] = True
    return kept


@pytest.fixture
def two_runs(tmp_path):
    write_fake_run(tmp_path / "a" / "seed0", [fake_record(0, kept_with_rank(4), "a", 0), fake_record(9, kept_with_rank(2), "a", 0)])
    write_fake_run(tmp_path / "b" / "seed1", [fake_record(0, kept_with_rank(4), "b", 1)])
    return tmp_path


def test_load_a_folder_of_runs(two_runs):
    records = load_runs(two_runs)
    assert len(records) == 3 * len(MODULES)
    assert records.groupby(["benchmark", "seed"]).size().to_dict() == {("a", 0): 2 * len(MODULES), ("b", 1): len(MODULES)}
    assert records.loc[records["step"] == 10, "rank"].eq(2).all()
    assert set(records["status"]) == {"finished"}
    single = load_runs(two_runs / "b" / "seed1")
    assert single["benchmark"].eq("b").all()


def test_load_a_list_of_folders_reads_each_run_once(two_runs):
    listed = load_runs([two_runs / "b", two_runs / "a" / "seed0", two_runs / "a"], categorical=True)
    assert listed["run"].astype(str).tolist() == load_runs(two_runs)["run"].tolist()  # sorted, no duplicate
    with pytest.raises(ValueError, match="empty list of run folders"):
        load_runs([])
    with pytest.raises(FileNotFoundError, match="no such run folder: .*missing"):
        load_runs([two_runs / "a", two_runs / "missing"])


def _rewrite(path, table):
    pq.write_table(table, path)


def test_missing_column_names_file_and_column(two_runs):
    path = two_runs / "a" / "seed0" / "records.parquet"
    _rewrite(path, pq.read_table(path).drop_columns(["rank"]))
    with pytest.raises(RecordError, match=r"a/seed0/records.parquet: missing record columns \['rank'\]"):
        load_runs(two_runs)


def test_wrong_column_type_names_file(two_runs):
    path = two_runs / "a" / "seed0" / "records.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("rank"), "rank", pa.array(["many"] * table.num_rows))
    _rewrite(path, table)
    with pytest.raises(RecordError, match=r"a/seed0/records.parquet: record columns have the wrong types"):
        load_runs(two_runs)


def _live_run_with_two_parts(tmp_path) -> Path:
    """An unclosed run whose records are in part-000000 (step 1) and part-000001 (step 6)."""
    run = tmp_path / "run"
    write_fake_run(run, [fake_record(0, kept_with_rank(4))], close=False)
    write_fake_run(tmp_path / "later", [fake_record(5, kept_with_rank(3))], close=False)
    for part in (run / "records" / "part-000000.parquet", tmp_path / "later" / "records" / "part-000000.parquet"):
        deadline = time.monotonic() + 30
        while not part.exists():  # the sink's writer thread renames it into place
            assert time.monotonic() < deadline
            time.sleep(0.01)
    (tmp_path / "later" / "records" / "part-000000.parquet").rename(run / "records" / "part-000001.parquet")
    return run


def test_corrupt_part_before_the_newest_names_file(tmp_path):
    run = _live_run_with_two_parts(tmp_path)
    (run / "records" / "part-000000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(RecordError, match=r"records/part-000000.parquet: not a readable Parquet record file"):
        load_runs(run)


def test_truncated_newest_part_of_a_live_run_is_dropped_with_a_warning(tmp_path):
    run = _live_run_with_two_parts(tmp_path)
    newest = run / "records" / "part-000001.parquet"
    newest.write_bytes(newest.read_bytes()[:-100])  # a copy cut short
    (run / "records" / ".part-000002.parquet.tmp").write_bytes(b"half")
    with pytest.warns(RecordWarning) as caught:
        frame = load_runs(run)
    rows = len(fake_modules())
    message = str(caught[0].message)
    assert "did not close" in message and f"read {rows} record rows, the last at step 1" in message
    assert "part-000001.parquet (unreadable" in message and ".part-000002.parquet.tmp (being written" in message
    assert frame["step"].tolist() == [1] * rows


def test_closed_run_reads_without_warning(tmp_path, recwarn):
    write_fake_run(tmp_path, [fake_record(0, kept_with_rank(4))])
    load_runs(tmp_path)
    assert not [w for w in recwarn if issubclass(w.category, RecordWarning)]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"run.json: not a readable run description"),
        (json.dumps({"benchmark": "x"}), r"run.json: missing field 'schema_version'"),
        (json.dumps({"schema_version": 99}), r"run.json: schema_version 99, this qformer-budget reads versions 1 and 2"),
    ],
)
def test_bad_run_description_names_file(two_runs, content, message):
    (two_runs / "b" / "seed1" / "run.json").write_text(content)
    with pytest.raises(RecordError, match=message):
        load_runs(two_runs)


def test_folder_without_runs_and_missing_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RecordError, match="holds no run: no run.json at or below it"):
        load_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        load_runs(tmp_path / "absent")


def test_analysis_imports_neither_torch_nor_peft():
    code = (
        "import sys, qformer_budget.analysis, qformer_budget.plotting, qformer_budget.core.grammar, qformer_budget.core.records;"
        "bad = [m for m in ('torch', 'peft', 'transformers') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_columns_read_only_those_with_run_and_status(two_runs):
    records = load_runs(two_runs, columns=["step", "block", "rank"])
    assert list(records.columns) == ["run", "step", "block", "rank", "status"]
    full = load_runs(two_runs)
    pd.testing.assert_frame_equal(records, full[["run", "step", "block", "rank", "status"]])
    with pytest.raises(ValueError, match=r"unknown record columns \['ranks'\]"):
        load_runs(two_runs, columns=["step", "ranks"])


def test_filters_keep_matching_rows(two_runs):
    late = load_runs(two_runs, filters=[("step", ">", 1)])
    assert set(late["step"]) == {10} and len(late) == len(MODULES)
    either = load_runs(two_runs, columns=["seed"], filters=[[("benchmark", "==", "b")], [("step", "==", 10)]])
    assert sorted(either.groupby("run")["seed"].first()) == [0, 1]
    expression = load_runs(two_runs, filters=pc.field("benchmark") == "a")
    assert set(expression["benchmark"]) == {"a"} and len(expression) == 2 * len(MODULES)
    with pytest.raises(ValueError, match=r"filters on \['run'\]"):
        load_runs(two_runs, filters=[("run", "==", "x")])


def test_categorical_labels_hold_the_same_values(two_runs):
    records = load_runs(two_runs, categorical=True)
    plain = load_runs(two_runs)
    for name in ("run", "benchmark", "phase", "module", "sublayer", "block", "proj", "status"):
        assert isinstance(records[name].dtype, pd.CategoricalDtype), name
        assert list(records[name].cat.categories) == sorted(plain[name].unique()), name
        assert (records[name].astype(str) == plain[name]).all(), name


def test_live_run_reads_with_columns_and_filters(tmp_path):
    # A live run as a killed recorder leaves it: one part file per step, run.json still "running".
    write_fake_run(tmp_path, [fake_record(0, kept_with_rank(4)), fake_record(9, kept_with_rank(1))])
    table = pq.read_table(tmp_path / "records.parquet")
    (tmp_path / "records").mkdir()
    for i, step in enumerate((1, 10)):
        pq.write_table(table.filter(pc.field("step") == step), tmp_path / "records" / f"part-{i:06d}.parquet")
    (tmp_path / "records.parquet").unlink()
    meta = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps(meta | {"status": "running"}))
    records = load_runs(tmp_path, columns=["step", "rank"], filters=[("step", "==", 10)], categorical=True)
    assert len(records) == len(MODULES) and records["rank"].eq(1).all()
    assert list(records["status"].unique()) == ["running"]


def test_errors_name_the_file_with_columns_and_filters(two_runs):
    path = two_runs / "a" / "seed0" / "records.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("rank"), "rank", pa.array(["many"] * table.num_rows))
    _rewrite(path, table)
    with pytest.raises(RecordError, match=r"a/seed0/records.parquet: record columns have the wrong types"):
        load_runs(two_runs, columns=["rank"], categorical=True)
    with pytest.raises(RecordError, match=r"a/seed0/records.parquet: not a readable .* with the filters"):
        load_runs(two_runs, columns=["step"], filters=[("rank", ">", 1)])
    _rewrite(path, table.drop_columns(["threshold"]))
    with pytest.raises(RecordError, match=r"a/seed0/records.parquet: missing record columns \['threshold'\]"):
        load_runs(two_runs, columns=["step"])  # refused even though the missing column is not asked for


def test_newer_record_file_names_file(two_runs):
    path = two_runs / "a" / "seed0" / "records.parquet"
    _rewrite(path, pq.read_table(path).replace_schema_metadata({"qformer_budget.schema_version": "3"}))
    with pytest.raises(RecordError, match=r"a/seed0/records.parquet: schema_version 3, this qformer-budget reads versions 1 and 2"):
        load_runs(two_runs, columns=["step"])
