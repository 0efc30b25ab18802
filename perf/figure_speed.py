"""Regenerating every figure (``regenerate_figures``) at the demo's size and at the study's size, side by side.

Two synthetic record sets (``analysis.synthetic_records``) laid out as the runner lays out runs:

- demo: 4 benchmarks x 2 seeds x 240 steps, recorded every 5 steps (the demo's schedule);
- study: 4 benchmarks x 5 seeds x 20,000 steps, recorded every 10 steps (about 4.8 million rows).

Each repeat regenerates all figures (PNG and PDF, ``index.md``) of one set in a fresh process, the sets
taking turns, and reports that process's time to load the records (``load_runs``, timed alone first),
its time for the whole ``regenerate_figures`` call (load, prepare, draw, save) and its peak resident
memory. Prints medians over ``--repeats`` and the study / demo ratios.

    python perf/figure_speed.py
    python perf/figure_speed.py --data /tmp/figure-sets   # write the sets there once, reuse them afterwards
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from analysis import find_runs, load_runs
from analysis.figures import FIGURE_COLUMNS, regenerate_figures
from analysis.synthetic_records import write_synthetic_runs

from analysis_scale import peak_rss_of_this_process_mib  # perf/analysis_scale.py, next to this script

SETS = {  # name -> write_synthetic_runs arguments
    "demo": dict(seeds=2, total_step=240, record_every=5, deltaT=5),
    "study": dict(seeds=5, total_step=20_000, record_every=10, deltaT=10),
}


def child(runs_dir: Path, out_dir: Path) -> dict[str, float]:
    """One regeneration in this process: load time, whole-call time, figure files written, peak memory."""
    started = time.perf_counter()
    load_runs(runs_dir, columns=FIGURE_COLUMNS)
    loaded = time.perf_counter()
    paths = regenerate_figures(runs_dir, out_dir)
    finished = time.perf_counter()
    return {
        "load_s": loaded - started,
        "regenerate_s": finished - loaded,
        "files": len(paths) - 1,
        "peak_mib": peak_rss_of_this_process_mib(),
    }


def fresh_process(runs_dir: Path, out_dir: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(runs_dir), str(out_dir)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder for the two record sets: reused if they exist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(*options.child)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        root = options.data or Path(scratch)
        data = {name: root / name for name in SETS}
        for name, settings in SETS.items():
            if not any(data[name].rglob("run.json")):
                started = time.perf_counter()
                write_synthetic_runs(data[name], **settings)
                print(f"wrote the {name} set to {data[name]} in {time.perf_counter() - started:.1f} s")
        runs = {name: len(find_runs(path)) for name, path in data.items()}
        rows = {
            name: sum(pq.ParquetFile(run / "records.parquet").metadata.num_rows for run in find_runs(path))
            for name, path in data.items()
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in SETS}
        order = list(SETS)
        for repeat in range(options.repeats):
            for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
                results[name].append(fresh_process(data[name], Path(scratch) / f"figures-{name}-{repeat}"))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"regenerate_figures in a fresh process per repeat (medians of {options.repeats} interleaved repeats)")
    print(f"{'set':<8}{'runs':>6}{'rows':>12}{'files':>7}{'load s':>9}{'figures s':>11}{'draw share':>12}{'peak MiB':>10}")
    for name in SETS:
        load, whole = median(name, "load_s"), median(name, "regenerate_s")
        print(
            f"{name:<8}{runs[name]:>6}{rows[name]:>12,}{int(median(name, 'files')):>7}{load:>9.2f}{whole:>11.2f}"
            f"{(whole - load) / whole:>12.0%}{median(name, 'peak_mib'):>10.0f}"
        )
    ratio_rows = rows["study"] / rows["demo"]
    ratio_time = median("study", "regenerate_s") / median("demo", "regenerate_s")
    print(f"study / demo: {ratio_rows:.0f}x the rows, {ratio_time:.1f}x the time of regenerate_figures")
    print("draw share: the part of regenerate_figures not spent loading (preparing, drawing, saving)")


if __name__ == "__main__":
    main()
