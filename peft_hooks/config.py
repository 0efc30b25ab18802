"""AdaLoRA's settings for qformer-budget: how many optimizer steps a run takes, and what to adapt with which schedule.

peft accepts schedules it cannot finish (``tfinal=0`` never reaches the final mask with 0-based steps);
:class:`AdaLoraSetup` refuses them with the rules of ``core.adalora_rules``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from peft import AdaLoraConfig

from qformer_budget.core.adalora_rules import AdaLoraSchedule, check_ranks
from qformer_budget.core.grammar import PLACEMENTS, placement_regexes, resolve_placement, target_modules_regex


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
    """AdaLoRA hyperparameters and the modules to adapt, which share one rank budget.

    ``placement`` is a Q-Former placement (a name from ``grammar.PLACEMENTS`` or a ``{block: [projs]}``
    mapping), a placement of the vision encoder or the LLM (``grammar.COMPONENT_PLACEMENTS``: ``llm_attn``,
    ``llm_ffn``, ``llm_all``, ``llm_all_linear``, ``vision_all_linear``), or names joined with ``+``
    (``paper_all+llm_all``, the paper's Q-Former + LLM). ``layers`` chooses Q-Former layers.
    ``target_regex`` overrides the placement with a regex of your own (still refused if it matches nothing).
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
            placement_regexes(self.placement, self.layers)  # refuses unknown parts
            if not isinstance(self.placement, str) or self.placement in PLACEMENTS:
                self.placement = {b: list(p) for b, p in resolve_placement(self.placement).items()}

    @classmethod
    def from_plan(
        cls,
        plan: TrainingPlan,
        *,
        warmup_fraction: float | None = None,
        final_fraction: float | None = None,
        **settings: Any,
    ) -> AdaLoraSetup:
        """A setup whose ``total_step`` is the plan's number of optimizer steps.

        ``warmup_fraction`` and ``final_fraction`` give ``tinit`` and ``tfinal`` as fractions of the run, as the
        sweep config's keys of the same names do (``AdaLoraSchedule.from_fractions``); give both or neither, and
        not together with ``tinit``/``tfinal``.
        """
        total_step = plan.total_optimizer_steps
        if (warmup_fraction is None) != (final_fraction is None):
            raise ValueError("give both warmup_fraction and final_fraction, or neither")
        if warmup_fraction is not None:
            if "tinit" in settings or "tfinal" in settings:
                raise ValueError("give tinit/tfinal or warmup_fraction/final_fraction, not both")
            schedule = AdaLoraSchedule.from_fractions(
                total_step, warmup_fraction, final_fraction, settings.get("deltaT", cls.deltaT)
            )
            settings |= {"tinit": schedule.tinit, "tfinal": schedule.tfinal}
        return cls(total_step=total_step, **settings)

    @property
    def regex(self) -> str:
        if self.target_regex is not None:
            return self.target_regex
        return target_modules_regex(self.placement, self.layers)

    @property
    def regexes(self) -> dict[str, str]:
        """One regex per part of the placement (``grammar.placement_regexes``); the target regex alone if given."""
        if self.target_regex is not None:
            return {"target_regex": self.target_regex}
        return placement_regexes(self.placement, self.layers)

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
