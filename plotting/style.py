"""What every plot shares. Each plot function takes data prepared by ``plotting.figure_data`` and ``ax=None``
and returns the Axes it drew on (``plot_heatmap_grid`` draws several and returns its Figure). Conventions:

- seaborn draws (heatmap, lineplot, boxplot, stripplot, barplot, FacetGrid), our styling goes on top; no
  seaborn theme is ever set, so matplotlib's style (``figures`` uses the default one) stays the caller's;
- one colour per block, :data:`BLOCK_COLORS` (Okabe-Ito, colour-blind safe), in the grammar's block order,
  and one per component, :data:`COMPONENT_COLORS`, where a table's shares are of components (:func:`unit_of`);
- labels are the naming grammar's (``self_attn``, ``L03``, ``cross_attn.value``);
- a layer x sublayer cell with no module (NaN: odd layers' cross-attention) is hatched grey, never a colour
  that could read as 0;
- structural cells (the last layer's text FFN, which gets no task gradient) get a black-and-white dotted
  outline and the legend entry ``no task gradient``: their values are architecture, not findings.
"""

from __future__ import annotations

from qformer_budget.core.grammar import BLOCKS, COMPONENTS, in_block_order

# One colour per block, defined once and used by every figure.
BLOCK_COLORS: dict[str, str] = dict(zip(BLOCKS, ("#0072B2", "#E69F00", "#009E73", "#CC79A7"), strict=True))
# The other components' blocks: attention in the Q-Former's attention colours, FFNs in its FFN colours.
OTHER_COMPONENT_BLOCK_COLORS: dict[str, str] = {
    "attn": "#0072B2", "mlp": "#009E73", "enc_self_attn": "#0072B2", "enc_ffn": "#009E73",
    "dec_self_attn": "#56B4E9", "dec_cross_attn": "#E69F00", "dec_ffn": "#CC79A7",
    "language_projection": "#F0E442", "lm_head": "#999999",
}
OTHER_BLOCK_COLOR = "0.5"  # a block outside the grammar (should not happen)
# One colour per component, for the figures of a budget shared by the vision encoder, Q-Former and LLM.
COMPONENT_COLORS: dict[str, str] = dict(zip(COMPONENTS, ("#56B4E9", "#0072B2", "#D55E00"), strict=True))
PHASE_COLORS: dict[str, str] = {"warmup": "#ececec", "budgeting": "#ffffff", "final": "#d9d9d9"}
MASK_STEP_COLOR = "#D55E00"

EMPTY_CELL_HATCH = "////"
EMPTY_CELL_COLOR = "0.85"
STRUCTURAL_LABEL = "no task gradient"
EMPTY_LABEL = "no module"


def block_color(block: str) -> str:
    """The colour of ``block`` in every figure."""
    return BLOCK_COLORS.get(block) or OTHER_COMPONENT_BLOCK_COLORS.get(block, OTHER_BLOCK_COLOR)


def unit_of(data) -> str:
    """What a table's shares are of: ``"block"``, or ``"component"`` for a table of component shares."""
    return "component" if "component" in data.columns and "block" not in data.columns else "block"


def unit_levels(data, unit: str) -> tuple[list[str], dict[str, str]]:
    """The ``unit`` values of ``data`` in grammar order, and their colours."""
    if unit == "component":
        levels = [c for c in (*COMPONENTS, *sorted(set(data[unit]) - set(COMPONENTS))) if c in set(data[unit])]
        return levels, {c: COMPONENT_COLORS.get(c, OTHER_BLOCK_COLOR) for c in levels}
    levels = in_block_order(data[unit])
    return levels, {block: block_color(block) for block in levels}
