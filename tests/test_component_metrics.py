"""Metrics, figures and live views of one budget shared by the Q-Former and the LLM, against hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from qformer_budget.analysis import (
    block_share,
    bootstrap_block_share,
    compare_benchmarks,
    component_share,
    layer_share,
    mark_structural,
    module_summary,
    normalized_importance,
    permutation_test,
    rank_trajectories,
    run_summary,
    settle_step,
    to_xarray,
)
from qformer_budget.core.records import ModuleInfo, StepRecord
from qformer_budget.peft_hooks import LiveViewSink
from qformer_budget.plotting import plot_block_share_ci, plot_rank_heatmap, plot_rank_trajectories
from qformer_budget.plotting.explorer import explore
from qformer_budget.plotting.figure_data import (
    block_share_ci_data,
    rank_heatmap_data,
    structural_cells,
    trajectory_data,
)

# A Q-Former of two layers and a LLaMA whose layer 2 is deeper than the Q-Former's last layer; both have a block
# called self_attn. (module name, in, out); the LM head sits in no layer.
MODULES = (
    ("qformer.encoder.layer.0.attention.attention.query", 8, 8),
    ("qformer.encoder.layer.0.intermediate.dense", 8, 32),
    ("qformer.encoder.layer.1.attention.attention.query", 8, 8),
    ("qformer.encoder.layer.1.intermediate.dense", 8, 32),  # the structural text FFN of the last Q-Former layer
    ("language_model.model.layers.0.self_attn.q_proj", 8, 8),
    ("language_model.model.layers.2.self_attn.q_proj", 8, 8),
    ("language_model.model.layers.2.mlp.up_proj", 8, 32),
    ("language_model.lm_head", 8, 64),
)
INIT_R = 4
# Final ranks per seed; seed 1 moves budget from the LLM to the Q-Former.
FINAL = {0: [4, 2, 3, 1, 2, 1, 3, 1], 1: [4, 3, 4, 1, 1, 1, 2, 0]}


def step_record(benchmark: str, seed: int, global_step: int, ranks: list[int]) -> StepRecord:
    kept = np.arange(INIT_R)[None, :] < np.array(ranks)[:, None]
    scores = np.linspace(1, 2, len(MODULES) * INIT_R, dtype=np.float32).reshape(len(MODULES), INIT_R) * (seed + 1)
    return StepRecord(
        benchmark=benchmark, seed=seed, global_step=global_step, phase="budgeting", mask_step=True,
        budget=int(kept.sum()), threshold=0.5, init_r=INIT_R, modules=tuple(ModuleInfo(*m) for m in MODULES),
        direction_kept=kept, direction_scores=scores,
    )


def joint_records(benchmarks=("iconqa", "scienceqa")) -> pd.DataFrame:
    """Two recorded steps per run: everything kept, then ``FINAL`` (the other benchmark mirrors it)."""
    frames = []
    for number, benchmark in enumerate(benchmarks):
        for seed, final in FINAL.items():
            final = final if number == 0 else final[::-1]
            for step, ranks in ((9, [INIT_R] * len(MODULES)), (19, final)):
                frame = step_record(benchmark, seed, step, ranks).to_table().to_pandas()
                frames.append(frame.assign(run=f"{benchmark}/seed{seed}"))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def records():
    return joint_records(benchmarks=("iconqa",))


def test_records_name_each_component_and_block_with_the_whole_model_grammar(records):
    final = records[(records["step"] == 20) & (records["seed"] == 0)]
    assert final["component"].tolist() == ["qformer"] * 4 + ["llm"] * 4
    assert final["sublayer"].tolist()[4:] == [
        "llm.L00.self_attn.q_proj", "llm.L02.self_attn.q_proj", "llm.L02.mlp.up_proj", "llm.lm_head.dense"]
    assert final["layer"].isna().tolist() == [False] * 7 + [True]


def test_only_the_qformers_last_text_ffn_is_structural(records):
    marked = mark_structural(records)
    assert sorted(set(marked.loc[marked["structural"], "module"])) == ["qformer.encoder.layer.1.intermediate.dense"]


def test_component_share_splits_the_whole_budget(records):
    shares = component_share(records).set_index(["seed", "component"])["share"]
    # Seed 0: Q-Former 4 + 2 + 3 (the structural 1 left out), LLM 2 + 1 + 3 + 1.
    assert shares[0, "qformer"] == pytest.approx(9 / 16) and shares[0, "llm"] == pytest.approx(7 / 16)
    with_structural = component_share(records, include_structural=True).set_index(["seed", "component"])["share"]
    assert with_structural[0, "qformer"] == pytest.approx(10 / 17)
    per_module = component_share(records, normalize="module").set_index(["seed", "component"])["share"]
    assert per_module[0, "qformer"] == pytest.approx((9 / 3) / (9 / 3 + 7 / 4))
    parameters = component_share(records, normalize="parameter").set_index(["seed", "component"])["share"]
    qformer = 4 * 17 + 2 * 41 + 3 * 17
    llm = 2 * 17 + 1 * 17 + 3 * 41 + 1 * 73
    assert parameters[0, "qformer"] == pytest.approx(qformer / (qformer + llm))
    assert component_share(records).groupby("run")["share"].sum().tolist() == pytest.approx([1.0, 1.0])


def test_block_and_layer_shares_are_shares_within_the_component(records):
    shares = block_share(records).query("seed == 0").set_index(["component", "block"])["share"]
    assert shares["qformer", "self_attn"] == pytest.approx(7 / 9) and shares["qformer", "ffn_text"] == pytest.approx(2 / 9)
    assert shares["llm", "self_attn"] == pytest.approx(3 / 7) and shares["llm", "mlp"] == pytest.approx(3 / 7)
    assert shares["llm", "lm_head"] == pytest.approx(1 / 7)
    layers = layer_share(records).query("seed == 0").set_index(["component", "layer"])["share"]
    assert layers["qformer", 0] == pytest.approx(6 / 9) and layers["qformer", 1] == pytest.approx(3 / 9)
    assert layers["llm", 0] == pytest.approx(2 / 6) and layers["llm", 2] == pytest.approx(4 / 6)  # the head has no layer
    trajectory = rank_trajectories(records, by="component").query("seed == 0")
    assert trajectory["step"].tolist() == [10, 10, 20, 20]
    assert trajectory["share"].tolist() == pytest.approx([12 / 28, 16 / 28, 9 / 16, 7 / 16])
    settled = settle_step(records, by="component").query("seed == 0").set_index("component")
    assert settled.loc["llm", "settle_step"] == 20


def test_intervals_and_permutation_tests_at_the_component_level():
    records = joint_records()
    shares = component_share(records)
    intervals = bootstrap_block_share(shares, n_boot=200).set_index(["benchmark", "component"])
    assert list(intervals.columns) == ["n_seeds", "mean", "ci_low", "ci_high"]
    seed_shares = [9 / 16, 11 / 15]  # seed 1: Q-Former 4 + 3 + 4 (structural 1 out), LLM 1 + 1 + 2 + 0
    assert intervals.loc[("iconqa", "qformer"), "mean"] == pytest.approx(np.mean(seed_shares))
    assert intervals.loc[("iconqa", "qformer"), "ci_low"] >= min(seed_shares) - 1e-12
    test = permutation_test(shares, "iconqa", "scienceqa", component="llm")
    assert test.loc[0, "component"] == "llm" and "block" not in test.columns
    compared = compare_benchmarks(shares, n_permutations=100)
    assert compared["component"].tolist() == ["qformer", "llm"]
    blocks = block_share(records)
    with pytest.raises(ValueError, match=r"block 'self_attn' is in components \['llm', 'qformer'\]: give component= too"):
        permutation_test(blocks, "iconqa", "scienceqa", "self_attn")
    with pytest.raises(ValueError, match="these block shares have no component column: give block= only"):
        permutation_test(blocks.drop(columns="component").query("block == 'mlp'"), "iconqa", "scienceqa", "mlp",
                         component="llm")
    llm_attention = permutation_test(blocks, "iconqa", "scienceqa", "self_attn", component="llm")
    assert llm_attention.loc[0, "mean_a"] == pytest.approx(np.mean([3 / 7, 2 / 4]))
    assert set(compare_benchmarks(blocks, n_permutations=100)["component"]) == {"qformer", "llm"}


def test_summaries_name_blocks_across_components(records):
    summary = run_summary(records).set_index("seed")
    assert summary.loc[0, "share_qformer"] == pytest.approx(9 / 16)
    assert summary.loc[0, "share_self_attn"] == pytest.approx(7 / 9)
    assert summary.loc[0, "share_llm.self_attn"] == pytest.approx(3 / 7)
    columns = [c for c in summary.columns if c.startswith("share_")]
    assert columns == ["share_qformer", "share_llm", "share_self_attn", "share_ffn_text", "share_llm.self_attn",
                       "share_llm.mlp", "share_llm.lm_head"]
    assert set(module_summary(records)["component"]) == {"qformer", "llm"}
    importance = normalized_importance(records, step="final")
    assert importance.groupby("run")["importance_share"].sum().to_numpy() == pytest.approx([1, 1])
    llm = to_xarray(records, component="llm")
    assert list(llm.coords["block"].values) == ["self_attn", "mlp"] and list(llm.coords["layer"].values) == [0, 2]


def test_figure_data_and_plots_take_each_component(records):
    llm = rank_heatmap_data(records, component="llm")
    assert list(llm.columns) == ["self_attn.q_proj", "mlp.up_proj"] and list(llm.index) == [0, 1, 2]
    assert llm.loc[1].isna().all() and llm.loc[2, "mlp.up_proj"] == 2.5  # mean of seeds 0 and 1
    assert not structural_cells(llm).to_numpy().any()
    qformer = rank_heatmap_data(records)
    assert structural_cells(qformer).to_numpy().sum() == 1
    ax = plot_rank_heatmap(llm)
    assert ax.get_ylabel() == "LLM layer"
    components = trajectory_data(records, by="component")
    assert set(components.columns) >= {"component", "value"} and "block" not in components.columns
    ax = plot_rank_trajectories(components)
    assert [line.get_label() for line in ax.get_legend().get_lines()][:2] == ["qformer", "llm"]
    intervals = block_share_ci_data(records, by="component", n_boot=50)
    ax = plot_block_share_ci(intervals)
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["qformer", "llm"]
    blocks = trajectory_data(records)  # the Q-Former's blocks only
    assert set(blocks["block"]) == {"self_attn", "ffn_text"}


def test_the_explorer_adds_the_component_views(records):
    figures = explore(records, n_boot=50).figures
    assert list(figures) == ["heatmap-iconqa", "trajectory-iconqa", "components-iconqa", "heatmap-llm-iconqa",
                             "block-shares", "component-shares"]
    llm = figures["heatmap-llm-iconqa"]
    assert list(llm.layout.xaxis.ticktext) == ["q_proj", "up_proj"] and llm.layout.yaxis.title.text == "LLM layer"
    assert "LLM kept 5" in llm.layout.title.text  # cell means over the seeds, 1.5 + 1 + 2.5 (the head has no cell)


class Scalars(LiveViewSink):
    def _open(self, meta):
        self.logged = []

    def _log(self, step, scalars, figures):
        self.logged.append(scalars)
        self.figures = figures

    def _close(self, status):
        pass


def test_live_views_tag_blocks_and_components_apart():
    sink = Scalars()
    sink.start({"benchmark": "iconqa", "seed": 0})
    sink.write(step_record("iconqa", 0, 19, FINAL[0]))
    tags = sink.logged[0]
    assert tags["rank/self_attn"] == 7 and tags["rank/llm.self_attn"] == 3 and tags["rank/llm.lm_head"] == 1
    assert tags["rank/qformer"] == 10 and tags["share/llm"] == pytest.approx(7 / 17)
    assert tags["rank/llm.L02.mlp.up_proj"] == 3


def test_records_read_without_the_component_column_take_it_from_the_labels(records):
    expected = block_share(records)
    for label in ("sublayer", "module"):
        without = records.drop(columns=[c for c in ("component", "sublayer", "module") if c != label])
        pd.testing.assert_frame_equal(block_share(without), expected, check_dtype=False)
    # With no label at all, records are version 1's: the Q-Former's.
    bare = records.drop(columns=["component", "sublayer", "module"])
    assert set(block_share(bare)["component"]) == {"qformer"}
    # A module the grammar does not know is labelled by its name: not the Q-Former's.
    unknown = records.assign(sublayer=records["sublayer"].replace({"llm.lm_head.dense": "value_head"}))
    components = block_share(unknown.drop(columns=["component", "module"]))
    assert set(components["component"]) == {"qformer", "llm", "other"}


def test_t5_layer_shares_tell_encoder_and_decoder_apart():
    frame = pd.DataFrame({
        "run": "r", "benchmark": "b", "seed": 0, "step": 1, "component": "llm", "layer": [0, 0, 1],
        "block": ["enc_self_attn", "dec_self_attn", "dec_ffn"], "rank": [1, 3, 4], "module": ["a", "b", "c"],
    })
    shares = layer_share(frame)
    assert shares[["stack", "layer"]].values.tolist() == [["encoder", 0], ["decoder", 0], ["decoder", 1]]
    assert shares["share"].tolist() == pytest.approx([1 / 8, 3 / 8, 4 / 8])
    assert "stack" not in layer_share(joint_records(benchmarks=("iconqa",))).columns  # LLaMA: one stack


def test_live_views_draw_the_qformer_heatmap_only_with_qformer_layers():
    sink = Scalars()
    sink.start({"benchmark": "iconqa", "seed": 0})
    kept = np.ones((2, INIT_R), dtype=bool)
    projection_and_llm = (ModuleInfo("language_projection", 8, 8), ModuleInfo(*MODULES[4]))
    sink.write(StepRecord(benchmark="iconqa", seed=0, global_step=9, phase="budgeting", mask_step=True, budget=8,
                          threshold=0.5, init_r=INIT_R, modules=projection_and_llm, direction_kept=kept,
                          direction_scores=np.ones((2, INIT_R), dtype=np.float32)))
    assert sink.figures == {} and sink.logged[0]["rank/language_projection"] == 4
    sink.write(step_record("iconqa", 0, 19, FINAL[0]))
    title = sink.figures["heatmap/rank"].axes[0].get_title()
    assert title.endswith("budget 17, Q-Former kept 10")
