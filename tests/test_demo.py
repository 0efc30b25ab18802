import json

import pandas as pd
import pytest
from PIL import Image

from analysis import load_runs
from qformer_budget.cli import main


@pytest.mark.slow
def test_demo_writes_records_adapter_and_heatmap(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0", "1", "--examples", "160", "--epochs", "1"]) == 0
    assert "demo finished in" in capsys.readouterr().out
    records = load_runs(tmp_path)
    assert sorted(records["seed"].unique()) == [0, 1]
    for seed in (0, 1):
        run = tmp_path / "synthetic_vqa" / f"seed{seed}"
        final = pd.read_parquet(run / "records.parquet").query("step == step.max()")
        assert len(final) == 120 and final["rank"].sum() == 4 * 120
        saved = json.loads((run / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
        assert {m + ".lora_E": r for m, r in zip(final["module"], final["rank"])} == {k: sum(v) for k, v in saved.items()}
        assert json.loads((run / "run.json").read_text())["status"] == "finished"
    with Image.open(tmp_path / "figures" / "rank_heatmap_synthetic_vqa.png") as image:
        assert image.width > 600 and image.height > 400
