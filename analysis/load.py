"""Load recorded runs into one tidy DataFrame: one row per module per recorded step."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import (
    COLUMN_NAMES,
    COLUMNS,
    RECORD_SCHEMA,
    RECORDS_FILE,
    RECORDS_PARTS_DIR,
    RUN_META_FILE,
    SCHEMA_VERSION,
)


class RecordError(ValueError):
    """A run folder or record file that cannot be read as budget records; the message names the file."""


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
_VERSION_KEY = b"qformer_budget.schema_version"  # RECORD_SCHEMA's metadata, written in every record file


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
    version = (file_schema.metadata or {}).get(_VERSION_KEY)
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


def record_files(run_dir: Path) -> list[Path]:
    """The record files of a run: the compacted file of a closed run, else the parts of a live one."""
    compacted = run_dir / RECORDS_FILE
    if compacted.is_file():
        return [compacted]
    parts_dir = run_dir / RECORDS_PARTS_DIR
    return sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []


def _constant_labels(value: str, n_rows: int) -> pa.DictionaryArray:
    """``value`` repeated ``n_rows`` times, stored once."""
    return pa.DictionaryArray.from_arrays(np.zeros(n_rows, dtype=np.int32), pa.array([value], pa.string()))


def _read_run_table(
    run_dir: Path, columns: list[str], filters: Filters | None, categorical: bool
) -> pa.Table:
    """One run's records as Arrow, with ``run`` first and ``status`` last (dictionary-encoded)."""
    meta = read_run_meta(run_dir)
    tables = [_read_record_file(p, columns, filters, categorical) for p in record_files(run_dir)]
    table = pa.concat_tables(tables) if tables else _read_schema(columns, categorical).empty_table()
    table = table.add_column(0, "run", _constant_labels(str(run_dir), table.num_rows))
    return table.append_column("status", _constant_labels(str(meta.get("status", "unknown")), table.num_rows))


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
    """Evaluation results of every run below ``path`` (its ``metrics.json``), one row per run and metric."""
    rows = []
    for metrics_file in sorted(Path(path).rglob("metrics.json")):
        try:
            report = json.loads(metrics_file.read_text(encoding="utf-8"))
            base = {key: report[key] for key in ("benchmark", "method", "seed", "split")}
            values = report["metrics"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecordError(f"{metrics_file}: not a readable metrics report ({exc!r})") from exc
        rows += [
            base | {"metric": name, "value": value, "run": str(metrics_file.parent)}
            for name, value in values.items()
            if name != "examples"
        ]
    return pd.DataFrame(rows, columns=["benchmark", "method", "seed", "split", "metric", "value", "run"])
