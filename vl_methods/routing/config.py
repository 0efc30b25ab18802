"""Which routing function mixes the image into the low-rank bottleneck, and how the image is pooled.

The variants are the routing functions of Qu, Tuytelaars and Moens (ECCV 2024), as the released
code (tingyu215/Routing_VLPEFT, ``loralib/layers.py``, ``MergedLinearOnlyVLBeforeB.forward``)
computes them. With ``x_t = A x`` the text states in the bottleneck (``..., r``) and
``x_v = A x_R`` the pooled image projected by the same down-matrix (one token, ``r`` wide):

- ``multiply``: ``x_t * x_v`` (the code's ``element_mul``, "x_t o x'_v");
- ``add``: ``x_t + x_v`` (``element_add``, "x_t + x'_v");
- ``matmul``: ``x_t x_v^T x_v = (x_t . x_v) x_v`` (the code's default branch, "x_t (x_v)^T x_v");
- ``matmul2``: ``x_t x''_v = (sum_i x_t,i) x_v``, where ``x''_v`` is ``x_v`` expanded to an
  ``r x r`` matrix whose rows all equal ``x_v`` (``element_mul_expand``, "x_t x''_v").

With one pooled token both matrix products give an update of rank 1 per image.
"""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS: tuple[str, ...] = ("multiply", "add", "matmul", "matmul2")
POOLINGS: tuple[str, ...] = ("cls", "mean")


@dataclass
class RoutingConfig:
    """A routing function and the pooling of the image embeddings into ``x_R``.

    ``pooling="cls"`` takes token 0 of the image embeddings the Q-Former cross-attends to: the ViT's
    CLS token, which is its pooled output up to BLIP's second post-layernorm (the released code routes
    the ViT's pooled output); ``"mean"`` averages all tokens.
    """

    variant: str = "matmul"
    pooling: str = "cls"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown routing variant {self.variant!r}; variants are {', '.join(VARIANTS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown routing pooling {self.pooling!r}; poolings are {', '.join(POOLINGS)}")
