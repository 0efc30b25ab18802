"""AdaLoRA's rules, written once for the recorder, the allocators, the simulator and the readers.

peft's ``RankAllocator`` works with 0-based steps (``global_step``) and three phases:

- warmup, ``global_step <= tinit``: every direction kept, the budget is ``init_bgt``;
- budgeting, up to the final mask step ``total_step - tfinal``: the budget falls on a cubic schedule and
  peft masks every ``deltaT`` steps, then once more at the final mask step;
- final, after it: the ``rank_pattern`` of the final mask stays frozen.

At a mask step peft keeps a direction when its triplet score is above the threshold, the k-th smallest
of all scores with ``k = init_bgt - budget`` (1-based, as ``torch.kthvalue``). Every function here takes a
Python int or a numpy array of steps alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .schema import PHASES

# The sweep runner's default phases: 10 % warmup, 20 % final phase with the rank pattern frozen.
WARMUP_FRACTION = 0.1
FINAL_FRACTION = 0.2


def check_ranks(init_r: int, target_r: int) -> None:
    """AdaLoRA starts every module at ``init_r`` and ends at ``target_r`` on average: ``0 <= target_r < init_r``."""
    if not 0 <= target_r < init_r:
        raise ValueError(f"need 0 <= target_r < init_r, got target_r={target_r}, init_r={init_r}")


@dataclass(frozen=True)
class AdaLoraSchedule:
    """peft's AdaLoRA schedule (``AdaLoraConfig`` fields), refused when peft could not finish it."""

    total_step: int
    tinit: int
    tfinal: int
    deltaT: int

    def __post_init__(self) -> None:
        if self.total_step < 1:
            raise ValueError(f"total_step must be >= 1, got {self.total_step}")
        if self.tfinal < 1:
            raise ValueError(
                f"tfinal must be >= 1, got {self.tfinal}: with 0-based steps peft's final mask step "
                "(total_step - tfinal) is never reached when tfinal is 0"
            )
        if self.tinit < 0:
            raise ValueError(f"tinit must be >= 0, got {self.tinit}")
        if self.tinit >= self.total_step - self.tfinal:
            raise ValueError(
                f"impossible AdaLoRA schedule: tinit ({self.tinit}) must be < total_step - tfinal "
                f"({self.total_step} - {self.tfinal} = {self.total_step - self.tfinal}); there would be no budgeting phase"
            )
        if self.deltaT < 1:
            raise ValueError(f"deltaT must be >= 1, got {self.deltaT}")

    @classmethod
    def from_fractions(
        cls, total_step: int, warmup_fraction: float, final_fraction: float, deltaT: int
    ) -> AdaLoraSchedule:
        """``tinit`` and ``tfinal`` as fractions of the run (the sweep config's ``warmup_fraction``, ``final_fraction``)."""
        return cls(total_step, int(warmup_fraction * total_step), max(1, int(final_fraction * total_step)), deltaT)

    @property
    def final_mask_step(self) -> int:
        """The step of peft's last mask; its averages are cleared right after it."""
        return self.total_step - self.tfinal

    def budget(self, global_step: int, init_bgt: int, target_bgt: int) -> int:
        """The total budget at ``global_step``: peft's ``budget_schedule``, with the same float arithmetic."""
        if global_step <= self.tinit:
            return init_bgt
        if global_step > self.final_mask_step:
            return target_bgt
        mul_coeff = 1 - (global_step - self.tinit) / (self.final_mask_step - self.tinit)
        return int((init_bgt - target_bgt) * (mul_coeff**3) + target_bgt)

    def is_mask_step(self, global_step):
        """Where peft masks to the budget: budgeting steps on the ``deltaT`` grid, and the final mask step."""
        budgeting = (global_step > self.tinit) & (global_step < self.final_mask_step)
        return (budgeting & (global_step % self.deltaT == 0)) | (global_step == self.final_mask_step)

    def phase_index(self, global_step):
        """The phase as an index into ``schema.PHASES``: 0 warmup, 1 budgeting, 2 final."""
        return (global_step > self.tinit) * 1 + (global_step > self.final_mask_step) * 1

    def phase(self, global_step: int) -> str:
        return PHASES[int(self.phase_index(global_step))]

    def is_recorded(self, global_step, record_every: int):
        """The recorder's rule: every ``record_every`` steps, every mask step and the last step."""
        return (
            (global_step % record_every == 0) | self.is_mask_step(global_step) | (global_step == self.total_step - 1)
        )


def threshold_rank(init_bgt: int, budget: int) -> int:
    """k of the mask threshold, the k-th smallest triplet score (1-based): the directions to drop."""
    return init_bgt - budget


def rank_pattern_keys(module: str, adapter: str) -> tuple[str, str]:
    """A module's keys in peft's ``rank_pattern``: while training, and after ``save_pretrained`` renamed it."""
    return f"{module}.lora_E.{adapter}", f"{module}.lora_E"


def kept_directions(
    rank_pattern: dict[str, Any] | None, modules: Sequence[str], adapter: str, init_r: int
) -> np.ndarray:
    """``(n_modules, init_r)`` bools: the directions peft's ``rank_pattern`` keeps; all before the first mask."""
    kept = np.ones((len(modules), init_r), dtype=bool)
    if rank_pattern is None:
        return kept
    for i, module in enumerate(modules):
        for key in rank_pattern_keys(module, adapter):
            if key in rank_pattern:
                kept[i] = np.asarray(rank_pattern[key], dtype=bool).reshape(-1)
                break
        else:
            raise KeyError(f"peft's rank_pattern has no entry for adapted module {module!r}")
    return kept


def adapter_parameters(in_features: int, out_features: int, rank: int, singular_values: bool) -> int:
    """Trainable parameters of a rank-``rank`` adapter on ``Linear(in, out)``: A and B, plus AdaLoRA's E."""
    return rank * (in_features + out_features + int(singular_values))
