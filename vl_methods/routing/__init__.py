"""Routing functions (Qu, Tuytelaars, Moens; ECCV 2024) as a LoRA / AdaLoRA variant for InstructBLIP and BLIP-2.

Inside the low-rank bottleneck the text states ``A x`` are mixed with the pooled image ``A x_R``,
projected by the same down-matrix, so no parameter is added: ``y = W x + scaling * B route(A x, A x_R)``.

Names are imported on first use, so that ``vl_methods.routing.config`` can be read without torch or peft.
"""

from importlib import import_module

_EXPORTS = {
    "RoutingConfig": "config",
    "add_routed_adalora": "model",
    "add_routed_lora": "model",
    "load_routed": "model",
    "save_routed": "model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
