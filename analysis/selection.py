"""Selecting the rows metrics work on: one step per run, structural zeros flagged, grammar order.

Conventions of every metric in ``qformer_budget.analysis``:

- ``step="final"`` selects each run's last recorded step, an ``int`` selects that step in every run
  (a run without it is an error), ``None`` keeps every recorded step.
- Structural zeros are not findings: only the query positions of the last Q-Former layer reach the LLM,
  so the text FFN (``ffn_text``) of the deepest layer gets exactly zero task gradient.
  :func:`mark_structural` flags those rows; metrics that compare blocks, layers or modules leave them
  out unless ``include_structural=True``; per-module tables keep them with the ``structural`` flag.
- Modules that do not exist (cross-attention of odd layers) have no rows and never get any: a
  table has no row for them, and ``to_xarray`` holds NaN there, never 0.
- Every adapted module belongs to a ``component`` (``vision``, ``qformer``, ``llm``; records without the
  column, version 1 or hand-made, are the Q-Former's). Block and layer shares are shares within the
  component (the Q-Former's blocks sum to 1 whatever else shared the budget); ``component_share`` splits
  the whole budget between the components. Rows without a layer (the projection, the LM head) are left
  out of layer metrics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import numpy as np
import pandas as pd

from qformer_budget.core.grammar import COMPONENTS, block_order, is_structural, parse_module
from qformer_budget.core.records import OTHER
from qformer_budget.core.schema import V1_COMPONENT

RUN_KEYS: tuple[str, ...] = ("run", "benchmark", "seed")
STEP_KEYS = [*RUN_KEYS, "step"]

COMPONENT_ORDER = {component: i for i, component in enumerate(COMPONENTS)}

StepSelector = int | Literal["final"] | None


def last_recorded_step(records: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last recorded step."""
    last = records.groupby("run")["step"].transform("max")
    return records[records["step"] == last]


def last_scored_step(records: pd.DataFrame) -> pd.DataFrame:
    """The rows of each run's last step with scores (peft clears them in the final phase), copying no more."""
    scored = records["score"].notna()
    last = records.loc[scored, "step"].groupby(records.loc[scored, "run"], observed=True).max()
    return records[scored & (records["step"] == records["run"].map(last).astype("float64"))]


def select_step(records: pd.DataFrame, step: StepSelector = "final") -> pd.DataFrame:
    """The rows of one step per run: ``"final"`` (each run's last), an ``int`` (that step), ``None`` (all)."""
    if step is None:
        return records
    if isinstance(step, str):
        if step != "final":
            raise ValueError(f"step must be 'final', an int or None; got {step!r}")
        return last_recorded_step(records)
    at_step = records["step"] == step
    missing = sorted(set(records["run"]) - set(records.loc[at_step, "run"]))
    if missing:
        raise ValueError(
            f"step {step} is not recorded in runs {missing}; use step='final' or filter the runs"
        )
    return records[at_step]


def component_of(records: pd.DataFrame) -> pd.Series:
    """Each row's component. A table read without the column takes it from the ``sublayer`` label or the
    ``module`` name; with neither (version-1 or hand-made records) it is the Q-Former's."""
    if "component" in records.columns:
        return records["component"]
    for column, component in (("sublayer", _label_component), ("module", _module_component)):
        if column in records.columns:
            names = records[column].astype(str)
            return names.map({name: component(name) for name in names.unique()}).rename("component")
    return pd.Series(V1_COMPONENT, index=records.index, name="component")


def _label_component(label: str) -> str:
    """The component a grammar label names: its prefix (``llm.L05...``), none for the Q-Former's layers
    (``L02...``); a label that is neither is the module name of a module the grammar does not know."""
    prefix = label.split(".", 1)[0]
    if prefix in COMPONENTS:
        return prefix
    return V1_COMPONENT if re.fullmatch(r"L\d+", prefix) else OTHER


def _module_component(name: str) -> str:
    position = parse_module(name)
    return position.component if position is not None else OTHER


def with_component(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` with a ``component`` column (:func:`component_of`); the same frame when it has one."""
    return records if "component" in records.columns else records.assign(component=component_of(records))


def structural_mask(records: pd.DataFrame, last_layer: int | None = None) -> pd.Series:
    """True on the text FFN of the last Q-Former layer (``last_layer``, default: each run's deepest recorded one)."""
    in_qformer = (component_of(records) == "qformer").to_numpy()
    qformer_layer = records["layer"].where(in_qformer)
    deepest = qformer_layer.groupby(records["run"], observed=True).transform("max") if last_layer is None else last_layer
    return (is_structural(records["block"], records["layer"], deepest) & in_qformer).astype(bool)


def mark_structural(records: pd.DataFrame, last_layer: int | None = None) -> pd.DataFrame:
    """Add a bool column ``structural``: True for the text FFN (``ffn_text``) of the last Q-Former layer.

    Only the query positions of the last layer reach the LLM, so its text FFN gets exactly zero task
    gradient: its zero importance and rank are a property of the architecture, not a finding.
    ``last_layer`` defaults to each run's deepest recorded layer; pass the model's last layer when the
    placement left the deepest layers out. Metrics here use an existing ``structural`` column as is.
    """
    return records.assign(structural=structural_mask(records, last_layer))


def comparable_rows(records: pd.DataFrame, include_structural: bool) -> pd.DataFrame:
    """The records with their ``structural`` flag, structural rows dropped unless asked for."""
    marked = records if "structural" in records.columns else mark_structural(records)
    return marked if include_structural else marked[~marked["structural"]]


def _sort_key(column: pd.Series) -> pd.Series:
    """What :func:`sorted_rows` orders a column by: its values (a categorical's values, not its category
    order), blocks in grammar order with unknown blocks after them, alphabetically."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = pd.Series(column.cat.categories, name=column.name)
        category_key = _sort_key(categories).rank(method="dense").to_numpy()
        codes = column.cat.codes.to_numpy()
        return pd.Series(np.where(codes >= 0, category_key[codes], np.nan), index=column.index)
    if column.name == "block":
        return column.map(block_order(column.dropna()))
    if column.name == "component":
        return column.map(COMPONENT_ORDER).fillna(len(COMPONENT_ORDER))
    if column.name == "stack":
        return column.map({"": 0, "encoder": 1, "decoder": 2})
    return column


def sorted_rows(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``frame`` sorted by ``keys``, blocks in grammar order (self_attn, cross_attn, ffn_query, ffn_text)."""
    return frame.sort_values(keys, key=_sort_key).reset_index(drop=True)


def in_grammar_order(present: Iterable[str], order: tuple[str, ...]) -> list[str]:
    """The distinct values of ``present`` in the grammar's ``order``, unknown ones after, sorted."""
    values = set(present)
    return [v for v in order if v in values] + sorted(values - set(order))


def group_ids(keys: list[pd.Series | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Group number of each row over the key columns (no missing values), numbered in order of first
    appearance, and the first row of each group: what ``groupby`` computes, without its per-call cost."""
    ids = np.zeros(len(keys[0]), dtype=np.int64)
    n_groups = 1
    for key in keys:
        if isinstance(key, pd.Series) and isinstance(key.dtype, pd.CategoricalDtype):
            codes, n_values = key.cat.codes.to_numpy(dtype=np.int64), len(key.cat.categories)
        else:
            codes, uniques = pd.factorize(key)
            n_values = len(uniques)
        if n_groups * n_values >= 2**62:  # renumber densely before the combined number could overflow
            ids, uniques = pd.factorize(ids)
            n_groups = len(uniques)
        ids = ids * n_values + codes
        n_groups *= n_values
    ids, _ = pd.factorize(ids)
    # Numbered by first appearance: a row starts a group exactly where the running maximum grows.
    running_max = np.maximum.accumulate(ids)
    first_rows = np.flatnonzero(np.diff(running_max, prepend=-1) > 0)
    return ids, first_rows
