"""The method registry: every trainable method by name, with its settings and how it attaches, saves and loads.

A sweep config's ``[[methods]]`` entry names a method; its other keys are that method's settings, a frozen
dataclass (one per method) registered here together with the functions that put the method on a model,
write what it trained, and put that back on a fresh model. The runner, ``qformer-budget params`` and the run
folders' method tags all go through :data:`METHODS`, so a new method is its folder (``vl_methods/<name>/``:
``config``, ``layer``, ``model``) plus one :func:`register` call here.

torch and peft are imported inside the functions, so the registry (and ``qformer-budget --help``) loads
without them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

from qformer_budget.core.adalora_rules import (
    FINAL_FRACTION,
    WARMUP_FRACTION,
    AdaLoraSchedule,
    adapter_parameters,
    check_ranks,
)
from qformer_budget.core.grammar import placement_regexes
from qformer_budget.core.layout import adalora_tag, check_folder_name, lora_tag
from qformer_budget.vl_methods.routing.config import VARIANTS as ROUTING_VARIANTS


@dataclass(frozen=True)
class MethodSettings:
    """The settings of one trained variant; ``tag`` names its run folders."""

    name: ClassVar[str]
    records_budget: ClassVar[bool] = False  # AdaLoRA allocates this variant's rank budget and the recorder records it

    @property
    def tag_name(self) -> str:
        """The method's part of the tag: its name (a routed variant adds its routing)."""
        return self.name

    @property
    def tag(self) -> str:
        return self.tag_name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self), "tag": self.tag}


@dataclass(frozen=True)
class LoraSettings(MethodSettings):
    """Plain LoRA at a fixed ``rank`` on a placement (``grammar.placement_regexes``: Q-Former, LLM, joined by ``+``)."""

    name: ClassVar[str] = "lora"
    placement: str = "all_linear"
    rank: int = 8
    lora_alpha: float = 8.0

    def __post_init__(self) -> None:
        placement_regexes(self.placement)  # refuses an unknown placement, naming it
        check_folder_name(self.tag, f"placement {self.placement!r} gives the method tag")

    @property
    def tag(self) -> str:
        """``lora-paper_all-r8``."""
        return lora_tag(self.tag_name, self.placement, self.rank)

    @property
    def adapter_rank(self) -> int:
        """The rank its adapters are built at."""
        return self.rank


@dataclass(frozen=True)
class AdaLoraSettings(MethodSettings):
    """AdaLoRA from ``init_r`` to ``target_r`` on a placement (Q-Former, LLM or both joined by ``+``, sharing one
    budget); the phases as fractions of the run."""

    name: ClassVar[str] = "adalora"
    records_budget: ClassVar[bool] = True
    placement: str = "all_linear"
    init_r: int = 12
    target_r: int = 4
    warmup_fraction: float = WARMUP_FRACTION
    final_fraction: float = FINAL_FRACTION
    deltaT: int = 10
    lora_alpha: float = 8.0
    record_every: int | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.warmup_fraction < 1 and 0 < self.final_fraction < 1
                and self.warmup_fraction + self.final_fraction < 1):
            raise ValueError(
                "need 0 <= warmup_fraction, 0 < final_fraction and warmup_fraction + final_fraction < 1, got "
                f"{self.warmup_fraction} and {self.final_fraction}"
            )
        check_ranks(self.init_r, self.target_r)
        placement_regexes(self.placement)  # refuses an unknown placement, naming it
        check_folder_name(self.tag, f"placement {self.placement!r} gives the method tag")

    @property
    def tag(self) -> str:
        """``adalora-all_linear-r12to4``."""
        return adalora_tag(self.tag_name, self.placement, self.init_r, self.target_r)

    @property
    def adapter_rank(self) -> int:
        """The rank its adapters are built at: ``init_r`` (a mask zeroes directions, their parameters stay)."""
        return self.init_r

    def schedule(self, total_step: int) -> AdaLoraSchedule:
        return AdaLoraSchedule.from_fractions(total_step, self.warmup_fraction, self.final_fraction, self.deltaT)


@dataclass(frozen=True)
class Routing:
    """A routing function (Qu et al. 2024) in the bottleneck of the method it is mixed into; named in the tag."""

    routing: str = "matmul"

    def __post_init__(self) -> None:
        if self.routing not in ROUTING_VARIANTS:
            raise ValueError(f"routing must be one of {list(ROUTING_VARIANTS)}, got {self.routing!r}")
        super().__post_init__()

    @property
    def tag_name(self) -> str:
        return f"{self.name}-{self.routing}"


@dataclass(frozen=True)
class RoutedLoraSettings(Routing, LoraSettings):
    """LoRA with a routing function in the bottleneck: ``routed_lora-multiply-paper_all-r8``."""

    name: ClassVar[str] = "routed_lora"


@dataclass(frozen=True)
class RoutedAdaLoraSettings(Routing, AdaLoraSettings):
    """AdaLoRA with a routing function in the bottleneck, recorded like AdaLoRA:
    ``routed_adalora-multiply-all_linear-r12to4``."""

    name: ClassVar[str] = "routed_adalora"


@dataclass(frozen=True)
class MemVPSettings(MethodSettings):
    """MemVP (Jie et al. 2024) with its defaults (``vl_methods.memvp.MemVPConfig``): no placement, no rank."""

    name: ClassVar[str] = "memvp"


@dataclass(frozen=True)
class Method:
    """A registered method: its settings, and how it goes on a model, is saved and is loaded back.

    ``attach(model, settings, plan, seed)`` returns the model with the method on, everything else frozen and
    the method's initialisation drawn from ``seed``; ``save(model, folder)`` writes what it trained;
    ``load(base, folder)`` puts that back on a fresh base model. ``parameters_per_linear(in, out, rank)``
    counts an adapter on one Linear layer; a method that puts none there is counted on the whole model by
    ``parameters_per_preset(preset)``, which gives its row of the parameter table: a placement label, the
    modules it fills and its trainable parameters.
    """

    settings: type[MethodSettings]
    attach: Callable[[Any, Any, Any, int], Any]
    save: Callable[[Any, Path], None]
    load: Callable[[Any, Path], Any]
    parameters_per_linear: Callable[[int, int, int], int] | None = None
    parameters_per_preset: Callable[[str], tuple[str, int, int]] | None = None


METHODS: dict[str, Method] = {}


def register(method: Method) -> None:
    """Make ``method`` available under its settings' name."""
    name = method.settings.name
    if name in METHODS:
        raise ValueError(f"a method named {name!r} is registered already")
    METHODS[name] = method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method name must be one of {list(METHODS)}, got {name!r}")
    return METHODS[name]


# --- attach, save and load of each method


def _lazy(path: str) -> Callable:
    """The function at ``module:name``, imported when first called (the registry loads without torch)."""
    module, name = path.split(":")

    def call(*args: Any) -> Any:
        return getattr(import_module(module), name)(*args)

    call.__qualname__ = path
    return call


def _adalora_setup(settings: AdaLoraSettings, plan):
    from qformer_budget.peft_hooks import AdaLoraSetup

    schedule = settings.schedule(plan.total_optimizer_steps)
    return AdaLoraSetup.from_plan(
        plan, placement=settings.placement, init_r=settings.init_r, target_r=settings.target_r,
        tinit=schedule.tinit, tfinal=schedule.tfinal, deltaT=schedule.deltaT, lora_alpha=settings.lora_alpha,
    )


def _lora_config(settings: LoraSettings):
    from peft import LoraConfig

    from qformer_budget.core.grammar import target_modules_regex

    return LoraConfig(r=settings.rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                      target_modules=target_modules_regex(settings.placement))


def _attach_lora(model, settings: LoraSettings, plan, seed: int):
    from peft import get_peft_model

    from qformer_budget.peft_hooks.model import seeded

    with seeded(seed):
        return get_peft_model(model, _lora_config(settings))


def _attach_adalora(model, settings: AdaLoraSettings, plan, seed: int):
    from qformer_budget.peft_hooks import add_adalora

    return add_adalora(model, _adalora_setup(settings, plan), seed=seed)


def _attach_routed_lora(model, settings: RoutedLoraSettings, plan, seed: int):
    from qformer_budget.vl_methods.routing import RoutingConfig, add_routed_lora

    return add_routed_lora(model, _lora_config(settings), RoutingConfig(variant=settings.routing), seed=seed)


def _attach_routed_adalora(model, settings: RoutedAdaLoraSettings, plan, seed: int):
    from qformer_budget.vl_methods.routing import RoutingConfig, add_routed_adalora

    return add_routed_adalora(model, _adalora_setup(settings, plan), RoutingConfig(variant=settings.routing), seed=seed)


def _attach_memvp(model, settings: MemVPSettings, plan, seed: int):
    from qformer_budget.vl_methods.memvp import MemVPConfig, add_memvp

    return add_memvp(model, MemVPConfig(), seed=seed)


def _lora_parameters(in_features: int, out_features: int, rank: int) -> int:
    return adapter_parameters(in_features, out_features, rank, singular_values=False)


def _adalora_parameters(in_features: int, out_features: int, rank: int) -> int:
    return adapter_parameters(in_features, out_features, rank, singular_values=True)


# Routing adds no parameter: a routed adapter trains what the plain one trains.
_save_adapter, _load_adapter = _lazy("qformer_budget.peft_hooks:save_adapter"), _lazy("qformer_budget.peft_hooks:load_adapter")
_save_routed, _load_routed = _lazy("qformer_budget.vl_methods.routing:save_routed"), _lazy("qformer_budget.vl_methods.routing:load_routed")
_save_memvp, _load_memvp = _lazy("qformer_budget.vl_methods.memvp:save_memvp"), _lazy("qformer_budget.vl_methods.memvp:load_memvp")

# Routing adds no parameter: a routed adapter trains what the plain one trains.
register(Method(AdaLoraSettings, _attach_adalora, _save_adapter, _load_adapter, _adalora_parameters))
register(Method(LoraSettings, _attach_lora, _save_adapter, _load_adapter, _lora_parameters))
register(Method(RoutedAdaLoraSettings, _attach_routed_adalora, _save_routed, _load_routed, _adalora_parameters))
register(Method(RoutedLoraSettings, _attach_routed_lora, _save_routed, _load_routed, _lora_parameters))
register(Method(MemVPSettings, _attach_memvp, _save_memvp, _load_memvp,
                parameters_per_preset=_lazy("qformer_budget.runner.params:memvp_row")))
