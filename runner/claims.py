"""Claims: every run of a sweep is taken by one worker at a time, and a dead worker's run is taken over.

A worker claims a run by creating ``<run folder>.claim`` beside the run folder with ``O_CREAT | O_EXCL``,
which exactly one of several racing workers wins. The claim holds the worker's host, pid (with the
process's start time, so a reused pid is not mistaken for it), scheduler job id and a heartbeat that a
thread renews every ``HEARTBEAT_SECONDS`` while the worker holds it.

A claim is live while its owner is: on the same host, while that process exists; from another host,
while its heartbeat is younger than ``STALE_AFTER_SECONDS``. A worker takes over a dead claim by renaming
it away (``rename`` is atomic, so one taker wins) and claiming afresh; it then sets the dead worker's
partial attempt aside (``<run>.unfinished-<time>``) and trains the run again. A live claim's run folder
is never moved.

On a shared file system (NFS), ``O_EXCL`` creation and ``rename`` are atomic on the server (NFSv3 and
later), and the heartbeat decides for workers on other hosts; the hosts' clocks must agree to well within
``STALE_AFTER_SECONDS``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qformer_budget.core.atomic import write_json_atomic

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 600.0
CLAIM_SUFFIX = ".claim"


def claim_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + CLAIM_SUFFIX)


def job_id() -> str | None:
    """The scheduler's job id of this process (Slurm, submitit's local executor), if any."""
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        if os.environ.get(name):
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            return f"{os.environ[name]}_{task}" if name == "SLURM_ARRAY_JOB_ID" and task else os.environ[name]
    return None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def read_claim(run_dir: Path) -> dict[str, Any] | None:
    """The claim on ``run_dir``, None if there is none (or it vanished while being read)."""
    try:
        return json.loads(claim_path(run_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written by its creator, or damaged: judged by its age alone


def is_live(claim: dict[str, Any], path: Path) -> bool:
    """Whether the worker that wrote ``claim`` (stored at ``path``) still runs."""
    if claim.get("host") == socket.gethostname() and "pid" in claim:
        return _process_start(int(claim["pid"])) == claim.get("process_start")
    beat = claim.get("heartbeat")
    if beat is None:
        try:
            beat = path.stat().st_mtime
        except FileNotFoundError:
            return False
    return time.time() - float(beat) < STALE_AFTER_SECONDS


@dataclass
class Claim:
    """This worker's claim on one run; renewed by a heartbeat thread until :meth:`release`."""

    run_dir: Path
    token: str
    record: dict[str, Any]

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="qformer-budget-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.update(heartbeat=time.time())

    def update(self, **fields: Any) -> None:
        """Add ``fields`` (the current step, say) to the claim, if it is still this worker's."""
        if (read_claim(self.run_dir) or {}).get("token") == self.token:
            self.record.update(fields)
            write_json_atomic(claim_path(self.run_dir), self.record)

    def release(self) -> None:
        """Give the run up: stop the heartbeat and remove the claim, if it is still this worker's."""
        self._stop.set()
        self._thread.join()
        if (read_claim(self.run_dir) or {}).get("token") == self.token:
            claim_path(self.run_dir).unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def try_claim(run_dir: Path) -> Claim | None:
    """Claim ``run_dir`` for this worker; None while a live worker holds it. A dead worker's claim is taken over."""
    path = claim_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # another taker may win a race once or twice
        token = uuid.uuid4().hex
        record = {
            "token": token, "host": socket.gethostname(), "pid": os.getpid(),
            "process_start": _process_start(os.getpid()), "job_id": job_id(), "heartbeat": time.time(),
        }
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = read_claim(run_dir)
            if held is None:
                continue  # released just now: try again
            if is_live(held, path):
                return None
            _remove_dead_claim(path, held, token)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return Claim(run_dir, token, record)
    return None


def _remove_dead_claim(path: Path, dead: dict[str, Any], token: str) -> None:
    """Move the dead claim ``dead`` away, unless another taker replaced it first (then put theirs back)."""
    moved = path.with_name(f".{path.name}.dead-{token}")
    try:
        os.rename(path, moved)  # atomic: of several takers, one moves any given file
    except FileNotFoundError:
        return
    try:
        if json.loads(moved.read_text(encoding="utf-8")) != dead:  # a fresh claim, made after ours was read
            os.link(moved, path)  # back in place; never over a claim made in the meantime
    except (OSError, ValueError):
        pass  # unreadable: it was the damaged dead claim
    moved.unlink(missing_ok=True)
