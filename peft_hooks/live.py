"""Live views of the allocation while training: one tag grammar for TensorBoard, Weights & Biases and MLflow.

Every live-view sink logs the same values under the same tags, at the 1-based step of the records:

- ``budget/total``: the budget of peft's schedule; ``budget/threshold``: the mask threshold (mask steps only);
- ``rank/<block>`` and ``share/<block>``: kept directions per block (``self_attn``, ``cross_attn``,
  ``ffn_query``, ``ffn_text``; outside the Q-Former prefixed with the component, ``llm.dec_ffn``; ``other``
  for a module the grammar does not name) and their share of the total;
- ``rank/<component>`` and ``share/<component>`` (``vision``, ``qformer``, ``llm``) when several components
  share the budget;
- ``rank/<sublayer>``: kept directions per module, by grammar label (``rank/L02.cross_attn.value``);
- ``score/<block>``: sum of the triplet scores per block, while peft holds scores;
- ``heatmap/rank``: the layer x sublayer rank heatmap, at mask steps only (drawing is the costly part).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from qformer_budget.core.grammar import COMPONENTS, block_key, in_block_order
from qformer_budget.core.records import OTHER, ModuleInfo, StepRecord

from .sinks import RecordSink

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEATMAP_TAG = "heatmap/rank"


def missing_extra(sink: str, package: str, extra: str) -> ImportError:
    return ImportError(f'{sink} needs {package}: pip install "qformer-budget[{extra}]"')


class LiveViewSink(RecordSink):
    """Turns each recorded step into scalars by tag and, at mask steps, a heatmap figure.

    Subclasses open their destination in :meth:`_open`, send one step's values in :meth:`_log` and
    release the destination in :meth:`_close`. Logging happens on the calling (training) thread.
    """

    def __init__(self) -> None:
        self._started = False
        self._title = ""
        self._modules: tuple[ModuleInfo, ...] | None = None

    def start(self, meta: dict[str, Any]) -> None:
        self._title = f"{meta.get('benchmark', '')} seed {meta.get('seed', '')}"
        self._open(meta)
        self._started = True

    def write(self, record: StepRecord) -> None:
        if not self._started:
            raise RuntimeError(f"{type(self).__name__}.write() called before start()")
        scalars = self.scalars(record)
        figures = {HEATMAP_TAG: self.heatmap(record)} if record.mask_step and self._qformer_present else {}
        self._log(record.step, scalars, figures)

    def close(self, status: str = "finished") -> None:
        if not self._started:
            return
        self._started = False
        self._close(status)

    def _open(self, meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def _log(self, step: int, scalars: dict[str, float], figures: dict[str, Figure]) -> None:
        raise NotImplementedError

    def _close(self, status: str) -> None:
        raise NotImplementedError

    def _index_modules(self, modules: tuple[ModuleInfo, ...]) -> None:
        """Per-module labels and block indices, computed once per run (the module list never changes)."""
        positions = [m.position for m in modules]
        module_blocks = [OTHER if p is None else block_key(p.component, p.block) for p in positions]
        self._blocks = in_block_order(module_blocks)
        self._block_of = np.array([self._blocks.index(b) for b in module_blocks])
        module_components = [OTHER if p is None else p.component for p in positions]
        present = [c for c in (*COMPONENTS, OTHER) if c in module_components]
        self._components = present if len(present) > 1 else []
        self._component_of = np.array([present.index(c) for c in module_components])
        self._labels = [m.label for m in modules]
        self._qformer_rows = np.array([p is not None and p.component == "qformer" and p.layer is not None
                                       for p in positions])
        self._qformer_present = bool(self._qformer_rows.any())
        self._modules = modules

    def _per_block(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self._block_of, weights=values, minlength=len(self._blocks))

    def scalars(self, record: StepRecord) -> dict[str, float]:
        """This step's values by tag (see the module docstring)."""
        if record.modules is not self._modules:
            self._index_modules(record.modules)
        values = {"budget/total": float(record.budget)}
        if record.mask_step and np.isfinite(record.threshold):
            values["budget/threshold"] = float(record.threshold)
        ranks = record.ranks
        block_ranks = self._per_block(ranks)
        total = block_ranks.sum()
        units = list(zip(self._blocks, block_ranks))
        if self._components:  # several components share the budget
            units += zip(self._components, np.bincount(self._component_of, weights=ranks))
        for unit, rank in units:
            values[f"rank/{unit}"] = float(rank)
            if total > 0:  # a share of nothing is undefined
                values[f"share/{unit}"] = float(rank / total)
        values.update((f"rank/{label}", float(rank)) for label, rank in zip(self._labels, ranks))
        if record.direction_scores is not None:
            for block, score in zip(self._blocks, self._per_block(record.scores)):
                values[f"score/{block}"] = float(score)
        return values

    def heatmap(self, record: StepRecord) -> Figure:
        """This step's rank heatmap on a pyplot-free Figure: no GUI backend, no global figure left open.

        The plotting layer is loaded here, on the first drawing, so that recording never loads matplotlib.
        """
        from matplotlib.figure import Figure

        from qformer_budget.plotting.figure_data import rank_heatmap_data
        from qformer_budget.plotting.heatmaps import plot_rank_heatmap

        if record.modules is not self._modules:
            self._index_modules(record.modules)
        frame = record.to_table().to_pandas()
        frame["run"] = self._title
        table = rank_heatmap_data(frame)
        figure = Figure(figsize=(8, 0.42 * len(table) + 1.6), layout="constrained")
        kept = int(record.ranks[self._qformer_rows].sum())
        whose = "kept" if self._qformer_rows.all() else "Q-Former kept"
        plot_rank_heatmap(
            table, figure.add_subplot(), vmax=record.init_r,
            title=f"{self._title}, step {record.step}: budget {record.budget}, {whose} {kept}",
        )
        return figure
