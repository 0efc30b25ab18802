"""Load recorded runs into one tidy DataFrame: one row per module per recorded step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import COLUMN_NAMES, RECORD_SCHEMA, RECORDS_FILE, RECORDS_PARTS_DIR, RUN_META_FILE, SCHEMA_VERSION


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


def _read_record_file(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise RecordError(f"{path}: not a readable Parquet record file ({exc})") from exc
    missing = [c for c in COLUMN_NAMES if c not in table.column_names]
    if missing:
        raise RecordError(f"{path}: missing record columns {missing}")
    table = table.select(list(COLUMN_NAMES))
    try:
        return table.cast(RECORD_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise RecordError(f"{path}: record columns have the wrong types ({exc})") from exc


def record_files(run_dir: Path) -> list[Path]:
    """The record files of a run: the compacted file of a closed run, else the parts of a live one."""
    compacted = run_dir / RECORDS_FILE
    if compacted.is_file():
        return [compacted]
    parts_dir = run_dir / RECORDS_PARTS_DIR
    return sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []


def read_run(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The records of one run folder, with its ``run`` (folder name) and ``status`` added."""
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    tables = [_read_record_file(p) for p in record_files(run_dir)]
    table = pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()
    frame = table.to_pandas()
    frame.insert(0, "run", str(run_dir))
    frame["status"] = meta.get("status", "unknown")
    return frame


def load_runs(path: str | os.PathLike) -> pd.DataFrame:
    """Load one run folder, or every run below a folder, into one tidy DataFrame.

    Columns: ``run``, the record schema (``benchmark, seed, step, module, layer, block, proj, rank,
    init_r, score, budget`` and more, see ``analysis.schema.COLUMNS``) and ``status``.
    """
    frames = [read_run(run) for run in find_runs(path)]
    return pd.concat(frames, ignore_index=True)


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
