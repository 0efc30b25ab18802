"""A record sink that mirrors the budget records into TensorBoard, to watch the allocation while training.

Tags, all at global step ``record.step`` (the 1-based step of the records):

- ``budget/total``: the budget of peft's schedule; ``budget/threshold``: the mask threshold (mask steps only);
- ``rank/<block>`` and ``share/<block>``: kept directions per block (``self_attn``, ``cross_attn``,
  ``ffn_query``, ``ffn_text``; ``other`` for modules outside the Q-Former) and their share of the total;
- ``rank/<sublayer>``: kept directions per module, by grammar label (``rank/L03.cross_attn.value``);
- ``score/<block>``: sum of the triplet scores per block, while peft holds scores;
- ``heatmap/rank``: the layer x sublayer rank heatmap, at mask steps only (drawing is the costly part).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from analysis.plots import plot_rank_heatmap
from analysis.tables import rank_heatmap_data

from .records import ModuleInfo, StepRecord
from .sinks import RecordSink
from .taxonomy import BLOCKS

OTHER_BLOCK = "other"


def _summary_writer_class():
    try:
        # torch.utils.tensorboard needs it; importing it here also catches its absence when torch's
        # module is already cached.
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            'TensorBoardSink needs tensorboard: pip install "qformer-budget[tensorboard]"'
        ) from exc
    return SummaryWriter


class TensorBoardSink(RecordSink):
    """Writes each recorded step to a TensorBoard event file in ``log_dir`` (see the module docstring).

    Writing happens on the calling (training) thread: scalars at every recorded step (about 15 ms for
    120 modules), and the heatmap figure only at mask steps (about 0.5 s on 2 CPU cores).
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = Path(log_dir)
        self._summary_writer = _summary_writer_class()
        self._writer = None
        self._title = ""
        self._modules: tuple[ModuleInfo, ...] | None = None

    def start(self, meta: dict[str, Any]) -> None:
        self._writer = self._summary_writer(log_dir=str(self.log_dir))
        self._title = f"{meta.get('benchmark', '')} seed {meta.get('seed', '')}"

    def _index_modules(self, modules: tuple[ModuleInfo, ...]) -> None:
        """Per-module labels and block indices, computed once per run (the module list never changes)."""
        subs = [m.sublayer for m in modules]
        module_blocks = [s.block if s is not None else OTHER_BLOCK for s in subs]
        self._blocks = [b for b in (*BLOCKS, OTHER_BLOCK) if b in module_blocks]
        self._block_of = np.array([self._blocks.index(b) for b in module_blocks])
        self._labels = [m.label for m in modules]
        self._has_qformer = any(s is not None for s in subs)
        self._modules = modules

    def _per_block(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self._block_of, weights=values, minlength=len(self._blocks))

    def write(self, record: StepRecord) -> None:
        if self._writer is None:
            raise RuntimeError("TensorBoardSink.write() called before start()")
        if record.modules is not self._modules:
            self._index_modules(record.modules)
        add, step = self._writer.add_scalar, record.step
        add("budget/total", record.budget, step)
        if record.mask_step and np.isfinite(record.threshold):
            add("budget/threshold", record.threshold, step)
        ranks = record.ranks
        block_ranks = self._per_block(ranks)
        total = block_ranks.sum()
        for block, rank in zip(self._blocks, block_ranks):
            add(f"rank/{block}", float(rank), step)
            if total > 0:  # a share of nothing is undefined
                add(f"share/{block}", float(rank / total), step)
        for label, rank in zip(self._labels, ranks):
            add(f"rank/{label}", int(rank), step)
        if record.direction_scores is not None:
            for block, score in zip(self._blocks, self._per_block(record.scores)):
                add(f"score/{block}", float(score), step)
        if record.mask_step and self._has_qformer:
            self._writer.add_figure("heatmap/rank", self._heatmap(record), step, close=True)

    def _heatmap(self, record: StepRecord) -> Figure:
        """This step's rank heatmap on a pyplot-free Figure: no GUI backend, no global figure left open."""
        frame = record.to_table().to_pandas()
        frame["run"] = str(self.log_dir)
        table = rank_heatmap_data(frame)
        figure = Figure(figsize=(8, 0.42 * len(table) + 1.6), layout="constrained")
        plot_rank_heatmap(
            table, figure.add_subplot(), vmax=record.init_r,
            title=f"{self._title}, step {record.step}: budget {record.budget}, "
            f"kept {int(record.ranks.sum())}",
        )
        return figure

    def close(self, status: str = "finished") -> None:
        if self._writer is None:
            return
        self._writer.flush()
        self._writer.close()
        self._writer = None
