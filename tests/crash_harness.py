"""Runs many tiny recorded trainings and kills each with SIGKILL at a chosen moment, cheaply.

The harness imports torch, transformers and peft once, runs no torch op itself, and forks one child
per request (fork before any torch thread pool exists is safe). It reads JSON requests from stdin,
one per line, and answers each with one JSON line:

- ``{"run_dir": D, "kill_before_write": K}``: the child kills itself just before its K-th durable
  filesystem step (a rename into place, a removal), counted from 1; K = 0 never kills and the
  answer says how many such steps the run took.
- ``{"run_dir": D, "kill_after": T}``: the harness kills the child T seconds after forking it.

Each answer lists the record parts in place before the kill (``flushed``: name -> rows): a
self-killing child lists them just before dying, the harness just before sending the signal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tiny_training import tiny_setup, train_with_loop

SETUP = tiny_setup(total_step=10, tinit=2, tfinal=2, deltaT=2)


def flushed_parts(run_dir: Path) -> dict[str, int]:
    """Record parts in place (names not starting with '.') and their row counts."""
    parts_dir = run_dir / "records"
    found = {}
    for part in sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []:
        try:
            found[part.name] = pq.read_metadata(part).num_rows
        except FileNotFoundError:  # removed by compaction while listing
            pass
    return found


def _count_durable_steps(kill_at: int, run_dir: Path, counter: list[int]) -> None:
    """Wrap the filesystem steps the sink makes durable progress with; die before the chosen one."""
    for module, name in ((os, "replace"), (shutil, "rmtree")):
        original = getattr(module, name)

        def counted(*args, _original=original, **kwargs):
            counter[0] += 1
            if counter[0] == kill_at:
                Path(f"{run_dir}.flushed.json").write_text(json.dumps(flushed_parts(run_dir)))
                os.kill(os.getpid(), signal.SIGKILL)
            return _original(*args, **kwargs)

        setattr(module, name, counted)


def _child(request: dict, write_end: int) -> None:
    run_dir = Path(request["run_dir"])
    counter = [0]
    _count_durable_steps(request.get("kill_before_write", 0), run_dir, counter)
    train_with_loop(run_dir, SETUP, record_every=1)
    os.write(write_end, str(counter[0]).encode())


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                _child(request, write_end)
            finally:
                os._exit(0)
        os.close(write_end)
        answer = {}
        if "kill_after" in request:
            time.sleep(request["kill_after"])
            answer["flushed"] = flushed_parts(Path(request["run_dir"]))
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        steps = os.read(read_end, 64)
        os.close(read_end)
        flushed_file = Path(f"{request['run_dir']}.flushed.json")
        if flushed_file.exists():
            answer["flushed"] = json.loads(flushed_file.read_text())
            flushed_file.unlink()
        answer |= {"killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL}
        answer["durable_steps"] = int(steps) if steps else None
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
