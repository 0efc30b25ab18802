"""The ``qformer-budget`` command: ``demo``, ``run``, ``rehearse``, ``status``, ``params``, ``figures``, ``report``."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from qformer_budget.runner.methods import METHODS  # the registry loads without torch


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo_configs, metrics_table, run_demo

    started = time.perf_counter()
    reports, figures = run_demo(args.out, demo_configs(args.out, args.seeds, args.examples, args.epochs))
    for report in reports:
        print(report.summary())
    print(metrics_table(args.out))
    for paths in figures:
        print(f"figures: {len(paths) - 1} files in {paths[-1].parent}, listed in {paths[-1]}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0 if not any(report.failed for report in reports) else 1


def _run(args: argparse.Namespace) -> int:
    from qformer_budget.core.run_folder import Preempted
    from qformer_budget.runner.config import load_config
    from qformer_budget.runner.preemption import STOP
    from qformer_budget.runner.sweep import run_sweep

    from .demo import metrics_table, quiet_library_output

    config = load_config(args.config).with_sizes(args.examples, args.epochs)
    if args.out is not None:
        config = config.with_paths(out=args.out)
    quiet_library_output()
    if args.dry_run:
        return _dry_run(config)
    if args.launcher is not None:
        return _launch(config, args.launcher)
    # A scheduler's stop: the run stops after its current step with a checkpoint, closes as preempted, and
    # its claim is freed; running the same command again resumes it.
    signal.signal(signal.SIGTERM, STOP.request)
    try:
        report = run_sweep(config, progress=not args.no_progress, shard=args.shard, threads=args.threads)
    except Preempted as exc:
        print(f"{exc}: the current run closed as preempted; run the same command again to resume it")
        return 128 + signal.SIGTERM
    print(report.summary())
    if report.finished or report.skipped:
        print(metrics_table(config.out))
    return 0 if not report.failed else 1


def _dry_run(config) -> int:
    from qformer_budget.runner.dry_run import dry_run

    report = dry_run(config)
    print(report.text())
    return 1 if report.problems else 0


def _launch(config, launcher: str) -> int:
    from qformer_budget.runner.launch import launch, wait

    jobs = launch(config, launcher)
    print(f"{len(jobs)} {launcher} workers submitted: jobs {', '.join(job.job_id for job in jobs)}; "
          f"logs in {config.out / 'submitit'}; qformer-budget status {config.out} shows where the runs stand")
    if launcher == "local":
        for job, summary in zip(jobs, wait(jobs)):
            print(f"worker {job.job_id}: {summary}")
    return 0


def _rehearse(args: argparse.Namespace) -> int:
    from qformer_budget.runner.rehearse import rehearse

    from .demo import quiet_library_output

    quiet_library_output()
    report = rehearse(args.preset, out=args.out, steps=args.steps, eval_examples=args.examples,
                      benchmark=args.benchmark, seed=args.seed, progress=not args.no_progress)
    print(report.text())
    return 0


def _shard(text: str) -> tuple[int, int]:
    """``I/N``: this worker takes every N-th run from the I-th (0-based)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"need 0 <= I < N in I/N, got {text!r}")
    return index, count


def _status(args: argparse.Namespace) -> int:
    from qformer_budget.runner.status import format_status, sweep_status

    print(format_status(sweep_status(args.out)))
    return 0


def _params(args: argparse.Namespace) -> int:
    from qformer_budget.runner.params import format_table, parameter_table

    table = parameter_table(args.presets, ranks=tuple(args.ranks), methods=tuple(args.methods))
    print(format_table(table))
    return 0


def _figures(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qformer_budget.plotting.figures import regenerate_figures

    out = Path(args.out) if args.out is not None else Path(args.runs_dir) / "figures"
    paths = regenerate_figures(args.runs_dir, out, method=args.method)
    print(f"{len(paths) - 1} figure files in {out}, listed in {paths[-1]}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from qformer_budget.plotting.explorer import write_report

    path = write_report(args.runs_dir, args.out, method=args.method)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline in any browser)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qformer-budget", description="Record where AdaLoRA puts its rank budget in the Q-Former."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of its one-line message"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the offline demo sweep: tiny InstructBLIP, four synthetic benchmarks")
    demo.add_argument("--out", required=True, help="output folder (runs in OUT/<benchmark>/<method>/seed<k>/)")
    demo.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to train (default: 0 1)")
    demo.add_argument("--examples", type=int, default=None, help="training examples per benchmark (default: 640)")
    demo.add_argument("--epochs", type=float, default=None, help="training epochs (default: 3)")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="run a sweep from a config file (see runner/configs/)")
    run.add_argument("config", help="sweep config (TOML)")
    run.add_argument("--out", default=None, help="write runs here instead of the config's [sweep] out")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--examples", type=int, default=None, help="at most this many training examples per run")
    run.add_argument("--epochs", type=float, default=None, help="train this many epochs instead of the config's")
    run.add_argument(
        "--dry-run", action="store_true",
        help="check the data (every record, every image's header) and the model folder's config.json, and print "
        "each run's steps, AdaLoRA phases, parameters, peak memory per GPU and record size; reads no weight, "
        "writes nothing, exits 1 listing every problem",
    )
    run.add_argument(
        "--shard", type=_shard, default=None, metavar="I/N",
        help="take every N-th run from the I-th (0-based), e.g. a Kubernetes job index or a shell loop",
    )
    run.add_argument(
        "--launcher", choices=["slurm", "local"], default=None,
        help="start the workers through submitit: a Slurm array job (the config's [launcher] table), or "
        "[launcher].local_workers processes on this machine; default: run here, in this process",
    )
    run.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads for this worker (default: all cores); workers sharing a machine should split them",
    )
    run.set_defaults(handler=_run)

    rehearse = commands.add_parser(
        "rehearse",
        help="a few steps of a sweep run at a preset's real size with random weights (nothing downloaded): "
        "peak memory and step time beside the dry run's estimate",
    )
    rehearse.add_argument("preset", help="a T5 preset, e.g. instructblip-flan-t5-xl, or real-qformer (the real "
                          "Q-Former between a small vision encoder and LM)")
    rehearse.add_argument("--out", default=None, help="a new or empty folder to keep the run in (default: a "
                          "temporary folder, removed)")
    rehearse.add_argument("--steps", type=int, default=6, help="optimizer steps at batch 1 (default: 6)")
    rehearse.add_argument("--examples", type=int, default=2, help="examples evaluated (default: 2)")
    rehearse.add_argument("--benchmark", default="vizwiz",
                          help="the synthetic benchmark to train and evaluate on: vizwiz (default), scienceqa, iconqa")
    rehearse.add_argument("--seed", type=int, default=0)
    rehearse.add_argument("--no-progress", action="store_true", help="no progress bar")
    rehearse.set_defaults(handler=_rehearse)

    status = commands.add_parser("status", help="every run of a sweep: finished, running, preempted, failed, not started")
    status.add_argument("out", help="the sweep's output folder")
    status.set_defaults(handler=_status)

    params = commands.add_parser("params", help="trainable parameters of the paper's grid, counted on the meta device")
    params.add_argument("--presets", nargs="+", default=None, help="model presets (default: all)")
    params.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    params.add_argument("--methods", nargs="+", default=["lora"], choices=list(METHODS))
    params.set_defaults(handler=_params)

    figures = commands.add_parser(
        "figures", help="regenerate every figure (PNG and PDF) and its index.md from recorded runs"
    )
    figures.add_argument("runs_dir", help="a run folder or a folder of runs (e.g. a sweep's out)")
    figures.add_argument("--out", default=None, help="write the figures here (default: RUNS_DIR/figures)")
    figures_method_help = "the configuration to draw when RUNS_DIR holds several (the run folders' parent name)"
    figures.add_argument("--method", default=None, help=figures_method_help)
    figures.set_defaults(handler=_figures)

    report = commands.add_parser(
        "report", help="the interactive explorer of recorded runs as one self-contained, offline HTML file"
    )
    report.add_argument("runs_dir", help="a run folder or a folder of runs (e.g. a sweep's out)")
    report.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    report.add_argument("--method", default=None, help=figures_method_help)
    report.set_defaults(handler=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's error (a bad config, path, record or preset, a locked run folder) prints its
    one-line message on stderr and returns 2, and ``--debug`` raises it with its traceback instead."""
    from qformer_budget.core.run_folder import RunFolderLocked

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, RunFolderLocked) as error:
        if args.debug:
            raise
        print(f"qformer-budget {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
