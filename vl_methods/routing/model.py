"""Put routed LoRA or AdaLoRA on an InstructBLIP / BLIP-2 model, feed it the image, save and load it.

The image reaches the routed layers through one :class:`VisualContext` per model, kept up to date by
forward pre-hooks (:class:`RoutingHooks`):

- on ``qformer`` (``with_kwargs=True``): reads ``encoder_hidden_states``, the image embeddings, and
  pools them into ``x_R``. The Q-Former runs before the LM in ``forward`` and in ``generate``, so the
  Q-Former's and the LM's routed layers read the features of the batch being run;
- on ``vision_model`` and on the model itself: clear the context at every image encoding and every
  model call, so that a call that skips the Q-Former (precomputed ``mm_encoder_outputs``) raises
  instead of routing the previous batch's image. ``AdaLoraModel.forward`` calls ``model.forward``
  directly, past the model's own hook: through it only the vision model's hook clears (as in
  ``generate``), so precomputed ``mm_encoder_outputs`` would reuse the last image there.

The context stays set after a call, so gradient checkpointing can recompute routed layers during
backward.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from torch.utils.hooks import RemovableHandle

from qformer_budget.core.atomic import write_text_atomic
from qformer_budget.peft_hooks import AdaLoraPeftModel, AdaLoraSetup, add_adalora, load_adapter, save_adapter
from qformer_budget.peft_hooks.model import seeded

from .config import RoutingConfig
from .layer import VisualContext, make_routed, routed_class

ROUTING_FILE = "routing.json"


class RoutingHooks:
    """The forward pre-hooks that feed the image to a routed model, with the context they fill.

    ``remove()`` them, or use the object as a context manager that removes them on exit; a routed
    layer run without them raises.
    """

    def __init__(self, config: RoutingConfig, context: VisualContext, handles: list[RemovableHandle]) -> None:
        self.config = config
        self.context = context
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.context.clear()

    def __enter__(self) -> RoutingHooks:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()


def _check_vision_language_model(model: torch.nn.Module) -> None:
    for part in ("vision_model", "qformer"):
        if not isinstance(getattr(model, part, None), torch.nn.Module):
            raise ValueError(
                f"{type(model).__name__} has no {part}: routing needs a transformers InstructBLIP or BLIP-2 model"
            )


def _register_hooks(model: torch.nn.Module, context: VisualContext) -> list[RemovableHandle]:
    signature = inspect.signature(model.qformer.forward)

    def clear(module: torch.nn.Module, args: tuple) -> None:
        context.clear()

    def read_image(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        image_embeds = signature.bind_partial(*args, **kwargs).arguments.get("encoder_hidden_states")
        if image_embeds is None:
            raise ValueError(
                "the Q-Former was called without encoder_hidden_states: routed layers have no image to read"
            )
        context.set_image_embeds(image_embeds)

    handles: list[RemovableHandle] = []
    try:
        handles.append(model.register_forward_pre_hook(clear))
        handles.append(model.vision_model.register_forward_pre_hook(clear))
        handles.append(model.qformer.register_forward_pre_hook(read_image, with_kwargs=True))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return handles


def install_routing(peft_model: PeftModel, routing: RoutingConfig) -> RoutingHooks:
    """Route every adapter layer of ``peft_model`` and register the hooks, kept as ``peft_model.routing_hooks``."""
    if getattr(peft_model, "routing_hooks", None) is not None:
        raise ValueError("this model is routed already")
    model = peft_model.get_base_model()
    _check_vision_language_model(model)
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in layers:  # refuse before changing anything
        routed_class(module, name)
    context = VisualContext(routing.pooling)
    for name, module in layers:
        make_routed(module, routing.variant, context, name, peft_model.base_model.peft_config)
    peft_model.routing_hooks = RoutingHooks(routing, context, _register_hooks(model, context))
    return peft_model.routing_hooks


def add_routed_lora(
    model: torch.nn.Module, lora_config: LoraConfig, routing: RoutingConfig, seed: int | None = None
) -> PeftModel:
    """Wrap ``model`` with routed LoRA on the layers ``lora_config`` targets (Q-Former, LM, ...).

    Everything but the adapter is frozen; with ``seed`` the adapter's initialisation is drawn from that
    seed, leaving the global RNG untouched. Raises before touching the model when the config is an
    AdaLoRA one (use :func:`add_routed_adalora`) or targets the vision model, whose output ``x_R`` is.
    """
    if isinstance(lora_config, AdaLoraConfig) or not isinstance(lora_config, LoraConfig):
        raise TypeError(
            f"add_routed_lora takes a peft LoraConfig, got {type(lora_config).__name__}; "
            "for AdaLoRA use add_routed_adalora with a peft_hooks.AdaLoraSetup"
        )
    if lora_config.target_modules is None:
        raise ValueError("routed LoRA needs explicit target_modules (Q-Former and/or LM layers)")
    _check_vision_language_model(model)
    in_vision = [
        name for name, _ in model.named_modules()
        if name.startswith("vision_model.") and check_target_module_exists(lora_config, name)
    ]
    if in_vision:
        raise ValueError(
            f"the LoRA targets match {len(in_vision)} modules of the vision model (first: {in_vision[0]!r}); "
            "routing reads the image features the vision model computes, so it cannot adapt the vision model"
        )
    with seeded(seed):
        peft_model = get_peft_model(model, lora_config)
    install_routing(peft_model, routing)
    return peft_model


def add_routed_adalora(
    model: torch.nn.Module, setup: AdaLoraSetup, routing: RoutingConfig, seed: int | None = None
) -> AdaLoraPeftModel:
    """``peft_hooks.add_adalora`` (same Q-Former-only checks, seeding, regulariser), then routing.

    The result is still a peft ``AdaLoraModel`` with ``lora_A``/``lora_E``/``lora_B``: ``BudgetRecorder``
    and ``update_and_allocate`` work on it unchanged.
    """
    _check_vision_language_model(model)
    peft_model = add_adalora(model, setup, seed=seed)
    install_routing(peft_model, routing)
    return peft_model


def save_routed(model: PeftModel, path: str | os.PathLike) -> None:
    """The adapter by peft's ``save_pretrained`` (AdaLoRA: trimmed to the kept ranks), and ``routing.json``."""
    hooks = getattr(model, "routing_hooks", None)
    if hooks is None:
        raise TypeError(
            f"{type(model).__name__} carries no routing: "
            "build it with add_routed_lora, add_routed_adalora or load_routed"
        )
    save_adapter(model, path)
    write_text_atomic(Path(path) / ROUTING_FILE, json.dumps(asdict(hooks.config), indent=2) + "\n")


def load_routed(base_model: torch.nn.Module, path: str | os.PathLike) -> PeftModel:
    """An adapter written by :func:`save_routed` on a fresh ``base_model`` (inference mode), routed and hooked."""
    routing_file = Path(path) / ROUTING_FILE
    if not routing_file.is_file():
        raise FileNotFoundError(f"no {ROUTING_FILE} in {str(path)!r}: routed adapters are saved by save_routed")
    routing = RoutingConfig(**json.loads(routing_file.read_text()))
    _check_vision_language_model(base_model)
    model = load_adapter(base_model, path)
    install_routing(model, routing)
    return model
