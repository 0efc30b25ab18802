"""Small offline sweeps on the tiny checkpoint and synthetic benchmarks, for the end-to-end runner tests."""

from pathlib import Path

from qformer_budget.runner.config import SweepConfig, load_config

SWEEP_HEADER = """
[sweep]
out = "{out}"
benchmarks = {benchmarks}
seeds = [0]

[model]
preset = "tiny"

[data]
root = "{data}"
synthetic = true
max_train_examples = {train_examples}
max_eval_examples = {eval_examples}

[training]
epochs = 1
batch_size = 8
learning_rate = 5e-3
max_new_tokens = 4
"""


def sweep_config(
    tmp_path: Path, methods: str, benchmarks: list[str], train_examples: int, eval_examples: int,
    out: str = "runs", data: str = "data",
) -> SweepConfig:
    """Write ``tmp_path/<out>.toml`` (the header above and the ``[[methods]]`` tables ``methods``) and load it."""
    path = tmp_path / f"{out}.toml"
    header = SWEEP_HEADER.format(
        out=tmp_path / out, data=tmp_path / data, benchmarks=str(list(benchmarks)).replace("'", '"'),
        train_examples=train_examples, eval_examples=eval_examples,
    )
    path.write_text(header + methods)
    return load_config(path)
