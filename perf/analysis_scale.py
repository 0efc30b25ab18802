"""Loading and aggregating a large record set against a plain JSON-lines + pandas baseline, side by side.

The record set is the study's scale (``qformer_budget.benchmarks.synthetic_records``: 4 benchmarks x 5 seeds x 20,000
steps x 120 modules, recorded every 10 steps, about 4.8 million rows). The task, timed end to end:
load the records, keep the budgeting phase, and compute the block shares of every run and step.

- ours: ``load_runs`` reading only the needed columns, filtering while reading, labels as categoricals,
  then ``block_share(step=None)``;
- ``load_runs`` with its defaults (every column, labels as strings), the filter in pandas, ``block_share``;
- baseline: the same records as JSON lines (one object per row), ``pd.read_json(lines=True)``, the filter
  and a plain pandas ``groupby``.

The baseline and the defaults run on a subset of runs (``--baseline-fraction``, whole runs) and are
scaled linearly to the full set; ours runs on both, so the subset ratio is measured, not scaled.
Variants run interleaved in rotating order in one process; times are medians over ``--repeats``.
Peak memory is the high-water mark of resident memory (``VmHWM``) of a fresh process running one
variant once; that process's wall time, interpreter start and imports included, is shown beside it.

    python perf/analysis_scale.py                        # full set written to a temporary folder
    python perf/analysis_scale.py --data /tmp/records    # write it there once, reuse it afterwards
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from qformer_budget.analysis import block_share, find_runs, load_runs

from common import ensure_synthetic_runs, peak_rss_mib, record_rows, rotated, run_child  # perf/common.py

PHASE = "budgeting"
# What block_share needs, the structural flag (deepest layer, text FFN) included.
NEEDED_COLUMNS = ["benchmark", "seed", "step", "layer", "block", "rank"]
JSON_LINES_FILE = "records.jsonl"


def ours(runs_dir: Path) -> pd.DataFrame:
    records = load_runs(runs_dir, columns=NEEDED_COLUMNS, filters=[("phase", "==", PHASE)], categorical=True)
    return block_share(records, step=None)


def load_runs_defaults(runs_dir: Path) -> pd.DataFrame:
    records = load_runs(runs_dir)
    return block_share(records[records["phase"] == PHASE], step=None)


def json_lines_baseline(runs_dir: Path) -> pd.DataFrame:
    """What one would write without the fast path: read every row, filter and group in pandas."""
    files = sorted(runs_dir.rglob(JSON_LINES_FILE))
    frames = [pd.read_json(path, lines=True).assign(run=str(path.parent)) for path in files]
    records = pd.concat(frames, ignore_index=True)
    records = records[records["phase"] == PHASE]
    deepest = records.groupby("run")["layer"].transform("max")
    records = records[~((records["block"] == "ffn_text") & (records["layer"] == deepest))]
    step_keys = ["run", "benchmark", "seed", "step"]
    kept = records.groupby([*step_keys, "block"])["rank"].sum()
    share = kept / kept.groupby(level=step_keys).transform("sum")
    return share.rename("share").reset_index()


VARIANTS: dict[str, tuple[str, Callable[[Path], pd.DataFrame]]] = {
    # name: (record set it runs on, function)
    "ours, full set": ("full", ours),
    "ours, subset": ("subset", ours),
    "load_runs defaults, subset": ("subset", load_runs_defaults),
    "JSON lines + pandas, subset": ("subset", json_lines_baseline),
}


def file_bytes(runs_dir: Path, name: str) -> int:
    return sum(path.stat().st_size for path in runs_dir.rglob(name))


def make_subset(full_dir: Path, subset_dir: Path, fraction: float) -> None:
    """Copy whole runs (a ``fraction`` of them, at least one) and write their records as JSON lines too."""
    runs = find_runs(full_dir)
    for run in runs[: max(1, round(fraction * len(runs)))]:
        copy = subset_dir / run.relative_to(full_dir)
        copy.mkdir(parents=True)
        for name in ("run.json", "records.parquet"):
            shutil.copy2(run / name, copy / name)
        records = pq.read_table(run / "records.parquet").to_pandas()
        records.to_json(copy / JSON_LINES_FILE, orient="records", lines=True)


def check_same_shares(subset_dir: Path) -> None:
    """The baseline computes what ours computes: same rows, same shares."""
    keys = ["run", "benchmark", "seed", "step", "block"]
    mine = ours(subset_dir).astype({k: str for k in ("run", "benchmark", "block")})
    theirs = json_lines_baseline(subset_dir).astype({k: str for k in ("run", "benchmark", "block")})
    both = mine.merge(theirs, on=keys, how="outer", suffixes=("_ours", "_baseline"), indicator=True)
    same_rows = (both["_merge"] == "both").all()
    if not same_rows or not np.allclose(both["share_ours"], both["share_baseline"], equal_nan=True):
        raise AssertionError("the baseline's block shares differ from ours: its time would mean nothing")


def fresh_process(variant: str, data: dict[str, Path]) -> tuple[float, float]:
    """Peak resident memory (MiB) and wall time (s, with start-up and imports) of a fresh Python process
    running ``variant`` once."""
    peak, wall = run_child(__file__, variant, "--data", str(data[VARIANTS[variant][0]]))
    return float(peak), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder of the full record set: reused if it holds runs")
    parser.add_argument("--baseline-fraction", type=float, default=0.1, help="part of the runs the baseline reads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:  # one variant in a fresh process, for its peak memory
        VARIANTS[options.child][1](options.data)
        print(peak_rss_mib())
        return

    with tempfile.TemporaryDirectory() as scratch:
        full_dir = options.data or Path(scratch) / "full"
        ensure_synthetic_runs(full_dir)
        subset_dir = Path(scratch) / "subset"
        make_subset(full_dir, subset_dir, options.baseline_fraction)
        data = {"full": full_dir, "subset": subset_dir}
        rows = {name: record_rows(path) for name, path in data.items()}
        check_same_shares(subset_dir)

        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        order = list(VARIANTS)
        for repeat in range(options.repeats):
            for name in rotated(order, repeat):
                started = time.perf_counter()
                VARIANTS[name][1](data[VARIANTS[name][0]])
                times[name].append(time.perf_counter() - started)
        fresh = {name: fresh_process(name, data) for name in VARIANTS}

        n_runs = {name: len(find_runs(path)) for name, path in data.items()}
        scale = rows["full"] / rows["subset"]
        median = {name: statistics.median(values) for name, values in times.items()}
        print(
            f"task: load, keep phase == {PHASE!r}, block shares of every run and step "
            f"(medians of {options.repeats} interleaved repeats)"
        )
        print(
            f"full set {n_runs['full']} runs, {rows['full']:,} rows; "
            f"subset {n_runs['subset']} runs, {rows['subset']:,} rows"
        )
        print(
            f"{'variant':<30}{'rows':>12}{'median s':>10}{'full set s':>12}{'x ours':>8}"
            f"{'peak RSS MiB':>14}{'fresh process s':>17}"
        )
        for name, (which, _) in VARIANTS.items():
            full_time = median[name] * (1 if which == "full" else scale)
            note = "" if which == "full" else " (scaled)"
            peak, wall = fresh[name]
            print(
                f"{name:<30}{rows[which]:>12,}{median[name]:>10.3f}{full_time:>12.2f}"
                f"{full_time / median['ours, full set']:>8.1f}{peak:>14.0f}{wall:>17.1f}{note}"
            )
        print("(scaled): full set s is the subset's median x full rows / subset rows; peak RSS is the subset's")
        subset_ratio = median["JSON lines + pandas, subset"] / median["ours, subset"]
        print(f"baseline / ours on the same subset (measured, not scaled): {subset_ratio:.1f}x")
        parquet = file_bytes(full_dir, "records.parquet") / rows["full"]
        json_lines = file_bytes(subset_dir, JSON_LINES_FILE) / rows["subset"]
        print(
            f"record bytes per module per recorded step: Parquet (zstd) {parquet:.1f}, "
            f"JSON lines {json_lines:.1f} ({json_lines / parquet:.1f}x)"
        )


if __name__ == "__main__":
    main()
