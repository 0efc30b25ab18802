"""Regenerate every figure of a sweep from its run folders: PNG and PDF, byte for byte reproducible, indexed.

``regenerate_figures(runs_dir, out_dir)`` is the one implementation behind ``qformer-budget figures``,
``figures/regenerate.py`` and the demo. Each figure is prepared by a pure function of ``qformer_budget.plotting.figure_data``
and drawn by a plot function of ``qformer_budget.plotting``; this module reads the runs a benchmark at a time,
plans the figures (which, titles, index entries) and saves them, drawn by ``figure_worker.draw_all``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from qformer_budget.analysis import NORMALIZATIONS, last_recorded_step, last_scored_step
from qformer_budget.analysis.load import find_runs, load_runs
from qformer_budget.core.atomic import atomic_write, write_text_atomic
from qformer_budget.core.grammar import COMPONENT_TITLES, COMPONENTS
from qformer_budget.core.layout import method_tag_of
from qformer_budget.core.run_folder import RecordError, read_run_meta
from qformer_budget.core.schema import RUN_META_FILE

from .distributions import plot_block_share_ci, plot_importance
from .figure_data import (
    block_share_ci_data,
    budget_schedule_data,
    final_shares,
    heatmap_tables,
    importance_data,
    phase_spans,
    plain_labels,
    rank_difference_data,
    trajectory_data,
)
from .figure_worker import FigureWorker, draw_all
from .heatmaps import plot_heatmap_grid, plot_rank_difference, plot_rank_heatmap
from .training import plot_budget_schedule, plot_rank_trajectories

FIGURE_DPI = 150
FORMATS = ("png", "pdf")
# No version string or date in the files, so that reruns write identical bytes.
SAVE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}
INDEX_FILE = "index.md"
# The record columns the figures and the explorer draw from; the per-direction lists, which none draws, are
# most of the load time and memory.
FIGURE_COLUMNS = [
    "benchmark", "seed", "step", "phase", "mask_step", "module", "component", "sublayer", "layer", "block", "proj",
    "in_features", "out_features", "init_r", "rank", "score", "budget", "threshold",
]

_NORMALIZATION_TEXT = {
    "rank": "share of kept directions (rank)",
    "module": "share of mean rank per module",
    "parameter": "share of kept adapter parameters",
}


@dataclass(frozen=True)
class PlannedFigure:
    """One figure to draw: its file stem, its section and description in ``index.md``, and the plot call
    (a plot function of ``qformer_budget.plotting`` with prepared data) that draws it."""

    stem: str
    section: str
    description: str
    plot: Callable[..., Axes | Figure]
    args: tuple
    kwargs: dict


@dataclass
class _Index:
    """The figures to draw, in ``index.md``'s order, and what is not drawn and why."""

    planned: list[PlannedFigure] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def plan(self, stem: str, section: str, description: str, plot: Callable[..., Axes | Figure], *args, **kwargs):
        self.planned.append(PlannedFigure(stem, section, description, plot, args, kwargs))


def draw_and_save(figure: PlannedFigure, out_dir: Path, dpi: int) -> list[Path]:
    """Draw one planned figure in matplotlib's default style and save it (:func:`save_figure`)."""
    with plt.style.context("default"):
        drawn = figure.plot(*figure.args, **figure.kwargs)
        return save_figure(drawn if isinstance(drawn, Figure) else drawn.figure, out_dir, figure.stem, dpi)


def save_figure(fig: Figure, out_dir: Path, stem: str, dpi: int = FIGURE_DPI) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` in ``out_dir`` (fixed dpi and metadata), then close it.

    Both formats are cut to one tight bounding box, measured once (``bbox_inches="tight"`` would lay the
    figure out again for each format).
    """
    paths = []
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        with atomic_write(path, "wb") as f:  # a killed rerun leaves the previous figure, never a cut one
            fig.savefig(f, format=fmt, dpi=dpi, bbox_inches=bbox, metadata=SAVE_METADATA[fmt])
        paths.append(path)
    plt.close(fig)
    return paths


# Processes drawing, this one included: where there are two CPUs, a second process draws beside this one
# (drawing is most of the time at any size). A worker needs a pipe passed by descriptor: POSIX only.
DEFAULT_WORKERS = min(2, os.cpu_count() or 1) if os.name == "posix" else 1


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "_"


def select_runs(records: pd.DataFrame, method: str | None) -> pd.DataFrame:
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


@dataclass
class _FigureData:
    """What the figures draw, prepared one benchmark at a time so that a study's records are never all in
    memory: each run's last recorded step, each run's last step with scores, and the per-step tables."""

    finals: pd.DataFrame
    scored: pd.DataFrame
    trajectories: pd.DataFrame
    component_trajectories: pd.DataFrame
    schedules: pd.DataFrame
    phases: pd.DataFrame


def runs_by_benchmark(runs_dir: str | os.PathLike, method: str | None) -> dict[str, list[str]]:
    """The run folders below ``runs_dir`` per benchmark (from each ``run.json``), one configuration only."""
    rows = []
    for run in find_runs(runs_dir):
        meta = read_run_meta(run)
        missing = [key for key in ("benchmark", "seed") if meta.get(key) is None]
        if missing:
            raise RecordError(f"{run / RUN_META_FILE}: no {' or '.join(missing)} (a run of the runner has both)")
        rows.append((str(run), str(meta["benchmark"]), meta["seed"]))
    runs = select_runs(pd.DataFrame(rows, columns=["run", "benchmark", "seed"]), method)
    return {str(benchmark): list(rows["run"]) for benchmark, rows in runs.groupby("benchmark", sort=True)}


def _prepare(runs_dir: str | os.PathLike, method: str | None) -> _FigureData:
    pieces: dict[str, list[pd.DataFrame]] = {name: [] for name in _FigureData.__dataclass_fields__}
    for runs in runs_by_benchmark(runs_dir, method).values():
        records = load_runs(runs, columns=FIGURE_COLUMNS, categorical=True)
        pieces["finals"].append(last_recorded_step(records))
        pieces["scored"].append(last_scored_step(records))
        pieces["trajectories"].append(trajectory_data(records, value="share", normalize="rank"))
        if records["component"].nunique() > 1:  # a budget shared by several components
            pieces["component_trajectories"].append(trajectory_data(records, value="share", by="component"))
        pieces["schedules"].append(budget_schedule_data(records))
        pieces["phases"].append(phase_spans(records))
        del records
    # Labels become plain strings: each benchmark's categoricals have their own categories.
    return _FigureData(**{
        name: plain_labels(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
        for name, frames in pieces.items()
    })


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
    workers: int = DEFAULT_WORKERS,
) -> list[Path]:
    """Load the runs below ``runs_dir``, write every figure into ``out_dir`` as PNG and PDF, and ``index.md``.

    Per benchmark: the final-rank heatmap (``rank_heatmap_<b>``), the block-share trajectories
    (``rank_trajectory_<b>``) and the budget schedule (``budget_schedule_<b>``). Across benchmarks: the
    heatmaps side by side (``rank_heatmap_grid``), the difference heatmap of every pair
    (``rank_difference_<a>_minus_<b>``), the importance distributions (``importance_by_block``) and the
    block shares with seed-bootstrap confidence intervals for each normalisation
    (``block_share_ci_<rank|module|parameter>``). These are the Q-Former's (block shares within it). When
    other components shared the budget (a joint run): per benchmark the component shares over training
    (``component_share_<b>``) and each other component's final-rank heatmap (``rank_heatmap_<component>_<b>``),
    and across benchmarks the final component shares with their intervals (``component_share_ci_<normalisation>``).
    What cannot be drawn (differences with one benchmark, intervals with one seed) is skipped and listed in
    ``index.md`` with the reason.

    Reruns on the same records give byte-identical files: matplotlib's default style (not the user's
    matplotlibrc), fixed ``dpi``, no date or version in the metadata, a fixed bootstrap and jitter seed.
    ``method`` selects one configuration (the run folders' parent name, e.g. ``adalora-all_linear-r12to4``)
    when ``runs_dir`` holds several. ``workers`` processes draw, this one included (default: 2 where there
    are two or more CPUs; the others are ``figure_worker.FigureWorker`` processes); the files are the same
    bytes with any number. Returns the written paths, ``index.md`` last.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (this process); got {workers}")
    with FigureWorker.started(workers - 1) as helpers:  # they import while this process loads the records
        data = _prepare(runs_dir, method)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        index = _Index()
        with_qformer = ((data.finals["component"] == "qformer") & data.finals["layer"].notna()).any()
        tables = heatmap_tables(data.finals) if with_qformer else {}
        _per_benchmark_figures(data, tables, index)
        if with_qformer:
            _cross_benchmark_figures(data, tables, index, n_boot)
        else:
            index.skipped.append(("the Q-Former's figures", "these runs adapted no Q-Former sublayer"))
        _component_figures(data, index, n_boot)
        written = draw_all(index.planned, out_dir, dpi, helpers)
    index_path = out_dir / INDEX_FILE
    write_text_atomic(index_path, _index_text(data.finals, runs_dir, out_dir, index))
    return [*written, index_path]


def _per_benchmark_figures(data: _FigureData, tables: dict[str, pd.DataFrame], index: _Index) -> None:
    """Per benchmark: the Q-Former's heatmap and block trajectories (where ``tables`` has it), the budget."""
    vmax = max((float(np.nanmax(t.to_numpy(dtype=float), initial=0.0)) for t in tables.values()), default=0) or 1.0
    phases, trajectories, schedules = data.phases, data.trajectories, data.schedules
    # Where other components shared the budget, the blocks' shares are of the Q-Former's part of it.
    kept = "the Q-Former's kept rank" if data.finals["component"].nunique() > 1 else "kept rank"
    for benchmark in sorted(data.finals["benchmark"].unique()):
        rows = data.finals[data.finals["benchmark"] == benchmark]
        part = _file_part(benchmark)
        seeds = _seeds_text(rows)
        table = tables.get(benchmark)
        if table is None:
            _plan_budget_schedule(index, schedules, phases, benchmark, part)
            continue

        index.plan(
            f"rank_heatmap_{part}", "Per benchmark",
            f"Final kept rank of every Q-Former sublayer on {benchmark} ({seeds}), layer by sublayer, on "
            "the colour scale shared by all benchmarks; hatched cells have no module, the outlined text FFN "
            "of the last layer gets no task gradient (its output never reaches the LLM).",
            plot_rank_heatmap, table, vmax=vmax,
            title=f"{benchmark}: final AdaLoRA rank per Q-Former sublayer ({seeds})",
        )
        index.plan(
            f"rank_trajectory_{part}", "Per benchmark",
            f"Each block's share of the kept rank over the optimizer steps on {benchmark}, one thin line per "
            "seed and a thick mean, with the warmup, budgeting and final phases shaded.",
            plot_rank_trajectories, trajectories[trajectories["benchmark"] == benchmark], phases,
            title=f"{benchmark}: share of {kept} per block over training",
            ylabel=f"share of {kept}\n(last text FFN, no task gradient, excluded)",
        )
        _plan_budget_schedule(index, schedules, phases, benchmark, part)


def _plan_budget_schedule(index: _Index, schedules: pd.DataFrame, phases: pd.DataFrame, benchmark: str, part: str):
    index.plan(
        f"budget_schedule_{part}", "Per benchmark",
        f"The total rank budget of AdaLoRA's schedule and the total rank each run of {benchmark} kept, "
        "over the optimizer steps, with the mask steps marked and the phases shaded.",
        plot_budget_schedule, schedules[schedules["benchmark"] == benchmark], phases,
        title=f"{benchmark}: rank budget and kept total rank",
    )


def _cross_benchmark_figures(data: _FigureData, tables: dict[str, pd.DataFrame], index: _Index, n_boot: int) -> None:
    records = data.finals  # block shares and seeds need only each run's last step
    benchmarks = list(tables)
    section = "Across benchmarks"

    if len(benchmarks) > 1:
        index.plan(
            "rank_heatmap_grid", section,
            "The final-rank heatmaps of all benchmarks side by side on one colour scale.",
            plot_heatmap_grid,
            {f"{b} ({_seeds_text(records[records['benchmark'] == b])})": t for b, t in tables.items()},
            title="Final AdaLoRA rank per Q-Former sublayer",
        )
        pairs = list(combinations(benchmarks, 2))
        differences = {pair: rank_difference_data(records, *pair) for pair in pairs}
        vmax = max(float(d.abs().max().max()) for d in differences.values()) or 1.0
        for (a, b), table in differences.items():
            index.plan(
                f"rank_difference_{_file_part(a)}_minus_{_file_part(b)}", section,
                f"Final kept rank of {a} minus that of {b} per sublayer (each the mean over its seeds), red "
                f"where {a} keeps more, on a diverging scale centred at 0 shared by all pairs.",
                plot_rank_difference, table, vmax=vmax, label=f"rank difference ({a} \u2212 {b})",
                title=f"Final rank: {a} minus {b} (means over seeds)",
            )
    else:
        index.skipped.append((
            "rank_heatmap_grid, rank_difference_<a>_minus_<b>",
            f"need 2 or more benchmarks; these runs have only {benchmarks[0]}",
        ))

    importance = importance_data(data.scored)
    if importance.empty:
        index.skipped.append(("importance_by_block", "no recorded step has importance scores"))
    else:
        steps = sorted(importance["step"].unique())
        where = f"step {steps[0]}" if len(steps) == 1 else "each run's last step with scores"
        index.plan(
            "importance_by_block", section,
            f"Distribution of the AdaLoRA importance scores of the modules of each block and benchmark at "
            f"{where} (the last before peft clears them), on a log scale, every seed's modules pooled, the "
            "structural text FFN drawn apart as crosses.",
            plot_importance, importance, title=f"Module importance scores at {where}",
        )

    one_seed = records.groupby("benchmark")["seed"].nunique().max() < 2
    if one_seed:
        index.skipped.append((
            "confidence intervals of block_share_ci_<normalisation>",
            "need 2 or more seeds per benchmark; the bars show the single seed's shares",
        ))
    for normalize in NORMALIZATIONS:
        intervals = block_share_ci_data(records, normalize=normalize, n_boot=n_boot)
        seeds = final_shares(records, normalize)
        low, high = int(intervals["n_seeds"].min()), int(intervals["n_seeds"].max())
        n_seeds = f"{low}" if low == high else f"{low}-{high}"
        ci_text = "no interval: 1 seed" if one_seed else f"95% seed-bootstrap CI over {n_seeds} seeds"
        index.plan(
            f"block_share_ci_{normalize}", section,
            f"Each block's final {_NORMALIZATION_TEXT[normalize]} per benchmark, mean over seeds with "
            + ("each seed as a dot (one seed: no confidence interval can be drawn)" if one_seed else
               "a 95% seed-bootstrap confidence interval and each seed as a dot")
            + ", the structural text FFN left out.",
            plot_block_share_ci, intervals, seeds,
            ylabel=f"{_NORMALIZATION_TEXT[normalize]}\n(last text FFN, no task gradient, excluded)",
            title=f"Final block shares, {normalize} normalisation ({ci_text})",
        )


def _component_figures(data: _FigureData, index: _Index, n_boot: int) -> None:
    """The heatmaps of every component but the Q-Former and, when several components shared the budget, their
    shares; none when the runs adapted the Q-Former only."""
    records = data.finals
    present = set(records.loc[records["layer"].notna(), "component"])
    components = [c for c in COMPONENTS if c in set(records["component"])]
    joint = len(components) > 1
    section = "Components sharing the budget" if joint else "Per component"
    names = " and ".join(COMPONENT_TITLES[c] for c in components)
    trajectories = data.component_trajectories
    for benchmark in sorted(records["benchmark"].unique()) if joint else ():
        part = _file_part(benchmark)
        index.plan(
            f"component_share_{part}", section,
            f"Each component's share of the one kept rank budget ({names}) over the optimizer steps on "
            f"{benchmark}, one thin line per seed and a thick mean, with the phases shaded.",
            plot_rank_trajectories, trajectories[trajectories["benchmark"] == benchmark], data.phases,
            title=f"{benchmark}: share of the kept rank per component over training",
            ylabel="share of the whole kept rank\n(last text FFN, no task gradient, excluded)",
        )
    for component in (c for c in components if c != "qformer" and c in present):
        tables = heatmap_tables(records, component=component)
        vmax = max(float(np.nanmax(t.to_numpy(dtype=float), initial=0.0)) for t in tables.values()) or 1.0
        for benchmark, table in tables.items():
            seeds = _seeds_text(records[records["benchmark"] == benchmark])
            index.plan(
                f"rank_heatmap_{component}_{_file_part(benchmark)}", section,
                f"Final kept rank of every adapted {COMPONENT_TITLES[component]} module on {benchmark} ({seeds}), "
                "layer by block and projection, on a colour scale shared by the benchmarks; hatched cells have "
                "no module.",
                plot_rank_heatmap, table, vmax=vmax,
                title=f"{benchmark}: final AdaLoRA rank per {COMPONENT_TITLES[component]} module ({seeds})",
            )
    for normalize in NORMALIZATIONS if joint else ():
        intervals = block_share_ci_data(records, normalize=normalize, n_boot=n_boot, by="component")
        one_seed = intervals["n_seeds"].max() < 2
        ci_text = "no interval: 1 seed" if one_seed else "95% seed-bootstrap CI"
        index.plan(
            f"component_share_ci_{normalize}", section,
            f"Each component's final {_NORMALIZATION_TEXT[normalize]} of the whole budget per benchmark, mean "
            "over seeds with each seed as a dot" + ("" if one_seed else " and a 95% seed-bootstrap interval")
            + "; analysis.compare_benchmarks on analysis.component_share gives the permutation tests.",
            plot_block_share_ci, intervals, final_shares(records, normalize, by="component"),
            ylabel=_NORMALIZATION_TEXT[normalize], title=f"Final component shares, {normalize} normalisation ({ci_text})",
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
    for section in dict.fromkeys(figure.section for figure in index.planned):
        lines += ["", f"## {section}", ""]
        for figure in index.planned:
            if figure.section == section:
                links = " · ".join(f"[`{figure.stem}.{fmt}`]({figure.stem}.{fmt})" for fmt in FORMATS)
                lines.append(f"- {links}: {figure.description}")
    if index.skipped:
        lines += ["", "## Not drawn", ""]
        lines += [f"- {what}: {why}." for what, why in index.skipped]
    return "\n".join(lines) + "\n"
