"""Regenerate every figure of a sweep from its run folders: PNG and PDF, byte for byte reproducible, indexed.

``regenerate_figures(runs_dir, out_dir)`` is the one implementation behind ``qformer-budget figures``,
``figures/regenerate.py`` and the demo. Each figure is prepared by a pure function of ``qformer_budget.plotting.figure_data``
and drawn by a plot function of ``qformer_budget.plotting``; this module only chooses, titles and saves them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from qformer_budget.analysis import NORMALIZATIONS, block_share
from qformer_budget.analysis.load import load_runs
from qformer_budget.core.atomic import atomic_write, write_text_atomic
from qformer_budget.core.layout import method_tag_of
from qformer_budget.core.schema import COLUMN_NAMES

from .distributions import plot_block_share_ci, plot_importance
from .figure_data import (
    block_share_ci_data,
    budget_schedule_data,
    heatmap_tables,
    importance_data,
    phase_spans,
    rank_difference_data,
    trajectory_data,
)
from .heatmaps import plot_heatmap_grid, plot_rank_difference, plot_rank_heatmap
from .training import plot_budget_schedule, plot_rank_trajectories

FIGURE_DPI = 150
FORMATS = ("png", "pdf")
# No version string or date in the files, so that reruns write identical bytes.
SAVE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}
INDEX_FILE = "index.md"
# Every record column but the per-direction lists, which no figure draws: most of the load time and memory.
FIGURE_COLUMNS = [name for name in COLUMN_NAMES if not name.startswith("direction_")]

_NORMALIZATION_TEXT = {
    "rank": "share of kept directions (rank)",
    "module": "share of mean rank per module",
    "parameter": "share of kept adapter parameters",
}


@dataclass
class _Index:
    """Writes figures into ``out_dir`` and keeps what was written (stem, section, description) and what was
    skipped and why, for ``index.md``."""

    out_dir: Path
    dpi: int
    written: list[Path] = field(default_factory=list)
    entries: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, fig: Figure, stem: str, section: str, description: str) -> None:
        self.written += save_figure(fig, self.out_dir, stem, self.dpi)
        self.entries.append((stem, section, description))


def save_figure(fig: Figure, out_dir: Path, stem: str, dpi: int = FIGURE_DPI) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` in ``out_dir`` (fixed dpi and metadata), then close it."""
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        with atomic_write(path, "wb") as f:  # a killed rerun leaves the previous figure, never a cut one
            fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight", metadata=SAVE_METADATA[fmt])
        paths.append(path)
    plt.close(fig)
    return paths


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "_"


def _select_runs(records: pd.DataFrame, method: str | None) -> pd.DataFrame:
    """The records of one configuration: ``method`` (the runs' parent folder name) if given, checked unique."""
    if method is not None:
        methods = records["run"].map(method_tag_of)
        if not (methods == method).any():
            raise ValueError(f"no run of method {method!r}; methods found: {sorted(methods.unique())}")
        records = records[methods == method]
    runs = records.groupby(["benchmark", "seed"])["run"].nunique()
    if (runs > 1).any():
        clashes = runs[runs > 1].index.tolist()
        methods = sorted(records["run"].map(method_tag_of).unique())
        raise ValueError(
            f"several runs share a benchmark and seed {clashes[:3]}: the folder holds several configurations "
            f"({', '.join(methods)}); choose one with method= (--method)"
        )
    return records


def _seeds_text(rows: pd.DataFrame) -> str:
    n = rows["seed"].nunique()
    return f"{n} seed" if n == 1 else f"mean of {n} seeds"


def regenerate_figures(
    runs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    method: str | None = None,
    dpi: int = FIGURE_DPI,
    n_boot: int = 2000,
) -> list[Path]:
    """Load the runs below ``runs_dir``, write every figure into ``out_dir`` as PNG and PDF, and ``index.md``.

    Per benchmark: the final-rank heatmap (``rank_heatmap_<b>``), the block-share trajectories
    (``rank_trajectory_<b>``) and the budget schedule (``budget_schedule_<b>``). Across benchmarks: the
    heatmaps side by side (``rank_heatmap_grid``), the difference heatmap of every pair
    (``rank_difference_<a>_minus_<b>``), the importance distributions (``importance_by_block``) and the
    block shares with seed-bootstrap confidence intervals for each normalisation
    (``block_share_ci_<rank|module|parameter>``). What cannot be drawn (differences with one benchmark,
    intervals with one seed) is skipped and listed in ``index.md`` with the reason.

    Reruns on the same records give byte-identical files: matplotlib's default style (not the user's
    matplotlibrc), fixed ``dpi``, no date or version in the metadata, a fixed bootstrap and jitter seed.
    ``method`` selects one configuration (the run folders' parent name, e.g. ``adalora-all_linear-r12to4``)
    when ``runs_dir`` holds several. Returns the written paths, ``index.md`` last.
    """
    records = _select_runs(load_runs(runs_dir, columns=FIGURE_COLUMNS), method)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = _Index(out_dir, dpi)
    tables = heatmap_tables(records)
    with plt.style.context("default"):
        _per_benchmark_figures(records, tables, index)
        _cross_benchmark_figures(records, tables, index, n_boot)
    index_path = out_dir / INDEX_FILE
    write_text_atomic(index_path, _index_text(records, runs_dir, out_dir, index))
    return [*index.written, index_path]


def _per_benchmark_figures(records: pd.DataFrame, tables: dict[str, pd.DataFrame], index: _Index) -> None:
    vmax = max(float(np.nanmax(t.to_numpy(dtype=float), initial=0.0)) for t in tables.values()) or 1.0
    phases = phase_spans(records)
    trajectories = trajectory_data(records, value="share", normalize="rank")
    schedules = budget_schedule_data(records)
    for benchmark, table in tables.items():
        rows = records[records["benchmark"] == benchmark]
        part = _file_part(benchmark)
        seeds = _seeds_text(rows)

        ax = plot_rank_heatmap(
            table, vmax=vmax, title=f"{benchmark}: final AdaLoRA rank per Q-Former sublayer ({seeds})"
        )
        index.add(
            ax.figure, f"rank_heatmap_{part}", "Per benchmark",
            f"Final kept rank of every Q-Former sublayer on {benchmark} ({seeds}), layer by sublayer, on "
            "the colour scale shared by all benchmarks; hatched cells have no module, the outlined text FFN "
            "of the last layer gets no task gradient (its output never reaches the LLM).",
        )

        ax = plot_rank_trajectories(
            trajectories[trajectories["benchmark"] == benchmark], phases,
            title=f"{benchmark}: share of kept rank per block over training",
            ylabel="share of kept rank\n(last text FFN, no task gradient, excluded)",
        )
        index.add(
            ax.figure, f"rank_trajectory_{part}", "Per benchmark",
            f"Each block's share of the kept rank over the optimizer steps on {benchmark}, one thin line per "
            "seed and a thick mean, with the warmup, budgeting and final phases shaded.",
        )

        ax = plot_budget_schedule(
            schedules[schedules["benchmark"] == benchmark], phases,
            title=f"{benchmark}: rank budget and kept total rank",
        )
        index.add(
            ax.figure, f"budget_schedule_{part}", "Per benchmark",
            f"The total rank budget of AdaLoRA's schedule and the total rank each run of {benchmark} kept, "
            "over the optimizer steps, with the mask steps marked and the phases shaded.",
        )


def _cross_benchmark_figures(
    records: pd.DataFrame, tables: dict[str, pd.DataFrame], index: _Index, n_boot: int
) -> None:
    benchmarks = list(tables)
    section = "Across benchmarks"

    if len(benchmarks) > 1:
        fig = plot_heatmap_grid(
            {f"{b} ({_seeds_text(records[records['benchmark'] == b])})": t for b, t in tables.items()},
            title="Final AdaLoRA rank per Q-Former sublayer",
        )
        index.add(
            fig, "rank_heatmap_grid", section,
            "The final-rank heatmaps of all benchmarks side by side on one colour scale.",
        )
        pairs = list(combinations(benchmarks, 2))
        differences = {pair: rank_difference_data(records, *pair) for pair in pairs}
        vmax = max(float(d.abs().max().max()) for d in differences.values()) or 1.0
        for (a, b), table in differences.items():
            ax = plot_rank_difference(
                table, vmax=vmax, label=f"rank difference ({a} \u2212 {b})",
                title=f"Final rank: {a} minus {b} (means over seeds)",
            )
            stem = f"rank_difference_{_file_part(a)}_minus_{_file_part(b)}"
            index.add(
                ax.figure, stem, section,
                f"Final kept rank of {a} minus that of {b} per sublayer (each the mean over its seeds), red "
                f"where {a} keeps more, on a diverging scale centred at 0 shared by all pairs.",
            )
    else:
        index.skipped.append((
            "rank_heatmap_grid, rank_difference_<a>_minus_<b>",
            f"need 2 or more benchmarks; these runs have only {benchmarks[0]}",
        ))

    importance = importance_data(records)
    if importance.empty:
        index.skipped.append(("importance_by_block", "no recorded step has importance scores"))
    else:
        steps = sorted(importance["step"].unique())
        where = f"step {steps[0]}" if len(steps) == 1 else "each run's last step with scores"
        ax = plot_importance(importance, title=f"Module importance scores at {where}")
        index.add(
            ax.figure, "importance_by_block", section,
            f"Distribution of the AdaLoRA importance scores of the modules of each block and benchmark at "
            f"{where} (the last before peft clears them), on a log scale, every seed's modules pooled, the "
            "structural text FFN drawn apart as crosses.",
        )

    one_seed = records.groupby("benchmark")["seed"].nunique().max() < 2
    if one_seed:
        index.skipped.append((
            "confidence intervals of block_share_ci_<normalisation>",
            "need 2 or more seeds per benchmark; the bars show the single seed's shares",
        ))
    for normalize in NORMALIZATIONS:
        data = block_share_ci_data(records, normalize=normalize, n_boot=n_boot)
        seeds = block_share(records, "final", normalize)
        low, high = int(data["n_seeds"].min()), int(data["n_seeds"].max())
        n_seeds = f"{low}" if low == high else f"{low}-{high}"
        ci_text = "no interval: 1 seed" if one_seed else f"95% seed-bootstrap CI over {n_seeds} seeds"
        ax = plot_block_share_ci(
            data, seeds, ylabel=f"{_NORMALIZATION_TEXT[normalize]}\n(last text FFN, no task gradient, excluded)",
            title=f"Final block shares, {normalize} normalisation ({ci_text})",
        )
        stem = f"block_share_ci_{normalize}"
        index.add(
            ax.figure, stem, section,
            f"Each block's final {_NORMALIZATION_TEXT[normalize]} per benchmark, mean over seeds with "
            + ("each seed as a dot (one seed: no confidence interval can be drawn)" if one_seed else
               "a 95% seed-bootstrap confidence interval and each seed as a dot")
            + ", the structural text FFN left out.",
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _relative(path, start) -> str:
    try:
        return Path(path).resolve().relative_to(Path(start).resolve()).as_posix()
    except ValueError:
        return str(path)


def _index_text(records: pd.DataFrame, runs_dir, out_dir: Path, index: _Index) -> str:
    try:
        source = os.path.relpath(Path(runs_dir).resolve(), out_dir.resolve())
    except ValueError:  # another drive
        source = str(runs_dir)
    seeds = records.groupby("benchmark")["seed"].unique()
    runs = ", ".join(
        f"{b} ({'seed' if len(v) == 1 else 'seeds'} {', '.join(str(s) for s in sorted(v))})"
        for b, v in seeds.items()
    )
    lines = [
        "# Figures",
        "",
        f"Regenerated from the {_plural(records['run'].nunique(), 'run')} below `{source}`: {runs}.",
        "Each figure is written as PNG and PDF; `qformer-budget figures RUNS_DIR --out DIR` remakes them.",
    ]
    unfinished = records.loc[records["status"] != "finished", ["run", "status"]].drop_duplicates()
    if not unfinished.empty:
        lines += ["", "Runs not finished (their last recorded step is drawn as final):"]
        lines += [
            f"- `{_relative(run, runs_dir)}`: {status}" for run, status in unfinished.itertuples(index=False)
        ]
    for section in dict.fromkeys(section for _, section, _ in index.entries):
        lines += ["", f"## {section}", ""]
        for stem, entry_section, description in index.entries:
            if entry_section == section:
                links = " · ".join(f"[`{stem}.{fmt}`]({stem}.{fmt})" for fmt in FORMATS)
                lines.append(f"- {links}: {description}")
    if index.skipped:
        lines += ["", "## Not drawn", ""]
        lines += [f"- {what}: {why}." for what, why in index.skipped]
    return "\n".join(lines) + "\n"
