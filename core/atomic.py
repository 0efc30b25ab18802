"""Atomic writes: readers see either the old file or the whole new one, never a part of it.

Every file a user keeps is written to a hidden temporary name beside it, flushed to disk, then renamed
into place; a process killed in between leaves only the hidden temporary file, and the old file intact.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq


def temporary_name(path: Path) -> Path:
    """The hidden name ``path`` is written under before it is renamed into place: ``.<name>.<unique>.tmp``,
    unique to the writer, so that processes writing the same file never write into each other's."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file to write ``path``'s new content into; it replaces ``path`` only if the block completes."""
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented, key-sorted JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` as zstd-compressed Parquet."""
    with atomic_write(path, "wb") as f:
        pq.write_table(table, f, compression="zstd")
