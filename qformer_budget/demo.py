"""The offline demo: the sweep of ``runner/configs/demo.toml`` on the four synthetic benchmarks.

AdaLoRA on all 120 Q-Former Linear layers of the tiny InstructBLIP, two seeds per benchmark;
then one final-rank heatmap per benchmark. Layout: ``OUT/<benchmark>/<method>/seed<k>/`` per run,
``OUT/data/`` for the generated benchmarks, ``OUT/figures/`` for the heatmaps.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from importlib.resources import files
from pathlib import Path

from matplotlib import pyplot as plt
from transformers.utils import logging as hf_logging

from analysis import load_metrics, load_runs, rank_heatmap_data
from analysis.plots import plot_rank_heatmap
from runner.config import SweepConfig, load_config
from runner.sweep import SweepReport, run_sweep

DEMO_CONFIG = files("runner") / "configs" / "demo.toml"


def demo_config(
    out_dir: str | Path, seeds: list[int] | None = None, examples: int | None = None, epochs: float | None = None
) -> SweepConfig:
    """The packaged demo config writing under ``out_dir``, optionally with other seeds or a smaller budget."""
    config = load_config(DEMO_CONFIG).with_paths(out=out_dir, data_root=Path(out_dir) / "data")
    if seeds is not None:
        config = config.with_seeds(seeds)
    if examples is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, max_train_examples=examples))
    if epochs is not None:
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, epochs=epochs))
    return config


def draw_heatmaps(out_dir: Path) -> list[Path]:
    """One final-rank heatmap per benchmark of the runs under ``out_dir``, averaged over seeds."""
    records = load_runs(out_dir)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    paths = []
    for benchmark, rows in records.groupby("benchmark"):
        seeds = rows["seed"].nunique()
        ax = plot_rank_heatmap(
            rank_heatmap_data(rows), title=f"{benchmark}: final AdaLoRA rank per Q-Former sublayer (mean of {seeds} seeds)"
        )
        path = figures / f"rank_heatmap_{benchmark}.png"
        ax.figure.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(ax.figure)
        paths.append(path)
    return paths


def run_demo(out_dir: str | Path, config: SweepConfig) -> tuple[SweepReport, list[Path]]:
    """Run the demo sweep, then draw the heatmaps."""
    out_dir = Path(out_dir).resolve()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()  # weight-loading bars; the sweep and training bars stay
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    report = run_sweep(config)
    return report, draw_heatmaps(out_dir)


def metrics_table(out_dir: str | Path) -> str:
    """Mean (and spread over seeds) of each benchmark's metrics, as text."""
    metrics = load_metrics(out_dir)
    summary = metrics.groupby(["benchmark", "method", "metric"])["value"].agg(["mean", "std", "count"])
    return summary.rename(columns={"count": "seeds"}).to_string(float_format=lambda v: f"{v:.4f}")
