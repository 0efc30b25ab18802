"""MemVP hyperparameters; the defaults are those of the released LLaMA-7B ScienceQA run (JieShibo/MemVP)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class MemVPConfig:
    """Visual memory ``K = V + P_k``, ``V' = V + P_v`` with ``V = scale * Projector(visual tokens)``.

    Every FFN of the LM becomes ``FFN(x) + memory_scale * act(x K^T) V'``.

    - ``scale``: the 0.01 applied to the projector output;
    - ``memory_scale``: ``s``, the memory branch's weight (``--adapter_scale 0.1``);
    - ``projector_hidden``: the projector's bottleneck (visual width -> 128 -> LM width, SiLU between);
    - ``memory_size``: rows of ``P_k`` and ``P_v``. The visual tokens fill the first rows and the rest of
      ``V`` is zero, so the remaining rows are memory prompts, key-value pairs learned independently of the
      image: the released code has 320 rows for 256 CLIP tokens; the default 40 keeps that 1.25 ratio for
      InstructBLIP's 32 query tokens. Must be at least the model's number of query tokens;
    - ``prompt_key_std``: ``P_k`` starts as ``randn * 0.02``; ``P_v`` starts at zero;
    - ``dropout``: on the memory activations ``act(x K^T)`` while training (0.1 in the released code).
    """

    scale: float = 0.01
    memory_scale: float = 0.1
    projector_hidden: int = 128
    memory_size: int = 40
    prompt_key_std: float = 0.02
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("scale", "memory_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"MemVPConfig.{name} must be a finite number > 0, got {value}")
        for name in ("projector_hidden", "memory_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MemVPConfig.{name} must be an integer >= 1, got {value!r}")
        if not (math.isfinite(self.prompt_key_std) and self.prompt_key_std >= 0):
            raise ValueError(f"MemVPConfig.prompt_key_std must be a finite number >= 0, got {self.prompt_key_std}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"MemVPConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MemVPConfig:
        """The config saved by ``to_dict``; a ValueError names any field MemVPConfig does not have."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown MemVPConfig fields: {', '.join(unknown)}")
        return cls(**values)


def memvp_trainable_parameters(config: MemVPConfig, lm_hidden: int, visual_width: int) -> int:
    """Parameters MemVP trains: the projector (two Linear layers with biases), ``P_k`` and ``P_v``.

    ``lm_hidden`` is the LM's width (``d_model`` for T5), ``visual_width`` the Q-Former's (768 in the
    real models): the projector maps the Q-Former's query outputs, not ``language_projection``'s.
    """
    hidden = config.projector_hidden
    projector = visual_width * hidden + hidden + hidden * lm_hidden + lm_hidden
    return projector + 2 * config.memory_size * lm_hidden
