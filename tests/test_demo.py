import json

import pandas as pd
import pytest
from PIL import Image

from qformer_budget.analysis import load_metrics, load_runs

BENCHMARKS = ["flickr30k", "iconqa", "scienceqa", "vizwiz"]
JOINT = "adalora-all_linear+llm_all_linear-r12to4"


@pytest.mark.slow
def test_demo_runs_the_sweep_on_four_synthetic_benchmarks(quick_demo):
    tmp_path = quick_demo
    records = load_runs(tmp_path, method="adalora-all_linear-r12to4")
    assert sorted(records["benchmark"].unique()) == BENCHMARKS and set(records["component"]) == {"qformer"}
    for benchmark in BENCHMARKS:
        run = tmp_path / benchmark / "adalora-all_linear-r12to4" / "seed0"
        final = pd.read_parquet(run / "records.parquet").query("step == step.max()")
        assert len(final) == 120 and final["rank"].sum() == 4 * 120
        saved = json.loads((run / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
        assert {m + ".lora_E": r for m, r in zip(final["module"], final["rank"])} == {k: sum(v) for k, v in saved.items()}
        assert json.loads((run / "status.json").read_text())["state"] == "finished"
        with Image.open(tmp_path / "figures" / f"rank_heatmap_{benchmark}.png") as image:
            assert image.width > 600 and image.height > 400
    metrics = load_metrics(tmp_path).set_index(["benchmark", "metric"])["value"]
    assert set(metrics.index) == {
        ("flickr30k", "BLEU-4"), ("flickr30k", "CIDEr"), ("iconqa", "accuracy"), ("scienceqa", "accuracy"),
        ("vizwiz", "vqa_accuracy"),
    }
    assert (tmp_path / "data" / "vizwiz" / "annotations" / "val.json").exists()  # real format on disk


@pytest.mark.slow
def test_the_demo_adds_one_joint_run_per_benchmark_sharing_the_budget_with_the_llm(quick_demo):
    joint = load_runs(quick_demo, method=JOINT)
    assert sorted(joint["benchmark"].unique()) == BENCHMARKS and set(joint["seed"]) == {0}
    for benchmark in BENCHMARKS:
        run = quick_demo / benchmark / JOINT / "seed0"
        final = pd.read_parquet(run / "records.parquet").query("step == step.max()")
        assert set(final["component"]) == {"qformer", "llm"} and (final["component"] == "qformer").sum() == 120
        assert final["rank"].sum() == final["budget"].iloc[0] == 4 * len(final)
        saved = json.loads((run / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
        assert {m + ".lora_E": r for m, r in zip(final["module"], final["rank"])} == {k: sum(v) for k, v in saved.items()}
        for figure in (f"component_share_{benchmark}", f"rank_heatmap_llm_{benchmark}"):
            with Image.open(quick_demo / "figures" / "joint" / f"{figure}.png") as image:
                assert image.width > 600 and image.height > 300
    index = (quick_demo / "figures" / "joint" / "index.md").read_text()
    assert "## Components sharing the budget" in index and "component_share_ci_rank.png" in index
    assert not (quick_demo / "figures" / "component_share_iconqa.png").exists()  # the Q-Former study's figures
