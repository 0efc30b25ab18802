"""The metrics of qformer_budget.analysis against values computed by hand on small frames built here."""

import math
import sys

import numpy as np
import pandas as pd
import pytest

from qformer_budget.analysis import (
    allocation_correlation,
    allocation_entropy,
    block_share,
    bootstrap_block_share,
    compare_benchmarks,
    layer_share,
    load_runs,
    mark_structural,
    module_summary,
    normalized_importance,
    permutation_test,
    rank_retention,
    rank_trajectories,
    run_summary,
    seed_correlation,
    select_step,
    settle_step,
    to_xarray,
)
from qformer_budget.core.grammar import sublayer_label

from fake_runs import SMALL_QFORMER, fake_modules, fake_record, write_fake_run

MODULES = SMALL_QFORMER
INIT_R = 4


def records_frame(runs: dict) -> pd.DataFrame:
    """Records from ``runs[(benchmark, seed, modules)] = {step: (ranks, scores)}``, one value per module."""
    rows = []
    for (benchmark, seed, modules), steps in runs.items():
        for step, (ranks, scores) in steps.items():
            for (layer, block, proj, n_in, n_out), rank, score in zip(modules, ranks, scores, strict=True):
                rows.append(
                    {
                        "run": f"{benchmark}/seed{seed}",
                        "benchmark": benchmark,
                        "seed": seed,
                        "step": step,
                        "module": f"qformer.encoder.layer.{layer}.{block}.{proj}",
                        "sublayer": sublayer_label(layer, block, proj),
                        "layer": layer,
                        "block": block,
                        "proj": proj,
                        "in_features": n_in,
                        "out_features": n_out,
                        "init_r": INIT_R,
                        "rank": rank,
                        "score": score,
                        "budget": sum(ranks),
                    }
                )
    frame = pd.DataFrame(rows)
    return frame.astype(
        {
            "layer": "int16",
            "rank": "int16",
            "init_r": "int16",
            "in_features": "int32",
            "out_features": "int32",
        }
    )


NAN = float("nan")
# Run A (3 steps): the structural text FFN keeps rank 1, so excluding it changes every share.
A_STEPS = {
    10: ([4, 4, 4, 4, 4, 4, 4], [1, 1000, 2, 3, 3, 6, 0]),
    20: ([3, 4, 2, 4, 2, 4, 2], [1, 500, 2, 3, 3, 6, 0]),
    30: ([2, 4, 1, 3, 2, 3, 1], [NAN] * 7),  # final phase: peft cleared the scores
}
# Run B (2 steps): its final step is 20.
B_STEPS = {
    10: ([4] * 7, [1.0] * 7),
    20: ([2, 2, 2, 2, 2, 2, 0], [1.0] * 6 + [0.0]),
}


@pytest.fixture
def records() -> pd.DataFrame:
    return records_frame({("A", 0, tuple(MODULES)): A_STEPS, ("B", 0, tuple(MODULES)): B_STEPS})


def shares_of(table: pd.DataFrame, run: str, key: str = "block") -> dict:
    rows = table[table["run"] == run]
    return dict(zip(rows[key], rows["share"], strict=True))


# --- structural zeros and step selection ---


def test_mark_structural_flags_the_deepest_layers_text_ffn(records):
    marked = mark_structural(records)
    flagged = marked.loc[marked["structural"], ["run", "sublayer"]].drop_duplicates()
    assert sorted(flagged.itertuples(index=False, name=None)) == [
        ("A/seed0", "L01.ffn_text.intermediate"),
        ("B/seed0", "L01.ffn_text.intermediate"),
    ]
    assert marked["structural"].dtype == bool
    explicit = mark_structural(records, last_layer=5)
    assert not explicit["structural"].any()


def test_select_step_final_is_per_run_and_an_int_must_exist_everywhere(records):
    final = select_step(records, "final")
    assert final.groupby("run")["step"].unique().map(list).to_dict() == {"A/seed0": [30], "B/seed0": [20]}
    assert set(select_step(records, 20)["step"]) == {20}
    with pytest.raises(ValueError, match="B/seed0"):
        select_step(records, 30)
    with pytest.raises(ValueError, match="final"):
        select_step(records, "last")


# --- block and layer shares ---


def test_block_share_rank_normalisation_by_hand(records):
    shares = block_share(records)
    assert list(shares.columns) == ["run", "benchmark", "seed", "step", "component", "block", "share"]
    # Run A, step 30, structural excluded: self 2+2, cross 4, ffn_query 1+3, ffn_text 3 -> 15.
    assert shares_of(shares, "A/seed0") == pytest.approx(
        {"self_attn": 4 / 15, "cross_attn": 4 / 15, "ffn_query": 4 / 15, "ffn_text": 3 / 15}
    )
    assert list(shares.loc[shares["run"] == "A/seed0", "block"]) == [
        "self_attn",
        "cross_attn",
        "ffn_query",
        "ffn_text",
    ]
    assert set(shares.loc[shares["run"] == "B/seed0", "step"]) == {20}
    # Run B, step 20: self 4, cross 2, ffn_query 4, ffn_text 2 -> 12.
    assert shares_of(shares, "B/seed0") == pytest.approx(
        {"self_attn": 4 / 12, "cross_attn": 2 / 12, "ffn_query": 4 / 12, "ffn_text": 2 / 12}
    )
    assert shares.groupby("run")["share"].sum().to_numpy() == pytest.approx([1.0, 1.0])


def test_block_share_module_normalisation_by_hand(records):
    shares = block_share(records, normalize="module")
    # Mean rank per module: self (2+2)/2=2, cross 4/1=4, ffn_query (1+3)/2=2, ffn_text 3/1=3 -> 11.
    assert shares_of(shares, "A/seed0") == pytest.approx(
        {"self_attn": 2 / 11, "cross_attn": 4 / 11, "ffn_query": 2 / 11, "ffn_text": 3 / 11}
    )


def test_block_share_parameter_normalisation_by_hand(records):
    shares = block_share(records, normalize="parameter")
    # Parameters per kept rank: attention 8+8+1=17, FFN 8+32+1=41.
    # self 4*17=68, cross 4*17=68, ffn_query 4*41=164, ffn_text 3*41=123 -> 423.
    assert shares_of(shares, "A/seed0") == pytest.approx(
        {"self_attn": 68 / 423, "cross_attn": 68 / 423, "ffn_query": 164 / 423, "ffn_text": 123 / 423}
    )


def test_block_share_structural_rows_only_when_asked(records):
    shares = block_share(records, include_structural=True)
    # The structural text FFN keeps rank 1: ffn_text 3+1=4 of 16.
    assert shares_of(shares, "A/seed0") == pytest.approx(
        {"self_attn": 4 / 16, "cross_attn": 4 / 16, "ffn_query": 4 / 16, "ffn_text": 4 / 16}
    )
    module = block_share(records, normalize="module", include_structural=True)
    assert shares_of(module, "A/seed0")["ffn_text"] == pytest.approx(2 / 10)  # means 2, 4, 2, (3+1)/2


def test_block_share_at_a_given_step_and_bad_normalisation(records):
    shares = block_share(records, step=10)
    # All ranks 4, structural excluded: self 8, cross 4, ffn_query 8, ffn_text 4 -> 24.
    assert shares_of(shares, "A/seed0") == pytest.approx(
        {"self_attn": 8 / 24, "cross_attn": 4 / 24, "ffn_query": 8 / 24, "ffn_text": 4 / 24}
    )
    with pytest.raises(ValueError, match="normalize"):
        block_share(records, normalize="flops")


def test_layer_share_all_normalisations_by_hand(records):
    rank = layer_share(records)
    assert list(rank.columns) == ["run", "benchmark", "seed", "step", "component", "layer", "share"]
    # Layer 0: 2+4+1+3=10, layer 1 (no structural): 2+3=5.
    assert shares_of(rank, "A/seed0", "layer") == pytest.approx({0: 10 / 15, 1: 5 / 15})
    module = layer_share(records, normalize="module")
    assert shares_of(module, "A/seed0", "layer") == pytest.approx({0: 0.5, 1: 0.5})  # means 10/4, 5/2
    parameter = layer_share(records, normalize="parameter")
    # Layer 0: 2*17+4*17+1*41+3*41=266, layer 1: 2*17+3*41=157.
    assert shares_of(parameter, "A/seed0", "layer") == pytest.approx({0: 266 / 423, 1: 157 / 423})


def test_layer_by_block_share_has_no_odd_layer_cross_attention(records):
    cells = layer_share(records, by_block=True)
    a = cells[cells["run"] == "A/seed0"]
    assert list(zip(a["layer"], a["block"], strict=True)) == [
        (0, "self_attn"),
        (0, "cross_attn"),
        (0, "ffn_query"),
        (0, "ffn_text"),
        (1, "self_attn"),
        (1, "ffn_query"),
    ]
    assert list(a["share"]) == pytest.approx([2 / 15, 4 / 15, 1 / 15, 3 / 15, 2 / 15, 3 / 15])
    with_structural = layer_share(records, by_block=True, include_structural=True)
    assert not ((with_structural["layer"] == 1) & (with_structural["block"] == "cross_attn")).any()


# --- trajectories, settling, retention ---


def test_rank_trajectories_every_step_by_hand(records):
    trajectory = rank_trajectories(records)
    a = trajectory[trajectory["run"] == "A/seed0"]
    assert sorted(set(a["step"])) == [10, 20, 30]
    step20 = a[a["step"] == 20].set_index("block")
    # Step 20: self 3+2=5, cross 4, ffn_query 2+4=6, ffn_text 4 -> 19.
    assert step20["rank"].to_dict() == {"self_attn": 5, "cross_attn": 4, "ffn_query": 6, "ffn_text": 4}
    assert step20["n_modules"].to_dict() == {"self_attn": 2, "cross_attn": 1, "ffn_query": 2, "ffn_text": 1}
    assert step20["share"].to_dict() == pytest.approx(
        {"self_attn": 5 / 19, "cross_attn": 4 / 19, "ffn_query": 6 / 19, "ffn_text": 4 / 19}
    )
    by_layer = rank_trajectories(records, by="layer")
    assert by_layer.loc[(by_layer["run"] == "A/seed0") & (by_layer["step"] == 20), "rank"].tolist() == [13, 6]


def test_settle_step_on_a_designed_trajectory():
    # self_attn's share: 0.50, 0.61, 0.70, 0.59, 0.60 (final); within 0.02 of 0.60 at steps 2, 4, 5.
    # It leaves the band at step 3, so it settles at step 4, not 2. ffn_query mirrors it.
    modules = ((0, "self_attn", "query", 8, 8), (0, "ffn_query", "intermediate", 8, 8))
    kept = [50, 61, 70, 59, 60]
    steps = {step: ([k, 100 - k], [1.0, 1.0]) for step, k in enumerate(kept, start=1)}
    # A second run with a stable allocation settles at its first step.
    stable = {step: ([30, 70], [1.0, 1.0]) for step in (1, 2, 3)}
    records = records_frame({("A", 0, modules): steps, ("A", 1, modules): stable})
    settled = settle_step(records, tolerance=0.02)
    assert list(settled.columns) == ["run", "benchmark", "seed", "component", "block", "settle_step", "final_share"]
    assert settled[["run", "block", "settle_step"]].values.tolist() == [
        ["A/seed0", "self_attn", 4],
        ["A/seed0", "ffn_query", 4],
        ["A/seed1", "self_attn", 1],
        ["A/seed1", "ffn_query", 1],
    ]
    assert settled["final_share"].tolist() == pytest.approx([0.6, 0.4, 0.3, 0.7])
    wide = settle_step(records, tolerance=0.15)  # every step within 0.15 of 0.60
    assert wide.loc[wide["run"] == "A/seed0", "settle_step"].tolist() == [1, 1]


def test_rank_retention_per_module_and_per_block(records):
    modules = rank_retention(records)
    a = modules[modules["run"] == "A/seed0"].set_index("sublayer")
    assert a["retention"].to_dict() == pytest.approx(
        {
            "L00.self_attn.query": 0.5,
            "L00.cross_attn.query": 1.0,
            "L00.ffn_query.intermediate": 0.25,
            "L00.ffn_text.intermediate": 0.75,
            "L01.self_attn.query": 0.5,
            "L01.ffn_query.intermediate": 0.75,
        }
    )
    flagged = rank_retention(records, include_structural=True)
    assert flagged.loc[flagged["structural"], "retention"].tolist() == pytest.approx(
        [0.25, 0.0]
    )  # A 1/4, B 0/4
    blocks = rank_retention(records, by="block")
    a_blocks = blocks[blocks["run"] == "A/seed0"].set_index("block")
    assert a_blocks["retention"].to_dict() == pytest.approx(
        {"self_attn": 0.5, "cross_attn": 1.0, "ffn_query": 0.5, "ffn_text": 0.75}
    )
    assert a_blocks["n_modules"].to_dict() == {"self_attn": 2, "cross_attn": 1, "ffn_query": 2, "ffn_text": 1}
    with_structural = rank_retention(records, by="block", include_structural=True)
    assert with_structural.set_index(["run", "block"]).loc[
        ("A/seed0", "ffn_text"), "retention"
    ] == pytest.approx(0.5)


# --- importance and concentration ---


def test_normalized_importance_by_hand(records):
    importance = normalized_importance(records)
    assert set(importance["step"]) == {10, 20}  # step 30 has no scores
    a10 = importance[(importance["run"] == "A/seed0") & (importance["step"] == 10)].set_index("sublayer")
    assert "L01.ffn_text.intermediate" not in a10.index
    # Scores 1, 1000, 2, 3, 3, 6 -> 1015.
    assert a10.loc["L00.cross_attn.query", "importance_share"] == pytest.approx(1000 / 1015)
    assert a10["importance_share"].sum() == pytest.approx(1.0)
    # Block medians: self median(1, 3)=2, ffn_query median(2, 6)=4, cross 1000, ffn_text 3.
    assert a10["score_vs_block_median"].to_dict() == pytest.approx(
        {
            "L00.self_attn.query": 0.5,
            "L00.cross_attn.query": 1.0,
            "L00.ffn_query.intermediate": 0.5,
            "L00.ffn_text.intermediate": 1.0,
            "L01.self_attn.query": 1.5,
            "L01.ffn_query.intermediate": 1.5,
        }
    )
    with_structural = normalized_importance(records, step=10, include_structural=True)
    a = with_structural[with_structural["run"] == "A/seed0"].set_index("sublayer")
    assert a.loc["L00.ffn_text.intermediate", "score_vs_block_median"] == pytest.approx(3 / 1.5)
    assert set(normalized_importance(records, step="final")["run"]) == {
        "B/seed0"
    }  # A's final step has no scores


def test_allocation_entropy_uniform_one_hot_and_in_between():
    modules = tuple((0, "self_attn", p, 8, 8) for p in ("query", "key", "value", "output"))
    records = records_frame(
        {
            ("uniform", 0, modules): {1: ([2, 2, 2, 2], [1.0] * 4)},
            ("one_hot", 0, modules): {1: ([4, 0, 0, 0], [1.0] * 4)},
            ("mixed", 0, modules[:3]): {1: ([2, 1, 1], [1.0] * 3)},
            ("empty", 0, modules): {1: ([0, 0, 0, 0], [1.0] * 4)},
        }
    )
    entropy = allocation_entropy(records).set_index("benchmark")
    assert entropy.loc["uniform", "entropy"] == pytest.approx(math.log(4))
    assert entropy.loc["uniform", "normalized_entropy"] == pytest.approx(1.0)
    assert entropy.loc["one_hot", "normalized_entropy"] == pytest.approx(0.0)
    # p = 1/2, 1/4, 1/4: H = 1/2 ln 2 + 1/2 ln 4 = 1.5 ln 2.
    assert entropy.loc["mixed", "entropy"] == pytest.approx(1.5 * math.log(2))
    assert entropy.loc["mixed", "normalized_entropy"] == pytest.approx(1.5 * math.log(2) / math.log(3))
    assert entropy.loc["mixed", "n_modules"] == 3
    assert np.isnan(entropy.loc["empty", "normalized_entropy"])


def test_allocation_entropy_excludes_structural_by_default(records):
    entropy = allocation_entropy(records, step=10)
    a = entropy[entropy["run"] == "A/seed0"].iloc[0]
    assert a["n_modules"] == 6 and a["total_rank"] == 24 and a["normalized_entropy"] == pytest.approx(1.0)
    assert allocation_entropy(records, step=10, include_structural=True)["n_modules"].tolist() == [7, 7]


def correlation_records() -> pd.DataFrame:
    modules = (
        (0, "self_attn", "query", 8, 8),
        (0, "self_attn", "key", 8, 8),
        (0, "ffn_query", "intermediate", 8, 8),
        (1, "self_attn", "query", 8, 8),
        (1, "ffn_text", "intermediate", 8, 8),  # structural, rank 0 everywhere
    )
    ones = [1.0] * 5
    return records_frame(
        {
            # A's seeds average to 1, 2, 3, 4.
            ("A", 0, modules): {5: ([0, 2, 3, 5, 0], ones)},
            ("A", 1, modules): {5: ([2, 2, 3, 3, 0], ones)},
            ("B", 0, modules): {5: ([4, 3, 2, 1, 0], ones)},
            ("C", 0, modules): {5: ([1, 2, 4, 3, 0], ones)},
        }
    )


def test_allocation_correlation_on_known_rankings():
    correlation = allocation_correlation(correlation_records())
    assert list(correlation.columns) == ["benchmark_a", "benchmark_b", "spearman", "n_modules"]
    rho = {
        (a, b): r
        for a, b, r in correlation[["benchmark_a", "benchmark_b", "spearman"]].itertuples(index=False)
    }
    assert rho[("A", "B")] == pytest.approx(-1.0)
    assert rho[("A", "C")] == pytest.approx(1 - 6 * 2 / (4 * 15))  # d = 0, 0, 1, 1
    assert rho[("B", "C")] == pytest.approx(-0.8)
    assert correlation["n_modules"].tolist() == [4, 4, 4]
    assert allocation_correlation(correlation_records(), include_structural=True)["n_modules"].tolist() == [
        5,
        5,
        5,
    ]


def test_seed_correlation_with_ties():
    correlation = seed_correlation(correlation_records())
    assert correlation[["benchmark", "seed_a", "seed_b", "n_modules"]].values.tolist() == [["A", 0, 1, 4]]
    # Ranks 1, 2, 3, 4 against 1.5, 1.5, 3.5, 3.5: Pearson of the ranks = 4 / sqrt(5 * 4).
    assert correlation["spearman"].item() == pytest.approx(2 / math.sqrt(5))


# --- statistics over seeds ---


def shares_table(values: dict) -> pd.DataFrame:
    """A block_share-shaped table from ``values[(benchmark, block)] = [share of seed 0, seed 1, ...]``."""
    rows = [
        {
            "run": f"{benchmark}/seed{seed}",
            "benchmark": benchmark,
            "seed": seed,
            "step": 10,
            "block": block,
            "share": share,
        }
        for (benchmark, block), shares in values.items()
        for seed, share in enumerate(shares)
    ]
    return pd.DataFrame(rows)


def test_bootstrap_identical_seeds_give_a_zero_width_interval():
    shares = shares_table({("A", "self_attn"): [0.3, 0.3, 0.3], ("A", "ffn_query"): [0.7, 0.7, 0.7]})
    boot = bootstrap_block_share(shares).set_index("block")
    assert boot.loc["self_attn", ["mean", "ci_low", "ci_high"]].tolist() == pytest.approx([0.3, 0.3, 0.3])
    assert boot.loc["ffn_query", "n_seeds"] == 3


def test_bootstrap_two_seeds_spans_both_and_one_seed_has_no_interval():
    # Two seeds: resampled means are 0.2, 0.3, 0.4 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles of 2000 resamples are 0.2 and 0.4.
    shares = shares_table({("A", "self_attn"): [0.2, 0.4], ("B", "self_attn"): [0.5]})
    boot = bootstrap_block_share(shares, n_boot=2000, seed=1).set_index("benchmark")
    assert boot.loc["A", ["mean", "ci_low", "ci_high"]].tolist() == pytest.approx([0.3, 0.2, 0.4])
    assert boot.loc["B", "mean"] == pytest.approx(0.5)
    assert np.isnan(boot.loc["B", "ci_low"]) and np.isnan(boot.loc["B", "ci_high"])
    assert bootstrap_block_share(shares, seed=1).equals(bootstrap_block_share(shares, seed=1))


def test_statistics_refuse_several_steps_per_run():
    shares = shares_table({("A", "self_attn"): [0.2, 0.4]})
    with pytest.raises(ValueError, match="one row per benchmark, seed and block"):
        bootstrap_block_share(pd.concat([shares, shares.assign(step=20)]))


def test_permutation_test_two_against_two_enumerates_six_relabelings():
    # |mean difference| of the 6 splits of {0.1, 0.2, 0.3, 0.4}: 0.2 (observed), 0.2 (mirror), 0.1, 0, 0, 0.1.
    shares = shares_table({("A", "self_attn"): [0.1, 0.2], ("B", "self_attn"): [0.3, 0.4]})
    test = permutation_test(shares, "A", "B", "self_attn").iloc[0]
    assert test["difference"] == pytest.approx(-0.2)
    assert test["p_value"] == pytest.approx(2 / 6)
    assert bool(test["exact"]) and test["n_relabelings"] == 6
    with pytest.raises(ValueError, match="ffn_text"):
        permutation_test(shares, "A", "B", "ffn_text")


def test_permutation_test_exact_and_random_on_separated_groups():
    shares = shares_table(
        {
            ("A", "self_attn"): [0.1 + 0.01 * i for i in range(6)],
            ("B", "self_attn"): [0.5 + 0.01 * i for i in range(6)],
        }
    )
    exact = permutation_test(shares, "A", "B", "self_attn").iloc[0]
    assert bool(exact["exact"]) and exact["n_relabelings"] == 924  # C(12, 6)
    assert exact["p_value"] == pytest.approx(2 / 924)
    sampled = permutation_test(shares, "A", "B", "self_attn", n_permutations=100, seed=3).iloc[0]
    assert not bool(sampled["exact"]) and sampled["n_relabelings"] == 100
    assert 1 / 101 <= sampled["p_value"] < 0.05
    again = permutation_test(shares, "A", "B", "self_attn", n_permutations=100, seed=3).iloc[0]
    assert again["p_value"] == sampled["p_value"]


def test_compare_benchmarks_puts_differences_beside_the_seed_spread():
    shares = shares_table(
        {
            ("A", "self_attn"): [0.1, 0.2],
            ("A", "cross_attn"): [0.3, 0.5],
            ("A", "ffn_query"): [0.6, 0.3],
            ("B", "self_attn"): [0.3, 0.4],
            ("B", "cross_attn"): [0.4, 0.4],
            ("B", "ffn_query"): [0.3, 0.2],
        }
    )
    table = compare_benchmarks(shares).set_index("block")
    assert list(table.index) == ["self_attn", "cross_attn", "ffn_query"]
    assert table["difference"].to_dict() == pytest.approx(
        {"self_attn": -0.2, "cross_attn": 0.0, "ffn_query": 0.2}
    )
    assert table["spread_a"].to_dict() == pytest.approx(
        {"self_attn": 0.1, "cross_attn": 0.2, "ffn_query": 0.3}
    )
    assert table["spread_b"].to_dict() == pytest.approx(
        {"self_attn": 0.1, "cross_attn": 0.0, "ffn_query": 0.1}
    )
    assert table["exceeds_seed_spread"].to_dict() == {
        "self_attn": True,
        "cross_attn": False,
        "ffn_query": False,
    }
    assert table["p_value"].to_dict() == pytest.approx(
        {"self_attn": 2 / 6, "cross_attn": 1.0, "ffn_query": 4 / 6}
    )


# --- summaries and views ---


def test_module_summary_by_hand(records):
    summary = module_summary(records)
    assert len(summary) == 14  # 7 modules x 2 runs, structural ones kept
    a = summary[summary["run"] == "A/seed0"].set_index("sublayer")
    cross = a.loc["L00.cross_attn.query"]
    assert (cross["final_step"], cross["final_rank"], cross["retention"]) == (30, 4, 1.0)
    # Importance share at step 10: 1000/1015; at step 20: 500/515 (structural score 0 changes no sum).
    assert cross["mean_importance_share"] == pytest.approx((1000 / 1015 + 500 / 515) / 2)
    assert a["structural"].to_dict()["L01.ffn_text.intermediate"] and a["structural"].sum() == 1
    assert a.loc["L01.ffn_text.intermediate", "mean_importance_share"] == 0.0
    assert a.loc["L01.ffn_text.intermediate", ["layer", "block", "proj"]].tolist() == [
        1,
        "ffn_text",
        "intermediate",
    ]


def test_run_summary_by_hand(records):
    summary = run_summary(records).set_index("run")
    a = summary.loc["A/seed0"]
    assert (a["final_step"], a["n_modules"], a["budget"], a["total_rank"]) == (30, 7, 16, 16)
    assert [a[f"share_{b}"] for b in ("self_attn", "cross_attn", "ffn_query", "ffn_text")] == pytest.approx(
        [4 / 15, 4 / 15, 4 / 15, 3 / 15]
    )
    # Shares of A: self 8/24, 5/19, 4/15; cross 4/24, 4/19, 4/15 ... cross is off by > 0.02 until step 30.
    assert a["settle_step_cross_attn"] == 30
    assert a["settle_step_ffn_text"] == 20  # 4/24, 4/19=0.2105, 3/15=0.2: within 0.02 from step 20
    b = summary.loc["B/seed0"]
    assert (b["final_step"], b["total_rank"]) == (20, 12)
    assert b["normalized_entropy"] == pytest.approx(1.0)  # six modules at rank 2


def test_to_xarray_keeps_absent_cells_nan(records):
    array = to_xarray(records)
    assert array.dims == ("benchmark", "seed", "step", "layer", "block", "proj")
    assert array.shape == (2, 1, 3, 2, 4, 2)
    assert list(array["block"].values) == ["self_attn", "cross_attn", "ffn_query", "ffn_text"]
    assert list(array["proj"].values) == ["query", "intermediate"]
    cell = dict(benchmark="A", seed=0, step=30)
    assert array.sel(**cell, layer=0, block="cross_attn", proj="query").item() == 4
    assert np.isnan(array.sel(**cell, layer=1, block="cross_attn", proj="query").item())
    assert array.sel(**cell, layer=1, block="ffn_text", proj="intermediate").item() == 1
    assert np.isnan(array.sel(benchmark="B", seed=0, step=30).values).all()  # B never recorded step 30
    assert (
        to_xarray(records, value="score")
        .sel(benchmark="A", seed=0, step=10, layer=0, block="cross_attn", proj="query")
        .item()
        == 1000
    )


def test_to_xarray_refuses_two_runs_with_one_benchmark_and_seed(records):
    other_config = records.assign(run=records["run"] + "-r8")
    with pytest.raises(ValueError, match="several runs share a benchmark and seed"):
        to_xarray(pd.concat([records, other_config]))


def test_to_xarray_without_xarray_says_how_to_install(records, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(
        ImportError, match=r'to_xarray needs xarray: pip install "qformer-budget\[analysis\]"'
    ):
        to_xarray(records)


# --- records as load_runs returns them ---


def test_metrics_accept_load_runs_records(tmp_path):
    rng = np.random.default_rng(0)
    modules = fake_modules(layers=2)  # 20 modules: cross-attention in layer 0 only
    for benchmark in ("scienceqa", "iconqa"):
        for seed in (0, 1):
            kept = np.ones((len(modules), 4), dtype=bool)
            records = []
            for step in (0, 4, 9):
                kept = kept & (rng.random(kept.shape) > 0.3)
                scores = rng.random(kept.shape).astype(np.float32)
                records.append(
                    fake_record(step, kept, benchmark=benchmark, seed=seed, modules=modules, scores=scores)
                )
            write_fake_run(tmp_path / benchmark / f"seed{seed}", records)
    records = load_runs(tmp_path)
    assert pd.api.types.is_string_dtype(records["block"]) and records["layer"].dtype == "int16"

    marked = mark_structural(records)
    assert set(marked.loc[marked["structural"], "sublayer"]) == {
        "L01.ffn_text.intermediate",
        "L01.ffn_text.output",
    }
    for normalize in ("rank", "module", "parameter"):
        shares = block_share(records, normalize=normalize)
        assert shares.groupby("run")["share"].sum().to_numpy() == pytest.approx(np.ones(4))
        assert set(shares["step"]) == {10}
    cells = layer_share(records, by_block=True)
    assert not ((cells["layer"] == 1) & (cells["block"] == "cross_attn")).any()
    assert len(rank_trajectories(records)) == 4 * 3 * 4
    assert len(settle_step(records)) == 4 * 4
    assert len(rank_retention(records)) == 4 * 18
    assert len(normalized_importance(records)) == 4 * 3 * 18
    assert len(allocation_entropy(records)) == 4 * 3
    assert len(allocation_correlation(records)) == 1 and len(seed_correlation(records)) == 2
    shares = block_share(records)
    assert len(bootstrap_block_share(shares, n_boot=200)) == 2 * 4
    assert len(compare_benchmarks(shares, n_permutations=100)) == 4
    assert len(module_summary(records)) == 4 * 20
    summary = run_summary(records)
    assert len(summary) == 4 and {"share_cross_attn", "settle_step_ffn_text"} <= set(summary.columns)
    array = to_xarray(records)
    assert array.shape == (2, 2, 3, 2, 4, 5)
    assert np.isnan(array.sel(layer=1, block="cross_attn")).all()


def test_single_seed_benchmarks_get_no_p_value_and_no_spread_verdict():
    shares = pd.DataFrame(
        {
            "run": ["a0", "b0", "a0", "b0"],
            "benchmark": ["a", "b", "a", "b"],
            "seed": [0, 0, 0, 0],
            "step": [10] * 4,
            "block": ["self_attn", "self_attn", "cross_attn", "cross_attn"],
            "share": [0.6, 0.3, 0.4, 0.7],
        }
    )
    table = compare_benchmarks(shares)
    assert table["p_value"].isna().all() and table["exceeds_seed_spread"].isna().all()
    assert table.set_index("block").loc["self_attn", "difference"] == pytest.approx(0.3)
