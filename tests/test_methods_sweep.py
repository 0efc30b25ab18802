"""Routed LoRA, routed AdaLoRA and MemVP through the sweep runner: trained, saved, reloaded, evaluated, recorded."""

import json
import re

import pytest

from qformer_budget.analysis import load_metrics, load_runs
from qformer_budget.core.grammar import target_modules_regex
from qformer_budget.runner.params import adapter_parameters
from qformer_budget.runner.sweep import run_sweep
from qformer_budget.runner.tiny import load_tiny_checkpoint
from qformer_budget.runner.train import _sha256
from qformer_budget.vl_methods.memvp import MemVPConfig, memvp_trainable_parameters

from sweeps import sweep_config

METHODS = """
[[methods]]
name = "routed_adalora"
routing = "multiply"
placement = "all_linear"
init_r = 4
target_r = 2
deltaT = 1

[[methods]]
name = "routed_lora"
routing = ["add", "matmul"]
placement = "self_attn_qv"
rank = 2

[[methods]]
name = "memvp"
"""

TAGS = ["routed_adalora-multiply-all_linear-r4to2", "routed_lora-add-self_attn_qv-r2",
        "routed_lora-matmul-self_attn_qv-r2", "memvp"]


@pytest.fixture(scope="module")
def methods_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("methods")
    report = run_sweep(sweep_config(tmp_path, METHODS, ["iconqa"], 32, 8), progress=False)
    return tmp_path / "runs" / "iconqa", report


def _trainable(run_dir) -> int:
    return json.loads((run_dir / "seed0" / "metrics.json").read_text())["trainable_parameters"]


@pytest.mark.slow
def test_every_method_trains_saves_reloads_and_evaluates(methods_sweep):
    runs, report = methods_sweep
    assert not report.failed and len(report.finished) == 4
    for tag in TAGS:
        run = runs / tag / "seed0"
        result = json.loads((run / "metrics.json").read_text())
        assert result["method"] == tag and 0 <= result["metrics"]["accuracy"] <= 1
        assert result["adapter_sha256"] == _sha256(run / "adapter")  # the evaluated weights are the saved ones
        assert len((run / "predictions.jsonl").read_text().splitlines()) == 8
    metrics = load_metrics(runs)
    assert sorted(metrics["method"].unique()) == sorted(TAGS)
    assert metrics["trainable_parameters"].gt(0).all()


@pytest.mark.slow
def test_trainable_parameters_are_the_plain_methods_and_memvps_count(methods_sweep):
    runs, _ = methods_sweep
    model, _ = load_tiny_checkpoint()
    linears = {name: m for name, m in model.named_modules() if type(m).__name__ == "Linear"}

    def lora_count(placement: str, rank: int, method: str) -> int:
        pattern = re.compile(target_modules_regex(placement))
        return sum(adapter_parameters(m.in_features, m.out_features, rank, method)
                   for name, m in linears.items() if pattern.fullmatch(name))

    assert _trainable(runs / TAGS[0]) == lora_count("all_linear", 4, "adalora")  # init_r: before any pruning
    assert _trainable(runs / TAGS[1]) == _trainable(runs / TAGS[2]) == lora_count("self_attn_qv", 2, "lora")
    config = model.config
    assert _trainable(runs / "memvp") == memvp_trainable_parameters(
        MemVPConfig(), config.text_config.hidden_size, config.qformer_config.hidden_size
    )


@pytest.mark.slow
def test_routed_adalora_budget_is_recorded_like_adaloras(methods_sweep):
    runs, _ = methods_sweep
    records = load_runs(runs / TAGS[0])
    meta = json.loads((runs / TAGS[0] / "seed0" / "run.json").read_text())
    assert meta["status"] == "finished" and meta["method"] == TAGS[0]
    final = records[records["global_step"] == records["global_step"].max()]
    assert final["rank"].sum() == 2 * len(final) and records["mask_step"].any()
    assert not any((runs / tag / "seed0" / "records.parquet").exists() for tag in TAGS[1:])
