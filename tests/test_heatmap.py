import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from qformer_budget.plotting import plot_rank_heatmap
from qformer_budget.plotting.figure_data import SUBLAYER_COLUMNS, rank_heatmap_data


def row(run, step, layer, block, proj, rank):
    return {"run": run, "step": step, "layer": layer, "block": block, "proj": proj, "rank": rank}


def small_records() -> pd.DataFrame:
    rows = [
        row("r1", 5, 0, "self_attn", "query", 9),  # an earlier step: ignored
        row("r1", 10, 0, "self_attn", "query", 4),
        row("r2", 20, 0, "self_attn", "query", 1),
        row("r1", 10, 0, "cross_attn", "key", 0),
        row("r2", 20, 0, "cross_attn", "key", 0),
        row("r1", 10, 1, "self_attn", "query", 3),
        row("r2", 20, 1, "self_attn", "query", 3),
        row("r1", 10, 1, "ffn_text", "output", 2),
        {"run": "r1", "step": 10, "layer": None, "block": "other", "proj": "q", "rank": 7},  # outside the Q-Former
    ]
    return pd.DataFrame(rows)


def test_heatmap_data_uses_last_step_means_over_runs_and_keeps_empty_cells_empty():
    table = rank_heatmap_data(small_records())
    assert list(table.columns) == list(SUBLAYER_COLUMNS) and len(SUBLAYER_COLUMNS) == 12
    assert table.index.tolist() == [0, 1]
    assert table.loc[0, "self_attn.query"] == 2.5  # mean of 4 and 1 at each run's last step
    assert table.loc[0, "cross_attn.key"] == 0.0  # a real zero stays zero
    assert np.isnan(table.loc[1, "cross_attn.key"])  # no module: empty, not zero
    assert table.loc[1, "ffn_text.output"] == 2.0
    assert int(np.isfinite(table.to_numpy()).sum()) == 4


def test_heatmap_plot_marks_empty_cells_and_annotates_the_rest():
    table = rank_heatmap_data(small_records())
    ax = plot_rank_heatmap(table, title="t")
    assert isinstance(ax, Axes)
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert len(hatched) == 1 and hatched[0].get_width() == 12 and hatched[0].get_height() == 2
    assert sorted(t.get_text() for t in ax.texts) == ["0", "2", "2.5", "3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L00", "L01"]


def test_heatmap_outlines_the_structural_text_ffn_of_the_deepest_layer():
    table = rank_heatmap_data(small_records())
    ax = plot_rank_heatmap(table)
    outlines = [p for p in ax.patches if p.get_gid() == "structural"]
    # Layer 1 is the deepest: its text FFN output (column 11) is outlined; its intermediate has no module.
    # seaborn's cells are centred at i + 0.5.
    assert {(p.get_x() + p.get_width() / 2, p.get_y() + p.get_height() / 2) for p in outlines} == {(11.5, 1.5)}
    legends = [a.get_legend() for a in ax.figure.axes if a.get_legend() is not None]  # under the colour bar
    assert [t.get_text() for t in legends[0].get_texts()] == ["no module", "no task gradient"]
    assert [t.get_text() for t in ax.texts if t.get_style() == "italic"] == ["2"]
