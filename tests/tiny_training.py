"""Tiny AdaLoRA training runs shared by the tests, through the Trainer or a hand-written loop.

Both paths use the same data order (a fixed-order iterable), the same optimizer (fused AdamW,
constant learning rate, no clipping) and the same seeded initialisation, so their records can be
compared exactly.
"""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset
from transformers import Trainer, TrainingArguments

from qformer_budget.benchmarks.synthetic_vqa import generate_examples
from qformer_budget.peft_hooks import (
    AdaLoraBudgetCallback,
    AdaLoraSetup,
    BudgetRecorder,
    add_adalora,
    find_adalora_model,
)
from qformer_budget.peft_hooks.sinks import RecordSink
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.tiny import build_tiny_instructblip

BATCH = 4
LEARNING_RATE = 1e-2


def tiny_setup(total_step: int = 40, **overrides) -> AdaLoraSetup:
    values = dict(total_step=total_step, tinit=5, tfinal=5, deltaT=5, init_r=6, target_r=2) | overrides
    return AdaLoraSetup(**values)


def tiny_adalora(setup: AdaLoraSetup, seed: int = 0):
    model, processor = build_tiny_instructblip(seed=seed)
    return add_adalora(model, setup, seed=seed), processor


class FixedOrder(IterableDataset):
    def __init__(self, steps: int, seed: int) -> None:
        self.examples = generate_examples(32, seed=seed + 1000)
        self.steps = steps

    def __iter__(self):
        for i in range(self.steps * BATCH):
            yield self.examples[i % len(self.examples)]


def record_random_steps(recorder: BudgetRecorder, model, steps: range, seed: int = 0) -> None:
    """``recorder.step`` on each of ``steps`` after filling every trainable gradient with seeded noise."""
    generator = torch.Generator().manual_seed(seed)
    for step in steps:
        for param in model.parameters():
            if param.requires_grad:
                param.grad = torch.randn(param.shape, generator=generator)
        recorder.step(model, step)


def train_with_loop(
    run_dir, setup: AdaLoraSetup, seed: int = 0, on_model=None, **recorder_kwargs
):
    """Train with a hand-written loop and BudgetRecorder; ``on_model(model)`` runs before training."""
    model, processor = tiny_adalora(setup, seed)
    if on_model is not None:
        on_model(model)
    collate = InstructBlipCollator(processor)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE, weight_decay=0.0, fused=True
    )
    examples = iter(FixedOrder(setup.total_step, seed))
    records = []
    model.train()
    with BudgetRecorder(run_dir, benchmark="synthetic_vqa", seed=seed, **recorder_kwargs) as recorder:
        for step in range(setup.total_step):
            batch = collate([next(examples) for _ in range(BATCH)])
            model(**batch).loss.backward()
            optimizer.step()
            record = recorder.step(model, step)
            optimizer.zero_grad()
            if record is not None:
                records.append(record)
    return model, records


def spied_loop_run(run_dir, setup: AdaLoraSetup) -> dict:
    """A hand-written loop run with a :class:`PeftMaskSpy` on peft's allocator: its folder, model, records, spy."""
    spies = []
    model, records = train_with_loop(run_dir, setup, on_model=lambda m: spies.append(PeftMaskSpy(m)))
    return {"dir": run_dir, "model": model, "records": records, "spy": spies[0]}


def trainer_arguments(output_dir, setup: AdaLoraSetup, seed: int = 0) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=BATCH, max_steps=setup.total_step,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0,
        optim="adamw_torch_fused", seed=seed, report_to=[], save_strategy="no", logging_strategy="no",
        use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
    )


def train_with_trainer(output_dir, setup: AdaLoraSetup, seed: int = 0, on_model=None, **callback_kwargs):
    """Train with the Trainer and AdaLoraBudgetCallback; ``on_model(model)`` runs before training."""
    model, processor = tiny_adalora(setup, seed)
    if on_model is not None:
        on_model(model)
    callback = AdaLoraBudgetCallback(benchmark="synthetic_vqa", **callback_kwargs)
    trainer = Trainer(
        model=model, args=trainer_arguments(output_dir, setup, seed), train_dataset=FixedOrder(setup.total_step, seed),
        data_collator=InstructBlipCollator(processor), callbacks=[callback],
    )
    trainer.train()
    return model, trainer


class ListSink(RecordSink):
    """Keeps every recorded step in ``records``."""

    def __init__(self) -> None:
        self.records = []

    def write(self, record) -> None:
        self.records.append(record)


class PeftMaskSpy:
    """Captures, at each of peft's own mask_to_budget calls, the triplet scores and threshold peft used."""

    def __init__(self, model):
        self.allocator = find_adalora_model(model).rankallocator
        self.calls = []
        original_mask, original_combine = self.allocator.mask_to_budget, self.allocator._combine_ipt
        captured = []

        def combine(ipt_e, ipt_ab):
            out = original_combine(ipt_e, ipt_ab)
            captured.append(out.detach().clone())
            return out

        def mask(inner_model, budget):
            captured.clear()
            self.allocator._combine_ipt = combine
            try:
                pattern = original_mask(inner_model, budget)
            finally:
                self.allocator._combine_ipt = original_combine
            scores = torch.stack(captured)
            threshold = torch.kthvalue(scores.reshape(-1), k=self.allocator.init_bgt - budget)[0].item()
            self.calls.append({"budget": budget, "scores": scores.numpy(), "threshold": threshold, "pattern": pattern})
            return pattern

        self.allocator.mask_to_budget = mask
