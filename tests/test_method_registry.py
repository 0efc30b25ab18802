"""The method registry: a new method is its settings, attach, save and load, and one registration."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from safetensors.torch import load_file, save_file

from qformer_budget.analysis import load_metrics
from qformer_budget.runner import methods as registry
from qformer_budget.runner.config import ConfigError, load_config
from qformer_budget.runner.methods import METHODS, Method, MethodSettings, get_method, register
from qformer_budget.runner.params import adapter_parameters
from qformer_budget.runner.sweep import run_sweep

from sweeps import sweep_config


@dataclass(frozen=True)
class BiasSettings(MethodSettings):
    """Train the Q-Former's biases only (BitFit), a method the registry does not ship."""

    name: ClassVar[str] = "qformer_bitfit"
    scale: float = 1.0

    @property
    def tag(self) -> str:
        return f"{self.name}-x{self.scale:g}"


def _attach(model, settings: BiasSettings, plan, seed: int):
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("qformer.") and name.endswith(".bias")
    return model


def _save(model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
              str(folder / "biases.safetensors"))


def _load(base, folder: Path):
    base.load_state_dict(load_file(str(folder / "biases.safetensors")), strict=False)
    return base


@pytest.fixture
def bitfit():
    register(Method(BiasSettings, _attach, _save, _load))
    yield METHODS[BiasSettings.name]
    del METHODS[BiasSettings.name]


def test_the_shipped_methods_are_registered_in_order():
    assert list(METHODS) == ["adalora", "lora", "routed_adalora", "routed_lora", "memvp"]
    for name, method in METHODS.items():
        assert method.settings.name == name and dataclasses.is_dataclass(method.settings)
        with pytest.raises(dataclasses.FrozenInstanceError):
            method.settings().name_it = 1  # settings are frozen
    assert [name for name, m in METHODS.items() if m.settings.records_budget] == ["adalora", "routed_adalora"]


def test_a_name_is_registered_once(bitfit):
    with pytest.raises(ValueError, match="a method named 'qformer_bitfit' is registered already"):
        register(bitfit)
    with pytest.raises(ValueError, match=r"method name must be one of \[.*'qformer_bitfit'\], got 'dora'"):
        get_method("dora")


def test_settings_of_another_method_are_refused_unless_the_entry_names_it(tmp_path):
    header = '[sweep]\nout = "runs"\nbenchmarks = ["iconqa"]\n[[methods]]\n'
    path = tmp_path / "sweep.toml"
    path.write_text(header + 'name = "lora"\ninit_r = 6\n')
    with pytest.raises(ConfigError, match=r"\[\[methods\]\]\[0\]: 'init_r' is a setting of \['adalora', 'routed_adalora'\], not of \['lora'\]"):
        load_config(path)
    path.write_text(header + 'name = ["adalora", "routed_adalora"]\nrouting = "add"\n')
    assert [m.tag for m in load_config(path).methods] == ["adalora-all_linear-r12to4", "routed_adalora-add-all_linear-r12to4"]


def test_params_dispatch_through_the_registry(bitfit):
    assert adapter_parameters(10, 6, 2, "adalora") == 2 * (10 + 6 + 1)
    assert adapter_parameters(10, 6, 2, "routed_lora") == 2 * (10 + 6)
    with pytest.raises(ValueError, match="qformer_bitfit puts no adapter on a Linear layer"):
        adapter_parameters(10, 6, 2, "qformer_bitfit")
    assert registry.get_method("memvp").parameters_per_linear is None


@pytest.mark.slow
def test_a_registered_method_runs_through_the_sweep(tmp_path, bitfit):
    config = sweep_config(tmp_path, '[[methods]]\nname = "qformer_bitfit"\nscale = 2\n', ["iconqa"], 16, 8)
    (spec,) = config.runs()
    assert spec.run_dir == tmp_path / "runs" / "iconqa" / "qformer_bitfit-x2" / "seed0"
    report = run_sweep(config, progress=False)
    assert report.finished == [spec.run_dir] and not report.failed
    saved = load_file(str(spec.run_dir / "adapter" / "biases.safetensors"))
    assert saved and all(name.startswith("qformer.") and name.endswith(".bias") for name in saved)
    assert json.loads((spec.run_dir / "config.json").read_text())["method"] == {
        "name": "qformer_bitfit", "scale": 2.0, "tag": "qformer_bitfit-x2"
    }
    metrics = load_metrics(tmp_path / "runs")
    assert metrics["method"].unique().tolist() == ["qformer_bitfit-x2"]
    assert int(metrics["trainable_parameters"].iloc[0]) == sum(t.numel() for t in saved.values())
    assert not (spec.run_dir / "run.json").exists()  # no AdaLoRA budget to record
