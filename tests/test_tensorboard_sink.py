import io
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qformer_budget.analysis import load_runs
from qformer_budget.core.grammar import BLOCKS
from qformer_budget.peft_hooks.tensorboard import TensorBoardSink

from tiny_training import tiny_setup, train_with_loop

SETUP = tiny_setup(total_step=40)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    train_with_loop(root / "run", SETUP, sinks=[TensorBoardSink(root / "tb")])
    events = EventAccumulator(str(root / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {"events": events, "records": load_runs(root / "run")}


def _series(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def test_scalar_tags_exist(logged):
    tags = set(logged["events"].Tags()["scalars"])
    per_block = {f"{kind}/{block}" for kind in ("rank", "share", "score") for block in BLOCKS}
    expected = {"budget/total", "budget/threshold"} | per_block
    assert expected <= tags
    assert {f"rank/{label}" for label in logged["records"]["sublayer"]} <= tags
    assert "rank/L02.cross_attn.value" in tags


def test_budget_and_threshold_match_the_records(logged):
    records, events = logged["records"], logged["events"]
    per_step = records.groupby("step").first()
    assert _series(events, "budget/total") == per_step["budget"].astype(float).to_dict()
    masks = per_step[per_step["mask_step"]]
    # TensorBoard stores float32; the recorded thresholds are float32 values (kthvalue of float32 scores).
    assert _series(events, "budget/threshold") == masks["threshold"].to_dict()


def test_ranks_and_shares_per_block_and_module(logged):
    records, events = logged["records"], logged["events"]
    block_ranks = records.groupby(["block", "step"])["rank"].sum()
    shares = {}
    for block in BLOCKS:
        assert _series(events, f"rank/{block}") == block_ranks[block].astype(float).to_dict()
        for step, share in _series(events, f"share/{block}").items():
            shares[step] = shares.get(step, 0.0) + share
    assert sorted(shares) == sorted(records["step"].unique())
    np.testing.assert_allclose(list(shares.values()), 1.0, rtol=1e-6)
    for label, rows in records.groupby("sublayer"):
        assert _series(events, f"rank/{label}") == dict(zip(rows["step"], rows["rank"].astype(float))), label


def test_scores_per_block_only_while_peft_holds_scores(logged):
    records, events = logged["records"], logged["events"]
    with_scores = records[records["direction_scores"].notna()]
    assert with_scores["step"].max() < SETUP.total_step  # peft cleared them for the last step
    sums = with_scores.groupby(["block", "step"])["score"].sum()
    for block in BLOCKS:
        logged_scores = _series(events, f"score/{block}")
        assert sorted(logged_scores) == sorted(sums[block].index)
        values = [logged_scores[step] for step in sums[block].index]
        np.testing.assert_allclose(values, sums[block].to_numpy(), rtol=1e-6)


def test_heatmap_images_exactly_at_mask_steps(logged):
    records, events = logged["records"], logged["events"]
    assert events.Tags()["images"] == ["heatmap/rank"]
    images = events.Images("heatmap/rank")
    mask_steps = sorted(records.loc[records["mask_step"], "step"].unique())
    assert [image.step for image in images] == mask_steps == [11, 16, 21, 26, 31, 36]
    for image in images:
        decoded = Image.open(io.BytesIO(image.encoded_image_string))
        assert decoded.format == "PNG" and decoded.size == (image.width, image.height)
        assert 400 <= image.width <= 2000 and 300 <= image.height <= 2000
        assert len(decoded.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # drawn, not blank


def test_missing_tensorboard_is_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    message = r'TensorBoardSink needs tensorboard: pip install "qformer-budget\[tensorboard\]"'
    with pytest.raises(ImportError, match=message):
        TensorBoardSink(tmp_path)


def test_write_needs_start_and_close_is_safe_without_it(tmp_path):
    sink = TensorBoardSink(tmp_path)
    sink.close("finished")
    with pytest.raises(RuntimeError, match=r"write\(\) called before start\(\)"):
        sink.write(None)
