"""What every plot shares. Each plot function takes data prepared by ``plotting.figure_data`` and ``ax=None``
and returns the Axes it drew on (``plot_heatmap_grid`` draws several and returns its Figure). Conventions:

- seaborn draws (heatmap, lineplot, boxplot, stripplot, barplot, FacetGrid), our styling goes on top; no
  seaborn theme is ever set, so matplotlib's style (``figures`` uses the default one) stays the caller's;
- one colour per block, :data:`BLOCK_COLORS` (Okabe-Ito, colour-blind safe), in the grammar's block order;
- labels are the naming grammar's (``self_attn``, ``L03``, ``cross_attn.value``);
- a layer x sublayer cell with no module (NaN: odd layers' cross-attention) is hatched grey, never a colour
  that could read as 0;
- structural cells (the last layer's text FFN, which gets no task gradient) get a black-and-white dotted
  outline and the legend entry ``no task gradient``: their values are architecture, not findings.
"""

from __future__ import annotations

from qformer_budget.core.grammar import BLOCKS

# One colour per block, defined once and used by every figure.
BLOCK_COLORS: dict[str, str] = dict(zip(BLOCKS, ("#0072B2", "#E69F00", "#009E73", "#CC79A7"), strict=True))
OTHER_BLOCK_COLOR = "0.5"  # a block outside the grammar (should not happen)
PHASE_COLORS: dict[str, str] = {"warmup": "#ececec", "budgeting": "#ffffff", "final": "#d9d9d9"}
MASK_STEP_COLOR = "#D55E00"

EMPTY_CELL_HATCH = "////"
EMPTY_CELL_COLOR = "0.85"
STRUCTURAL_LABEL = "no task gradient"
EMPTY_LABEL = "no module"


def block_color(block: str) -> str:
    """The colour of ``block`` in every figure."""
    return BLOCK_COLORS.get(block, OTHER_BLOCK_COLOR)
