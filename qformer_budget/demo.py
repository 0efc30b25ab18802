"""The offline demo: the sweeps of ``runner/configs/demo.toml`` and ``demo_joint.toml`` on the four synthetic benchmarks.

AdaLoRA on all 120 Q-Former Linear layers of the tiny InstructBLIP, two seeds per benchmark; then one joint
run per benchmark, one AdaLoRA budget shared by the 120 Q-Former layers and every Linear of the T5 language
model; then every figure of ``qformer_budget.plotting.figures.regenerate_figures`` for each (the final-rank
heatmap of each benchmark is ``rank_heatmap_<benchmark>.png``, the joint runs' component shares over
training ``joint/component_share_<benchmark>.png``). Layout: ``OUT/<benchmark>/<method>/seed<k>/`` per run,
``OUT/data/`` for the generated benchmarks, ``OUT/figures/`` and ``OUT/figures/joint/`` for the figures and
their ``index.md``.
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
DEMO_JOINT_CONFIG = files("qformer_budget.runner") / "configs" / "demo_joint.toml"
JOINT_FIGURES = "joint"  # OUT/figures/joint/


def demo_configs(
    out_dir: str | Path, seeds: list[int] | None = None, examples: int | None = None, epochs: float | None = None
) -> list[SweepConfig]:
    """The packaged demo configs (the Q-Former study, then its joint runs) writing under ``out_dir``, optionally
    with other seeds (the joint runs take the first) or a smaller budget."""
    configs = []
    for path in (DEMO_CONFIG, DEMO_JOINT_CONFIG):
        config = load_config(path).with_paths(out=out_dir, data_root=Path(out_dir) / "data")
        if seeds is not None:
            config = config.with_seeds(seeds if path == DEMO_CONFIG else seeds[:1])
        configs.append(config.with_sizes(examples, epochs))
    return configs


def quiet_library_output() -> None:
    """Silence transformers' per-run weight-loading bars and deprecation notes; the sweep and training bars stay."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def run_demo(out_dir: str | Path, configs: list[SweepConfig]) -> tuple[list[SweepReport], list[list[Path]]]:
    """Run the demo sweeps, then write each one's figures: the first's into ``OUT/figures``, the joint runs'
    into ``OUT/figures/joint`` (each list of paths ends with its ``index.md``). Figures are drawn only for a
    sweep with no failed run."""
    from qformer_budget.plotting.figures import regenerate_figures  # the plotting leaf, loaded when drawing

    out_dir = Path(out_dir).resolve()
    quiet_library_output()
    reports = [run_sweep(config) for config in configs]
    figures = []
    for number, (config, report) in enumerate(zip(configs, reports, strict=True)):
        if not report.failed:
            where = out_dir / "figures" if number == 0 else out_dir / "figures" / JOINT_FIGURES
            figures.append(regenerate_figures(out_dir, where, method=config.methods[0].tag))
    return reports, figures


def metrics_table(out_dir: str | Path) -> str:
    """Mean (and spread over seeds) of each benchmark's metrics per method, with the method's trainable
    parameters, as text."""
    metrics = load_metrics(out_dir)
    summary = metrics.groupby(["benchmark", "method", "metric"]).agg(
        mean=("value", "mean"), std=("value", "std"), seeds=("value", "count"),
        trainable=("trainable_parameters", "max"),
    )
    return summary.to_string(float_format=lambda v: f"{v:.4f}")
