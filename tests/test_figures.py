"""regenerate_figures end to end on run folders written by the real sink: files, index, bytes, CLI."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from qformer_budget.analysis import RecordError, load_runs
from qformer_budget.cli import main
from qformer_budget.core.records import StepRecord
from qformer_budget.plotting import plot_heatmap_grid, plot_rank_heatmap
from qformer_budget.plotting.figure_data import heatmap_tables
from qformer_budget.plotting.figure_worker import FigureWorker, FigureWorkerError, draw_all
from qformer_budget.plotting.figures import PlannedFigure, regenerate_figures

from fake_runs import fake_modules, write_fake_run

MODULES = fake_modules(layers=4)
INIT_R = 4
# (global_step, phase, mask_step, kept directions per module): the budget shrinks from 4 to 2 per module.
SCHEDULE = [
    (0, "warmup", False, 4), (4, "budgeting", True, 3), (9, "budgeting", True, 2), (14, "final", False, 2)
]
REPO = Path(__file__).resolve().parent.parent


def write_run(run_dir: Path, benchmark: str, seed: int) -> None:
    rng = np.random.default_rng([seed, *map(ord, benchmark)])
    scores = rng.lognormal(mean=-12, sigma=3, size=(len(MODULES), INIT_R)).astype(np.float32)
    records = []
    for global_step, phase, mask_step, per_module in SCHEDULE:
        budget = per_module * len(MODULES)
        kept = np.zeros((len(MODULES), INIT_R), dtype=bool)
        if per_module == INIT_R:
            kept[:] = True
        else:  # keep the `budget` highest-scored directions overall, as AdaLoRA's global threshold does
            kept.flat[np.argsort(scores, axis=None)[-budget:]] = True
        records.append(
            StepRecord(
                benchmark=benchmark, seed=seed, global_step=global_step, phase=phase, mask_step=mask_step,
                budget=budget, threshold=0.5 if mask_step else float("nan"), init_r=INIT_R, modules=MODULES,
                direction_kept=kept, direction_scores=None if phase == "final" else scores * (1 + global_step),
            )
        )
    write_fake_run(run_dir, records)


@pytest.fixture(scope="module")
def two_benchmarks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for benchmark in ("iconqa", "vizwiz"):
        for seed in (0, 1):
            write_run(root / benchmark / "adalora-all_linear-r4to2" / f"seed{seed}", benchmark, seed)
    return root


@pytest.fixture(scope="module")
def one_benchmark(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one")
    write_run(root / "scienceqa" / "adalora-all_linear-r4to2" / "seed0", "scienceqa", 0)
    return root


@pytest.fixture(scope="module")
def figures(two_benchmarks, tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("figures")
    return out, regenerate_figures(two_benchmarks, out)


def listed_files(index: Path) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", index.read_text(encoding="utf-8"))


def test_every_figure_is_written_as_png_and_pdf_and_listed_in_the_index(figures):
    out, paths = figures
    assert paths[-1] == out / "index.md"
    listed = listed_files(out / "index.md")
    stems = sorted({Path(name).stem for name in listed})
    assert stems == sorted([
        "block_share_ci_module", "block_share_ci_parameter", "block_share_ci_rank",
        "budget_schedule_iconqa", "budget_schedule_vizwiz",
        "importance_by_block",
        "rank_difference_iconqa_minus_vizwiz",
        "rank_heatmap_grid", "rank_heatmap_iconqa", "rank_heatmap_vizwiz",
        "rank_trajectory_iconqa", "rank_trajectory_vizwiz",
    ])
    assert sorted(listed) == sorted(f"{stem}.{fmt}" for stem in stems for fmt in ("png", "pdf"))
    assert sorted(p.name for p in paths[:-1]) == sorted(listed)
    for name in listed:
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
    assert (out / "rank_heatmap_iconqa.pdf").read_bytes().startswith(b"%PDF")
    with Image.open(out / "rank_heatmap_grid.png") as image:
        assert image.width > image.height > 300
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "4 runs below" in index and "iconqa (seeds 0, 1), vizwiz (seeds 0, 1)" in index
    assert "Not drawn" not in index
    # One sentence per figure, after the links.
    entries = [line for line in index.splitlines() if line.startswith("- [")]
    assert len(entries) == len(stems)
    assert all(re.fullmatch(r"- .*\): [A-Z][^\n]*\.", line) for line in entries)


def test_a_rerun_writes_identical_bytes(figures, two_benchmarks, tmp_path):
    out, paths = figures
    again = regenerate_figures(two_benchmarks, tmp_path)
    assert [p.name for p in again] == [p.name for p in paths]
    for first, second in zip(paths, again, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name
    png = (out / "rank_heatmap_iconqa.png").read_bytes()
    pdf = (out / "rank_heatmap_iconqa.pdf").read_bytes()
    assert b"matplotlib version" not in png and b"CreationDate" not in pdf


def test_one_process_and_two_write_the_same_bytes(two_benchmarks, tmp_path):
    two = regenerate_figures(two_benchmarks, tmp_path / "two", n_boot=50, workers=2)
    alone = regenerate_figures(two_benchmarks, tmp_path / "one", n_boot=50, workers=1)
    assert [p.name for p in alone] == [p.name for p in two] and len(two) == 2 * 12 + 1
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(alone, two, strict=True))


def test_a_figure_workers_error_and_its_death_reach_the_caller_by_name(two_benchmarks, tmp_path, monkeypatch):
    # Whatever the worker's imports print on its stdout stays out of its answers.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text("print('hello from sitecustomize')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    out = tmp_path / "out"
    out.mkdir()
    table = heatmap_tables(load_runs(two_benchmarks))["iconqa"]
    good = PlannedFigure("good", "s", "d", plot_rank_heatmap, (table,), {})
    bad = PlannedFigure("bad", "s", "d", plot_heatmap_grid, ({},), {})
    with FigureWorker.started(1) as (worker,):
        assert [p.name for p in worker.draw(good, out, 50)] == ["good.png", "good.pdf"]
        with pytest.raises(ValueError, match="no tables to draw") as raised:  # raised there, re-raised here
            worker.draw(bad, out, 50)
        cause = raised.value.__cause__
        assert isinstance(cause, FigureWorkerError) and f"(pid {worker.process.pid}) failed while drawing bad" in str(cause)
        assert "Traceback" in str(cause) and "plot_heatmap_grid" in str(cause)
        worker.process.kill()
        worker.process.wait()
        with pytest.raises(FigureWorkerError, match=rf"\(pid {worker.process.pid}\) stopped \(exit code -9\) while "
                                                     r"drawing good"):
            worker.draw(good, out, 50)
    assert sorted(p.name for p in out.iterdir()) == ["good.pdf", "good.png"]  # no temporary file left
    with pytest.raises(ValueError, match=r"two figures would be written to the same files \['good'\]"):
        draw_all([good, good], out, 50, [])
    with pytest.raises(ValueError, match="workers must be at least 1"):
        regenerate_figures(two_benchmarks, out, workers=0)


def test_one_benchmark_one_seed_skips_what_cannot_be_drawn_and_says_so(one_benchmark, tmp_path):
    paths = regenerate_figures(one_benchmark, tmp_path, n_boot=50)
    names = {p.name for p in paths}
    assert "rank_heatmap_scienceqa.png" in names and "rank_heatmap_grid.png" not in names
    assert not any(name.startswith("rank_difference_") for name in names)
    index = (tmp_path / "index.md").read_text(encoding="utf-8")
    assert sorted(listed_files(tmp_path / "index.md")) == sorted(names - {"index.md"})
    assert "1 run below" in index and "scienceqa (seed 0)" in index
    not_drawn = index.split("## Not drawn", 1)[1]
    assert "rank_heatmap_grid, rank_difference_<a>_minus_<b>: need 2 or more benchmarks" in not_drawn
    assert "confidence intervals of block_share_ci_<normalisation>: need 2 or more seeds" in not_drawn


def test_unfinished_runs_are_named_in_the_index(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "iconqa" / "m" / "seed0", "iconqa", 0)
    live = runs / "iconqa" / "m" / "seed1"
    write_run(live, "iconqa", 1)
    meta = (live / "run.json").read_text().replace('"finished"', '"running"')
    (live / "run.json").write_text(meta)
    assert main(["figures", str(runs)]) == 0  # default --out: RUNS_DIR/figures
    index = (runs / "figures" / "index.md").read_text()
    assert "Runs not finished" in index and "- `iconqa/m/seed1`: running" in index


def test_a_run_description_without_benchmark_or_seed_is_named(tmp_path):
    run = tmp_path / "runs" / "iconqa" / "m" / "seed0"
    write_run(run, "iconqa", 0)
    meta = json.loads((run / "run.json").read_text())
    del meta["seed"]
    (run / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RecordError, match=rf"{re.escape(str(run / 'run.json'))}: no seed"):
        regenerate_figures(tmp_path / "runs", tmp_path / "figures")


def test_several_configurations_need_a_method(tmp_path):
    runs = tmp_path / "runs"
    for method in ("adalora-a", "adalora-b"):
        write_run(runs / "iconqa" / method / "seed0", "iconqa", 0)
    with pytest.raises(ValueError, match=r"configurations \(adalora-a, adalora-b\); choose one with method="):
        regenerate_figures(runs, tmp_path / "figures")
    paths = regenerate_figures(runs, tmp_path / "figures", method="adalora-b", n_boot=20)
    assert "1 run below" in paths[-1].read_text()
    with pytest.raises(ValueError, match="no run of method 'lora'"):
        regenerate_figures(runs, tmp_path / "figures", method="lora")


def test_cli_figures_subcommand_and_script_write_the_same_files(one_benchmark, tmp_path, capsys):
    assert main(["figures", str(one_benchmark), "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    written = sorted((tmp_path / "cli").iterdir())
    cli = tmp_path / "cli"
    assert f"{len(written) - 1} figure files in {cli}, listed in {cli / 'index.md'}" in printed
    assert "rank_heatmap_scienceqa.png" in [p.name for p in written]
    script = subprocess.run(
        [sys.executable, str(REPO / "figures" / "regenerate.py"), str(one_benchmark), "--out", str(tmp_path / "s")],
        capture_output=True, text=True, check=True,
    )
    assert f"{len(written) - 1} figure files in" in script.stdout
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [p.name for p in written]
    for path in written:  # the same function behind both: the same bytes
        assert (tmp_path / "s" / path.name).read_bytes() == path.read_bytes(), path.name



def test_a_rerun_that_fails_while_saving_leaves_every_earlier_file_whole(two_benchmarks, tmp_path, monkeypatch):
    out = tmp_path / "figures"
    regenerate_figures(two_benchmarks, out, n_boot=20)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_savefig = Figure.savefig
    calls = []

    def savefig_then_die(self, target, **kwargs):
        calls.append(target)
        if len(calls) == 5:  # the fifth file: some bytes written, then the process is stopped
            target.write(b"\x89PNG half")
            raise KeyboardInterrupt
        return real_savefig(self, target, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig_then_die)
    with pytest.raises(KeyboardInterrupt):
        regenerate_figures(two_benchmarks, out, n_boot=20)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no cut file, no temporary left


@pytest.mark.slow
def test_killed_figure_reruns_leave_only_whole_files(two_benchmarks, tmp_path):
    """``qformer-budget figures`` SIGKILLed at several moments of a rerun: every file index.md lists is whole."""
    out = tmp_path / "figures"
    assert main(["figures", str(two_benchmarks), "--out", str(out)]) == 0
    command = [sys.executable, "-m", "qformer_budget.cli", "figures", str(two_benchmarks), "--out", str(out)]
    for delay in (1.5, 2.5, 3.5, 4.5):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.kill()
        process.wait()
        for name in listed_files(out / "index.md"):
            path = out / name
            if path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
            else:
                assert path.read_bytes().rstrip().endswith(b"%%EOF"), name
