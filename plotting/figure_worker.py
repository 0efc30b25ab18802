"""Drawing figures in more than one process: :class:`FigureWorker` (a second Python process) and :func:`draw_all`.

A worker is a fresh interpreter running :func:`serve` (``python -c ... ANSWER_FD``), not a fork: nothing of a caller's script runs again and no thread of the caller is copied. It reads pickled
``(PlannedFigure, out_dir, dpi)`` requests on its stdin until the input ends, draws and saves each
(``figures.draw_and_save``) and answers on a pipe of its own (file descriptor ``ANSWER_FD``) with the written
paths or the error. Whatever the worker or its imports print goes to its stdout and stderr as usual, never
into the answers.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .figures import PlannedFigure

STOP_SECONDS = 60  # for a worker to finish its figure once its input ends
_WORKER_COMMAND = "import sys; from qformer_budget.plotting.figure_worker import serve; serve(int(sys.argv[1]))"


class FigureWorkerError(RuntimeError):
    """A figure worker process failed or stopped; the message names its pid and the figure it was drawing."""


class FigureWorker:
    """A second Python process that draws planned figures beside this one (see the module's docstring)."""

    def __init__(self) -> None:
        answers_read, answers_write = os.pipe()
        try:
            self.process = subprocess.Popen(  # Agg: a Jupyter kernel's inline backend means nothing there
                [sys.executable, "-c", _WORKER_COMMAND, str(answers_write)],
                stdin=subprocess.PIPE, pass_fds=(answers_write,), env=dict(os.environ, MPLBACKEND="Agg"),
            )
        finally:
            os.close(answers_write)
        self.answers = os.fdopen(answers_read, "rb")

    @classmethod
    @contextmanager
    def started(cls, count: int) -> Iterator[list[FigureWorker]]:
        """``count`` workers for the block, stopped when the block ends, however it ends."""
        workers: list[FigureWorker] = []
        try:
            workers += [cls() for _ in range(count)]
            yield workers
        finally:
            for worker in workers:
                worker.stop()

    def draw(self, figure: PlannedFigure, out_dir: Path, dpi: int) -> list[Path]:
        """Have the worker draw and save ``figure``. An error raised there is raised here, its cause a
        :class:`FigureWorkerError` with the worker's traceback; a worker that stops raises that error."""
        where = f"the figure worker process (pid {self.process.pid})"
        try:
            pickle.dump((figure, out_dir, dpi), self.process.stdin)
            self.process.stdin.flush()
            paths, failure = pickle.load(self.answers)
        except Exception as error:  # a dead, stuck or garbled worker: stop it, name it
            self.process.kill()
            code = self.process.wait(timeout=STOP_SECONDS)
            raise FigureWorkerError(
                f"{where} stopped (exit code {code}) while drawing {figure.stem} ({type(error).__name__}); the "
                "figures already written are kept, run the command again"
            ) from error
        if failure is None:
            return paths
        original, text = failure
        cause = FigureWorkerError(f"{where} failed while drawing {figure.stem}:\n{text}")
        raise (original if original is not None else cause) from cause

    def stop(self) -> None:
        """End the worker's input and wait for it to finish its figure (killed after ``STOP_SECONDS``)."""
        try:
            self.process.stdin.close()
        except OSError:  # it has already stopped
            pass
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.answers.close()


def draw_all(figures: list[PlannedFigure], out_dir: Path, dpi: int, workers: list[FigureWorker]) -> list[Path]:
    """Draw and save every figure: this process from the end of the list, each worker (one thread feeding it)
    from the start, until they meet. Returns the written paths in the figures' order."""
    from .figures import draw_and_save

    stems = [figure.stem for figure in figures]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise ValueError(f"two figures would be written to the same files {clashes}: rename the benchmarks")
    pending = deque(figures)
    written: dict[str, list[Path]] = {}
    errors: list[BaseException] = []

    def feed(worker: FigureWorker) -> None:
        try:
            while True:
                try:
                    figure = pending.popleft()
                except IndexError:
                    return
                written[figure.stem] = worker.draw(figure, out_dir, dpi)
        except BaseException as error:  # noqa: BLE001 - raised in the calling thread below
            errors.append(error)
            pending.clear()

    feeders = [threading.Thread(target=feed, args=(worker,), name="figure-worker-feed") for worker in workers]
    for feeder in feeders:
        feeder.start()
    try:
        while True:
            try:
                figure = pending.pop()
            except IndexError:
                break
            written[figure.stem] = draw_and_save(figure, out_dir, dpi)
    finally:
        pending.clear()  # after an error here, no worker takes a new figure
        for feeder in feeders:
            feeder.join()
    if errors:
        raise errors[0]
    return [path for figure in figures for path in written[figure.stem]]


def _error_answer(error: Exception, text: str) -> bytes:
    """The answer for an error: the error itself and its traceback, or the text alone if the error does not
    come back intact through pickle."""
    try:
        payload = pickle.dumps((None, (error, text)))
        pickle.loads(payload)
    except Exception:  # noqa: BLE001
        payload = pickle.dumps((None, (None, text)))
    return payload


def serve(answer_fd: int) -> None:
    """The worker's loop: one answer ``(paths, None)`` or ``(None, (error or None, traceback text))`` per request."""
    from qformer_budget.plotting.figures import draw_and_save

    requests = sys.stdin.buffer
    with os.fdopen(answer_fd, "wb") as answers:
        while True:
            try:
                figure, out_dir, dpi = pickle.load(requests)
            except EOFError:
                return
            try:
                payload = pickle.dumps((draw_and_save(figure, out_dir, dpi), None))
            except Exception as error:  # noqa: BLE001 - sent back and raised in the calling process
                payload = _error_answer(error, traceback.format_exc())
            answers.write(payload)
            answers.flush()

