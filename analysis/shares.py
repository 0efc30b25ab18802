"""Shares of the kept rank budget per block, layer or module, at one step or over training.

Every function takes the records of ``analysis.load_runs`` (one row per adapted module per recorded
step) and returns a long table whose group keys are the run identity (``run, benchmark, seed``) plus
what the metric is about (``step``, ``component``, ``block``, ``layer``, ``module``). Block and layer shares
are shares within their component; :func:`component_share` splits the whole budget between components.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from qformer_budget.core.adalora_rules import adapter_parameters
from qformer_budget.core.grammar import layer_stack

from .selection import (
    RUN_KEYS,
    STEP_KEYS,
    StepSelector,
    comparable_rows,
    group_ids,
    select_step,
    sorted_rows,
    structural_mask,
    with_component,
)

NORMALIZATIONS: tuple[str, ...] = ("rank", "module", "parameter")
Normalization = Literal["rank", "module", "parameter"]
Unit = Literal["component", "block", "layer", "layer_block"]

_UNIT_KEYS: dict[str, tuple[str, ...]] = {
    "component": ("component",),
    "block": ("component", "block"),
    "layer": ("component", "layer"),
    "layer_block": ("component", "layer", "block"),
}


def _unit_totals(
    records: pd.DataFrame, unit: Unit, normalize: Normalization, include_structural: bool
) -> pd.DataFrame:
    """Per run, step and unit: kept rank, module count and share of the budget (see :func:`block_share`).

    Grouped with integer group numbers and ``np.bincount`` rather than ``groupby``: this runs on
    millions of rows (every recorded step of every run) for trajectories.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}; got {normalize!r}")
    if unit not in _UNIT_KEYS:
        raise ValueError(f"unit must be one of {tuple(_UNIT_KEYS)}; got {unit!r}")
    records = with_component(records)
    if "layer" in _UNIT_KEYS[unit] and "block" in records.columns:
        blocks = records["block"]
        stacks = blocks.map({block: layer_stack(str(block)) for block in blocks.dropna().unique()}).fillna("")
        if (stacks != "").any():  # T5: layer i of the encoder and of the decoder are two units
            records = records.assign(stack=stacks)
    unit_keys = _unit_columns(records, unit)
    keys = [*STEP_KEYS, *unit_keys]
    # A share is of the whole budget for components, of the component's budget for everything else.
    whole = [*STEP_KEYS] if unit == "component" else [*STEP_KEYS, "component"]
    keep = records[keys].notna().all(axis=1)  # groupby leaves out rows with a missing key
    if not include_structural:
        structural = records["structural"] if "structural" in records.columns else structural_mask(records)
        keep &= ~structural.astype(bool)
    values = ["rank", "in_features", "out_features"] if normalize == "parameter" else ["rank"]
    rows = records.loc[keep.to_numpy(), keys + values]
    step_ids, _ = group_ids([rows[k] for k in whole])
    unit_ids, first_rows = group_ids([step_ids, *(rows[k] for k in unit_keys)])
    rank = rows["rank"].to_numpy(dtype="float64")
    amount = rank
    if normalize == "parameter":
        in_features, out_features = (rows[c].to_numpy(dtype="int64") for c in ("in_features", "out_features"))
        amount = adapter_parameters(in_features, out_features, rank, singular_values=True)
    n_units = len(first_rows)
    n_modules = np.bincount(unit_ids, minlength=n_units)
    unit_amount = np.bincount(unit_ids, weights=amount, minlength=n_units)
    if normalize == "module":
        unit_amount = unit_amount / n_modules
    step_of_unit = step_ids[first_rows]
    step_amount = np.bincount(step_of_unit, weights=unit_amount)
    with np.errstate(invalid="ignore", divide="ignore"):  # no rank kept at a step: NaN shares, as 0 / 0
        share = unit_amount / step_amount[step_of_unit]
    out = rows.iloc[first_rows][keys].reset_index(drop=True)
    out["rank"] = np.bincount(unit_ids, weights=rank, minlength=n_units)
    out["n_modules"] = n_modules.astype("int64")
    out["share"] = share
    if "layer" in unit_keys:
        out["layer"] = out["layer"].astype("int64")
    return sorted_rows(out, keys)


def _unit_columns(table: pd.DataFrame, unit: Unit) -> list[str]:
    """The columns naming a unit: the unit's keys, with ``stack`` before ``layer`` where ``table`` has one (T5)."""
    keys = list(_UNIT_KEYS[unit])
    if "stack" in table.columns and "layer" in keys:
        keys.insert(keys.index("layer"), "stack")
    return keys


def component_share(
    records: pd.DataFrame,
    step: StepSelector = "final",
    normalize: Normalization = "rank",
    include_structural: bool = False,
) -> pd.DataFrame:
    """Share of the whole kept rank budget per component: columns ``run, benchmark, seed, step, component, share``.

    How much of one AdaLoRA budget shared by the vision encoder, the Q-Former and the LLM each keeps, with
    the normalisations of :func:`block_share` (``"module"``: mean rank per module of the component, so that
    a component with more modules is not favoured for that alone). Shares sum to 1 per run and step.
    Structural rows (see :func:`mark_structural`) are excluded from numerator and denominator unless
    ``include_structural``, as in every share here.
    """
    totals = _unit_totals(select_step(records, step), "component", normalize, include_structural)
    return totals[[*STEP_KEYS, "component", "share"]]


def block_share(
    records: pd.DataFrame,
    step: StepSelector = "final",
    normalize: Normalization = "rank",
    include_structural: bool = False,
) -> pd.DataFrame:
    """Share of its component's kept rank per block: columns ``run, benchmark, seed, step, component, block, share``.

    With ``r_m`` the kept rank of module ``m`` and ``M_b`` the modules of block ``b``:

    - ``"rank"``: ``share_b = sum_{m in M_b} r_m / sum_m r_m``;
    - ``"module"``: ``share_b = mean_{m in M_b} r_m / sum_b' mean_{m in M_b'} r_m``, so that
      cross-attention, present in half the layers only, is not penalised for having fewer modules;
    - ``"parameter"``: ``share_b = sum_{m in M_b} p_m / sum_m p_m`` with the kept adapter parameters
      ``p_m = r_m * (in_features + out_features + 1)`` (A, B and the singular values), since FFN
      matrices are larger than attention ones.

    The sums run over the block's component: shares sum to 1 per run, step and component (NaN when no rank
    is kept), so the Q-Former's block shares read the same whether or not the LLM shared the budget; the
    share of the whole budget is this times :func:`component_share`. Structural rows (see
    :func:`mark_structural`) are excluded from numerator and denominator unless ``include_structural``.
    """
    totals = _unit_totals(select_step(records, step), "block", normalize, include_structural)
    return totals[[*STEP_KEYS, "component", "block", "share"]]


def layer_share(
    records: pd.DataFrame,
    step: StepSelector = "final",
    normalize: Normalization = "rank",
    by_block: bool = False,
    include_structural: bool = False,
) -> pd.DataFrame:
    """Share of the kept rank budget per layer (or per layer and block with ``by_block``).

    The same three normalisations as :func:`block_share`, with the layer (or the layer x block cell)
    in place of the block: ``"module"`` divides by the number of modules of the layer, which is larger
    in the even layers that hold cross-attention. Shares sum to 1 per run, step and component (column
    ``component``); a T5 language model's layers are told apart by ``stack`` (``encoder``, ``decoder``), a
    column that appears only then; absent cells (odd layers' cross-attention) and modules outside the layers (projection,
    LM head) have no row. Structural rows are excluded unless ``include_structural``.
    """
    unit: Unit = "layer_block" if by_block else "layer"
    totals = _unit_totals(select_step(records, step), unit, normalize, include_structural)
    return totals[[*STEP_KEYS, *_unit_columns(totals, unit), "share"]]


def rank_trajectories(
    records: pd.DataFrame,
    by: Unit = "block",
    normalize: Normalization = "rank",
    include_structural: bool = False,
) -> pd.DataFrame:
    """Kept rank and budget share per run, recorded step and block (or layer), for trajectory plots.

    Columns ``run, benchmark, seed, step, component, <by>, rank, n_modules, share``: ``rank`` is the sum of
    kept ranks of the unit's modules, ``share`` as in :func:`block_share` (within the component) or, with
    ``by="component"``, :func:`component_share` (of the whole budget), with ``normalize``. ``by`` is
    ``"component"``, ``"block"``, ``"layer"`` or ``"layer_block"``. Structural rows are excluded unless
    ``include_structural``.
    """
    return _unit_totals(records, by, normalize, include_structural)


def settle_step(
    records: pd.DataFrame,
    tolerance: float = 0.02,
    by: Unit = "block",
    normalize: Normalization = "rank",
    include_structural: bool = False,
) -> pd.DataFrame:
    """The step from which each block's (or layer's) budget share stays near its final share.

    ``settle_step`` is the first recorded step ``s`` such that ``|share_t - share_final| <= tolerance``
    (absolute) for every recorded step ``t >= s`` of the run; a share that leaves the band and comes
    back settles only at its last return. Columns ``run, benchmark, seed, component, <by>, settle_step,
    final_share``.
    Shares as in :func:`rank_trajectories`.
    """
    trajectory = _unit_totals(records, by, normalize, include_structural)
    keys = [*RUN_KEYS, *_unit_columns(trajectory, by)]
    trajectory = trajectory.sort_values([*keys, "step"])
    final_share = trajectory.groupby(keys, observed=True)["share"].transform("last")
    outside = ((trajectory["share"] - final_share).abs() > tolerance).astype(int)
    # Number of out-of-band steps at or after each step: the run has settled where it is 0.
    outside_from_here = outside.iloc[::-1].groupby([trajectory[k] for k in keys], observed=True).cumsum()
    settled = trajectory.assign(final_share=final_share)[outside_from_here.reindex(trajectory.index) == 0]
    out = settled.groupby(keys, as_index=False, observed=True).agg(
        settle_step=("step", "min"), final_share=("final_share", "first")
    )
    return sorted_rows(out, keys)


def rank_retention(
    records: pd.DataFrame,
    step: StepSelector = "final",
    by: Literal["module", "block"] = "module",
    include_structural: bool = False,
) -> pd.DataFrame:
    """Kept fraction of the initial rank: ``retention = rank / init_r`` per module, or its mean per block.

    ``by="module"``: one row per run and module (``structural`` flag, ``init_r``, ``rank``, ``retention``).
    ``by="block"``: ``retention`` is the mean over the block's modules (per component), with ``n_modules``.
    Structural rows are excluded unless ``include_structural``.
    """
    rows = with_component(comparable_rows(select_step(records, step), include_structural))
    retention = rows["rank"].astype("float64") / rows["init_r"].astype("float64")
    if by == "module":
        columns = [
            *STEP_KEYS,
            "module",
            "component",
            "sublayer",
            "layer",
            "block",
            "proj",
            "structural",
            "init_r",
            "rank",
        ]
        return sorted_rows(rows[columns].assign(retention=retention), [*RUN_KEYS, "module"])
    if by == "block":
        out = (
            rows.dropna(subset=["block"])
            .assign(retention=retention)
            .groupby([*STEP_KEYS, "component", "block"], as_index=False, observed=True)
            .agg(n_modules=("retention", "size"), retention=("retention", "mean"))
        )
        return sorted_rows(out, [*STEP_KEYS, "component", "block"])
    raise ValueError(f"by must be 'module' or 'block'; got {by!r}")
