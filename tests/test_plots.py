"""Figure data preparation (qformer_budget.plotting.figure_data) on hand-made frames; the artists each plot draws (no pixels)."""

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection, QuadMesh
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch, Rectangle

from qformer_budget.core.grammar import BLOCKS, sublayer_label
from qformer_budget.plotting import (
    BLOCK_COLORS,
    STRUCTURAL_LABEL,
    plot_block_share_ci,
    plot_budget_schedule,
    plot_heatmap_grid,
    plot_importance,
    plot_rank_difference,
    plot_rank_heatmap,
    plot_rank_trajectories,
)
from qformer_budget.plotting.figure_data import (
    SUBLAYER_COLUMNS,
    block_share_ci_data,
    budget_schedule_data,
    heatmap_tables,
    importance_data,
    phase_spans,
    rank_difference_data,
    rank_heatmap_data,
    structural_cells,
    trajectory_data,
)

from fake_runs import SMALL_QFORMER

MODULES = SMALL_QFORMER
NAN = float("nan")


def frame(runs: dict) -> pd.DataFrame:
    """Records from ``runs[(benchmark, seed)] = [(step, phase, mask_step, budget, ranks, scores), ...]``."""
    rows = []
    for (benchmark, seed), steps in runs.items():
        for step, phase, mask_step, budget, ranks, scores in steps:
            for (layer, block, proj, n_in, n_out), rank, score in zip(MODULES, ranks, scores, strict=True):
                rows.append({
                    "run": f"{benchmark}/seed{seed}", "benchmark": benchmark, "seed": seed, "step": step,
                    "phase": phase, "mask_step": mask_step, "module": f"m.{layer}.{block}.{proj}",
                    "sublayer": sublayer_label(layer, block, proj), "layer": layer, "block": block, "proj": proj,
                    "in_features": n_in, "out_features": n_out, "init_r": 4, "rank": rank, "score": score,
                    "budget": budget,
                })
    return pd.DataFrame(rows).astype({"layer": "int16", "rank": "int16", "init_r": "int16"})


A0 = [
    (1, "warmup", False, 28, [4] * 7, [1.0] * 7),
    (6, "budgeting", True, 14, [4, 4, 2, 0, 2, 2, 0], [1e-2, 1e-3, 1e-4, 0.0, 1e-2, 1e-3, 1e-6]),
    (11, "final", False, 14, [4, 4, 2, 0, 2, 2, 0], [NAN] * 7),
]
A1 = [
    (1, "warmup", False, 28, [4] * 7, [1.0] * 7),
    (6, "budgeting", True, 14, [2, 4, 2, 2, 2, 2, 0], [1e-1, 1e-3, 1e-4, 1e-5, 1e-2, 1e-3, 1e-6]),
    (11, "final", False, 14, [2, 4, 2, 2, 2, 2, 0], [NAN] * 7),
]
B0 = [
    (1, "warmup", False, 28, [4] * 7, [1.0] * 7),
    (6, "budgeting", True, 14, [1, 1, 4, 4, 2, 1, 1], [1.0] * 7),
    (9, "final", False, 14, [1, 1, 4, 4, 2, 1, 1], [NAN] * 7),
]


@pytest.fixture
def records() -> pd.DataFrame:
    return frame({("A", 0): A0, ("A", 1): A1, ("B", 0): B0})


def legend_texts(ax_or_fig) -> list[str]:
    """The entries of the one legend of the Figure (of an Axes): a figure legend or that of any Axes, the
    colour bar's and other child Axes' included."""
    fig = ax_or_fig.figure if isinstance(ax_or_fig, Axes) else ax_or_fig
    axes = [*fig.axes, *(child for ax in fig.axes for child in ax.child_axes)]
    legends = [*fig.legends, *(ax.get_legend() for ax in axes if ax.get_legend() is not None)]
    assert len(legends) == 1
    return [t.get_text() for t in legends[0].get_texts()]


def quadmesh(ax) -> QuadMesh:
    """The cells seaborn's heatmap drew on ``ax``."""
    (mesh,) = [a for a in ax.get_children() if isinstance(a, QuadMesh)]
    return mesh


def global_rng_state() -> tuple:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, keys.tolist(), pos, has_gauss, cached


def with_gid(artists, gid: str) -> list:
    return [a for a in artists if a.get_gid() == gid]


# --- preparation ---


def test_structural_cells_flags_the_deepest_layers_text_ffn_where_a_module_exists(records):
    table = rank_heatmap_data(records)
    mask = structural_cells(table)
    assert mask.shape == table.shape and mask.dtypes.eq(bool).all()
    assert mask.stack()[mask.stack()].index.tolist() == [(1, "ffn_text.intermediate")]
    assert not structural_cells(table, last_layer=5).to_numpy().any()
    assert structural_cells(table, last_layer=0).loc[0, "ffn_text.intermediate"]
    assert not structural_cells(table, last_layer=0).loc[0, "ffn_text.output"]  # NaN: no module


def test_heatmap_tables_one_per_benchmark_on_the_same_rows(records):
    shallow = records[~((records["benchmark"] == "B") & (records["layer"] == 1))]
    tables = heatmap_tables(shallow)
    assert list(tables) == ["A", "B"]
    assert tables["A"].index.tolist() == tables["B"].index.tolist() == [0, 1]
    assert list(tables["B"].columns) == list(SUBLAYER_COLUMNS)
    assert tables["A"].loc[0, "self_attn.query"] == 3.0  # mean of 4 and 2 at the last step
    assert tables["B"].loc[0, "ffn_text.intermediate"] == 4.0
    assert tables["B"].loc[1].isna().all()  # layer 1 not recorded for B: empty, not zero


def test_rank_difference_keeps_zero_and_leaves_absent_cells_empty(records):
    diff = rank_difference_data(records, "A", "B")
    assert diff.loc[0, "self_attn.query"] == 3.0 - 1.0
    assert diff.loc[0, "cross_attn.query"] == 4.0 - 1.0
    assert diff.loc[0, "ffn_query.intermediate"] == 2.0 - 4.0
    assert diff.loc[1, "self_attn.query"] == 0.0  # equal ranks: a real 0
    assert np.isnan(diff.loc[1, "cross_attn.query"])  # no module
    assert np.isnan(diff.loc[0, "self_attn.key"])  # not adapted
    with pytest.raises(ValueError, match=r"no Q-Former records of benchmark\(s\) \['C'\]"):
        rank_difference_data(records, "A", "C")


def test_phase_spans_tile_the_recorded_steps(records):
    spans = phase_spans(records)
    assert spans.to_dict("records") == [
        {"benchmark": "A", "phase": "warmup", "start": 1, "end": 6},
        {"benchmark": "A", "phase": "budgeting", "start": 6, "end": 11},
        {"benchmark": "A", "phase": "final", "start": 11, "end": 11},
        {"benchmark": "B", "phase": "warmup", "start": 1, "end": 6},
        {"benchmark": "B", "phase": "budgeting", "start": 6, "end": 9},
        {"benchmark": "B", "phase": "final", "start": 9, "end": 9},
    ]


def test_trajectory_data_has_each_seed_and_their_mean(records):
    data = trajectory_data(records)
    assert list(data.columns) == ["benchmark", "line", "seed", "step", "block", "value", "n_seeds"]
    a = data[data["benchmark"] == "A"]
    assert set(a["line"]) == {"seed", "mean"} and a.loc[a["line"] == "mean", "seed"].isna().all()
    at6 = a[a["step"] == 6].set_index(["line", "seed", "block"])["value"]
    # Structural L01 ffn_text left out: seed 0 keeps self 4+2, cross 4, ffn_query 2+2, ffn_text 0 -> total 14.
    assert at6["seed", 0, "self_attn"] == pytest.approx(6 / 14)
    assert at6["seed", 1, "self_attn"] == pytest.approx(4 / 14)
    mean = a[(a["line"] == "mean") & (a["step"] == 6)].set_index("block")
    assert mean.loc["self_attn", "value"] == pytest.approx(5 / 14)
    assert mean.loc["self_attn", "n_seeds"] == 2
    assert a[a["line"] == "mean"]["block"].drop_duplicates().tolist() == list(BLOCKS)  # grammar order
    ranks = trajectory_data(records, value="rank")
    one = ranks.query("benchmark == 'A' and line == 'seed' and seed == 0 and step == 6 and block == 'ffn_query'")
    assert one["value"].item() == 4
    with pytest.raises(ValueError, match="value must be 'share' or 'rank'"):
        trajectory_data(records, value="score")


def test_budget_schedule_data_sums_kept_ranks_per_step(records):
    data = budget_schedule_data(records)
    assert len(data) == 9 and data["mask_step"].dtype == bool
    a0 = data[data["run"] == "A/seed0"].set_index("step")
    assert a0["total_rank"].tolist() == [28, 14, 14]  # structural modules count: AdaLoRA allocates them
    assert a0["budget"].tolist() == [28, 14, 14]
    assert a0["mask_step"].tolist() == [False, True, False]
    assert a0["phase"].tolist() == ["warmup", "budgeting", "final"]


def test_importance_data_takes_the_last_step_with_scores(records):
    data = importance_data(records)
    assert set(data["step"]) == {6}  # step 11 and 9: scores cleared
    a0 = data[data["run"] == "A/seed0"].set_index("sublayer")
    assert a0.loc["L00.self_attn.query", "log10_score"] == pytest.approx(-2)
    assert np.isnan(a0.loc["L00.ffn_text.intermediate", "log10_score"])  # score 0: no place on a log axis
    assert a0["structural"].sum() == 1 and a0.loc["L01.ffn_text.intermediate", "structural"]
    assert len(importance_data(records, include_structural=False)) == len(data) - 3
    first = importance_data(records, step=1)
    assert set(first["step"]) == {1} and len(first) == 21
    with pytest.raises(ValueError, match="step 11 is not recorded in runs"):
        importance_data(records, step=11)


def test_block_share_ci_data_has_intervals_only_with_several_seeds(records):
    data = block_share_ci_data(records, normalize="rank", n_boot=200)
    assert list(data.columns) == [
        "benchmark", "block", "normalize", "confidence", "n_seeds", "mean", "ci_low", "ci_high"
    ]
    a = data[data["benchmark"] == "A"].set_index("block")
    assert a.loc["self_attn", "mean"] == pytest.approx((6 / 14 + 4 / 14) / 2)
    assert a.loc["self_attn", "ci_low"] <= a.loc["self_attn", "mean"] <= a.loc["self_attn", "ci_high"]
    assert a["n_seeds"].eq(2).all() and a["ci_low"].notna().all()
    b = data[data["benchmark"] == "B"]
    assert b["n_seeds"].eq(1).all() and b["ci_low"].isna().all() and b["ci_high"].isna().all()
    assert data.groupby("benchmark")["mean"].sum().tolist() == pytest.approx([1.0, 1.0])
    assert set(block_share_ci_data(records, normalize="module", n_boot=10)["normalize"]) == {"module"}


# --- plots ---


def structural_outlines(ax) -> list:
    return with_gid(ax.patches, "structural")


def test_heatmap_marks_structural_cells_with_an_outline_and_a_legend_entry(records):
    table = rank_heatmap_data(records[records["benchmark"] == "A"])
    ax = plot_rank_heatmap(table)
    outlines = structural_outlines(ax)
    assert len(outlines) == 2  # black and white dotted: one cell
    # seaborn's cells are centred at i + 0.5: layer 1, column 10 (ffn_text.intermediate).
    assert {(o.get_x() + o.get_width() / 2, o.get_y() + o.get_height() / 2) for o in outlines} == {(10.5, 1.5)}
    assert legend_texts(ax) == ["no module", STRUCTURAL_LABEL]
    italic = [t.get_text() for t in ax.texts if t.get_style() == "italic"]
    assert italic == ["0"]  # the structural value is shown, in italics
    plain = plot_rank_heatmap(table, structural=False)
    assert not structural_outlines(plain) and legend_texts(plain) == ["no module"]


def test_heatmap_grid_shares_one_colour_scale(records):
    tables = heatmap_tables(records)
    fig = plot_heatmap_grid(tables, title="t")
    assert isinstance(fig, Figure)
    heatmaps = fig.axes[: len(tables)]
    meshes = [quadmesh(ax) for ax in heatmaps]
    assert [ax.get_title() for ax in heatmaps] == ["A", "B"]
    assert {(mesh.norm.vmin, mesh.norm.vmax) for mesh in meshes} == {(0.0, 4.0)}
    assert [mesh.colorbar is not None for mesh in meshes] == [True, False]  # one colour bar for both
    assert all(any(p.get_hatch() for p in ax.patches) for ax in heatmaps)
    assert sum(len(structural_outlines(ax)) for ax in heatmaps) == 4
    assert legend_texts(fig) == ["no module", STRUCTURAL_LABEL]
    # Only the first panel names layers.
    assert [t.get_text() for t in heatmaps[0].get_yticklabels()] == ["L00", "L01"]
    assert not [t.get_text() for t in heatmaps[1].get_yticklabels() if t.get_text()]
    assert fig.get_suptitle() == "t"


def test_difference_heatmap_is_centred_at_zero_with_hatched_empty_cells(records):
    ax = plot_rank_difference(rank_difference_data(records, "A", "B"), title="A - B")
    mesh = quadmesh(ax)
    assert mesh.norm.vmin == -mesh.norm.vmax == -3.0
    assert mesh.get_cmap().name == "RdBu_r"
    assert min(mesh.get_cmap()(mesh.norm(0.0))[:3]) > 0.95  # 0 is white
    assert len([p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]) == 1
    assert sorted(t.get_text() for t in ax.texts) == sorted(["+2", "+3", "-2", "-3", "0", "+1", "-1"])
    assert len(structural_outlines(ax)) == 2 and STRUCTURAL_LABEL in legend_texts(ax)


def test_trajectories_draw_thin_seeds_a_thick_mean_and_shaded_phases(records):
    data = trajectory_data(records)
    phases = phase_spans(records)
    ax = plot_rank_trajectories(data[data["benchmark"] == "A"], phases, title="A")
    assert len(with_gid(ax.lines, "seed")) == 4 * 2 and len(with_gid(ax.lines, "mean")) == 4
    means = with_gid(ax.lines, "mean")
    assert [line.get_color() for line in means] == [BLOCK_COLORS[b] for b in BLOCKS]
    assert all(line.get_linewidth() > 2 for line in means)
    assert all(line.get_linewidth() < 1 for line in with_gid(ax.lines, "seed"))
    shaded = [p for p in ax.patches if str(p.get_gid()).startswith("phase:")]
    assert [p.get_gid() for p in shaded] == ["phase:warmup", "phase:budgeting", "phase:final"]
    assert len(with_gid(ax.lines, "phase-boundary")) == 2
    assert legend_texts(ax) == [
        *BLOCKS, "each seed (n=2)", "mean over seeds", "warmup phase", "budgeting phase", "final phase"
    ]
    one_seed = plot_rank_trajectories(data[data["benchmark"] == "B"], phases)
    assert not with_gid(one_seed.lines, "seed") and len(with_gid(one_seed.lines, "mean")) == 4
    with pytest.raises(ValueError, match="one benchmark at a time"):
        plot_rank_trajectories(data)


def test_budget_schedule_draws_budget_kept_rank_and_mask_steps(records):
    data = budget_schedule_data(records)
    ax = plot_budget_schedule(data[data["benchmark"] == "A"], phase_spans(records))
    assert len(with_gid(ax.lines, "budget")) == 2 and len(with_gid(ax.lines, "kept")) == 2
    masks = with_gid(ax.lines, "mask")
    assert [list(m.get_xdata()) for m in masks] == [[6], [6]]
    assert legend_texts(ax) == ["budget (schedule)", "kept total rank (2 runs)", "mask step", "warmup phase",
                                "budgeting phase", "final phase"]
    assert ax.get_ylim()[0] == 0


def test_importance_is_on_a_log_axis_with_structural_modules_apart(records):
    ax = plot_importance(importance_data(records), title="t")
    assert ax.get_yscale() == "log"
    boxes = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(boxes) == 4 * 2  # 4 blocks x 2 benchmarks
    # One group per benchmark, one box per block in grammar order, in the block's colour.
    boxes.sort(key=lambda box: box.get_path().get_extents().x0)
    assert [mcolors.to_hex(box.get_edgecolor()) for box in boxes] == [
        mcolors.to_hex(BLOCK_COLORS[block]) for _ in ("A", "B") for block in BLOCKS
    ]
    structural = with_gid(ax.collections, "structural")
    crosses = np.concatenate([c.get_offsets() for c in structural])
    assert len(crosses) == 3  # L01 text FFN of 3 runs
    spans = [(box.get_path().get_extents().x0, box.get_path().get_extents().x1) for box in boxes]
    assert not any(x0 <= x <= x1 for x in crosses[:, 0] for x0, x1 in spans)  # beside the boxes, not in them
    assert legend_texts(ax) == [*BLOCKS, STRUCTURAL_LABEL]
    assert "1 score(s) <= 0 not shown" in [t.get_text() for t in ax.texts]
    points = with_gid(ax.collections, "modules")
    # Every positive, non-structural score is a point: 18 rows minus the zero score.
    assert sum(len(c.get_offsets()) for c in points) == 21 - 3 - 1
    assert all(isinstance(c, PathCollection) for c in points)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]


def test_importance_jitter_is_seeded_and_leaves_numpys_global_generator_alone(records):
    data = importance_data(records)

    def jittered(ax) -> list:
        return [c.get_offsets().tolist() for c in with_gid(ax.collections, "modules")]

    np.random.seed(12345)
    before = global_rng_state()
    first = jittered(plot_importance(data, jitter_seed=7))
    assert global_rng_state() == before  # seaborn's strips draw from it: its state is restored
    assert jittered(plot_importance(data, jitter_seed=7)) == first  # two draws, the same points
    assert jittered(plot_importance(data, jitter_seed=8)) != first  # the seed decides the jitter
    assert global_rng_state() == before


def test_block_share_bars_with_intervals_where_defined(records):
    from qformer_budget.analysis import block_share

    data = block_share_ci_data(records, n_boot=200)
    ax = plot_block_share_ci(data, block_share(records), title="t")
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 4 and all(len(c) == 2 for c in bars)  # 4 blocks x 2 benchmarks
    assert [c.patches[0].get_facecolor() for c in bars] == [mcolors.to_rgba(BLOCK_COLORS[b]) for b in BLOCKS]
    errors = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errors) == 4  # one per block, for benchmark A only (B has one seed)
    assert all(len(c.lines[2][0].get_segments()) == 1 for c in errors)
    a = data[data["benchmark"] == "A"].set_index("block")
    for block, block_bars, error in zip(BLOCKS, bars, errors, strict=True):  # the table's CI, on its bar
        ((x_low, y_low), (x_high, y_high)) = error.lines[2][0].get_segments()[0]
        bar = block_bars.patches[0]
        assert x_low == x_high == pytest.approx(bar.get_x() + bar.get_width() / 2)
        assert (y_low, y_high) == pytest.approx((a.loc[block, "ci_low"], a.loc[block, "ci_high"]))
    seeds = with_gid(ax.collections, "seeds")
    assert sum(len(c.get_offsets()) for c in seeds) == 12  # 3 runs x 4 blocks
    assert legend_texts(ax) == [*BLOCKS, "95% seed-bootstrap CI", "each seed"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]
    heights = [c.patches[0].get_height() for c in bars]
    assert math.isclose(sum(heights), 1.0)
