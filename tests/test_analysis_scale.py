"""The synthetic record generator on a small configuration, and the fast read path against the plain one."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from qformer_budget.analysis import (
    block_share,
    layer_share,
    load_runs,
    mark_structural,
    rank_retention,
    replay_allocation,
    run_summary,
    settle_step,
)
from qformer_budget.benchmarks.synthetic_records import qformer_modules, write_synthetic_runs
from qformer_budget.core.grammar import parse_sublayer
from qformer_budget.core.schema import RESUMES_APPLIED_KEY, SCHEMA_VERSION

from fake_runs import fake_modules, fake_record, write_fake_run

BENCHMARKS = ("scienceqa", "flickr30k")
SEEDS = 2
TOTAL_STEP, TINIT, TFINAL, DELTA_T = 400, 40, 80, 10
INIT_R, TARGET_R = 12, 4
N_MODULES = 120
INIT_BGT, TARGET_BGT = INIT_R * N_MODULES, TARGET_R * N_MODULES
FINAL_MASK_STEP = TOTAL_STEP - TFINAL  # 0-based
STRUCTURAL_DIRECTIONS = 2 * INIT_R  # the last layer's text FFN: intermediate and output
# Recorded 0-based steps: every 10th (mask steps and the final mask step among them) and the last one.
RECORDED = [*range(0, TOTAL_STEP, 10), TOTAL_STEP - 1]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    schedule = dict(total_step=TOTAL_STEP, tinit=TINIT, tfinal=TFINAL)
    write_synthetic_runs(out, BENCHMARKS, SEEDS, rng_seed=7, **schedule)
    return out


@pytest.fixture(scope="module")
def records(runs_dir):
    return load_runs(runs_dir)


def test_runs_are_finished_run_folders_in_the_record_schema(runs_dir, records, tmp_path):
    write_fake_run(tmp_path, [fake_record(0, np.ones((len(fake_modules()), 4), dtype=bool))])
    recorder_schema = pq.read_schema(tmp_path / "records.parquet")  # as the real sink writes it
    run_dirs = sorted(p.parent for p in runs_dir.rglob("run.json"))
    assert [p.relative_to(runs_dir).as_posix() for p in run_dirs] == [
        f"{b}/adalora-all_linear-r12to4/seed{s}" for b in sorted(BENCHMARKS) for s in range(SEEDS)
    ]
    for run_dir in run_dirs:
        meta = json.loads((run_dir / "run.json").read_text())
        assert meta["status"] == "finished" and meta["schema_version"] == SCHEMA_VERSION
        assert meta["recorded_steps"] == len(RECORDED)
        schedule = dict(init_r=INIT_R, target_r=TARGET_R, tinit=TINIT, tfinal=TFINAL, deltaT=DELTA_T)
        assert {key: meta["adalora"][key] for key in schedule} == schedule
        assert meta["adalora"]["total_step"] == TOTAL_STEP
        assert meta["modules"] == [m.module for m in qformer_modules()]
        schema = pq.read_schema(run_dir / "records.parquet")
        assert schema.equals(recorder_schema) and schema.metadata.keys() == recorder_schema.metadata.keys()
        assert schema.metadata[RESUMES_APPLIED_KEY] == b"0"
    assert len(records) == len(BENCHMARKS) * SEEDS * len(RECORDED) * N_MODULES
    assert set(records["status"]) == {"finished"}
    assert sorted(records["global_step"].unique()) == RECORDED
    assert (records["step"] == records["global_step"] + 1).all()


def test_modules_are_the_instructblip_qformer_linears():
    modules = qformer_modules()
    assert len(modules) == N_MODULES
    for m in modules:
        assert parse_sublayer(m.module) == (m.layer, m.block, m.proj)
    cross_layers = {m.layer for m in modules if m.block == "cross_attn"}
    assert cross_layers == {0, 2, 4, 6, 8, 10}
    widths = {(m.block, m.proj): (m.in_features, m.out_features) for m in modules}
    assert widths[("cross_attn", "key")] == widths[("cross_attn", "value")] == (1408, 768)
    assert widths[("cross_attn", "query")] == widths[("self_attn", "key")] == (768, 768)
    assert widths[("ffn_text", "intermediate")] == widths[("ffn_query", "intermediate")] == (768, 3072)
    assert widths[("ffn_query", "output")] == (3072, 768)


def test_budget_and_phases_follow_peft_schedule(records):
    budget_schedule = pytest.importorskip("peft.tuners.adalora.layer").RankAllocator.budget_schedule
    allocator = SimpleNamespace(
        peft_config=SimpleNamespace(tinit=TINIT, tfinal=TFINAL, total_step=TOTAL_STEP, deltaT=DELTA_T),
        init_bgt=INIT_BGT,
        target_bgt=TARGET_BGT,
    )
    steps = records.groupby("global_step").agg(
        budget=("budget", "first"), phase=("phase", "first"), mask_step=("mask_step", "first")
    )
    for global_step, row in steps.iterrows():
        budget, mask_ind = budget_schedule(allocator, global_step)
        assert row["budget"] == budget, global_step
        final_mask, budgeting = global_step == FINAL_MASK_STEP, TINIT < global_step <= FINAL_MASK_STEP
        assert row["mask_step"] == (final_mask or (global_step < FINAL_MASK_STEP and mask_ind))
        assert row["phase"] == ("warmup" if global_step <= TINIT else "budgeting" if budgeting else "final")


def test_kept_rank_is_the_budget_at_mask_steps(records):
    masks = records[records["mask_step"]]
    per_step = masks.groupby(["run", "step"]).agg(budget=("budget", "first"), kept=("rank", "sum"))
    # peft keeps scores above the k-th smallest: the budget exactly, except while k is below the
    # number of structural zero scores, where the threshold is 0 and only the non-zero ones survive.
    expected = np.minimum(per_step["budget"], INIT_BGT - STRUCTURAL_DIRECTIONS)
    assert (per_step["kept"] == expected).all()
    assert (per_step["kept"] == per_step["budget"]).mean() > 0.8
    assert (records.loc[records["phase"] == "warmup", "rank"] == INIT_R).all()


def test_kept_directions_follow_peft_masking_rule(records):
    mask_rows = records[records["mask_step"]]
    scores = np.stack(mask_rows["direction_scores"].to_numpy())
    kept = np.stack(mask_rows["direction_kept"].to_numpy())
    assert np.array_equal(kept, scores > mask_rows["threshold"].to_numpy()[:, None])
    assert np.array_equal(kept.sum(axis=1), mask_rows["rank"].to_numpy())
    assert records.loc[~records["mask_step"], "threshold"].isna().all()
    # The recorded allocation is what replaying peft's rule on the recorded scores gives.
    replayed = replay_allocation(records, step=201).set_index(["run", "module"])["rank"]
    recorded = records[records["step"] == 201].set_index(["run", "module"])["rank"]
    assert len(replayed) == len(recorded) and (replayed == recorded.loc[replayed.index]).all()


def test_kept_directions_hold_between_masks_and_freeze_in_the_final_phase(records):
    one_run = records[records["run"] == records["run"].iloc[0]]
    kept = {step: np.stack(rows["direction_kept"]) for step, rows in one_run.groupby("global_step")}
    last_mask = None
    for global_step in RECORDED:
        if global_step > TINIT and global_step <= FINAL_MASK_STEP and global_step % DELTA_T == 0:
            last_mask = global_step
        elif last_mask is not None:
            assert np.array_equal(kept[global_step], kept[last_mask]), global_step
    assert last_mask == FINAL_MASK_STEP
    final_rank = one_run.loc[one_run["global_step"] == TOTAL_STEP - 1, "rank"].sum()
    assert final_rank == TARGET_BGT


def test_scores_are_cleared_in_the_final_phase_only(records):
    final = records["phase"] == "final"
    assert records.loc[final, "direction_scores"].isna().all() and records.loc[final, "score"].isna().all()
    assert records.loc[~final, "direction_scores"].notna().all()
    with_scores = records[~final]
    sums = np.stack(with_scores["direction_scores"].to_numpy()).astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(with_scores["score"].to_numpy(), sums)


def test_structural_cells_are_zero(records):
    marked = mark_structural(records)
    structural = marked[marked["structural"]]
    last_text_ffn = {f"qformer.encoder.layer.11.{name}.dense" for name in ("intermediate", "output")}
    assert set(structural["module"]) == last_text_ffn
    assert (structural["score"].fillna(0) == 0).all()
    assert (structural.loc[structural["global_step"] > TINIT, "rank"] == 0).all()
    others = marked[~marked["structural"] & (marked["phase"] != "final")]
    assert (others["score"] > 0).all()


def test_same_arguments_write_the_same_records(tmp_path, runs_dir):
    schedule = dict(total_step=TOTAL_STEP, tinit=TINIT, tfinal=TFINAL)
    again = write_synthetic_runs(tmp_path / "again", BENCHMARKS[:1], seeds=[1], rng_seed=7, **schedule)[0]
    other = write_synthetic_runs(tmp_path / "other", BENCHMARKS[:1], seeds=[1], rng_seed=8, **schedule)[0]
    original = runs_dir / again.relative_to(tmp_path / "again")
    assert (again / "records.parquet").read_bytes() == (original / "records.parquet").read_bytes()
    original_scores = pq.read_table(original / "records.parquet")["direction_scores"]
    assert not pq.read_table(other / "records.parquet")["direction_scores"].equals(original_scores)


def test_benchmarks_differ_where_the_generator_says(records):
    final = block_share(records).groupby(["benchmark", "block"])["share"].mean()
    # Captioning leans on the image: flickr30k gives cross-attention more of the budget than scienceqa.
    assert final["flickr30k", "cross_attn"] > final["scienceqa", "cross_attn"] + 0.1
    assert final["scienceqa", "ffn_text"] > final["flickr30k", "ffn_text"] + 0.1


def plain_strings(frame: pd.DataFrame) -> pd.DataFrame:
    categorical = [name for name, dtype in frame.dtypes.items() if isinstance(dtype, pd.CategoricalDtype)]
    return frame.astype({name: "str" for name in categorical})


@pytest.mark.parametrize(
    "filters, keep",
    [
        ([("phase", "==", "budgeting")], lambda r: r["phase"] == "budgeting"),
        (pc.field("step") > 200, lambda r: r["step"] > 200),
        (
            [[("benchmark", "==", "flickr30k")], [("step", "<=", 41)]],
            lambda r: (r["benchmark"] == "flickr30k") | (r["step"] <= 41),
        ),
    ],
)
def test_fast_path_gives_the_block_shares_of_the_full_load(runs_dir, records, filters, keep):
    columns = ["benchmark", "seed", "step", "layer", "block", "rank", "in_features", "out_features"]
    fast = load_runs(runs_dir, columns=columns, filters=filters, categorical=True)
    assert list(fast.columns) == ["run", *columns, "status"]
    assert isinstance(fast["block"].dtype, pd.CategoricalDtype)
    full = records[keep(records)]
    assert len(fast) == len(full) > 0
    for normalize in ("rank", "module", "parameter"):
        expected = block_share(full, step=None, normalize=normalize)
        got = block_share(fast, step=None, normalize=normalize)
        pd.testing.assert_frame_equal(plain_strings(got), expected)


def reference_unit_totals(records: pd.DataFrame, keys: list[str], normalize: str) -> pd.DataFrame:
    """Share of each run, step and ``keys`` cell in the step, with a plain groupby (see block_share)."""
    step_keys = ["run", "benchmark", "seed", "step"]
    rows = mark_structural(records)
    rows = rows[~rows["structural"]].dropna(subset=keys)
    amount = rows["rank"].astype(float)
    if normalize == "parameter":
        amount = amount * (rows["in_features"] + rows["out_features"] + 1)
    grouped = rows.assign(amount=amount).groupby([*step_keys, *keys])["amount"]
    totals = grouped.mean() if normalize == "module" else grouped.sum()
    share = totals / totals.groupby(level=step_keys).transform("sum")
    return share.rename("share").reset_index()


@pytest.mark.parametrize("categorical", [False, True])
def test_shares_match_a_plain_groupby_with_outside_modules(runs_dir, categorical):
    columns = ["benchmark", "seed", "step", "layer", "block", "rank", "in_features", "out_features"]
    records = load_runs(runs_dir, columns=columns, categorical=categorical)
    # Modules outside the Q-Former: a projector with its own block name, one row with no block at all.
    outside = records.iloc[:3].astype({"block": "str", "layer": "float64"})
    outside["block"] = ["vision_proj", "adapter", None]
    outside["layer"] = np.nan
    combined = pd.concat([records.astype({"block": "str"}), outside], ignore_index=True)
    if categorical:
        combined["block"] = combined["block"].astype("category")
    step_keys = ["run", "benchmark", "seed", "step"]
    for normalize in ("rank", "module", "parameter"):
        got = plain_strings(block_share(combined, step=None, normalize=normalize))
        assert list(dict.fromkeys(got["block"])) == [
            "self_attn", "cross_attn", "ffn_query", "ffn_text", "adapter", "vision_proj"
        ]
        expected = plain_strings(reference_unit_totals(combined, ["block"], normalize))
        merged = got.merge(expected, on=[*step_keys, "block"], how="outer", indicator=True)
        assert (merged["_merge"] == "both").all()
        np.testing.assert_allclose(merged["share_x"], merged["share_y"])
        cells = layer_share(records, step=None, by_block=True, normalize=normalize)
        expected_cells = reference_unit_totals(records, ["layer", "block"], normalize)
        expected_cells = plain_strings(expected_cells).astype({"layer": "int64"})
        merged = plain_strings(cells).merge(expected_cells, on=[*step_keys, "layer", "block"], how="outer")
        assert len(merged) == len(cells) == len(expected_cells)
        np.testing.assert_allclose(merged["share_x"], merged["share_y"])


def test_metrics_give_the_same_tables_for_categorical_labels(runs_dir, records):
    categorical = load_runs(runs_dir, categorical=True)
    assert all(
        isinstance(categorical[name].dtype, pd.CategoricalDtype)
        for name in ("run", "benchmark", "phase", "module", "sublayer", "block", "proj", "status")
    )
    for metric in (
        lambda r: block_share(r, normalize="module"),
        lambda r: layer_share(r, by_block=True),
        lambda r: settle_step(r),
        lambda r: rank_retention(r, by="block"),
        lambda r: run_summary(r),
    ):
        pd.testing.assert_frame_equal(plain_strings(metric(categorical)), metric(records), check_dtype=False)
