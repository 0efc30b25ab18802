"""Routing functions (Qu, Tuytelaars, Moens; ECCV 2024) as a LoRA / AdaLoRA variant for InstructBLIP and BLIP-2.

Inside the low-rank bottleneck the text states ``A x`` are mixed with the pooled image ``A x_R``,
projected by the same down-matrix, so no parameter is added: ``y = W x + scaling * B route(A x, A x_R)``.
"""

from .config import RoutingConfig
from .model import add_routed_adalora, add_routed_lora, load_routed, save_routed

__all__ = ["RoutingConfig", "add_routed_adalora", "add_routed_lora", "load_routed", "save_routed"]
