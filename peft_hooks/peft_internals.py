"""Every peft internal qformer-budget relies on, in one place, each with why it is needed.

peft documents none of these; a peft release may rename or change any of them. Each accessor here
raises :class:`PeftInternalsChanged` naming the peft version and the internal when it is gone, and
``tests/test_peft_internals.py`` checks every one of them (behaviour included) against the installed peft.

- ``PeftModel._enable_peft_forward_hooks`` and ``special_peft_forward_args``: ``AdaLoraPeftModel`` runs the
  AdaLoRA tuner's own forward (which adds the orthogonal regulariser) with peft's per-call forward hooks,
  because peft's task subclasses pass arguments that decoder-only InstructBLIP models reject.
- ``LoraLayer._cast_input_dtype``: the routed layers' forward casts its inputs exactly as peft's does.
- the forward of ``lora.Linear`` and of AdaLoRA's ``SVDLinear``: the routed layers copy them and put the
  routing function into the bottleneck; they are installed by swapping the class of the layers peft built
  (:func:`swap_layer_class`), so peft's parameters, state dict, saving and resizing stay its own; the
  copies are checked against peft's own forward in ``tests/test_routing.py`` (``...reduce_to_plain_*``).
- ``peft.tuners.adalora.layer.deepspeed_config``: under DeepSpeed, gradients must be gathered parameter by
  parameter, so the fast allocator falls back to peft's own methods.
- the ``RankAllocator``'s state and methods: its importance averages ``ipt``, ``exp_avg_ipt`` and
  ``exp_avg_unc`` (dicts by parameter name, filled by ``update_ipt`` for the parameters its name filter
  takes), ``init_bgt``, ``beta1``/``beta2``, ``budget_schedule``, ``update_ipt``, ``mask_to_budget``,
  ``mask_using_rank_pattern`` and ``reset_ipt``; the recorder reads the averages, resume saves and restores
  them, and the fast allocator replaces the methods with the same arithmetic (``_element_score`` and
  ``_combine_ipt`` are its reference in the tests).
- the texts of two peft warnings that are false alarms for AdaLoRA adapters, silenced when saving and loading;
- ``AdaLoraModel.update_and_allocate``, guarded per instance (:func:`update_once_per_step`) so that a second
  update of the same step, which would update the averages twice, is refused.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import peft
import torch
from peft import PeftModel
from peft.tuners.adalora import layer as adalora_layer
from peft.tuners.adalora.layer import AdaLoraLayer, RankAllocator, SVDLinear
from peft.tuners.lora import layer as lora_layer

LoraLinear = lora_layer.Linear
AVERAGES: tuple[str, ...] = ("ipt", "exp_avg_ipt", "exp_avg_unc")

# peft's warnings that are false alarms for AdaLoRA (see peft_hooks.adapter_io).
EMPTY_TENSOR_SAVE_WARNING = r".*LoRA tensor\(s\) have invalid shape"
RANK_PATTERN_LOAD_WARNING = "The following rank_pattern keys did not match any targeted module"

__all__ = [
    "AVERAGES",
    "AdaLoraLayer",
    "LoraLinear",
    "PeftInternalsChanged",
    "RankAllocator",
    "SVDLinear",
    "allocator_averages",
    "allocator_takes",
    "cast_input_dtype",
    "deepspeed_active",
    "last_updated_step",
    "peft_forward_hooks",
    "set_allocator_averages",
    "swap_layer_class",
    "update_once_per_step",
]


class PeftInternalsChanged(RuntimeError):
    """A peft internal qformer-budget relies on is gone or changed; the message names it and peft's version."""


def internal(owner: Any, name: str, why: str) -> Any:
    """``owner.name``, or a :class:`PeftInternalsChanged` naming the peft version, the internal and ``why``."""
    try:
        return getattr(owner, name)
    except AttributeError:
        where = getattr(owner, "__name__", type(owner).__name__)
        raise PeftInternalsChanged(
            f"peft {peft.__version__} has no {where}.{name}, which qformer-budget needs {why}; "
            "install a peft version this qformer-budget supports (see setup.cfg)"
        ) from None


@contextmanager
def peft_forward_hooks(model: PeftModel, args: tuple, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """peft's per-call forward hooks around a forward; yields ``kwargs`` without peft's own arguments."""
    enable = internal(model, "_enable_peft_forward_hooks", "to run AdaLoRA's forward with peft's forward hooks")
    special = internal(model, "special_peft_forward_args", "to pass peft's own forward arguments on")
    with enable(*args, **kwargs):
        yield {k: v for k, v in kwargs.items() if k not in special}


def cast_input_dtype(layer: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` cast for an adapter of ``dtype`` as peft's own LoRA forward casts it."""
    return internal(layer, "_cast_input_dtype", "to cast routed inputs as peft's LoRA forward does")(x, dtype)


def swap_layer_class(layer: torch.nn.Module, cls: type) -> None:
    """Make ``layer`` (built by peft) an instance of ``cls``, a subclass of its class that adds no state."""
    if not issubclass(cls, type(layer)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(layer).__name__}")
    layer.__class__ = cls


def deepspeed_active() -> bool:
    """Whether peft's AdaLoRA gathers gradients through DeepSpeed (``deepspeed_config()`` is set)."""
    return internal(adalora_layer, "deepspeed_config", "to tell whether DeepSpeed holds the gradients")() is not None


def allocator_averages(allocator: RankAllocator) -> dict[str, dict[str, torch.Tensor]]:
    """The allocator's importance averages by name (``AVERAGES``), each a dict keyed by parameter name."""
    return {name: internal(allocator, name, "to read AdaLoRA's importance averages") for name in AVERAGES}


def set_allocator_averages(allocator: RankAllocator, averages: dict[str, dict[str, torch.Tensor]]) -> None:
    """Replace peft's allocator's averages (after its ``reset_ipt``), as when resuming a run."""
    internal(allocator, "reset_ipt", "to restart AdaLoRA's importance averages")()
    for name in AVERAGES:
        setattr(allocator, name, averages[name])


def allocator_takes(parameter_name: str, adapter: str) -> bool:
    """peft's name filter in ``RankAllocator.update_ipt``: the parameters whose importance it averages."""
    return "lora_" in parameter_name and adapter in parameter_name


def _update_once_per_step(self, global_step: int):
    """peft's ``AdaLoraModel.update_and_allocate``, refusing a step that was updated already."""
    last = last_updated_step(self)
    if last is not None and global_step <= last:
        raise RuntimeError(
            f"AdaLoRA's update_and_allocate was called for step {global_step} after step {last} was updated: "
            "it would update the importance averages twice. BudgetRecorder.step (and AdaLoraBudgetCallback) call "
            "it once per step: remove your own call to update_and_allocate, or the second recorder on this model"
        )
    self._qformer_budget_updated_step = global_step
    return type(self).update_and_allocate(self, global_step)


def last_updated_step(adalora) -> int | None:
    """The last step :func:`update_once_per_step`'s guard let through; None before it or without it."""
    return getattr(adalora, "_qformer_budget_updated_step", None)


def update_once_per_step(adalora) -> None:
    """From now on, a second ``update_and_allocate`` for a step of ``adalora`` raises, naming what to remove.

    Installed on the instance as a bound method, so that a deep copy of the model guards itself.
    """
    if "update_and_allocate" not in vars(adalora):
        adalora.update_and_allocate = types.MethodType(_update_once_per_step, adalora)
