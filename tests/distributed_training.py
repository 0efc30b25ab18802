"""A tiny AdaLoRA run with a plain Trainer and AdaLoraBudgetCallback, launched by torchrun on CPU (gloo).

    torchrun --standalone --nproc_per_node=2 tests/distributed_training.py OUT

Every process writes ``OUT/rank<r>.json``: its rank, the world size, the kept-direction pattern
after every optimizer step and how many sinks its recorder had, so the test can compare the
processes. The budget records go to ``OUT/run`` (rank 0 only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from qformer_budget.benchmarks.synthetic_vqa import generate_examples
from qformer_budget.peft_hooks import AdaLoraBudgetCallback, find_adalora_model
from qformer_budget.runner.collate import InstructBlipCollator

from tiny_training import BATCH, tiny_adalora, tiny_setup, trainer_arguments


class AllocationLog(TrainerCallback):
    """Keeps this process's rank pattern after each step (callbacks run in order: after the recorder's)."""

    def __init__(self) -> None:
        self.patterns: dict[int, dict[str, list[bool]]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        adalora = find_adalora_model(model)
        pattern = adalora.peft_config[adalora.trainable_adapter_name].rank_pattern
        self.patterns[state.global_step] = {k: list(map(bool, v)) for k, v in (pattern or {}).items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    options = parser.parse_args()
    torch.set_num_threads(1)
    setup = tiny_setup(total_step=options.steps)
    model, processor = tiny_adalora(setup, seed=0)
    budget = AdaLoraBudgetCallback(run_dir=options.out / "run", benchmark="synthetic_vqa", record_every=1)
    log = AllocationLog()
    args = trainer_arguments(options.out / "trainer", setup, seed=0)
    args.ddp_backend = "gloo"
    world_size = args.world_size
    trainer = Trainer(
        model=model, args=args, train_dataset=generate_examples(setup.total_step * BATCH * world_size, seed=1000),
        data_collator=InstructBlipCollator(processor), callbacks=[budget, log],
    )
    trainer.train()
    report = {
        "rank": args.process_index,
        "world_size": world_size,
        "batch_per_process": BATCH,
        "sinks": len(budget.recorder.sinks),
        "patterns": log.patterns,
    }
    (options.out / f"rank{args.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
