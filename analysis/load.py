"""Load recorded runs into one tidy DataFrame: one row per module per recorded step."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import (
    COLUMN_NAMES,
    COLUMNS,
    COMPACTED_PARTS_KEY,
    RECORD_SCHEMA,
    RECORDS_FILE,
    RECORDS_PARTS_DIR,
    RESUMES_APPLIED_KEY,
    RESUMES_FIELD,
    RUN_META_FILE,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
)


class RecordError(ValueError):
    """A run folder or record file that cannot be read as budget records; the message names the file."""


class RecordWarning(UserWarning):
    """Records were read from a run that did not close; the message says what is missing or was dropped."""


def find_runs(path: str | os.PathLike) -> list[Path]:
    """Run folders at or below ``path`` (a run folder holds ``run.json``), sorted."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no such run folder: {root}")
    if (root / RUN_META_FILE).is_file():
        return [root]
    runs = sorted(p.parent for p in root.rglob(RUN_META_FILE))
    if not runs:
        raise RecordError(f"{root} holds no run: no {RUN_META_FILE} at or below it")
    return runs


def read_run_meta(run_dir: Path) -> dict:
    meta_file = run_dir / RUN_META_FILE
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{meta_file}: not a readable run description ({exc})") from exc
    if not isinstance(meta, dict) or "schema_version" not in meta:
        raise RecordError(f"{meta_file}: missing field 'schema_version'; is this a qformer-budget run?")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise RecordError(
            f"{meta_file}: schema_version {meta['schema_version']!r}, this qformer-budget reads version {SCHEMA_VERSION}"
        )
    return meta


STRING_COLUMNS: tuple[str, ...] = (
    "run",
    *(name for name, dtype, _ in COLUMNS if dtype == pa.string()),
    "status",
)
"""Columns holding labels: ``load_runs(..., categorical=True)`` gives them as pandas categoricals."""

Filters = pc.Expression | Sequence[tuple] | Sequence[Sequence[tuple]]


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


_LABELS = pa.dictionary(pa.int32(), pa.string())


def _read_schema(columns: list[str], categorical: bool) -> pa.Schema:
    """The Arrow schema of the columns read: RECORD_SCHEMA's, labels dictionary-encoded if categorical."""
    fields = [RECORD_SCHEMA.field(c) for c in columns]
    if categorical:
        fields = [f.with_type(_LABELS) if f.type == pa.string() else f for f in fields]
    return pa.schema(fields)


def _read_record_file(
    path: Path, columns: list[str], filters: Filters | None = None, categorical: bool = False
) -> pa.Table:
    """``columns`` of one record file, rows matching ``filters``; any fault raises a RecordError naming it."""
    # Damaged bytes surface as Arrow errors, OSError, or ValueError (a name that is no longer UTF-8).
    try:
        file_schema = pq.read_schema(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise RecordError(f"{path}: not a readable Parquet record file ({exc})") from exc
    version = (file_schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is not None and version != str(SCHEMA_VERSION).encode():
        raise RecordError(
            f"{path}: schema_version {version.decode(errors='replace')}, "
            f"this qformer-budget reads version {SCHEMA_VERSION}"
        )
    missing = [c for c in COLUMN_NAMES if c not in file_schema.names]
    if missing:
        raise RecordError(f"{path}: missing record columns {missing}")
    labels = [c for c in columns if c in STRING_COLUMNS] if categorical else None
    try:
        table = pq.read_table(path, columns=columns, filters=filters, read_dictionary=labels)
        table.validate(full=True)  # damaged values (labels past their dictionary) fail here, not in pandas
    except (OSError, ValueError, pa.ArrowException) as exc:
        with_filters = "" if filters is None else f" with the filters {filters}"
        raise RecordError(f"{path}: not a readable Parquet record file{with_filters} ({exc})") from exc
    try:
        return table.cast(_read_schema(columns, categorical))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise RecordError(f"{path}: record columns have the wrong types ({exc})") from exc


@dataclass(frozen=True)
class RecordFile:
    """A record file of a run; rows from ``superseded_from`` on were replaced by a resumed session."""

    path: Path
    part: int | None  # None for the compacted file
    superseded_from: int | None  # a global_step, or None when every row counts


def _resumes(meta: dict, meta_file: Path) -> list[dict[str, int]]:
    resumes = meta.get(RESUMES_FIELD, [])
    valid = isinstance(resumes, list) and all(
        isinstance(r, dict) and isinstance(r.get("global_step"), int) and isinstance(r.get("first_part"), int)
        for r in resumes
    )
    if not valid:
        raise RecordError(f"{meta_file}: field {RESUMES_FIELD!r} must be a list of {{global_step, first_part}} integers")
    return resumes


def _earliest(resumes: list[dict[str, int]]) -> int | None:
    return min((r["global_step"] for r in resumes), default=None)


def _part_index(part: Path) -> int:
    try:
        return int(part.name.removeprefix("part-").removesuffix(".parquet"))
    except ValueError:
        raise RecordError(f"{part}: not a record part (parts are named part-<number>.parquet)") from None


def _compacted_counts(compacted: Path) -> tuple[int, int]:
    """How many parts the compacted file absorbed and how many resumes were applied to it (0, 0 if none)."""
    if not compacted.is_file():
        return 0, 0
    try:
        metadata = pq.read_schema(compacted).metadata or {}
        return int(metadata.get(COMPACTED_PARTS_KEY, 0)), int(metadata.get(RESUMES_APPLIED_KEY, 0))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise RecordError(f"{compacted}: not a readable Parquet record file ({exc})") from exc


def next_part_number(run_dir: Path, meta: dict) -> int:
    """The number a run's next record part gets: past every part written so far, compacted or not."""
    first_part, _ = _compacted_counts(run_dir / RECORDS_FILE)
    return max([first_part] + [f.part + 1 for f in record_files(run_dir, meta) if f.part is not None])


def record_files(run_dir: Path, meta: dict) -> list[RecordFile]:
    """The record files of a run, in order: the compacted file of a closed run, then any parts not in it."""
    resumes = _resumes(meta, run_dir / RUN_META_FILE)
    files = []
    compacted = run_dir / RECORDS_FILE
    first_part, applied = _compacted_counts(compacted)
    if compacted.is_file():
        files.append(RecordFile(compacted, None, _earliest(resumes[applied:])))
    parts_dir = run_dir / RECORDS_PARTS_DIR
    parts = sorted(parts_dir.glob("part-*.parquet"), key=lambda p: (_part_index(p), p.name)) if parts_dir.is_dir() else []
    for part in parts:
        index = _part_index(part)
        if index >= first_part:  # lower parts are already in the compacted file
            files.append(RecordFile(part, index, _earliest([r for r in resumes if index < r["first_part"]])))
    return files


def _with_cutoff(filters: Filters | None, superseded_from: int | None) -> Filters | None:
    if superseded_from is None:
        return filters
    cutoff = pc.field("global_step") < superseded_from
    if filters is None:
        return cutoff
    return (filters if isinstance(filters, pc.Expression) else pq.filters_to_expression(filters)) & cutoff


def read_record_table(run_dir: Path, meta: dict) -> pa.Table:
    """Every current row of a run's record files in ``RECORD_SCHEMA``, superseded rows left out.

    Strict: any damaged file raises. The writer compacts a run with it.
    """
    tables = [
        _read_record_file(f.path, list(COLUMN_NAMES), _with_cutoff(None, f.superseded_from))
        for f in record_files(run_dir, meta)
    ]
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def _constant_labels(value: str, n_rows: int) -> pa.DictionaryArray:
    """``value`` repeated ``n_rows`` times, stored once."""
    return pa.DictionaryArray.from_arrays(np.zeros(n_rows, dtype=np.int32), pa.array([value], pa.string()))


def _read_run_table(
    run_dir: Path, columns: list[str], filters: Filters | None, categorical: bool
) -> pa.Table:
    """One run's records as Arrow, with ``run`` first and ``status`` last (dictionary-encoded)."""
    meta = read_run_meta(run_dir)
    files = record_files(run_dir, meta)
    unclosed = meta.get("status") == "running"
    tables, dropped = [], []
    for record_file in files:
        try:
            tables.append(
                _read_record_file(record_file.path, columns, _with_cutoff(filters, record_file.superseded_from), categorical)
            )
        except RecordError as exc:
            # A live run's newest part is the one a copy or a failing disk may have cut short; anything
            # else damaged is an error, never a silent gap.
            if not (unclosed and record_file is files[-1] and record_file.part is not None):
                raise
            dropped.append(f"{record_file.path.name} (unreadable: {exc.__cause__ or exc})")
    table = pa.concat_tables(tables) if tables else _read_schema(columns, categorical).empty_table()
    if unclosed:
        parts_dir = run_dir / RECORDS_PARTS_DIR
        dropped += [f"{p.name} (being written when the process stopped)" for p in sorted(parts_dir.glob(".part-*"))]
        _warn_unclosed(run_dir, table, dropped)
    table = table.add_column(0, "run", _constant_labels(str(run_dir), table.num_rows))
    return table.append_column("status", _constant_labels(str(meta.get("status", "unknown")), table.num_rows))


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
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    filters: Filters | None = None,
    categorical: bool = False,
    max_workers: int | None = None,
) -> pd.DataFrame:
    """Load one run folder, or every run below a folder, into one tidy DataFrame.

    Columns: ``run``, the record schema (``benchmark, seed, step, module, layer, block, proj, rank,
    init_r, score, budget`` and more, see ``analysis.schema.COLUMNS``) and ``status``.

    For large record sets, read only what is needed:

    - ``columns``: the record columns to read, in that order (``run`` and ``status`` always come along);
      leaving out the list columns ``direction_scores`` and ``direction_kept`` saves most of the time
      and memory;
    - ``filters``: rows to keep, applied while reading (row groups that cannot match are skipped), as
      in ``pyarrow.parquet.read_table``: ``[("phase", "==", "budgeting"), ("step", ">", 1000)]``, a
      list of such lists (OR of ANDs), or a ``pyarrow.compute`` expression; on record columns only;
    - ``categorical``: the label columns (``STRING_COLUMNS``: run, benchmark, phase, module, sublayer,
      block, proj, status) as pandas categoricals with sorted categories instead of strings: several
      times less memory and faster grouping and filtering; the metrics of ``analysis.metrics`` accept both;
    - ``max_workers``: threads reading runs side by side (default: one per CPU, at most 8).
    """
    runs = find_runs(path)
    read_columns = _check_columns(columns)
    _check_filters(filters)
    workers = max_workers or min(8, os.cpu_count() or 1, len(runs))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        tables = list(pool.map(lambda run: _read_run_table(run, read_columns, filters, categorical), runs))
    return _to_pandas(pa.concat_tables(tables), categorical)


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
