"""Recorder cost per training step, measured side by side in one run.

Copies of the same model train in lockstep (interleaved step by step in rotating order, so machine
noise hits all alike): peft's ``update_and_allocate`` alone (the baseline), the recorder recording
every ``deltaT`` steps (the default), the recorder recording every step (the worst case), and the
recorder recording every step while driving :class:`~peft_hooks.FastRankAllocator`. Prints medians
of the whole step and of the allocation call (``recorder.step`` or ``update_and_allocate``), and the
recorder's own cost: the time ``recorder.step`` spends outside the allocator's
``update_and_allocate`` (timed by a wrapper around it), as a median (the typical step) and a mean
(the cost averaged over all steps, which is what counts when only some steps are recorded), also as
a share of the baseline's median step. Timing the recorder's own work directly keeps the
allocator's noise (several ms at real size) out of a difference of a few ms.

    python perf/recorder_overhead.py --preset tiny
    python perf/recorder_overhead.py --preset real     # real Q-Former dims, small vision encoder and LM
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import torch

from qformer_budget.benchmarks.synthetic_vqa import generate_examples
from qformer_budget.peft_hooks import AdaLoraSetup, BudgetRecorder, add_adalora, find_adalora_model
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.tiny import load_tiny_processor

from common import rotated  # perf/common.py and perf/models.py, next to this script
from models import preset_model

VARIANTS = {  # name -> BudgetRecorder settings (None: peft's update_and_allocate alone)
    "peft alone": None,
    "recorder every deltaT": dict(),
    "recorder every step": dict(record_every=1),
    "every step, fast alloc": dict(record_every=1, fast_allocator=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    batch_size = options.batch or (8 if options.preset == "tiny" else 2)
    torch.set_num_threads(options.threads)

    setup = AdaLoraSetup(total_step=options.steps, tinit=5, tfinal=5, deltaT=5, init_r=12, target_r=4)
    processor = load_tiny_processor()
    batch = InstructBlipCollator(processor)(generate_examples(batch_size, seed=0))
    variants = {}
    for name, settings in VARIANTS.items():
        model = add_adalora(preset_model(options.preset, processor), setup, seed=0)
        recorder = None if settings is None else BudgetRecorder(tempfile.mkdtemp(), **settings)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        variants[name] = dict(model=model, recorder=recorder, optimizer=optimizer, step=[], alloc=[], inner=[], own=[])
        _time_update_and_allocate(find_adalora_model(model), variants[name]["inner"])

    order = list(variants.values())
    for step in range(options.steps):
        for v in rotated(order, step):
            started = time.perf_counter()
            v["model"](**batch).loss.backward()
            v["optimizer"].step()
            alloc_started = time.perf_counter()
            if v["recorder"] is None:
                v["model"].base_model.update_and_allocate(step)
            else:
                v["recorder"].step(v["model"], step)
            finished = time.perf_counter()
            v["optimizer"].zero_grad()
            inner = v["inner"].pop()
            if step >= 3:  # skip warm-up steps
                v["step"].append(finished - started)
                v["alloc"].append(finished - alloc_started)
                v["own"].append(finished - alloc_started - inner)
    for v in variants.values():
        if v["recorder"] is not None:
            v["recorder"].close()

    base_step = statistics.median(variants["peft alone"]["step"])
    print(f"preset={options.preset} batch={batch_size} threads={options.threads} steps={options.steps} "
          f"(over {len(variants['peft alone']['step'])} steps; own = recorder.step minus update_and_allocate)")
    print(f"{'variant':<24}{'step ms':>9}{'alloc ms':>10}{'step ratio':>12}"
          f"{'own ms median':>15}{'% of step':>11}{'own ms mean':>13}{'% of step':>11}")
    for name, v in variants.items():
        step_ms = statistics.median(v["step"]) * 1e3
        own_median, own_mean = statistics.median(v["own"]) * 1e3, statistics.fmean(v["own"]) * 1e3
        print(
            f"{name:<24}{step_ms:>9.1f}{statistics.median(v['alloc']) * 1e3:>10.2f}{step_ms / (base_step * 1e3):>12.3f}"
            f"{own_median:>15.2f}{100 * own_median / (base_step * 1e3):>10.2f}%"
            f"{own_mean:>13.2f}{100 * own_mean / (base_step * 1e3):>10.2f}%"
        )
    print(f"baseline: median step {base_step * 1e3:.1f} ms, peft's update_and_allocate "
          f"{statistics.median(variants['peft alone']['alloc']) * 1e3:.2f} ms")


def _time_update_and_allocate(adalora, durations: list[float]) -> None:
    """Wrap ``adalora.update_and_allocate`` so that each call appends its duration to ``durations``."""
    update_and_allocate = adalora.update_and_allocate

    @functools.wraps(update_and_allocate)
    def timed(global_step: int) -> None:
        started = time.perf_counter()
        update_and_allocate(global_step)
        durations.append(time.perf_counter() - started)

    adalora.update_and_allocate = timed

if __name__ == "__main__":
    main()
