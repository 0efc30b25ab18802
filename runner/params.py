"""Trainable-parameter accounting for the paper's LoRA grid, read off meta-device builds of the real presets.

An adapter on a ``Linear(in, out)`` at rank ``r`` trains ``r * (in + out)`` parameters with LoRA (A and B)
and ``r * (in + out + 1)`` with AdaLoRA (A, B and the singular values E), so every count is linear in the rank
and a placement is summed up by its parameters per unit of rank.

Placements (Kim et al. 2024; their code, AttentionX/InstructBLIP_PEFT):

- Q-Former: any placement of :data:`qformer_budget.core.grammar.PLACEMENTS`, the paper's being ``self_attn_qv``,
  ``cross_attn_qkvo``, ``ffn_text_query`` and ``paper_all`` (``qformer_all`` is another name for it);
- LLM and vision encoder: :data:`qformer_budget.core.grammar.COMPONENT_PLACEMENTS`, the paper's being
  ``llm_attn``, ``llm_ffn`` and ``llm_all`` (its ``target_modules``: q and v of every attention, every FFN matrix);
- combinations joined with ``+``, such as ``qformer_all+llm_all``: the same placements ``add_adalora`` takes.

The full Q-Former fine-tuning baseline trains the Q-Former, the query tokens and the language projection, as
the paper's code does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import pandas as pd
from torch import nn

from qformer_budget.core.grammar import target_modules_regex
from qformer_budget.vl_methods.memvp.config import MemVPConfig, memvp_trainable_parameters
from qformer_budget.vl_methods.memvp.layer import find_ffns

from .methods import METHODS, MethodSettings
from .presets import PRESETS, BlipModel, build_on_meta

LLM_PLACEMENTS: tuple[str, ...] = ("llm_attn", "llm_ffn", "llm_all")
QFORMER_ALL = "qformer_all"  # the paper's "all" Q-Former placement, taxonomy's paper_all
PAPER_PLACEMENTS: tuple[str, ...] = (
    "self_attn_qv", "cross_attn_qkvo", "ffn_text_query", "paper_all", *LLM_PLACEMENTS,
    f"{QFORMER_ALL}+llm_all",
)
# What `qformer-budget params` lists: the paper's placements, every Q-Former Linear (the demo's all_linear) and
# the joint study's shared budget over every Q-Former and LLM Linear.
JOINT_PLACEMENT = "all_linear+llm_all_linear"
TABLE_PLACEMENTS: tuple[str, ...] = (*PAPER_PLACEMENTS[:4], "all_linear", *PAPER_PLACEMENTS[4:], JOINT_PLACEMENT)
PAPER_RANKS: tuple[int, ...] = (1, 2, 4, 8)
MEMVP_PLACEMENT = "llm_ffn_memory"  # MemVP's row: visual memory in every FFN block of the LM, no rank
TABLE_COLUMNS: tuple[str, ...] = (
    "preset", "placement", "method", "rank", "modules", "trainable",
    "share_of_full_qformer_pct", "share_of_model_pct",
)


@dataclass(frozen=True)
class LinearShape:
    """A Linear layer an adapter can wrap: its full module name and its input and output widths."""

    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Census:
    """What the accounting needs from one preset's architecture, read once off its meta build."""

    preset: str
    linears: tuple[LinearShape, ...]
    full_qformer: int
    total: int
    qformer_hidden: int
    lm_hidden: int
    lm_ffn_blocks: int  # the FFN blocks MemVP puts its memory in


@lru_cache(maxsize=None)
def census(preset: str) -> Census:
    """Build ``preset`` on the meta device and record its Linear layers and parameter totals."""
    model = build_on_meta(preset)
    linears = tuple(
        LinearShape(name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    )
    total = sum(p.numel() for p in model.parameters())
    return Census(
        preset, linears, full_qformer_parameters(model), total,
        model.config.qformer_config.hidden_size, model.config.text_config.hidden_size,
        len(find_ffns(model.language_model)),
    )


def full_qformer_parameters(model: BlipModel) -> int:
    """Parameters of full Q-Former fine-tuning: the Q-Former, the query tokens and the language projection."""
    modules = (model.qformer, model.language_projection)
    return model.query_tokens.numel() + sum(p.numel() for module in modules for p in module.parameters())


def adapter_parameters(in_features: int, out_features: int, rank: int, method: str = "lora") -> int:
    """Trainable parameters of one adapter on a ``Linear(in_features, out_features)``."""
    _check_method(method)
    count = METHODS[method].parameters_per_linear
    if count is None:
        raise ValueError(f"{method} puts no adapter on a Linear layer; parameter_table counts it per preset")
    return count(in_features, out_features, rank)


def memvp_parameters(preset: str, config: MemVPConfig | None = None) -> tuple[int, int]:
    """MemVP's trainable parameters on ``preset`` (default config) and the number of LM FFN blocks it fills."""
    info = census(preset)
    return memvp_trainable_parameters(config or MemVPConfig(), info.lm_hidden, info.qformer_hidden), info.lm_ffn_blocks


def memvp_row(preset: str) -> tuple[str, int, int]:
    """MemVP's row of the parameter table: its placement label, the LM FFN blocks it fills, its parameters."""
    trainable, blocks = memvp_parameters(preset)
    return MEMVP_PLACEMENT, blocks, trainable


def target_linears(preset: str, placement: str) -> tuple[LinearShape, ...]:
    """The Linear layers of ``preset`` that ``placement`` puts adapters on, in model order: those whose name
    the placement's peft regex matches (``grammar.target_modules_regex``)."""
    pattern = re.compile(target_modules_regex(placement))
    return tuple(linear for linear in census(preset).linears if pattern.fullmatch(linear.name))


def per_unit_rank(preset: str, placement: str, method: str = "lora") -> int:
    """Trainable parameters of ``placement`` on ``preset`` at rank 1."""
    return _per_unit_rank(target_linears(preset, placement), method)


def trainable_parameters(preset: str, settings: MethodSettings) -> int:
    """What the method variant ``settings`` trains on ``preset``: an adapter method's :func:`per_unit_rank` times
    the rank its adapters are built at, a whole-model method's (MemVP) own count."""
    method = METHODS[settings.name]
    if method.parameters_per_preset is not None:
        return method.parameters_per_preset(preset)[2]
    return settings.adapter_rank * per_unit_rank(preset, settings.placement, settings.name)


def parameter_table(
    preset_names: list[str] | tuple[str, ...] | None = None,
    ranks: tuple[int, ...] = PAPER_RANKS,
    methods: tuple[str, ...] = ("lora",),
    placements: tuple[str, ...] = TABLE_PLACEMENTS,
) -> pd.DataFrame:
    """One row per preset x placement x rank x method: adapted modules, trainable parameters and their shares.

    The shares are percentages of the full Q-Former fine-tuning baseline and of the whole (base) model.
    ``memvp`` has one row per preset, placement ``llm_ffn_memory``, no rank (``<NA>``), its modules being
    the LM's FFN blocks.
    """
    for method in methods:
        _check_method(method)
    whole_model = [m for m in methods if METHODS[m].parameters_per_preset is not None]
    per_linear = [m for m in methods if m not in whole_model]
    rows = []
    for preset in preset_names if preset_names is not None else tuple(PRESETS):
        info = census(preset)
        for method in whole_model:
            placement, modules, trainable = METHODS[method].parameters_per_preset(preset)
            rows.append((
                preset, placement, method, pd.NA, modules, trainable,
                100 * trainable / info.full_qformer, 100 * trainable / info.total,
            ))
        for placement in placements:
            targets = target_linears(preset, placement)
            for method in per_linear:
                unit = _per_unit_rank(targets, method)
                for rank in ranks:
                    trainable = rank * unit
                    rows.append((
                        preset, placement, method, rank, len(targets), trainable,
                        100 * trainable / info.full_qformer, 100 * trainable / info.total,
                    ))
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.astype({"rank": "Int64"}) if whole_model else table  # whole-model methods have no rank


def format_table(df: pd.DataFrame) -> str:
    """:func:`parameter_table` as a markdown table: counts with thousands separators, shares to 4 digits."""
    headers = ["preset", "placement", "method", "rank", "modules", "trainable", "% full Q-Former", "% model"]
    cells = [
        [row.preset, row.placement, row.method, "-" if pd.isna(row.rank) else str(row.rank), str(row.modules),
         f"{row.trainable:,}",
         f"{row.share_of_full_qformer_pct:.4g}", f"{row.share_of_model_pct:.4g}"]
        for row in df.itertuples(index=False)
    ]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells)]
    numeric = [False, False, False, True, True, True, True, True]

    def line(texts: list[str]) -> str:
        padded = (t.rjust(w) if right else t.ljust(w) for t, w, right in zip(texts, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    rule = "|".join("-" * (w + 1) + ":" if right else "-" * (w + 2) for w, right in zip(widths, numeric))
    rule = f"|{rule}|"
    return "\n".join([line(headers), rule, *(line(texts) for texts in cells)])


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods are {', '.join(METHODS)}")


def _per_unit_rank(targets: tuple[LinearShape, ...], method: str) -> int:
    _check_method(method)  # also when no module matches
    return sum(adapter_parameters(t.in_features, t.out_features, 1, method) for t in targets)
