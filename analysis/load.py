"""Load recorded runs into one tidy DataFrame: one row per module per recorded step."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from qformer_budget.core.layout import is_set_aside, method_tag_of
from qformer_budget.core.run_folder import (
    Filters,
    RecordError,
    check_regular_file,
    constant_labels,
    read_record_file,
    read_run_meta,
    read_schema,
    record_files,
    with_cutoff,
)
from qformer_budget.core.schema import (
    COLUMN_NAMES,
    RECORDS_FILE,
    RECORDS_PARTS_DIR,
    RUN_META_FILE,
    STRING_COLUMNS,
)


class RecordWarning(UserWarning):
    """Records were read from a run that did not close; the message says what is missing or was dropped."""


def find_runs(path: str | os.PathLike) -> list[Path]:
    """Run folders at or below ``path`` (a run folder holds ``run.json``), sorted.

    Symlinked folders are followed and each run is found once. Attempts a sweep set aside
    (``<run>.unfinished-<time>``) are not runs. A folder that cannot be listed, records without a
    ``run.json`` and a ``run.json`` that is not a regular file raise a RecordError naming them.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such run folder: {root}")
    runs = sorted(_walk_runs(root, set()))
    if not runs:
        raise RecordError(f"{root} holds no run: no {RUN_META_FILE} at or below it")
    return runs


def _walk_runs(folder: Path, seen: set[Path]) -> Iterator[Path]:
    real = folder.resolve()
    if real in seen:  # a second link to a folder already walked, or a link loop
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        raise RecordError(f"{folder}: cannot list this folder ({exc.strerror or exc})") from exc
    names = {entry.name for entry in entries}
    if RUN_META_FILE in names:
        check_regular_file(folder / RUN_META_FILE)
        yield folder
    elif RECORDS_FILE in names or any((folder / RECORDS_PARTS_DIR).glob("part-*.parquet")):
        raise RecordError(f"{folder}: holds budget records but no {RUN_META_FILE}; restore it, or move the records away")
    for entry in entries:
        if entry.is_symlink() and not os.path.exists(entry.path):
            raise RecordError(f"{entry.path}: a broken link in a folder of runs")
        if entry.is_dir() and not is_set_aside(entry.name) and not (RUN_META_FILE in names and entry.name == RECORDS_PARTS_DIR):
            yield from _walk_runs(Path(entry.path), seen)


def _check_columns(columns: Sequence[str] | None) -> list[str]:
    """The record columns to read for ``columns`` (``run`` and ``status`` are always added, not read)."""
    if columns is None:
        return list(COLUMN_NAMES)
    unknown = [c for c in columns if c not in COLUMN_NAMES and c not in ("run", "status")]
    if unknown:
        known = ", ".join(["run", *COLUMN_NAMES, "status"])
        raise ValueError(f"unknown record columns {unknown}; columns are {known}")
    return [c for c in columns if c in COLUMN_NAMES]


def _check_filters(filters: Filters | None) -> None:
    """Refuse filters on columns the record files do not hold, before any file is read."""
    if filters is None or isinstance(filters, pc.Expression):
        return
    clauses = [filters] if filters and isinstance(filters[0], tuple) else filters
    names = [clause[0] for conjunction in clauses for clause in conjunction]
    unknown = [n for n in names if n not in COLUMN_NAMES]
    if unknown:
        known = ", ".join(COLUMN_NAMES)
        raise ValueError(f"filters on {unknown}: filters apply to the record columns {known}")


def _read_run_table(
    run_dir: Path, columns: list[str], filters: Filters | None, categorical: bool
) -> pa.Table:
    """One run's records as Arrow, with ``run`` first and ``status`` last (dictionary-encoded)."""
    meta = read_run_meta(run_dir)
    files = record_files(run_dir, meta)
    unclosed = meta.get("status") == "running"
    # The step, and the module where run.json does not list the modules, are read for the duplicate check.
    checked = ["global_step"] + ([] if isinstance(meta.get("modules"), list) else ["module"])
    read_columns = columns + [c for c in checked if c not in columns]
    tables, dropped = [], []
    for record_file in files:
        try:
            tables.append(
                read_record_file(record_file.path, read_columns, with_cutoff(filters, record_file.superseded_from), categorical)
            )
        except RecordError as exc:
            # A live run's newest part is the one a copy or a failing disk may have cut short; anything
            # else damaged is an error, never a silent gap.
            if not (unclosed and record_file is files[-1] and record_file.part is not None):
                raise
            dropped.append(f"{record_file.path.name} (unreadable: {exc.__cause__ or exc})")
    table = pa.concat_tables(tables) if tables else read_schema(read_columns, categorical).empty_table()
    _check_duplicates(run_dir, table, meta.get("modules"))
    table = table.select(columns)
    if unclosed:
        parts_dir = run_dir / RECORDS_PARTS_DIR
        dropped += [f"{p.name} (being written when the process stopped)" for p in sorted(parts_dir.glob(".part-*"))]
        _warn_unclosed(run_dir, table, dropped)
    table = table.add_column(0, "run", constant_labels(str(run_dir), table.num_rows))
    return table.append_column("status", constant_labels(str(meta.get("status", "unknown")), table.num_rows))


def _check_duplicates(run_dir: Path, table: pa.Table, modules: list | None) -> None:
    """Refuse a run holding a step twice (a part restored from a backup beside the compacted file, say)."""
    if isinstance(modules, list):
        counts = pc.value_counts(table["global_step"])
        over = [c["values"] for c in counts.to_pylist() if c["counts"] > len(modules)]
        if over:
            raise RecordError(
                f"{run_dir}: records hold global_step {over[0]} more than once for some module "
                f"({len(modules)} modules, more rows); remove the duplicated record file"
            )
        return
    pairs = table.select(["global_step", "module"]).cast(pa.schema([("global_step", pa.int64()), ("module", pa.string())]))
    if pairs.group_by(["global_step", "module"]).aggregate([]).num_rows < pairs.num_rows:
        raise RecordError(f"{run_dir}: records hold some (global_step, module) row more than once")


def _warn_unclosed(run_dir: Path, table: pa.Table, dropped: list[str]) -> None:
    last = f", the last at step {pc.max(table['step']).as_py()}" if "step" in table.column_names and table.num_rows else ""
    message = (
        f"{run_dir}: the run did not close (run.json says status 'running': it is still training, or its process "
        f"was killed); read {table.num_rows} record rows{last}"
    )
    if dropped:
        message += "; dropped " + ", ".join(dropped)
    warnings.warn(message, RecordWarning, stacklevel=4)


def _to_pandas(table: pa.Table, categorical: bool) -> pd.DataFrame:
    """Arrow records to pandas: labels as categoricals with sorted categories, or as plain strings."""
    labels = [name for name in table.column_names if name in STRING_COLUMNS]
    if not categorical:
        for name in labels:
            table = table.set_column(table.column_names.index(name), name, table[name].cast(pa.string()))
        return table.to_pandas(split_blocks=True, self_destruct=True)
    frame = table.unify_dictionaries().to_pandas(split_blocks=True, self_destruct=True)
    for name in labels:
        frame[name] = frame[name].cat.reorder_categories(sorted(frame[name].cat.categories))
    return frame


def read_run(
    run_dir: str | os.PathLike,
    columns: Sequence[str] | None = None,
    filters: Filters | None = None,
    categorical: bool = False,
) -> pd.DataFrame:
    """The records of one run folder, with its ``run`` (folder name) and ``status`` added.

    ``columns``, ``filters`` and ``categorical`` as in :func:`load_runs`.
    """
    _check_filters(filters)
    table = _read_run_table(Path(run_dir), _check_columns(columns), filters, categorical)
    return _to_pandas(table, categorical)


def load_runs(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    columns: Sequence[str] | None = None,
    filters: Filters | None = None,
    categorical: bool = False,
    max_workers: int | None = None,
    method: str | None = None,
) -> pd.DataFrame:
    """Load one run folder, every run below a folder, or every run below each of a list of folders, into one
    tidy DataFrame; with ``method``, only the runs of that configuration (the runner's method tag, the run
    folder's parent name: ``adalora-all_linear-r12to4``), as when a folder holds several (the demo's does).

    Columns: ``run``, the record schema (``benchmark, seed, step, module, layer, block, proj, rank,
    init_r, score, budget`` and more, see ``qformer_budget.core.schema.COLUMNS``) and ``status``.

    For large record sets, read only what is needed:

    - ``columns``: the record columns to read, in that order (``run`` and ``status`` always come along);
      leaving out the list columns ``direction_scores`` and ``direction_kept`` saves most of the time
      and memory;
    - ``filters``: rows to keep, applied while reading (row groups that cannot match are skipped), as
      in ``pyarrow.parquet.read_table``: ``[("phase", "==", "budgeting"), ("step", ">", 1000)]``, a
      list of such lists (OR of ANDs), or a ``pyarrow.compute`` expression; on record columns only;
    - ``categorical``: the label columns (``STRING_COLUMNS``: run, benchmark, phase, module, sublayer,
      block, proj, status) as pandas categoricals with sorted categories instead of strings: several
      times less memory and faster grouping and filtering; the metrics of ``qformer_budget.analysis`` accept both;
    - ``max_workers``: threads reading runs side by side (default: one per CPU, at most 8).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    runs = sorted({run for each in paths for run in find_runs(each)})
    if not runs:
        raise ValueError("load_runs got an empty list of run folders")
    if method is not None:
        found = sorted({method_tag_of(run) for run in runs})
        runs = [run for run in runs if method_tag_of(run) == method]
        if not runs:
            raise ValueError(f"no run of method {method!r} below {', '.join(map(str, paths))}; methods found: {found}")
    read_columns = _check_columns(columns)
    _check_filters(filters)
    workers = max_workers or min(8, os.cpu_count() or 1, len(runs))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        table = pa.concat_tables(pool.map(lambda run: _read_run_table(run, read_columns, filters, categorical), runs))
    return _to_pandas(table, categorical)


def load_metrics(path: str | os.PathLike) -> pd.DataFrame:
    """Evaluation results of every run below ``path`` (its ``metrics.json``), one row per run and metric.

    ``trainable_parameters`` is what the run's method trained (``<NA>`` for runs recorded before it was kept).
    """
    rows = []
    for metrics_file in sorted(Path(path).rglob("metrics.json")):
        try:
            report = json.loads(metrics_file.read_text(encoding="utf-8"))
            base = {key: report[key] for key in ("benchmark", "method", "seed", "split")}
            base["trainable_parameters"] = report.get("trainable_parameters")
            values = report["metrics"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"{metrics_file}: not a readable metrics report ({exc!r})") from exc
        rows += [
            base | {"metric": name, "value": value, "run": str(metrics_file.parent)}
            for name, value in values.items()
            if name != "examples"
        ]
    columns = ["benchmark", "method", "seed", "split", "metric", "value", "trainable_parameters", "run"]
    return pd.DataFrame(rows, columns=columns).astype({"trainable_parameters": "Int64"})
