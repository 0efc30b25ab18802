"""The second process of ``regenerate_figures``: draws the planned figures it is sent, one at a time.

``python -m qformer_budget.plotting.figure_worker`` reads pickled ``(PlannedFigure, out_dir, dpi)`` from its
stdin until the input ends, draws and saves each (``figures.draw_and_save``) and answers on its stdout with
the written paths, or with the error raised while drawing. Anything the drawing prints goes to stderr.
"""

from __future__ import annotations

import pickle
import sys

from qformer_budget.plotting.figures import draw_and_save


def main() -> None:
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the answers only
    while True:
        try:
            figure, out_dir, dpi = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = draw_and_save(figure, out_dir, dpi)
        except Exception as error:  # noqa: BLE001 - sent back and raised in the calling process
            answer = error
        try:
            payload = pickle.dumps(answer)
        except Exception:  # noqa: BLE001 - an error that does not pickle goes back as its text
            payload = pickle.dumps(RuntimeError(f"{type(answer).__name__}: {answer}"))
        answers.write(payload)
        answers.flush()


if __name__ == "__main__":
    main()
