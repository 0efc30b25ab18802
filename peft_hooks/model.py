"""Put AdaLoRA on chosen Q-Former sublayers, and find it again inside wrapped models.

On a ``PeftModel`` built without ``task_type`` peft silently skips AdaLoRA's orthogonal regulariser;
:func:`add_adalora` returns a model whose forward applies it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.adalora import AdaLoraModel

from qformer_budget.core.grammar import qformer_sublayers

from .config import AdaLoraSetup
from .peft_internals import allocator_takes, peft_forward_hooks


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
    drawn from that seed (leaving the global RNG untouched), so runs are reproducible; a recorder labels its
    records with that seed (:func:`adapter_seed`). Raises ValueError naming the model class when it has no
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
        peft_model = AdaLoraPeftModel(model, setup.to_peft_config(), adapter_name=setup.adapter_name)
    setattr(peft_model.base_model, _ADAPTER_SEED, seed)
    return peft_model


_ADAPTER_SEED = "qformer_budget_adapter_seed"


def adapter_seed(adalora: AdaLoraModel) -> int | None:
    """The seed :func:`add_adalora` drew the adapter from; None if it drew none or built no such adapter."""
    return getattr(adalora, _ADAPTER_SEED, None)


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
