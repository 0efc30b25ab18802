"""Record sinks: where recorded steps go. One small interface, several destinations.

Flush policy of :class:`ParquetSink` (the run folder that ``analysis.load_runs`` reads):

- ``write`` only puts the step on a queue; a background thread encodes it. Each time the thread
  wakes it takes every step queued so far and writes them as one Parquet part file in
  ``records/``: first to a hidden temporary file, then fsync, then an atomic rename. A step is
  durable once its part is renamed into place, normally milliseconds after ``write``; a process
  killed with SIGKILL loses at most the steps still queued or being written, and never leaves a
  half-written part where readers look (readers skip names starting with ``.``).
- ``close`` drains the queue, compacts the parts into one ``records.parquet`` (temporary file,
  fsync, rename; the parts are removed only after that) and marks the run ``finished`` or
  ``failed`` in ``run.json``. If writing failed (a full disk, a file-size limit), the run is marked
  ``failed`` with the error, what was written is still compacted, and the error is raised.
- One writer per run folder: a sink holds an exclusive lock on ``.writer.lock`` from ``start`` (or
  ``resume``) to ``close``; a second sink on the same folder is refused with an error naming the
  holder (``core.run_folder.WriterLock``).
- ``resume`` (a run resumed from a checkpoint at step G) appends parts to the same folder and lists the
  resume in ``run.json``; rows the stopped session recorded from G on stay on disk but are superseded
  (readers and the compaction leave them out), so no step is ever read twice.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from qformer_budget.core.atomic import write_parquet_atomic
from qformer_budget.core.records import StepRecord
from qformer_budget.core.run_folder import (
    WriterLock,
    compact,
    holds_records,
    next_part_number,
    part_path,
    read_run_meta,
    with_resume,
    write_run_meta,
)
from qformer_budget.core.schema import RECORDS_PARTS_DIR, RUN_META_FILE


class RecordSink:
    """Interface of a sink: ``start`` once with the run's metadata, ``write`` per step, ``close`` once."""

    def start(self, meta: dict[str, Any]) -> None:
        pass

    def write(self, record: StepRecord) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        pass

    def resume(self, meta: dict[str, Any], global_step: int) -> None:
        """Continue a run resumed at ``global_step`` (0-based); by default simply start again."""
        self.start(meta)


_STOP = object()


class ParquetSink(RecordSink):
    """Writes a run folder: ``run.json`` and the budget records as Parquet (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.parts_dir = self.run_dir / RECORDS_PARTS_DIR
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._meta: dict[str, Any] = {}
        self._parts_written = 0
        self._steps_written = 0
        self._lock = WriterLock(self.run_dir)

    def start(self, meta: dict[str, Any]) -> None:
        self._lock.acquire()
        try:
            self._start(meta)
        except BaseException:
            self._lock.release()
            raise

    def _start(self, meta: dict[str, Any]) -> None:
        if holds_records(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds budget records; give each run its own folder "
                "(or remove the old records) so that nothing recorded is overwritten; to continue a stopped run, "
                "resume it (BudgetRecorder(..., resume_from_step=...), or the Trainer's resume_from_checkpoint)"
            )
        self.parts_dir.mkdir(exist_ok=True)
        self._meta = dict(meta, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_run_meta(self.run_dir, self._meta)
        self._start_writer()

    def _start_writer(self) -> None:
        self._thread = threading.Thread(target=self._drain, name="qformer-budget-writer", daemon=True)
        self._thread.start()

    # What must be equal between a run and the session that resumes it.
    RESUME_MUST_MATCH = ("benchmark", "seed", "record_every", "adalora", "modules")

    def resume(self, meta: dict[str, Any], global_step: int) -> None:
        """Append to this run's records from ``global_step`` on; rows the stopped session recorded from
        there on are superseded (kept on disk until compaction, never read)."""
        if not (self.run_dir / RUN_META_FILE).is_file():
            raise FileNotFoundError(f"cannot resume the records of {self.run_dir}: it holds no {RUN_META_FILE}")
        self._lock.acquire()
        try:
            self._resume(meta, global_step)
        except BaseException:
            self._lock.release()
            raise

    def _resume(self, meta: dict[str, Any], global_step: int) -> None:
        meta_file = self.run_dir / RUN_META_FILE
        previous = read_run_meta(self.run_dir)
        for key in self.RESUME_MUST_MATCH:
            now = json.loads(json.dumps(meta.get(key)))
            if previous.get(key) != now:
                raise ValueError(
                    f"{meta_file}: {key} was {previous.get(key)!r}, the resumed run has {now!r}; "
                    "resume into the run folder of the same run"
                )
        self._parts_written = next_part_number(self.run_dir, previous)
        self.parts_dir.mkdir(exist_ok=True)
        self._meta = with_resume(previous | meta | {"status": "running"}, global_step, self._parts_written)
        write_run_meta(self.run_dir, self._meta)
        self._start_writer()

    def write(self, record: StepRecord) -> None:
        self._raise_writer_error()
        self._queue.put(record)

    def _drain(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            records = [r for r in batch if r is not _STOP]
            if records and self._error is None:
                try:
                    table = pa.concat_tables([r.to_table() for r in records])
                    write_parquet_atomic(table, part_path(self.run_dir, self._parts_written))
                    self._parts_written += 1
                    self._steps_written += len(records)
                except BaseException as exc:  # reported on the training thread by write/close
                    self._error = exc

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            raise RuntimeError(
                f"writing budget records under {self.parts_dir} failed: {self._error!r}; "
                f"the {self._steps_written} steps written before are intact"
            ) from self._error

    def close(self, status: str = "finished") -> None:
        """Drain, compact, and mark the run ``status``; a run whose writes failed is marked ``failed``
        with the error, and what was written before is still compacted."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        try:
            try:
                table = compact(self.run_dir, self._meta, self._parts_written)
                self._meta["recorded_steps"] = len(pc.unique(table["global_step"]))
            except Exception as exc:  # the parts stay where they are: compaction removes them only once done
                self._error = self._error or exc
            if self._error is not None:
                status = "failed"
                self._meta["error"] = f"writing records failed: {self._error!r}"
            self._meta.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            write_run_meta(self.run_dir, self._meta)
        finally:
            self._lock.release()
        self._raise_writer_error()
