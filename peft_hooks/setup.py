"""Put AdaLoRA on chosen Q-Former sublayers, with a schedule that peft can actually run.

peft accepts schedules it cannot finish (``tfinal=0`` never reaches the final mask with 0-based
steps) and, on a ``PeftModel`` built without ``task_type``, silently skips the orthogonal
regulariser. :func:`add_adalora` refuses the first and fixes the second.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import AdaLoraConfig, PeftModel
from peft.tuners.adalora import AdaLoraModel

from .peft_internals import (
    EMPTY_TENSOR_SAVE_WARNING,
    RANK_PATTERN_LOAD_WARNING,
    allocator_takes,
    peft_forward_hooks,
)
from qformer_budget.core.adalora_rules import AdaLoraSchedule, check_ranks
from qformer_budget.core.grammar import qformer_sublayers, resolve_placement, target_modules_regex


@dataclass
class TrainingPlan:
    """How many optimizer steps a Trainer-style run takes; mirrors transformers' Trainer arithmetic."""

    num_examples: int
    per_device_batch_size: int
    epochs: float = 1.0
    gradient_accumulation_steps: int = 1
    world_size: int = 1
    drop_last: bool = False
    max_steps: int = -1

    def __post_init__(self) -> None:
        for name in ("num_examples", "per_device_batch_size", "gradient_accumulation_steps", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainingPlan.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 1 and self.epochs <= 0:
            raise ValueError(f"TrainingPlan.epochs must be > 0 when max_steps is unset, got {self.epochs}")

    @property
    def total_optimizer_steps(self) -> int:
        if self.max_steps > 0:
            return self.max_steps
        batch = self.per_device_batch_size * self.world_size
        batches = self.num_examples // batch if self.drop_last else math.ceil(self.num_examples / batch)
        per_epoch = max(math.ceil(batches / self.gradient_accumulation_steps), 1)
        return math.ceil(self.epochs * per_epoch)


@dataclass
class AdaLoraSetup:
    """AdaLoRA hyperparameters and the Q-Former sublayers to adapt.

    ``placement`` is a name from ``taxonomy.PLACEMENTS`` or a ``{block: [projs]}`` mapping;
    ``target_regex`` overrides it with a regex of your own (still refused if it matches nothing).
    """

    total_step: int
    placement: str | dict[str, list[str]] = "all_linear"
    layers: list[int] | None = None
    target_regex: str | None = None
    init_r: int = 12
    target_r: int = 4
    tinit: int = 0
    tfinal: int = 1
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    adapter_name: str = "default"

    def __post_init__(self) -> None:
        AdaLoraSchedule(self.total_step, self.tinit, self.tfinal, self.deltaT)  # refuses schedules peft cannot finish
        check_ranks(self.init_r, self.target_r)
        for name in ("beta1", "beta2"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.orth_reg_weight < 0:
            raise ValueError(f"orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        if self.target_regex is None:
            self.placement = {b: list(p) for b, p in resolve_placement(self.placement).items()}

    @classmethod
    def from_plan(cls, plan: TrainingPlan, **settings: Any) -> AdaLoraSetup:
        """A setup whose ``total_step`` is the plan's number of optimizer steps."""
        return cls(total_step=plan.total_optimizer_steps, **settings)

    @property
    def regex(self) -> str:
        if self.target_regex is not None:
            return self.target_regex
        return target_modules_regex(self.placement, self.layers)

    def to_peft_config(self) -> AdaLoraConfig:
        return AdaLoraConfig(
            target_modules=self.regex,
            init_r=self.init_r,
            target_r=self.target_r,
            tinit=self.tinit,
            tfinal=self.tfinal,
            deltaT=self.deltaT,
            beta1=self.beta1,
            beta2=self.beta2,
            orth_reg_weight=self.orth_reg_weight,
            total_step=self.total_step,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"target_modules": self.regex}


class AdaLoraPeftModel(PeftModel):
    """A PeftModel whose forward goes through ``AdaLoraModel.forward``.

    peft's plain ``PeftModel.forward`` calls the base model directly, which skips the orthogonal
    regulariser that ``AdaLoraModel.forward`` adds to the loss; the task-specific subclasses pass
    arguments (``decoder_inputs_embeds``...) that decoder-only InstructBLIP models reject.
    """

    def forward(self, *args: Any, **kwargs: Any):
        with peft_forward_hooks(self, args, kwargs) as model_kwargs:
            return self.base_model(*args, **model_kwargs)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Inside, random draws come from ``seed`` (if given); the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def add_adalora(model: torch.nn.Module, setup: AdaLoraSetup, seed: int | None = None) -> AdaLoraPeftModel:
    """Wrap ``model`` with AdaLoRA on the Q-Former sublayers that ``setup`` chooses.

    Everything but the adapter is frozen. With ``seed``, the adapter's random initialisation is
    drawn from that seed (leaving the global RNG untouched), so runs are reproducible. Raises ValueError naming the model class when it has no
    Q-Former, and naming the regex when it matches no Q-Former Linear.
    """
    linear_names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    sublayers = qformer_sublayers(linear_names)
    if not sublayers:
        raise ValueError(
            f"{type(model).__name__} has no Q-Former: no Linear layer is named like "
            "'qformer.encoder.layer.N...' (transformers) or 'Qformer.bert.encoder.layer.N...' (LAVIS)"
        )
    pattern = re.compile(setup.regex)
    matched = [n for n in linear_names if pattern.fullmatch(n)]
    if not matched:
        raise ValueError(
            f"target regex {setup.regex!r} matches no Linear layer of {type(model).__name__}; "
            f"Q-Former Linear names look like {next(iter(sublayers))!r}"
        )
    outside = [n for n in matched if n not in sublayers]
    if outside:
        raise ValueError(
            f"target regex {setup.regex!r} matches {len(outside)} Linear layers outside the Q-Former "
            f"(first: {outside[0]!r}); qformer-budget records Q-Former sublayers only"
        )
    with seeded(seed):
        return AdaLoraPeftModel(model, setup.to_peft_config(), adapter_name=setup.adapter_name)


def find_adalora_model(model: torch.nn.Module) -> AdaLoraModel:
    """The AdaLoraModel inside a PeftModel, possibly wrapped by DDP or accelerate."""
    seen = model
    while not isinstance(seen, (PeftModel, AdaLoraModel)) and hasattr(seen, "module"):
        seen = seen.module
    if isinstance(seen, PeftModel):
        seen = seen.base_model
    if not isinstance(seen, AdaLoraModel):
        raise TypeError(
            f"expected a model carrying an AdaLoRA adapter (peft AdaLoraModel), got {type(model).__name__}; "
            "build it with peft_hooks.add_adalora or peft.get_peft_model with an AdaLoraConfig"
        )
    if not hasattr(seen, "rankallocator"):
        raise TypeError("the AdaLoRA adapter is in inference mode: it has no rank allocator to record")
    return seen


def allocator_parameters(adalora: AdaLoraModel) -> dict[str, torch.nn.Parameter]:
    """The AdaLoRA parameters peft's rank allocator reads, under its names and with its own name filter."""
    adapter = adalora.trainable_adapter_name
    return {n: p for n, p in adalora.model.named_parameters() if allocator_takes(n, adapter)}


def save_adapter(model: AdaLoraPeftModel, path: str | os.PathLike) -> None:
    """peft's ``save_pretrained``, without its false alarm about AdaLoRA's rank-0 modules.

    peft slices A, E and B to the kept ranks, so a module pruned to rank 0 saves empty tensors on
    purpose; peft's save check mistakes them for unsharded DeepSpeed/FSDP tensors and warns.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=EMPTY_TENSOR_SAVE_WARNING)
        model.save_pretrained(str(path))


def load_adapter(base_model: torch.nn.Module, path: str | os.PathLike) -> PeftModel:
    """peft's ``PeftModel.from_pretrained`` for an adapter written by :func:`save_adapter`.

    peft resizes the modules to the saved ranks, then warns that the AdaLoRA ``rank_pattern`` keys
    match no module, because its LoRA-level check expects module names; the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=RANK_PATTERN_LOAD_WARNING)
        return PeftModel.from_pretrained(base_model, str(path))
