import json

import pandas as pd
import pytest
from PIL import Image

from qformer_budget.analysis import load_metrics, load_runs

BENCHMARKS = ["flickr30k", "iconqa", "scienceqa", "vizwiz"]


@pytest.mark.slow
def test_demo_runs_the_sweep_on_four_synthetic_benchmarks(quick_demo):
    tmp_path = quick_demo
    records = load_runs(tmp_path)
    assert sorted(records["benchmark"].unique()) == BENCHMARKS
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
