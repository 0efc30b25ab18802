"""One recorded step, held as plain numpy arrays so that encoding can happen off the training thread."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa

from qformer_budget.core.grammar import ModulePosition, parse_module
from qformer_budget.core.schema import RECORD_SCHEMA, SCHEMA_VERSION


@dataclass(frozen=True)
class ModuleInfo:
    """An adapted module: its name in the base model and where it sits in the model."""

    module: str
    in_features: int
    out_features: int

    @property
    def position(self) -> ModulePosition | None:
        """Where it sits in the whole model (``grammar.parse_module``); None for a name the grammar does not know."""
        return parse_module(self.module)

    @property
    def label(self) -> str:
        position = self.position
        return position.label if position is not None else self.module


@dataclass(frozen=True)
class StepRecord:
    """Everything recorded at one allocation step; per-module arrays follow ``modules``' order."""

    benchmark: str
    seed: int
    global_step: int
    phase: str
    mask_step: bool
    budget: int
    threshold: float
    init_r: int
    modules: tuple[ModuleInfo, ...]
    direction_kept: np.ndarray  # (n_modules, init_r) bool
    direction_scores: np.ndarray | None  # (n_modules, init_r) float32; None once peft cleared its scores

    @property
    def step(self) -> int:
        return self.global_step + 1

    @property
    def ranks(self) -> np.ndarray:
        return self.direction_kept.sum(axis=1)

    @property
    def scores(self) -> np.ndarray:
        """Per-module importance: the sum of the triplet scores, in float64."""
        if self.direction_scores is None:
            return np.full(len(self.modules), np.nan)
        return self.direction_scores.astype(np.float64).sum(axis=1)

    def to_table(self) -> pa.Table:
        """The tidy rows of this step: one per module, in ``RECORD_SCHEMA``."""
        n = len(self.modules)
        r = self.init_r
        offsets = _list_offsets(n, r)
        kept = pa.ListArray.from_arrays(offsets, pa.array(self.direction_kept.reshape(-1)))
        if self.direction_scores is None:
            dir_scores = pa.nulls(n, pa.list_(pa.float32()))
        else:
            dir_scores = pa.ListArray.from_arrays(offsets, pa.array(self.direction_scores.reshape(-1).astype(np.float32)))
        columns = {
            "schema_version": pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int16)),
            "benchmark": pa.array([self.benchmark] * n, pa.string()),
            "seed": pa.array(np.full(n, self.seed, dtype=np.int64)),
            "step": pa.array(np.full(n, self.step, dtype=np.int64)),
            "global_step": pa.array(np.full(n, self.global_step, dtype=np.int64)),
            "phase": pa.array([self.phase] * n, pa.string()),
            "mask_step": pa.array(np.full(n, self.mask_step, dtype=bool)),
            **_module_columns(self.modules),
            "init_r": pa.array(np.full(n, r, dtype=np.int16)),
            "rank": pa.array(self.ranks.astype(np.int16)),
            "score": pa.array(self.scores),
            "direction_scores": dir_scores,
            "direction_kept": kept,
            "budget": pa.array(np.full(n, self.budget, dtype=np.int64)),
            "threshold": pa.array(np.full(n, self.threshold, dtype=np.float64)),
        }
        return pa.Table.from_pydict(columns, schema=RECORD_SCHEMA)


OTHER = "other"  # component and block of a module the grammar does not name (an adapter added by hand)


@lru_cache(maxsize=8)
def _module_columns(modules: tuple[ModuleInfo, ...]) -> dict[str, pa.Array]:
    """The columns that describe the modules: the same for every step of a run, so built once."""
    positions = [m.position for m in modules]
    return {
        "module": pa.array([m.module for m in modules], pa.string()),
        "component": pa.array([p.component if p else OTHER for p in positions], pa.string()),
        "sublayer": pa.array([m.label for m in modules], pa.string()),
        "layer": pa.array([p.layer if p else None for p in positions], pa.int16()),
        "block": pa.array([p.block if p else OTHER for p in positions], pa.string()),
        "proj": pa.array([p.proj if p else m.module.rsplit(".", 1)[-1] for p, m in zip(positions, modules)]),
        "in_features": pa.array([m.in_features for m in modules], pa.int32()),
        "out_features": pa.array([m.out_features for m in modules], pa.int32()),
    }


@lru_cache(maxsize=8)
def _list_offsets(n: int, r: int) -> pa.Array:
    """Offsets of ``n`` lists of ``r`` items each, for the per-direction list columns."""
    return pa.array(np.arange(0, (n + 1) * r, r, dtype=np.int32))
