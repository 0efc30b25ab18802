"""The offline demo: AdaLoRA on all 120 Q-Former Linear layers of a tiny InstructBLIP, recorded.

Trains with the transformers Trainer and ``AdaLoraBudgetCallback`` on the synthetic VQA task,
saves the adapter with peft's ``save_pretrained`` and draws the final-rank heatmap.
Layout: ``OUT/<benchmark>/seed<k>/`` per run, ``OUT/figures/`` for the figure.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from matplotlib import pyplot as plt
from transformers import Trainer, TrainingArguments

from analysis import load_runs, rank_heatmap_data
from analysis.plots import plot_rank_heatmap
from peft_hooks import AdaLoraBudgetCallback, AdaLoraSetup, TrainingPlan, add_adalora, save_adapter

from .synthetic_vqa import VqaCollator, generate_examples
from .tiny import build_tiny_instructblip

BENCHMARK = "synthetic_vqa"


@dataclass
class DemoSettings:
    """Sized to finish in about a minute per seed on 2 CPU cores."""

    seeds: tuple[int, ...] = (0,)
    num_examples: int = 1200
    batch_size: int = 8
    epochs: float = 2.0
    learning_rate: float = 5e-3
    init_r: int = 12
    target_r: int = 4
    deltaT: int = 5

    def setup(self, plan: TrainingPlan) -> AdaLoraSetup:
        total_step = plan.total_optimizer_steps
        return AdaLoraSetup.from_plan(
            plan,
            placement="all_linear",
            init_r=self.init_r,
            target_r=self.target_r,
            tinit=total_step // 10,
            tfinal=total_step // 5,
            deltaT=self.deltaT,
        )


def train_one(out_dir: Path, seed: int, settings: DemoSettings) -> Path:
    """Train one seed; returns its run folder."""
    run_dir = out_dir / BENCHMARK / f"seed{seed}"
    model, processor = build_tiny_instructblip(seed=seed)
    examples = generate_examples(settings.num_examples, seed=seed)
    plan = TrainingPlan(len(examples), settings.batch_size, epochs=settings.epochs)
    peft_model = add_adalora(model, settings.setup(plan), seed=seed)
    args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        seed=seed,
        save_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    callback = AdaLoraBudgetCallback(benchmark=BENCHMARK, meta={"preset": "tiny", "task": BENCHMARK})
    trainer = Trainer(
        model=peft_model, args=args, train_dataset=examples, data_collator=VqaCollator(processor), callbacks=[callback]
    )
    try:
        trainer.train()
    except BaseException:
        callback.close("failed")
        raise
    save_adapter(peft_model, run_dir / "adapter")
    return run_dir


def draw_heatmap(out_dir: Path) -> Path:
    """The final-rank heatmap of every run under ``out_dir``, averaged over seeds."""
    records = load_runs(out_dir)
    table = rank_heatmap_data(records[records["benchmark"] == BENCHMARK])
    n_seeds = records.loc[records["benchmark"] == BENCHMARK, "seed"].nunique()
    ax = plot_rank_heatmap(
        table, title=f"{BENCHMARK}: final AdaLoRA rank per Q-Former sublayer (mean of {n_seeds} seed(s))"
    )
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / f"rank_heatmap_{BENCHMARK}.png"
    ax.figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(ax.figure)
    return path


def run_demo(out_dir: str | Path, settings: DemoSettings | None = None) -> list[Path]:
    """Train every seed, then draw the heatmap; returns the run folders and the figure path."""
    settings = settings or DemoSettings()
    out_dir = Path(out_dir)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    runs = [train_one(out_dir, seed, settings) for seed in settings.seeds]
    return [*runs, draw_heatmap(out_dir)]
