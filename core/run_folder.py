"""The run-folder format, shared by the writer (``peft_hooks.sinks``) and the readers (``analysis.load``).

A run folder holds ``run.json`` (what was run, its status and any resumes) and the budget records in
``RECORD_SCHEMA``. While a run is live its records are part files ``records/part-NNNNNN.parquet``, each
written to a hidden temporary name and renamed into place; when it closes they are compacted into one
``records.parquet`` whose Parquet metadata says how many parts it absorbed and how many resumes were
applied to it. A resumed run lists each resume in ``run.json`` as ``{"global_step": G, "first_part": K}``:
rows of ``global_step >= G`` in parts numbered below K (and in a compacted file written before the resume)
were recorded by the interrupted session after its checkpoint and are superseded, never read.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import write_json_atomic, write_parquet_atomic
from .schema import (
    COLUMN_NAMES,
    COMPACTED_PARTS_KEY,
    PHASES,
    READABLE_VERSIONS,
    RECORD_SCHEMA,
    RECORDS_FILE,
    RECORDS_PARTS_DIR,
    RESUMES_APPLIED_KEY,
    RESUMES_FIELD,
    RUN_META_FILE,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    STRING_COLUMNS,
    V1_COMPONENT,
)


class RecordError(ValueError):
    """A run folder or record file that cannot be read as budget records; the message names the file."""


def read_run_meta(run_dir: Path) -> dict:
    """A run's ``run.json``, checked to be a qformer-budget run of the schema version this package reads."""
    meta_file = run_dir / RUN_META_FILE
    check_regular_file(meta_file)
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{meta_file}: not a readable run description ({exc})") from exc
    if not isinstance(meta, dict) or "schema_version" not in meta:
        raise RecordError(f"{meta_file}: missing field 'schema_version'; is this a qformer-budget run?")
    if meta["schema_version"] not in READABLE_VERSIONS:
        raise RecordError(f"{meta_file}: schema_version {meta['schema_version']!r}, {_READS}")
    return meta


def check_regular_file(path: Path) -> None:
    """Refuse a ``path`` that is not a regular file (a named pipe would block the reader forever)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise RecordError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        raise RecordError(f"{path}: not a regular file; a run's {path.name} must be one")


Filters = pc.Expression | Sequence[tuple] | Sequence[Sequence[tuple]]


_LABELS = pa.dictionary(pa.int32(), pa.string())
_READS = "this qformer-budget reads versions " + " and ".join(str(v) for v in READABLE_VERSIONS)
V1_COLUMNS = tuple(c for c in COLUMN_NAMES if c != "component")


def read_schema(columns: list[str], categorical: bool) -> pa.Schema:
    """The Arrow schema of ``columns`` as read: RECORD_SCHEMA's, labels dictionary-encoded if categorical."""
    fields = [RECORD_SCHEMA.field(c) for c in columns]
    if categorical:
        fields = [f.with_type(_LABELS) if f.type == pa.string() else f for f in fields]
    return pa.schema(fields)


def _kind(dtype: pa.DataType) -> str:
    """What a column holds, whatever its width or encoding: text, integer, float, bool or list."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    for kind, test in (("text", pa.types.is_string), ("text", pa.types.is_large_string), ("integer", pa.types.is_integer),
                       ("float", pa.types.is_floating), ("bool", pa.types.is_boolean), ("list", pa.types.is_list),
                       ("list", pa.types.is_large_list)):
        if test(dtype):
            return kind
    return str(dtype)


def read_record_file(
    path: Path, columns: list[str], filters: Filters | None = None, categorical: bool = False
) -> pa.Table:
    """``columns`` of one record file, rows matching ``filters``; any fault raises a RecordError naming it."""
    # Damaged bytes surface as Arrow errors, OSError, or ValueError (a name that is no longer UTF-8).
    try:
        file_schema = pq.read_schema(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise RecordError(f"{path}: not a readable Parquet record file ({exc})") from exc
    stated = (file_schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if stated is not None and stated not in {str(v).encode() for v in READABLE_VERSIONS}:
        raise RecordError(f"{path}: schema_version {stated.decode(errors='replace')}, {_READS}")
    # Without metadata (a file rewritten by other tools), the columns say the version; the values are checked below.
    version = int(stated) if stated is not None else (SCHEMA_VERSION if "component" in file_schema.names else 1)
    missing = [c for c in (COLUMN_NAMES if version >= 2 else V1_COLUMNS) if c not in file_schema.names]
    if missing:
        raise RecordError(f"{path}: missing record columns {missing}")
    wrong = [  # a cast would turn integer phases into the strings "0", "1", ...: compare what they hold
        f"{name} ({file_schema.field(name).type}, expected {RECORD_SCHEMA.field(name).type})"
        for name in columns
        if name in file_schema.names and _kind(file_schema.field(name).type) != _kind(RECORD_SCHEMA.field(name).type)
    ]
    if wrong:
        raise RecordError(f"{path}: record columns have the wrong types: {', '.join(wrong)}")
    read_columns, read_filters = columns, filters
    if version == 1:  # no component column: it is added, and filters (which may name it) applied after
        read_columns = [c for c in columns if c != "component"]
        if filters is not None:
            scalar = [f.name for f in file_schema if not pa.types.is_list(f.type) and f.name not in read_columns]
            read_columns, read_filters = read_columns + scalar, None
    labels = [c for c in read_columns if c in STRING_COLUMNS] if categorical else None
    try:
        table = pq.read_table(path, columns=read_columns, filters=read_filters, read_dictionary=labels)
        table.validate(full=True)  # damaged values (labels past their dictionary) fail here, not in pandas
        if version == 1:
            table = _as_version_2(table, filters)
    except (OSError, ValueError, pa.ArrowException) as exc:
        with_filters = "" if filters is None else f" with the filters {filters}"
        raise RecordError(f"{path}: not a readable Parquet record file{with_filters} ({exc})") from exc
    try:
        table = table.select(columns).cast(read_schema(columns, categorical))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise RecordError(f"{path}: record columns have the wrong types ({exc})") from exc
    versions = None if stated is not None else pq.read_table(path, columns=["schema_version"])
    _check_values(path, table, version, versions)
    return table


def constant_labels(value: str, n_rows: int) -> pa.DictionaryArray:
    """``value`` repeated ``n_rows`` times, stored once."""
    return pa.DictionaryArray.from_arrays(np.zeros(n_rows, dtype=np.int32), pa.array([value], pa.string()))


def _as_version_2(table: pa.Table, filters: Filters | None) -> pa.Table:
    """Version-1 rows (Q-Former records) with their ``component`` column, then ``filters`` applied."""
    table = table.append_column("component", constant_labels(V1_COMPONENT, table.num_rows))
    if filters is None:
        return table
    return table.filter(filters if isinstance(filters, pc.Expression) else pq.filters_to_expression(filters))


def _check_values(path: Path, table: pa.Table, version: int, versions: pa.Table | None) -> None:
    """Refuse values no recorder writes, naming the file and the column (types are checked already).

    ``versions`` is the ``schema_version`` column, read when the file's metadata does not say its ``version``.
    """
    if versions is not None:
        found = sorted(set(pc.unique(versions["schema_version"]).to_pylist()) - {version})
        if found:
            columns = "its columns are version 1's (no component)" if version == 1 else "it has version 2's columns"
            raise RecordError(f"{path}: column schema_version holds {found}, but {columns}; {_READS}")
    names = table.column_names
    if "phase" in names:
        phases = pc.unique(table["phase"].cast(pa.string())).to_pylist()
        unknown = sorted(set(phases) - set(PHASES), key=str)
        if unknown:
            raise RecordError(f"{path}: column phase holds {unknown}; phases are {list(PHASES)}")
    if "rank" in names:
        low = pc.min(table["rank"]).as_py()
        if low is not None and low < 0:
            raise RecordError(f"{path}: column rank holds {low}; a kept rank is never negative")
        if "init_r" in names:
            above = pc.sum(pc.greater(table["rank"], table["init_r"])).as_py()
            if above:
                raise RecordError(f"{path}: column rank exceeds init_r in {above} rows; at most init_r directions are kept")


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
    first_parts = [r["first_part"] for r in resumes]
    if any(r["global_step"] < 0 or r["first_part"] < 0 for r in resumes) or first_parts != sorted(first_parts):
        raise RecordError(
            f"{meta_file}: field {RESUMES_FIELD!r} must list resumes in the order they happened, with "
            f"non-negative steps and parts; got {resumes}"
        )
    return resumes


def _earliest(resumes: list[dict[str, int]]) -> int | None:
    return min((r["global_step"] for r in resumes), default=None)


def part_path(run_dir: Path, number: int) -> Path:
    """Where a run's record part ``number`` lives."""
    return run_dir / RECORDS_PARTS_DIR / f"part-{number:06d}.parquet"


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
    written = max([first_part] + [f.part + 1 for f in files if f.part is not None])
    beyond = [r for r in resumes if r["first_part"] > written]
    if beyond:  # it would supersede rows of parts that no later session wrote
        raise RecordError(
            f"{run_dir / RUN_META_FILE}: resume {beyond[0]} starts at part {beyond[0]['first_part']}, but the run "
            f"holds parts up to {written - 1} only"
        )
    return files


def with_cutoff(filters: Filters | None, superseded_from: int | None) -> Filters | None:
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
        read_record_file(f.path, list(COLUMN_NAMES), with_cutoff(None, f.superseded_from))
        for f in record_files(run_dir, meta)
    ]
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def holds_records(run_dir: Path) -> bool:
    """True when ``run_dir`` already holds budget records (compacted or as parts)."""
    parts_dir = run_dir / RECORDS_PARTS_DIR
    return (run_dir / RECORDS_FILE).exists() or (parts_dir.exists() and any(parts_dir.iterdir()))


def with_resume(meta: dict[str, Any], global_step: int, first_part: int) -> dict[str, Any]:
    """``meta`` with one more resume listed: rows from ``global_step`` on before part ``first_part`` are superseded."""
    return meta | {RESUMES_FIELD: meta.get(RESUMES_FIELD, []) + [{"global_step": int(global_step), "first_part": first_part}]}


def compact(run_dir: Path, meta: dict[str, Any], parts_written: int) -> pa.Table:
    """Write a closed run's current rows as ``records.parquet``, then remove its parts; returns the rows.

    The compacted file is complete on disk (temporary name, fsync, rename) before any part is removed.
    """
    table = read_record_table(run_dir, meta)
    if table.num_rows:  # rows read from version-1 parts are now stored as version 2's, with their component
        versions = pa.array(np.full(table.num_rows, SCHEMA_VERSION, dtype=np.int16))
        table = table.set_column(table.schema.get_field_index("schema_version"), "schema_version", versions)
        metadata = RECORD_SCHEMA.metadata | {
            COMPACTED_PARTS_KEY: str(parts_written).encode(),
            RESUMES_APPLIED_KEY: str(len(meta.get(RESUMES_FIELD, []))).encode(),
        }
        write_parquet_atomic(table.replace_schema_metadata(metadata), run_dir / RECORDS_FILE)
    shutil.rmtree(run_dir / RECORDS_PARTS_DIR)
    return table


def write_run_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    """Replace a run's ``run.json`` atomically."""
    write_json_atomic(run_dir / RUN_META_FILE, meta)


def dotted_items(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested settings dict (``run.json``, a run's ``config.json``) as flat ``a.b`` keys and their values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= dotted_items(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def package_versions() -> dict[str, str]:
    """The versions a run was made with, kept in its run.json and config.json."""
    found = {}
    for name in ("qformer-budget", "torch", "transformers", "peft"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


WRITER_LOCK_FILE = ".writer.lock"


class RunFolderLocked(RuntimeError):
    """Another live process writes this run folder's records; the message names it."""


class WriterLock:
    """The single writer of a run folder: an exclusive ``flock`` on ``.writer.lock``, held while open.

    The lock file says who holds it (host, pid, since when) and is emptied on release. The kernel drops
    the lock when its holder exits, killed or not, so a stale file never blocks a later writer. On NFS, Linux clients carry
    ``flock`` as a POSIX byte-range lock to the server (NFSv4 leases): it holds across hosts there too,
    and a crashed host's lock lapses when its lease does.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / WRITER_LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not said who it is"
            handle.close()
            raise RunFolderLocked(
                f"{self.path.parent}: another writer holds this run folder ({holder}); each run has one writer"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)  # names no holder once released
            self._file.close()  # closing the descriptor drops the flock
            self._file = None


class Preempted(BaseException):
    """The process was told to stop (SIGTERM from a scheduler): runs close as ``preempted``, not ``failed``.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` carries on past it.
    """


def closing_status(exc: BaseException | None) -> str:
    """The status a run closes with after ``exc`` (None: it completed)."""
    if exc is None:
        return "finished"
    return "preempted" if isinstance(exc, Preempted) else "failed"

