"""The demo sweep's wall time with one worker and with two local submitit workers, side by side.

One worker is ``qformer-budget run`` in one process (torch's default threads: all cores); two workers are
``qformer-budget run --launcher local`` with ``local_workers = 2`` (the cores split between them). Both
train the same runs into fresh folders from the same synthetic data, written once beforehand.

    python perf/workers_speed.py                      # the demo config: 4 benchmarks x 2 seeds
    python perf/workers_speed.py --examples 160       # smaller runs, for a quick look
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from qformer_budget.runner.config import load_config
from qformer_budget.runner.sweep import ensure_synthetic_data

DEMO = files("qformer_budget.runner") / "configs" / "demo.toml"


def write_config(folder: Path, out: str, data: Path, examples: int | None) -> Path:
    text = re.sub(r"(?m)^out = .*$", f'out = "{folder / out}"', DEMO.read_text())
    text = re.sub(r"(?m)^root = .*$", f'root = "{data}"', text)
    if examples is not None:
        text = text.replace("[data]\n", f"[data]\nmax_train_examples = {examples}\n", 1)
    text += "\n[launcher]\nlocal_workers = 2\n"
    path = folder / f"{out}.toml"
    path.write_text(text)
    return path


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=None, help="training examples per run (default: the demo's)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one, two = (write_config(folder, name, folder / "data", options.examples) for name in ("one", "two"))
        ensure_synthetic_data(load_config(one))  # written once, outside the timings
        cli = [sys.executable, "-m", "qformer_budget.cli", "run", "--no-progress"]
        runs = len(load_config(one).runs())
        single = timed([*cli, str(one)])
        double = timed([*cli, str(two), "--launcher", "local"])
    print(f"demo sweep, {runs} runs{'' if options.examples is None else f' of {options.examples} examples'}")
    print(f"{'workers':<10}{'wall s':>10}")
    print(f"{'1':<10}{single:>10.1f}")
    print(f"{'2 (local)':<10}{double:>10.1f}")
    print(f"speed-up with 2 workers: {single / double:.2f}x")


if __name__ == "__main__":
    main()
