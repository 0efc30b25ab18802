import json
import re

import pytest

from qformer_budget.analysis import load_runs
from qformer_budget.cli import main
from qformer_budget.runner import rehearse as rehearse_module
from qformer_budget.runner.methods import get_method
from qformer_budget.runner.params import census
from qformer_budget.runner.rehearse import build_random

RUN = ("vizwiz", "adalora-paper_all-r12to4", "seed0")


def test_reduced_rehearsal_trains_masks_saves_reloads_and_evaluates(tmp_path, capsys):
    out = tmp_path / "rehearsal"
    assert main(["rehearse", "real-qformer", "--out", str(out), "--steps", "4", "--no-progress"]) == 0
    report = capsys.readouterr().out
    run_dir = out.joinpath(*RUN)

    records = load_runs(run_dir, columns=["step", "mask_step", "module", "rank", "init_r"])
    assert records.module.nunique() == 96  # self-attention q, v and both FFNs in 12 layers, cross q, k, v, o in 6
    assert records.loc[records.mask_step, "step"].nunique() >= 1
    last = records[records.step == records.step.max()]
    assert last["rank"].sum() == 4 * 96 < last.init_r.sum() == 12 * 96  # the budget, reached at the final mask

    saved = get_method("adalora").load(build_random("real-qformer", "cpu", seed=0), run_dir / "adapter")
    kept = sum(p.shape[0] for name, p in saved.named_parameters() if name.endswith("lora_E.default"))
    assert kept == 4 * 96  # peft resizes each module to its saved rank
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and all("prediction" in row for row in predictions)
    assert json.loads((run_dir / "metrics.json").read_text())["optimizer_steps"] == 4

    assert f"model        {census('real-qformer').total:,} parameters" in report
    assert re.search(r"steps        4: median \d+\.\d\d s .* \d mask steps recorded, kept rank 1152 -> 384", report)
    assert re.search(r"memory       \d+\.\d\d GiB peak in training, .*\(peak resident set size\); "
                     r"\d+\.\d\d GiB resident after the imports", report)
    assert re.search(r"estimate     \d+\.\d\d GiB \(process .*activations .*\): measured / estimate = \d+\.\d\d",
                     report)
    assert "evaluation   2 predictions in" in report


@pytest.mark.parametrize("argv, message", [
    (["instructblip-vicuna-7b"], "instructblip-vicuna-7b has a llama LM: only T5 presets fit the tiny T5 tokenizer"),
    (["flan-t5-xl"], "unknown preset 'flan-t5-xl'; known presets: instructblip-flan-t5-xl"),
    (["real-qformer", "--steps", "1"], "impossible AdaLoRA schedule: tinit (0) must be < total_step - tfinal"),
    (["real-qformer", "--benchmark", "flickr30k"], "rehearse evaluates vizwiz, scienceqa, iconqa, not 'flickr30k'"),
])
def test_unsupported_rehearsal_is_refused_in_one_line(capsys, argv, message):
    assert main(["rehearse", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"qformer-budget rehearse: {message}") and error.count("\n") == 1


def test_a_rehearsal_that_does_not_fit_the_device_is_refused_before_building(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rehearse_module, "available_memory", lambda device: 2**28)
    monkeypatch.setattr(rehearse_module, "build_random", lambda *args: pytest.fail("the model was built"))
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "run.txt").write_text("a user's file")
    assert main(["rehearse", "real-qformer", "--out", str(tmp_path / "kept")]) == 2
    assert capsys.readouterr().err == (f"qformer-budget rehearse: {tmp_path / 'kept'} is not empty; a rehearsal "
                                       "writes into a new or empty folder\n")
    assert main(["rehearse", "real-qformer", "--out", str(tmp_path / "new")]) == 2
    error = capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert re.fullmatch(r"qformer-budget rehearse: real-qformer needs about \d+\.\d\d GiB more by the dry run's "
                        r"estimate, and the cpu has 0\.25 GiB available\n", error)
