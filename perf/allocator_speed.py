"""peft's AdaLoRA ``update_and_allocate`` against the same call driving ``FastRankAllocator``, side by side.

One model, one real backward pass to fill ``p.grad``; then the allocators take turns (rotating
order, so machine noise hits all alike) as ``rankallocator`` of that model, and only the
``update_and_allocate(step)`` call is timed: once at a step that only updates the importance
averages, once at a step that also masks. The fast allocator runs with its update compiled (the
default) and eager. Prints medians and the speed-up over peft.

In the same turns a triad, ``torch.add(a, b, out=c)`` on arrays as long as the adapter, measures
the memory bandwidth. An update must read the weights, their gradients and the two averages and
write the averages back: 6 such arrays, twice a triad's 3, so the memory-traffic bound of an
update is two triads; the last column is the compiled update's time over that bound.

    python perf/allocator_speed.py --preset tiny
    python perf/allocator_speed.py --preset real     # real Q-Former dims: 768 hidden, 3072 FFN, 1408-wide images
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from qformer_budget.benchmarks.synthetic_vqa import generate_examples
from qformer_budget.peft_hooks import AdaLoraSetup, FastRankAllocator, add_adalora, find_adalora_model
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.tiny import load_tiny_processor

from common import rotated  # perf/common.py and perf/models.py, next to this script
from models import preset_model

UPDATE_STEP = 6  # not a multiple of deltaT: averages only
MASK_STEP = 10  # a multiple of deltaT after tinit: averages and a mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)

    setup = AdaLoraSetup(total_step=60, tinit=5, tfinal=5, deltaT=5, init_r=12, target_r=4)
    processor = load_tiny_processor()
    model = add_adalora(preset_model(options.preset, processor), setup, seed=0)
    model(**InstructBlipCollator(processor)(generate_examples(2, seed=0))).loss.backward()
    adalora = find_adalora_model(model)
    peft_allocator = adalora.rankallocator
    allocators = {
        "peft": peft_allocator,
        "fast": FastRankAllocator(adalora.model, peft_allocator.peft_config, peft_allocator.adapter_name),
        "eager": FastRankAllocator(
            adalora.model, peft_allocator.peft_config, peft_allocator.adapter_name, compile_update=False
        ),
    }
    assert peft_allocator.budget_schedule(MASK_STEP)[1] and not peft_allocator.budget_schedule(UPDATE_STEP)[1]

    fast = allocators["fast"]
    numel = fast.layout.numel
    a, b, c = torch.rand(numel), torch.rand(numel), torch.empty(numel)

    def triad() -> None:
        torch.add(a, b, out=c)

    print(f"preset={options.preset} threads={options.threads} repeats={options.repeats} "
          f"({numel} adapter weights in {len(fast.modules)} modules); medians of update_and_allocate(step)")
    print(f"{'step':<26}{'peft ms':>9}{'fast ms':>9}{'speed-up':>10}{'eager ms':>10}{'speed-up':>10}"
          f"{'bound ms':>10}{'fast/bound':>12}")
    for label, step in (("averages only", UPDATE_STEP), ("averages + mask", MASK_STEP)):
        calls = {name: functools.partial(_update_and_allocate, adalora, allocator, step)
                 for name, allocator in allocators.items()} | {"triad": triad}
        timings = {name: [] for name in calls}
        for repeat in range(options.repeats + 2):  # the first two rounds warm up (compile, first allocations)
            for name in rotated(list(calls), repeat):
                started = time.perf_counter()
                calls[name]()
                if repeat >= 2:
                    timings[name].append(time.perf_counter() - started)
        peft_ms, fast_ms, eager_ms, triad_ms = (
            statistics.median(timings[name]) * 1e3 for name in ("peft", "fast", "eager", "triad")
        )
        bound_ms = 2 * triad_ms
        print(f"{f'{label} (step {step})':<26}{peft_ms:>9.2f}{fast_ms:>9.2f}{peft_ms / fast_ms:>9.1f}x"
              f"{eager_ms:>10.2f}{peft_ms / eager_ms:>9.1f}x{bound_ms:>10.2f}{fast_ms / bound_ms:>11.2f}x")
    print(f"triad: {triad_ms:.3f} ms, {3 * 4 * numel / triad_ms / 1e6:.1f} GB/s")


def _update_and_allocate(adalora, allocator, step: int) -> None:
    adalora.rankallocator = allocator
    adalora.update_and_allocate(step)


if __name__ == "__main__":
    main()
