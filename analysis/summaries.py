"""Summaries: one row per run or per module, and a labelled N-d view of the records."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from qformer_budget.core.grammar import PROJ_ORDER, block_key, in_block_order

if TYPE_CHECKING:
    import xarray

from .importance import allocation_entropy, normalized_importance
from .selection import RUN_KEYS, component_of, in_grammar_order, select_step, sorted_rows
from .shares import Normalization, block_share, component_share, rank_retention, settle_step


def module_summary(records: pd.DataFrame) -> pd.DataFrame:
    """One row per run and module: where it sits, its final rank and retention, its mean importance.

    Columns ``run, benchmark, seed, module, component, sublayer, layer, block, proj, structural, init_r,
    final_step, final_rank, retention, mean_importance_share``: ``retention = final_rank / init_r`` and
    ``mean_importance_share`` is the mean over the steps with scores of :func:`normalized_importance`'s
    ``importance_share``. Structural rows are kept and flagged.
    """
    final = rank_retention(records, step="final", include_structural=True)
    importance = (
        normalized_importance(records, include_structural=True)
        .groupby([*RUN_KEYS, "module"], as_index=False)
        .agg(mean_importance_share=("importance_share", "mean"))
    )
    out = final.rename(columns={"step": "final_step", "rank": "final_rank"}).merge(
        importance, on=[*RUN_KEYS, "module"], how="left"
    )
    columns = [
        *RUN_KEYS,
        "module",
        "component",
        "sublayer",
        "layer",
        "block",
        "proj",
        "structural",
        "init_r",
        "final_step",
        "final_rank",
        "retention",
        "mean_importance_share",
    ]
    return out[columns]


def run_summary(
    records: pd.DataFrame,
    normalize: Normalization = "rank",
    tolerance: float = 0.02,
    include_structural: bool = False,
) -> pd.DataFrame:
    """One row per run: budget, kept rank, concentration, block shares and settle steps at the last step.

    Columns ``run, benchmark, seed, final_step, n_modules, budget, total_rank`` (over all adapted
    modules, as AdaLoRA allocates), ``normalized_entropy`` (:func:`allocation_entropy`), then
    ``share_<block>`` (:func:`block_share` with ``normalize``, within the component) and
    ``settle_step_<block>`` (:func:`settle_step` with ``tolerance``) for each block present, blocks outside
    the Q-Former named with their component (``share_llm.mlp``, ``grammar.block_key``). When several
    components share the budget, ``share_<component>`` (:func:`component_share`) comes first. Entropy,
    shares and settle steps exclude structural rows unless ``include_structural``.
    """
    final = select_step(records, "final")
    out = final.groupby(list(RUN_KEYS), as_index=False).agg(
        final_step=("step", "max"),
        n_modules=("module", "size"),
        budget=("budget", "first"),
        total_rank=("rank", "sum"),
    )
    entropy = allocation_entropy(records, step="final", include_structural=include_structural)
    shares = _with_block_key(block_share(records, "final", normalize, include_structural))
    settle = _with_block_key(settle_step(records, tolerance, "block", normalize, include_structural))
    blocks = list(dict.fromkeys(shares["key"]))  # components, then blocks in grammar order (sorted_rows)
    wide_shares = shares.pivot(index=list(RUN_KEYS), columns="key", values="share")[blocks]
    wide_settle = settle.pivot(index=list(RUN_KEYS), columns="key", values="settle_step")[blocks]
    out = out.merge(entropy[[*RUN_KEYS, "normalized_entropy"]], on=list(RUN_KEYS), how="left")
    if component_of(final).nunique() > 1:
        components = component_share(records, "final", normalize, include_structural)
        names = list(dict.fromkeys(components["component"].astype(str)))
        wide = components.astype({"component": str}).pivot(index=list(RUN_KEYS), columns="component", values="share")
        out = out.merge(wide[names].add_prefix("share_").reset_index(), on=list(RUN_KEYS), how="left")
    out = out.merge(wide_shares.add_prefix("share_").reset_index(), on=list(RUN_KEYS), how="left").merge(
        wide_settle.add_prefix("settle_step_").reset_index(), on=list(RUN_KEYS), how="left"
    )
    return sorted_rows(out, list(RUN_KEYS))


def _with_block_key(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (per component and block) with ``key``, the block's name across components."""
    keys = [block_key(str(c), str(b)) for c, b in zip(table["component"], table["block"], strict=True)]
    return table.assign(key=keys)


def to_xarray(records: pd.DataFrame, value: str = "rank", component: str = "qformer") -> xarray.DataArray:
    """``value`` of one ``component`` as an ``xarray.DataArray`` with dims ``(benchmark, seed, step, layer, block, proj)``.

    A labelled N-d view of the records: cells without a module (odd layers' cross-attention, FFN
    blocks' attention projections, steps a run did not record) are NaN, never 0. All rows are kept,
    structural ones included (:func:`mark_structural` gives the mask). Each benchmark and seed must be
    one run. Needs the optional xarray (``pip install "qformer-budget[analysis]"``).
    """
    try:
        import xarray as xr
    except ImportError as exc:
        raise ImportError('to_xarray needs xarray: pip install "qformer-budget[analysis]"') from exc
    dims = ["benchmark", "seed", "step", "layer", "block", "proj"]
    rows = records[(component_of(records) == component).to_numpy()].dropna(subset=["layer", "block", "proj"])
    runs_per_seed = rows.groupby(["benchmark", "seed"])["run"].nunique()
    if (runs_per_seed > 1).any():
        raise ValueError(
            f"several runs share a benchmark and seed: {runs_per_seed[runs_per_seed > 1].index.tolist()}; "
            "select one configuration first"
        )
    cells = rows.astype({"layer": "int64", value: "float64"}).set_index(dims)[value]
    array = xr.DataArray.from_series(cells)
    blocks = in_block_order(rows["block"])
    projs = in_grammar_order(rows["proj"], PROJ_ORDER)
    return array.reindex(block=blocks, proj=projs)
