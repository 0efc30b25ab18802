"""Exact resume of AdaLoRA mid-schedule: what peft's checkpoints lack, saved beside them.

peft saves an AdaLoRA adapter trimmed to its current ranks and never saves the allocator's
importance averages, so a run resumed mid-schedule cannot continue: the Trainer fails with a size
mismatch, and a hand-made reload over-prunes at the next mask step. A budget state file holds the
rest, as safetensors (data only, no pickle):

- ``adapter/<name>``: every AdaLoRA parameter at full ``init_r`` width, as it lives in training;
- ``exp_avg_ipt/<name>`` and ``exp_avg_unc/<name>``: the allocator's importance averages
  (absent once peft cleared them at the final mask step);
- ``rank_pattern/<module>``: the current mask (absent before the first mask step);
- metadata: the global step to resume at and the AdaLoRA settings it was saved under.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch
from peft.tuners.adalora import AdaLoraModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .fast_allocator import FastRankAllocator
from .model import allocator_parameters, find_adalora_model
from .peft_internals import AVERAGES, allocator_averages, last_updated_step, set_allocator_averages

BUDGET_STATE_FILE = "qformer_budget_state.safetensors"
STATE_FORMAT = "qformer-budget-adalora-state/1"
CHECKED_SETTINGS = ("init_r", "target_r", "tinit", "tfinal", "deltaT", "total_step", "beta1", "beta2")


class BudgetStateError(ValueError):
    """A budget state file that cannot resume this model; the message names the file."""


def save_budget_state(model: torch.nn.Module, directory: str | os.PathLike, *, steps_done: int) -> Path:
    """Write the budget state of ``model`` to ``directory/qformer_budget_state.safetensors``.

    ``steps_done`` is the number of optimizer steps taken, which is the 0-based step training resumes at (the
    Trainer's ``state.global_step``; in a loop, the last step given to ``BudgetRecorder.step`` plus one). Once a
    recorder or callback drives the model, a count that disagrees with the last step it updated is refused.
    """
    adalora = find_adalora_model(model)
    last = last_updated_step(adalora)
    if last is not None and steps_done != last + 1:
        raise ValueError(
            f"save_budget_state got steps_done={steps_done}, but the last step updated was {last}: pass "
            f"steps_done={last + 1}, the number of optimizer steps taken (not the 0-based step of the last one)"
        )
    adapter = adalora.trainable_adapter_name
    config = adalora.peft_config[adapter]
    averages = allocator_averages(adalora.rankallocator)
    tensors = {f"adapter/{n}": p.detach().to("cpu").contiguous().clone() for n, p in allocator_parameters(adalora).items()}
    for average in ("exp_avg_ipt", "exp_avg_unc"):
        tensors.update(
            (f"{average}/{n}", t.detach().to("cpu").contiguous().clone()) for n, t in averages[average].items()
        )
    for key, kept in (config.rank_pattern or {}).items():
        tensors[f"rank_pattern/{key}"] = torch.tensor(kept, dtype=torch.bool)
    metadata = {"format": STATE_FORMAT, "global_step": str(int(steps_done)), "adapter": adapter}
    metadata |= {key: str(getattr(config, key)) for key in CHECKED_SETTINGS}
    path = Path(directory) / BUDGET_STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_budget_state(model: torch.nn.Module, directory: str | os.PathLike) -> int:
    """Restore adapter weights, importance averages and mask saved by :func:`save_budget_state`.

    Returns the 0-based global step to resume at. Refuses a state saved under other AdaLoRA
    settings or for other modules, naming the file and the first difference.
    """
    path = Path(directory) / BUDGET_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no qformer-budget state; AdaLoRA can only resume from checkpoints written while "
            "AdaLoraBudgetCallback (or save_budget_state) was in use"
        )
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BudgetStateError(f"{path}: not a readable budget state ({exc})") from exc
    if metadata.get("format") != STATE_FORMAT:
        raise BudgetStateError(f"{path}: format {metadata.get('format')!r}, expected {STATE_FORMAT!r}")
    adalora = find_adalora_model(model)
    adapter = adalora.trainable_adapter_name
    config = adalora.peft_config[adapter]
    for key in CHECKED_SETTINGS:
        if metadata.get(key) != str(getattr(config, key)):
            raise BudgetStateError(
                f"{path}: saved with {key}={metadata.get(key)}, this model has {key}={getattr(config, key)}"
            )
    parameters = allocator_parameters(adalora)
    saved = {name.removeprefix("adapter/"): t for name, t in tensors.items() if name.startswith("adapter/")}
    if saved.keys() != parameters.keys():
        difference = sorted(saved.keys() ^ parameters.keys())[0]
        where = "the file" if difference in saved else "the model"
        raise BudgetStateError(f"{path}: adapter parameter {difference} exists only in {where}")
    for name, parameter in parameters.items():
        if saved[name].shape != parameter.shape:
            raise BudgetStateError(
                f"{path}: adapter parameter {name} has shape {tuple(saved[name].shape)}, the model {tuple(parameter.shape)}"
            )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(saved[name])
    _restore_allocator(adalora, tensors, parameters)
    pattern = {name.removeprefix("rank_pattern/"): t.tolist() for name, t in tensors.items() if name.startswith("rank_pattern/")}
    config.rank_pattern = pattern or None
    return int(metadata["global_step"])


def _restore_allocator(adalora: AdaLoraModel, tensors: dict[str, torch.Tensor], parameters: dict) -> None:
    saved: dict[str, dict[str, torch.Tensor]] = {name: {} for name in AVERAGES}
    for name, parameter in parameters.items():
        if f"exp_avg_ipt/{name}" not in tensors:
            continue
        # peft restarts all three averages of a parameter missing from ``ipt``: fill it too.
        saved["ipt"][name] = torch.zeros_like(parameter)
        saved["exp_avg_ipt"][name] = tensors[f"exp_avg_ipt/{name}"].to(parameter.device)
        saved["exp_avg_unc"][name] = tensors[f"exp_avg_unc/{name}"].to(parameter.device)
    allocator = adalora.rankallocator
    if isinstance(allocator, FastRankAllocator):
        allocator.load_averages(SimpleNamespace(**saved))
    else:
        set_allocator_averages(allocator, saved)


@contextmanager
def untrimmed_adapter_saves(model: torch.nn.Module) -> Iterator[None]:
    """While inside, peft's ``save_pretrained`` writes the adapter at full ``init_r`` width, as it trains.

    peft trims a saved AdaLoRA adapter by the config's ``rank_pattern``; a checkpoint meant for
    resuming needs the live, untrimmed weights, which load back into a fresh model without a size
    mismatch. The pattern is put back on exit.
    """
    adalora = find_adalora_model(model)
    config = adalora.peft_config[adalora.trainable_adapter_name]
    pattern, config.rank_pattern = config.rank_pattern, None
    try:
        yield
    finally:
        config.rank_pattern = pattern
