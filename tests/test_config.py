from importlib.resources import files
from pathlib import Path

import pytest

from qformer_budget.runner.config import ConfigError, load_config
from qformer_budget.runner.methods import ROUTING_VARIANTS

CONFIGS = files("qformer_budget.runner") / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


MINIMAL = """
[sweep]
out = "runs"
benchmarks = ["iconqa"]
[[methods]]
name = "adalora"
"""


def test_shipped_configs_load_and_expand():
    demo = load_config(CONFIGS / "demo.toml")
    assert [(r.benchmark, r.seed) for r in demo.runs()] == [
        (b, s) for b in ("scienceqa", "iconqa", "flickr30k", "vizwiz") for s in (0, 1)
    ]
    assert {r.method.tag for r in demo.runs()} == {"adalora-all_linear-r12to4"}
    grid = load_config(CONFIGS / "lora_placement_rank_grid.toml")
    assert len(grid.methods) == 16 and len(grid.runs()) == 32
    assert {m.tag for m in grid.methods} >= {"lora-self_attn_qv-r1", "lora-paper_all-r8"}
    methods = load_config(CONFIGS / "methods_demo.toml")
    assert [m.tag for m in methods.methods] == [
        "adalora-all_linear-r12to4", "routed_adalora-multiply-all_linear-r12to4", "lora-paper_all-r4",
        *(f"routed_lora-{v}-paper_all-r4" for v in ("multiply", "add", "matmul", "matmul2")), "memvp",
    ]
    assert [m.records_budget for m in methods.methods] == [True, True, False, False, False, False, False, False]
    paper = load_config(CONFIGS / "adalora_four_benchmarks.toml")
    assert paper.model.preset == "instructblip-flan-t5-xl" and paper.training.epochs == 15
    assert [r.eval_split for r in paper.runs()[::3]] == ["test", "test", "test", "val"]
    joint = load_config(CONFIGS / "adalora_joint_four_benchmarks.toml")
    assert [m.tag for m in joint.methods] == ["adalora-paper_all+llm_all-r12to4"] and len(joint.runs()) == 12
    demo_joint = load_config(CONFIGS / "demo_joint.toml")
    assert [(r.benchmark, r.seed, r.method.tag) for r in demo_joint.runs()] == [
        (b, 0, "adalora-all_linear+llm_all_linear-r12to4") for b in ("scienceqa", "iconqa", "flickr30k", "vizwiz")
    ]


def test_paths_are_taken_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, MINIMAL))
    run = config.runs()[0]
    assert run.run_dir == tmp_path / "runs" / "iconqa" / "adalora-all_linear-r12to4" / "seed0"
    moved = config.with_paths(out=tmp_path / "elsewhere", data_root=tmp_path / "d").runs()[0]
    assert moved.run_dir.parents[2] == tmp_path / "elsewhere" and moved.data.root == str(tmp_path / "d")


@pytest.mark.parametrize(
    "text, message",
    [
        (MINIMAL + "learning_rat = 1\n", r"sweep.toml \[\[methods\]\]\[0\]: unknown key\(s\) \['learning_rat'\]"),
        (MINIMAL + "[training]\nbatch_size = 'eight'\n", r"sweep.toml \[training\].batch_size: expected int, got str 'eight'"),
        (MINIMAL + "[training]\nbatch_size = 0\n", r"sweep.toml \[training\]: batch_size must be >= 1, got 0"),
        (MINIMAL + "[extra]\nx = 1\n", r"sweep.toml: unknown section\(s\) \['extra'\]"),
        (MINIMAL.replace('"iconqa"', '"vqav2"'), r"\[sweep\]: benchmarks must be a non-empty list from"),
        (MINIMAL.replace('name = "adalora"', 'name = "dora"'), r"method name must be one of \['adalora', 'lora', 'routed_adalora', 'routed_lora', 'memvp'\]"),
        (MINIMAL + 'routing = "concat"\n', r"\[\[methods\]\]\[0\]: routing must be one of \['multiply', 'add', 'matmul', 'matmul2'\]"),
        (MINIMAL + 'placement = ["paper_all", "paper_all"]\n', r"the same variant appears twice"),
        (MINIMAL + 'placement = "paper_all+llm_mlp"\n', r"\[\[methods\]\]\[0\]: unknown placement 'llm_mlp'"),
        (MINIMAL + "final_fraction = 0.95\nwarmup_fraction = 0.1\n", r"warmup_fraction \+ final_fraction < 1"),
        (MINIMAL.replace("[[methods]]\nname = \"adalora\"\n", ""), r"give at least one \[\[methods\]\] entry"),
        ("[sweep\nout=", r"sweep.toml: not valid TOML"),
        (MINIMAL + "[data]\nmax_eval_examples = 1.5\n", r"\[data\].max_eval_examples: expected int or NoneType, got float 1.5"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_runner_routing_variants_are_the_routing_modules():
    from qformer_budget.vl_methods.routing.config import VARIANTS

    assert ROUTING_VARIANTS == VARIANTS
