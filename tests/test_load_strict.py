"""Loading leaves nothing out silently: odd folders are followed or refused, odd values are refused by name."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qformer_budget.analysis import RecordError, find_runs, load_runs
from qformer_budget.plotting import regenerate_figures

from fake_runs import fake_modules, fake_record, write_fake_run

N_MODULES = len(fake_modules())


def kept(rank: int, init_r: int = 4) -> np.ndarray:
    rows = np.zeros((N_MODULES, init_r), dtype=bool)
    rows[:, :rank] = True
    return rows


def finished_run(run_dir, benchmark: str = "bench"):
    write_fake_run(run_dir, [fake_record(0, kept(4), benchmark), fake_record(9, kept(2), benchmark)])
    return run_dir


@pytest.fixture
def runs(tmp_path):
    for name, benchmark in (("a", "alpha"), ("b", "beta")):
        finished_run(tmp_path / "runs" / name, benchmark)
    return tmp_path / "runs"


def test_symlinked_runs_are_followed_and_read_once(runs, tmp_path):
    outside = finished_run(tmp_path / "elsewhere" / "c")
    (runs / "c").symlink_to(outside)
    (runs / "a_again").symlink_to(runs / "a")  # a second way to the same run
    (runs / "loop").symlink_to(runs)  # a link back up must not walk forever
    assert find_runs(runs) == [runs / "a", runs / "b", runs / "c"]
    assert sorted(load_runs(runs)["run"].unique()) == [str(runs / name) for name in ("a", "b", "c")]


def test_a_folder_that_cannot_be_listed_is_an_error_naming_it(runs, monkeypatch):
    """As root no permission bit hides a folder, so the listing itself is made to fail."""
    real_scandir = os.scandir

    def scandir(path):
        if str(path) == str(runs / "b"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(RecordError, match=r"runs/b: cannot list this folder \(Permission denied\)"):
        load_runs(runs)


def test_records_without_run_json_are_an_error_naming_the_folder(runs):
    (runs / "b" / "run.json").unlink()
    with pytest.raises(RecordError, match=r"runs/b: holds budget records but no run.json"):
        load_runs(runs)


def test_a_run_json_that_is_a_named_pipe_is_refused_at_once(runs):
    (runs / "b" / "run.json").unlink()
    os.mkfifo(runs / "b" / "run.json")
    code = textwrap.dedent(f"""
        from qformer_budget.analysis import RecordError, load_runs
        try:
            load_runs({str(runs)!r})
        except RecordError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("runs/b/run.json: not a regular file; a run's run.json must be one")


def _rewrite_records(run_dir, edit):
    path = run_dir / "records.parquet"
    table = edit(pq.read_table(path))
    pq.write_table(table, path)  # without the file's schema-version metadata when ``edit`` drops it


def test_a_schema_version_column_from_the_future_is_refused_without_metadata(runs):
    def future(table):
        column = pa.array(np.full(table.num_rows, 3, dtype=np.int16))
        return table.set_column(table.schema.get_field_index("schema_version"), "schema_version", column).replace_schema_metadata(None)

    _rewrite_records(runs / "b", future)
    with pytest.raises(RecordError, match=r"runs/b/records.parquet: column schema_version holds \[3\], but it has version 2's columns; this qformer-budget reads versions 1 and 2"):
        load_runs(runs, columns=["step", "rank"])


def test_integer_phases_are_refused(runs):
    def integers(table):
        return table.set_column(table.schema.get_field_index("phase"), "phase", pa.array(np.ones(table.num_rows, dtype=np.int64)))

    _rewrite_records(runs / "a", integers)
    with pytest.raises(RecordError, match=r"runs/a/records.parquet: record columns have the wrong types: phase \(int64, expected string\)"):
        load_runs(runs)


def test_unknown_phase_names_are_refused(runs):
    _rewrite_records(runs / "a", lambda t: t.set_column(t.schema.get_field_index("phase"), "phase", pa.array(["warm-up"] * t.num_rows)))
    with pytest.raises(RecordError, match=r"runs/a/records.parquet: column phase holds \['warm-up'\]; phases are"):
        load_runs(runs, columns=["phase"])


@pytest.mark.parametrize("rank, message", [(-1, r"column rank holds -1; a kept rank is never negative"),
                                            (5, r"column rank exceeds init_r in \d+ rows")])
def test_ranks_outside_zero_to_init_r_are_refused(runs, rank, message):
    def set_rank(table):
        return table.set_column(table.schema.get_field_index("rank"), "rank", pa.array(np.full(table.num_rows, rank, dtype=np.int16)))

    _rewrite_records(runs / "a", set_rank)
    with pytest.raises(RecordError, match=rf"runs/a/records.parquet: {message}"):
        load_runs(runs)


def test_a_part_restored_beside_the_compacted_file_is_refused(runs):
    """A backup's part file put back into ``records/`` after compaction: the same steps twice."""
    (runs / "a" / "records").mkdir()
    shutil.copy(runs / "a" / "records.parquet", runs / "a" / "records" / "part-000005.parquet")
    with pytest.raises(RecordError, match=r"runs/a: records hold some \(global_step, module\) row more than once"):
        load_runs(runs, columns=["step", "rank"])


def test_duplicated_steps_are_refused_when_run_json_lists_the_modules(runs):
    meta = json.loads((runs / "a" / "run.json").read_text())
    (runs / "a" / "run.json").write_text(json.dumps(meta | {"modules": [m.module for m in fake_modules()]}))
    (runs / "a" / "records").mkdir()
    shutil.copy(runs / "a" / "records.parquet", runs / "a" / "records" / "part-000005.parquet")
    with pytest.raises(RecordError, match=r"runs/a: records hold global_step 0 more than once"):
        load_runs(runs, columns=["rank"])


@pytest.mark.parametrize("resumes, message", [
    ([{"global_step": 0, "first_part": 999}], r"resume .* starts at part 999, but the run holds parts up to \d+ only"),
    ([{"global_step": 5, "first_part": 2}, {"global_step": 3, "first_part": 1}], r"must list resumes in the order"),
    ([{"global_step": -1, "first_part": 0}], r"non-negative steps and parts"),
])
def test_resumes_that_would_hide_rows_are_refused(runs, resumes, message):
    meta_file = runs / "a" / "run.json"
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"resumes": resumes}))
    with pytest.raises(RecordError, match=rf"runs/a/run.json: .*{message}"):
        load_runs(runs)


def test_set_aside_attempts_are_not_runs(runs, tmp_path):
    finished_run(runs / "a.unfinished-20261130-140000", benchmark="alpha")
    records = load_runs(runs)
    assert sorted(records["run"].unique()) == [str(runs / "a"), str(runs / "b")]
    # Read as a run, the attempt would be a second alpha run of seed 0, which the figures refuse.
    assert regenerate_figures(runs, tmp_path / "figures", n_boot=10)
