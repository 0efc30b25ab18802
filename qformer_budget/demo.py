"""The offline demo: the sweep of ``runner/configs/demo.toml`` on the four synthetic benchmarks.

AdaLoRA on all 120 Q-Former Linear layers of the tiny InstructBLIP, two seeds per benchmark;
then every figure of ``qformer_budget.plotting.figures.regenerate_figures`` (the final-rank heatmap of each benchmark is
``rank_heatmap_<benchmark>.png``). Layout: ``OUT/<benchmark>/<method>/seed<k>/`` per run,
``OUT/data/`` for the generated benchmarks, ``OUT/figures/`` for the figures and their ``index.md``.
"""

from __future__ import annotations

import logging
import warnings
from importlib.resources import files
from pathlib import Path

from transformers.utils import logging as hf_logging

from qformer_budget.analysis import load_metrics
from qformer_budget.runner.config import SweepConfig, load_config
from qformer_budget.runner.sweep import SweepReport, run_sweep

DEMO_CONFIG = files("qformer_budget.runner") / "configs" / "demo.toml"


def demo_config(
    out_dir: str | Path, seeds: list[int] | None = None, examples: int | None = None, epochs: float | None = None
) -> SweepConfig:
    """The packaged demo config writing under ``out_dir``, optionally with other seeds or a smaller budget."""
    config = load_config(DEMO_CONFIG).with_paths(out=out_dir, data_root=Path(out_dir) / "data")
    if seeds is not None:
        config = config.with_seeds(seeds)
    return config.with_sizes(examples, epochs)


def quiet_library_output() -> None:
    """Silence transformers' per-run weight-loading bars and deprecation notes; the sweep and training bars stay."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def run_demo(out_dir: str | Path, config: SweepConfig) -> tuple[SweepReport, list[Path]]:
    """Run the demo sweep, then write every figure into ``OUT/figures`` (paths returned, ``index.md`` last)."""
    from qformer_budget.plotting.figures import regenerate_figures  # the plotting leaf, loaded when drawing

    out_dir = Path(out_dir).resolve()
    quiet_library_output()
    report = run_sweep(config)
    return report, regenerate_figures(out_dir, out_dir / "figures")


def metrics_table(out_dir: str | Path) -> str:
    """Mean (and spread over seeds) of each benchmark's metrics per method, with the method's trainable
    parameters, as text."""
    metrics = load_metrics(out_dir)
    summary = metrics.groupby(["benchmark", "method", "metric"]).agg(
        mean=("value", "mean"), std=("value", "std"), seeds=("value", "count"),
        trainable=("trainable_parameters", "max"),
    )
    return summary.to_string(float_format=lambda v: f"{v:.4f}")
