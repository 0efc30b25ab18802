"""The interactive budget explorer: plotly views of recorded runs, inline in Jupyter or as one offline HTML file.

``explore(records)`` returns an :class:`Explorer`, which Jupyter shows inline; ``write_report(runs_dir, path)``
(``qformer-budget report RUNS --out report.html``) writes the same views into one self-contained page with
plotly.js inlined, so it opens offline and can be sent to a colleague without Python. The views:

- per benchmark, the layer x sublayer heatmap with a slider over the (thinned) recorded steps, buttons
  for rank or importance (log10 score), and a hover giving the module, rank, init_r, score and the
  step's budget and threshold;
- per benchmark, the block shares of the kept rank over training, each seed thin and the mean thick,
  with the AdaLoRA phases shaded;
- the final block shares with their seed-bootstrap intervals, for each normalisation;
- the metrics table, one row per run (``analysis.run_summary``);
- where several components shared the budget (a joint run), per benchmark the component shares over
  training and a heatmap per other component (the LLM's layer x block grid differs from the Q-Former's),
  and the final component shares with their intervals.

Data preparation is in ``plotting.figure_data`` and ``plotting.explorer_data``; this module turns the prepared
tables into plotly figures and the page.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib import colors as mcolors
from plotly.offline import get_plotlyjs

from qformer_budget.analysis import NORMALIZATIONS, run_summary
from qformer_budget.analysis.load import load_runs
from qformer_budget.analysis.selection import component_of
from qformer_budget.core.atomic import write_text_atomic
from qformer_budget.core.grammar import COMPONENT_TITLES, COMPONENTS, component_columns

from .explorer_data import HEATMAP_STEPS, TRAJECTORY_STEPS, allocation_cells, cell_grid, thinned_records
from .figure_data import block_share_ci_data, phase_spans, trajectory_data
from .figures import FIGURE_COLUMNS, runs_by_benchmark
from .style import EMPTY_CELL_COLOR, EMPTY_LABEL, PHASE_COLORS, STRUCTURAL_LABEL, unit_levels, unit_of

EMPTY_CELL_HEX = mcolors.to_hex(EMPTY_CELL_COLOR)  # plotly draws no module (NaN) as the plot background
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
RANK_TRACE, SCORE_TRACE = 0, 1
# Figures fill their column (two side by side on a wide screen, one under the other on a narrow one).
STYLE = (
    "<style>.qb-row{display:flex;flex-wrap:wrap;gap:1em}.qb-row>div{flex:1 1 560px;min-width:0;max-width:1100px}"
    ".qb-table{overflow-x:auto}.qb-table table{border-collapse:collapse;font-size:13px}"
    ".qb-table td,.qb-table th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>"
)


def _amount(value: float) -> str:
    """A budget or a count of directions as written: 1,437, or 2.5 for a mean over seeds."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _step_budget(rows: pd.DataFrame) -> float:
    """The budget of one step's cells: the schedule's, the same in every seed."""
    return float(rows["budget"].mean())


def _hover_template(rows: pd.DataFrame) -> str:
    """The hover of one step: the cell's module, rank and score, the step's budget and threshold."""
    n_seeds = int(rows["n_seeds"].max())
    rank = "rank %{customdata[0]:.3~g}" + (
        f" (mean of {n_seeds} seeds, range %{{customdata[1]:.3~g}}–%{{customdata[2]:.3~g}})" if n_seeds > 1 else ""
    )
    score = "score %{customdata[3]:.3~g}" if rows["score"].notna().any() else "score: cleared by peft"
    threshold = rows["threshold"].dropna()
    threshold = f"threshold {threshold.mean():.3g}" if len(threshold) else "not a mask step"
    return (f"<b>%{{text}}</b><br>{rank}<br>{score}<br>"
            f"step budget {_amount(_step_budget(rows))}, {threshold}<extra></extra>")


def _block_axis_shapes(columns: list[str], n_layers: int) -> tuple[list[dict], list[dict]]:
    """White separators between the blocks of the ``block.proj`` columns and the block names above them."""
    blocks = [column.split(".", 1)[0] for column in columns]
    starts = [i for i in range(len(blocks)) if i == 0 or blocks[i] != blocks[i - 1]]
    ends = [*starts[1:], len(blocks)]
    shapes = [
        {"type": "line", "x0": edge - 0.5, "x1": edge - 0.5, "y0": -0.5, "y1": n_layers - 0.5,
         "line": {"color": "white", "width": 3}}
        for edge in starts[1:]
    ]
    names = [
        {"x": (start + end) / 2 - 0.5, "y": 1.0, "yref": "paper", "yanchor": "bottom",
         "text": f"<b>{blocks[start]}</b>", "showarrow": False, "font": {"size": 11}}
        for start, end in zip(starts, ends, strict=True)
    ]
    return shapes, names


def heatmap_figure(
    cells: pd.DataFrame, benchmark: str, vmax: float, component: str = "qformer", shared: bool = False
) -> go.Figure:
    """One benchmark's layer x sublayer heatmap of ``component`` with a slider over its steps
    (``explorer_data.allocation_cells``); ``shared``: other components share the budget, so the title says
    whose kept rank it gives.

    Two traces share the cells: rank (0 to ``vmax``) and importance (log10 of the mean score); buttons
    choose which is shown. The slider starts at the last step. The structural cells are outlined.
    """
    cells = cells[cells["benchmark"] == benchmark]
    n_layers = int(cells["layer"].max()) + 1
    columns = component_columns(component, cells["column"].unique())
    steps = sorted(cells["step"].unique())
    by_step = {step: rows for step, rows in cells.groupby("step", sort=True)}
    last = by_step[steps[-1]]
    labels = cell_grid(
        last.assign(label=last["sublayer"] + "<br>" + last["module"] + "<br>init_r " + last["init_r"].astype(str)),
        "label", n_layers, columns,
    )
    log_scores = np.log10(cells["score"].where(cells["score"] > 0))
    low, high = (float(log_scores.min()), float(log_scores.max())) if log_scores.notna().any() else (0.0, 1.0)

    def state(step) -> dict:
        rows = by_step[step]
        scores = rows.assign(log_score=np.log10(rows["score"].where(rows["score"] > 0)))
        hover = np.stack(
            [cell_grid(scores, name, n_layers, columns) for name in ("rank", "rank_min", "rank_max", "score")], axis=-1
        )
        return {  # one customdata and hover for both traces: restyle cycles a one-item list
            "z": [cell_grid(rows, "rank", n_layers, columns).round(3),
                  cell_grid(scores, "log_score", n_layers, columns).round(3)],
            "customdata": [hover.astype(np.float32)],
            "hovertemplate": [_hover_template(rows)],
        }

    structural = last[last["structural"]]
    note = f"grey: {EMPTY_LABEL} (importance: or no positive score)" + (
        f"; outlined: {STRUCTURAL_LABEL}" if len(structural) else ""
    )

    name = COMPONENT_TITLES.get(component, component)
    whose = f" {name}" if shared else ""

    def title(step) -> str:
        rows = by_step[step]
        kept = f"{name} kept {_amount(rows['rank'].sum())}" if shared else f"kept rank {_amount(rows['rank'].sum())}"
        return (f"{html.escape(benchmark)}{whose}: step {step} ({rows['phase'].iloc[0]}), budget "
                f"{_amount(_step_budget(rows))}, {kept}<br><sup>{note}</sup>")

    x = [column.split(".", 1)[1] for column in columns]
    y = [f"L{layer:02d}" for layer in range(n_layers)]
    first = state(steps[-1])
    common = {"x": list(range(len(x))), "y": list(range(n_layers)), "text": labels, "hoverongaps": False,
              "xgap": 1, "ygap": 1, "customdata": first["customdata"][0], "hovertemplate": first["hovertemplate"][0]}
    fig = go.Figure([
        go.Heatmap(z=first["z"][0], colorscale="Viridis", zmin=0, zmax=vmax,
                   colorbar={"title": {"text": "rank"}}, name="rank", **common),
        go.Heatmap(z=first["z"][1], colorscale="Magma", zmin=low, zmax=high,
                   colorbar={"title": {"text": "log10 score"}}, name="importance", visible=False, **common),
    ])
    shapes, names = _block_axis_shapes(columns, n_layers)
    shapes += [  # black under white dots, readable on any colour (as in the static heatmaps)
        {"type": "rect", "line": line, "x0": columns.index(c) - 0.42,
         "x1": columns.index(c) + 0.42, "y0": layer - 0.42, "y1": layer + 0.42}
        for layer, c in zip(structural["layer"], structural["column"], strict=True)
        for line in ({"color": "black", "width": 2.5}, {"color": "white", "width": 2.5, "dash": "dot"})
    ]
    slider_steps = [
        {"label": str(step), "method": "update",
         "args": [state(step), {"title.text": title(step)}, [RANK_TRACE, SCORE_TRACE]]}
        for step in steps
    ]
    buttons = [
        {"label": "rank", "method": "restyle", "args": [{"visible": [True, False]}]},
        {"label": "importance (log10 score)", "method": "restyle", "args": [{"visible": [False, True]}]},
    ]
    height, margin = 215 + 24 * max(n_layers, 6), {"t": 135, "b": 40, "l": 60, "r": 20}
    above_block_names = 1 + 30 / (height - margin["t"] - margin["b"])  # 30 px over the plot, in paper units
    fig.update_layout(
        title={"text": title(steps[-1])}, height=height,
        margin=margin, plot_bgcolor=EMPTY_CELL_HEX,
        xaxis={"tickvals": common["x"], "ticktext": x, "tickangle": -45, "showgrid": False, "zeroline": False},
        yaxis={"tickvals": common["y"], "ticktext": y, "autorange": "reversed", "showgrid": False,
               "zeroline": False, "title": {"text": f"{name} layer"}},
        shapes=shapes, annotations=names,
        sliders=[{"active": len(steps) - 1, "steps": slider_steps, "currentvalue": {"prefix": "step "},
                  "pad": {"t": 60}, "len": 1.0}],
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "x": 1.0, "xanchor": "right",
                      "y": above_block_names, "yanchor": "bottom", "showactive": True}],
    )
    return fig


def trajectory_figure(trajectories: pd.DataFrame, phases: pd.DataFrame, benchmark: str) -> go.Figure:
    """One benchmark's block (or component) shares over steps (``figure_data.trajectory_data``), the phases shaded."""
    rows = trajectories[trajectories["benchmark"] == benchmark]
    unit = unit_of(rows)
    levels, colors = unit_levels(rows, unit)
    fig = go.Figure()
    for phase, start, end in phases.loc[phases["benchmark"] == benchmark, ["phase", "start", "end"]].itertuples(
        index=False
    ):
        fig.add_vrect(x0=start, x1=end, fillcolor=PHASE_COLORS.get(phase, "#f5f5f5"), opacity=1, layer="below",
                      line_width=0, annotation_text=phase, annotation_position="top left")
    n_seeds = rows.loc[rows["line"] == "seed", "seed"].nunique()
    for block in levels:
        if n_seeds > 1:
            for seed, seed_rows in rows[(rows[unit] == block) & (rows["line"] == "seed")].groupby("seed"):
                fig.add_scatter(x=seed_rows["step"], y=seed_rows["value"], mode="lines", legendgroup=block,
                                showlegend=False, line={"color": colors[block], "width": 1}, opacity=0.45,
                                name=f"{block}, seed {seed}", hovertemplate="step %{x}: %{y:.3f}")
        mean = rows[(rows[unit] == block) & (rows["line"] == "mean")]
        fig.add_scatter(x=mean["step"], y=mean["value"], mode="lines", legendgroup=block, name=block,
                        line={"color": colors[block], "width": 3},
                        hovertemplate=f"{block}, mean of {n_seeds} seed(s)<br>step %{{x}}: %{{y:.3f}}<extra></extra>")
    what = "of the whole kept rank per component" if unit == "component" else "of kept rank per block"
    lines = " (each seed thin, mean thick)" if n_seeds > 1 else ""
    fig.update_layout(
        title={"text": f"{html.escape(benchmark)}: share {what}{lines}"},
        xaxis_title="optimizer step", yaxis_title="share of kept rank", yaxis_rangemode="tozero",
        height=380, plot_bgcolor="white", margin={"t": 60, "b": 40, "l": 60, "r": 20},
    )
    return fig


def _interval_text(low: float, high: float, n_seeds: int) -> str:
    if np.isfinite(low) and np.isfinite(high):
        return f"95% CI {low:.3f}–{high:.3f} over {n_seeds} seeds"
    return f"no interval: {n_seeds} seed"


def block_share_figure(shares: dict[str, pd.DataFrame]) -> go.Figure:
    """Final block (or component) shares per benchmark with seed-bootstrap intervals
    (``figure_data.block_share_ci_data``), one button per normalisation."""
    first_table = shares[NORMALIZATIONS[0]]
    unit = unit_of(first_table)
    levels, colors = unit_levels(first_table, unit)

    def bars(data: pd.DataFrame) -> dict[str, list]:
        per_block = [data[data[unit] == block] for block in levels]
        return {
            "x": [list(rows["benchmark"]) for rows in per_block],
            "y": [list(rows["mean"]) for rows in per_block],
            "error_y.array": [list(rows["ci_high"] - rows["mean"]) for rows in per_block],
            "error_y.arrayminus": [list(rows["mean"] - rows["ci_low"]) for rows in per_block],
            "text": [[_interval_text(*row) for row in rows[["ci_low", "ci_high", "n_seeds"]].itertuples(index=False)]
                     for rows in per_block],
        }

    first = bars(first_table)
    fig = go.Figure([
        go.Bar(x=first["x"][i], y=first["y"][i], name=block, marker_color=colors[block],
               text=first["text"][i], textposition="none",
               error_y={"type": "data", "array": first["error_y.array"][i],
                        "arrayminus": first["error_y.arrayminus"][i], "color": "black", "thickness": 1.2},
               hovertemplate=f"{block}: %{{y:.3f}}<br>%{{text}}<extra>%{{x}}</extra>")
        for i, block in enumerate(levels)
    ])
    buttons = [{"label": f"{name} normalisation", "method": "restyle", "args": [bars(data)]}
               for name, data in shares.items()]
    fig.update_layout(
        barmode="group", title={"text": f"Final {unit} shares with 95% seed-bootstrap intervals"},
        yaxis_title="share", yaxis_rangemode="tozero", height=420, plot_bgcolor="white",
        margin={"t": 110, "b": 40, "l": 60, "r": 20},
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "x": 0, "xanchor": "left",
                      "y": 1.04, "yanchor": "bottom"}],
    )
    return fig


def _figure_json(figure: go.Figure) -> str:
    """``figure`` with the explorer's config as JSON that is safe inside a script element: every ``<`` escaped,
    so that no name in the data can close the script or open a comment."""
    text = json.dumps({**json.loads(figure.to_json()), "config": PLOT_CONFIG}, separators=(",", ":"))
    return text.replace("<", "\\u003c")


@dataclass
class Explorer:
    """The explorer's views in page order, as plotly figures and HTML; Jupyter shows it inline."""

    sections: list[tuple[str, list[tuple[str, go.Figure | str]]]] = field(default_factory=list)

    @property
    def figures(self) -> dict[str, go.Figure]:
        """Every figure by its view name (``heatmap-<benchmark>``, ``trajectory-<benchmark>``, ``block-shares``),
        which the page gives each view's element as ``data-view``."""
        return {key: view for _, views in self.sections for key, view in views if isinstance(view, go.Figure)}

    def to_html(self, full_html: bool = True, title: str = "qformer-budget explorer", id_prefix: str = "qb") -> str:
        """One HTML document (or fragment) with plotly.js inlined once: works offline.

        Element ids are ``<id_prefix>-<n>``, never a benchmark's name; a fragment shown twice in one notebook
        needs a prefix of its own each time.
        """
        body = [STYLE, f'<script type="text/javascript">{get_plotlyjs()}</script>']
        plots = []
        views = [(heading, key, view) for heading, section in self.sections for key, view in section]
        for number, (heading, key, view) in enumerate(views):
            if number == 0 or heading != views[number - 1][0]:
                body.append(("</div>" if number else "") + f'<h2>{html.escape(heading)}</h2><div class="qb-row">')
            element = f'id="{id_prefix}-{number}" data-view="{html.escape(key)}"'
            if isinstance(view, go.Figure):
                body.append(f'<div><div {element} class="qb-plot" style="height:{view.layout.height}px"></div></div>')
                plots.append((f"{id_prefix}-{number}", view))
            else:
                body.append(f'<div {element} class="qb-table" style="flex-basis:100%;max-width:none">{view}</div>')
        body.append("</div>")
        # Plotted once every element exists, so each plot takes its column's final width.
        body.append("<script>")
        body += [f'Plotly.newPlot("{element_id}", {_figure_json(view)});' for element_id, view in plots]
        body.append("</script>")
        content = f'<div class="qformer-budget-explorer">{"".join(body)}</div>'
        if not full_html:
            return content
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            "<style>body{font-family:sans-serif;margin:1.5em}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>\n{content}\n</body></html>\n"
        )

    def _repr_html_(self) -> str:
        return self.to_html(full_html=False, id_prefix=f"qb-{uuid.uuid4().hex[:8]}")

    def write_html(self, path: str | os.PathLike, title: str = "qformer-budget explorer") -> Path:
        """Write the page to ``path`` (temporary name, then renamed into place)."""
        path = Path(path)
        write_text_atomic(path, self.to_html(title=title))
        return path


def metrics_table(records: pd.DataFrame) -> str:
    """``analysis.run_summary`` as an HTML table, each run by the last three parts of its folder (the runner's
    benchmark, method and seed)."""
    summary = run_summary(records)
    summary["run"] = summary["run"].map(lambda run: "/".join(Path(str(run)).parts[-3:]))
    return summary.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", border=0)


def explore(
    records: pd.DataFrame,
    *,
    heatmap_steps: int = HEATMAP_STEPS,
    trajectory_steps: int = TRAJECTORY_STEPS,
    n_boot: int = 2000,
) -> Explorer:
    """The interactive views of ``records`` (``analysis.load_runs``): show it in Jupyter or ``write_html`` it.

    The heatmap slider offers at most ``heatmap_steps`` recorded steps per benchmark and the trajectories
    at most ``trajectory_steps``, evenly spaced with the first and last kept (``explorer_data.thin_steps``).
    Block trajectories and shares are the Q-Former's, or the first adapted component's in runs without one
    (a plain LLM); each component in layers gets its heatmap.
    """
    records = records.assign(benchmark=records["benchmark"].astype(str))
    component = component_of(records)
    in_layers = set(component[records["layer"].notna().to_numpy()].unique())
    components = [c for c in COMPONENTS if c in set(component.unique())]
    drawn = [c for c in components if c in in_layers]  # a component of layerless modules only has no heatmap
    main = "qformer" if "qformer" in drawn else drawn[0]  # whose blocks the trajectories and shares show
    cells = {component: allocation_cells(records, heatmap_steps, component) for component in drawn}
    vmax = max(float(c["rank"].max()) for c in cells.values()) or 1.0
    thinned = thinned_records(records, trajectory_steps)
    trajectories = trajectory_data(thinned, component=main)
    joint = len(components) > 1
    component_trajectories = trajectory_data(thinned, by="component") if joint else None
    phases = phase_spans(records)
    explorer = Explorer()
    for benchmark in sorted(records["benchmark"].unique()):
        views = []
        for component in drawn:
            key = f"heatmap-{benchmark}" if component == "qformer" else f"heatmap-{component}-{benchmark}"
            views.append((key, heatmap_figure(cells[component], benchmark, vmax, component, shared=joint)))
            if component == main:
                views.append((f"trajectory-{benchmark}", trajectory_figure(trajectories, phases, benchmark)))
                if joint:
                    views.append((f"components-{benchmark}",
                                  trajectory_figure(component_trajectories, phases, benchmark)))
        explorer.sections.append((benchmark, views))
    shares = {normalize: block_share_ci_data(records, normalize, n_boot=n_boot, component=main)
              for normalize in NORMALIZATIONS}
    across: list[tuple[str, go.Figure | str]] = [("block-shares", block_share_figure(shares))]
    if joint:
        shares = {normalize: block_share_ci_data(records, normalize, n_boot=n_boot, by="component")
                  for normalize in NORMALIZATIONS}
        across.append(("component-shares", block_share_figure(shares)))
    explorer.sections.append(("Across benchmarks", [*across, ("metrics", metrics_table(records))]))
    return explorer


def write_report(
    runs_dir: str | os.PathLike, out: str | os.PathLike, *, method: str | None = None, n_boot: int = 2000
) -> Path:
    """Load the runs below ``runs_dir`` (one configuration: ``method`` as for the figures) and write the explorer
    to ``out`` as one offline HTML file."""
    runs = [run for group in runs_by_benchmark(runs_dir, method).values() for run in group]
    records = load_runs(runs, columns=FIGURE_COLUMNS, categorical=True)
    title = f"qformer-budget explorer: {len(runs)} run{'s' if len(runs) != 1 else ''} below {Path(runs_dir).resolve().name}"
    return explore(records, n_boot=n_boot).write_html(out, title=title)
