"""Regenerating every figure (``regenerate_figures``) at the demo's size and at the study's size, side by side.

Two synthetic record sets (``qformer_budget.benchmarks.synthetic_records``) laid out as the runner lays out runs:

- demo: 4 benchmarks x 2 seeds x 240 steps, recorded every 5 steps (the demo's schedule);
- study: 4 benchmarks x 5 seeds x 20,000 steps, recorded every 10 steps (about 4.8 million rows).

Each repeat runs, for each set and in rotating order, three fresh processes: one only loads the records the
figures need (``load_runs``), one regenerates all figures (PNG and PDF, ``index.md``: load, prepare, draw,
save; targets at study size: 15 s and 1 GiB), one writes the interactive report (``write_report``, target:
under 10 MB). Prints medians over ``--repeats`` of the times, the share of the figure call not spent loading,
each process's peak resident memory (with the figure worker's added: ``regenerate_figures`` draws in a
second process), the report's size, and the study / demo ratios.

    python perf/figure_speed.py
    python perf/figure_speed.py --data /tmp/figure-sets   # write the sets there once, reuse them afterwards
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from qformer_budget.analysis import find_runs, load_runs
from qformer_budget.plotting.explorer import write_report
from qformer_budget.plotting.figures import FIGURE_COLUMNS, regenerate_figures

from common import ensure_synthetic_runs, peak_rss_mib, record_rows, rotated, run_child  # perf/common.py

SETS = {  # name -> write_synthetic_runs arguments
    "demo": dict(seeds=2, total_step=240, record_every=5, deltaT=5),
    "study": dict(seeds=5, total_step=20_000, record_every=10, deltaT=10),
}
TASKS = ("load", "figures", "report")


def child(task: str, runs_dir: Path, out_dir: Path) -> dict[str, float]:
    """One task in this process: its time, the files written (figures) or MB written (report), peak memory."""
    started = time.perf_counter()
    files = megabytes = 0
    if task == "load":
        load_runs(runs_dir, columns=FIGURE_COLUMNS, categorical=True)
    elif task == "figures":
        files = len(regenerate_figures(runs_dir, out_dir)) - 1
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        megabytes = write_report(runs_dir, out_dir / "report.html").stat().st_size / 1e6
    # regenerate_figures draws in a second process too: its peak is added (an upper bound of the two at once).
    worker_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": time.perf_counter() - started, "files": files, "megabytes": megabytes,
            "peak_mib": peak_rss_mib() + worker_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder for the two record sets: reused if they exist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        task, runs_dir, out_dir = options.child
        print(json.dumps(child(task, Path(runs_dir), Path(out_dir))))
        return

    with tempfile.TemporaryDirectory() as scratch:
        root = options.data or Path(scratch)
        data = {name: root / name for name in SETS}
        for name, settings in SETS.items():
            ensure_synthetic_runs(data[name], **settings)
        runs = {name: len(find_runs(path)) for name, path in data.items()}
        rows = {name: record_rows(path) for name, path in data.items()}
        results: dict[tuple[str, str], list[dict[str, float]]] = {(s, t): [] for s in SETS for t in TASKS}
        for repeat in range(options.repeats):
            for name, task in rotated(list(results), repeat):
                out_dir = Path(scratch) / f"figures-{name}-{repeat}"
                line, _ = run_child(__file__, task, str(data[name]), str(out_dir))
                results[name, task].append(json.loads(line))

    def median(name: str, task: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name, task])

    print(f"load_runs, regenerate_figures and write_report, each in a fresh process (medians of {options.repeats} "
          "rotated repeats)")
    print(f"{'set':<8}{'runs':>6}{'rows':>12}{'files':>7}{'load s':>9}{'figures s':>11}{'draw share':>12}"
          f"{'peak MiB':>10}{'report s':>10}{'report MB':>11}{'peak MiB':>10}")
    for name in SETS:
        load, whole = median(name, "load", "seconds"), median(name, "figures", "seconds")
        print(
            f"{name:<8}{runs[name]:>6}{rows[name]:>12,}{int(median(name, 'figures', 'files')):>7}{load:>9.2f}"
            f"{whole:>11.2f}{(whole - load) / whole:>12.0%}{median(name, 'figures', 'peak_mib'):>10.0f}"
            f"{median(name, 'report', 'seconds'):>10.2f}{median(name, 'report', 'megabytes'):>11.1f}"
            f"{median(name, 'report', 'peak_mib'):>10.0f}"
        )
    study = (median("study", "figures", "seconds"), median("study", "figures", "peak_mib") / 1024)
    print(f"study-size regeneration: {study[0]:.1f} s (target 15 s), {study[1]:.2f} GiB peak (target 1 GiB)")
    ratio_time = median("study", "figures", "seconds") / median("demo", "figures", "seconds")
    print(f"study / demo: {rows['study'] / rows['demo']:.0f}x the rows, {ratio_time:.1f}x the time of regenerate_figures")
    print("draw share: the part of regenerate_figures not spent loading (preparing, drawing, saving)")


if __name__ == "__main__":
    main()
