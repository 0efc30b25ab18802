"""Routed peft layers: LoRA and AdaLoRA Linear layers whose bottleneck mixes in the image.

``RoutedLoraLinear`` is peft's ``lora.Linear`` computing ``y = W x + scaling * B route(A x, A x_R)``;
``RoutedSVDLinear`` is peft's AdaLoRA ``SVDLinear`` computing
``y = W x + scaling * P (Lambda * route(Q x, Q x_R)) / (ranknum + 1e-5)``. ``x_R`` is projected by the
down-matrix alone (``Q``, not ``Q * Lambda``), so for ``multiply`` and ``add`` every direction stays
separable and AdaLoRA's importance scores and masks keep their meaning. For the matrix products the
directions AdaLoRA pruned (``rank_pattern``) are left out of the inner products, so a pruned direction
has no effect and the adapter saved trimmed to the kept ranks computes the same function.

Both are installed by swapping the class of the layers peft built (:func:`make_routed`): parameters,
state-dict keys, ``save_pretrained``, AdaLoRA's allocator and ``resize_modules_by_rank_pattern`` stay
peft's own. No parameter is added.

The image reaches the layers through a :class:`VisualContext`, filled by a forward pre-hook (see
``model.py``): Q-Former Linear layers are called with one argument.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from qformer_budget.core.adalora_rules import rank_pattern_keys
from qformer_budget.peft_hooks.peft_internals import LoraLinear, SVDLinear, cast_input_dtype, swap_layer_class

from .config import POOLINGS, VARIANTS


def route(variant: str, x_t: torch.Tensor, x_v: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """A routing function (see ``config.py``) of bottleneck states ``x_t`` and one visual token ``x_v``.

    ``x_v`` broadcasts against ``x_t`` (``(batch, 1, ..., r)``); ``kept`` (``r``, 0/1) restricts the
    inner products of the matrix products to the directions it marks.
    """
    if variant == "multiply":
        return x_t * x_v
    if variant == "add":
        return x_t + x_v
    if variant == "matmul":
        weights = x_v if kept is None else x_v * kept
        return (x_t * weights).sum(-1, keepdim=True) * x_v
    if variant == "matmul2":
        summed = x_t if kept is None else x_t * kept
        return summed.sum(-1, keepdim=True) * x_v
    raise ValueError(f"unknown routing variant {variant!r}; variants are {', '.join(VARIANTS)}")


def resample_features(features: torch.Tensor, width: int) -> torch.Tensor:
    """The parameter-free map from the vision width to a layer's input width, ``(batch, d_v) -> (batch, width)``.

    Identity when the widths match (the Q-Former's cross-attention key and value read the image
    embeddings themselves); otherwise adaptive average pooling along the feature axis: each output
    feature is the mean of a contiguous bin of input features (upsampling by k repeats each feature k
    times). Averages keep the scale of the layer-normed image features, and one rule serves every width
    (768, 3072, the LM's), which the frozen cross-attention key projection (768 only) would not.
    """
    if features.shape[-1] == width:
        return features
    return F.adaptive_avg_pool1d(features.unsqueeze(1), width).squeeze(1)


class VisualContext:
    """The pooled image features of the batch being run, as the routed layers read them."""

    def __init__(self, pooling: str = "cls") -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown routing pooling {pooling!r}; poolings are {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.pooled: torch.Tensor | None = None
        self._by_width: dict[int, torch.Tensor] = {}

    def set_image_embeds(self, image_embeds: torch.Tensor) -> None:
        """Pool ``(batch, tokens, d_v)`` image embeddings into ``x_R`` for the layers to read."""
        if image_embeds.dim() != 3:
            raise ValueError(
                f"image embeddings must be (batch, tokens, width), got shape {tuple(image_embeds.shape)}"
            )
        self.pooled = image_embeds[:, 0] if self.pooling == "cls" else image_embeds.mean(dim=1)
        self._by_width = {}

    def clear(self) -> None:
        self.pooled = None
        self._by_width = {}

    def features(self, width: int, batch: int, layer: str) -> torch.Tensor:
        """``x_R`` mapped to ``width``, one row per input row of ``layer``.

        A batch that is a multiple of the number of images (beam search, several returned sequences)
        gets each image repeated in place, as ``generate`` expands its inputs.
        """
        if self.pooled is None:
            raise RuntimeError(
                f"routed layer {layer!r} was called without visual context: run the whole model (forward or "
                "generate), whose Q-Former call sets the image features, with the routing hooks installed"
            )
        if width not in self._by_width:
            self._by_width[width] = resample_features(self.pooled, width)
        mapped = self._by_width[width]
        images = mapped.shape[0]
        if batch == images:
            return mapped
        if batch % images:
            raise ValueError(
                f"routed layer {layer!r} got a batch of {batch} rows but the visual context holds {images} "
                "images; the batch must be the images' batch or a multiple of it (images repeated in place)"
            )
        return mapped.repeat_interleave(batch // images, dim=0)


class _Routed:
    """What both routed layers share: the routing state, reading ``x_R``, refusing to merge."""

    routing_variant: str
    routing_context: VisualContext
    routing_name: str
    routing_peft_config: dict

    def _routed_adapters(self, x: torch.Tensor) -> tuple[list[str], torch.Tensor | None]:
        """The active adapters this layer holds, and ``x_R`` for ``x``'s batch (read only if there is one)."""
        adapters = [adapter for adapter in self.active_adapters if adapter in self.lora_A.keys()]
        return adapters, (self._visual(x) if adapters else None)

    def _visual(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(
                f"routed layer {self.routing_name!r} needs batched input, got shape {tuple(x.shape)}"
            )
        return self.routing_context.features(self.in_features, x.shape[0], self.routing_name)

    @staticmethod
    def _as_token(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(batch, r)`` to ``(batch, 1, ..., r)`` so that it broadcasts over ``like``'s token axes."""
        return v.reshape(v.shape[0], *([1] * (like.dim() - 2)), v.shape[-1])

    def _refuse_merge(self) -> None:
        raise ValueError(
            f"cannot merge routed layer {self.routing_name!r}: its update depends on the image, so it has no "
            "fixed weight delta to fold into the base weight"
        )

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        self._refuse_merge()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        self._refuse_merge()

    def __repr__(self) -> str:
        return f"routed[{self.routing_variant}]." + super().__repr__()


class RoutedLoraLinear(_Routed, LoraLinear):
    """peft's ``lora.Linear`` with ``y = W x + scaling * B route(A x, A x_R)``."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(f"routed layer {self.routing_name!r} does not support mixed-adapter batches")
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        result_dtype = result.dtype
        adapters, visual = self._routed_adapters(x)
        for active_adapter in adapters:
            lora_A = self.lora_A[active_adapter]
            lora_B = self.lora_B[active_adapter]
            dropout = self.lora_dropout[active_adapter]
            x = cast_input_dtype(self, x, lora_A.weight.dtype)
            x_t = lora_A(dropout(x))
            x_v = self._as_token(lora_A(dropout(cast_input_dtype(self, visual, lora_A.weight.dtype))), x_t)
            result = result + lora_B(route(self.routing_variant, x_t, x_v)) * self.scaling[active_adapter]
        return result.to(result_dtype)


class RoutedSVDLinear(_Routed, SVDLinear):
    """AdaLoRA's ``SVDLinear`` with ``y = W x + scaling * P (Lambda * route(Q x, Q x_R)) / (ranknum + 1e-5)``."""

    def _kept(self, adapter: str) -> torch.Tensor | None:
        """The directions AdaLoRA kept (0/1, ``r``) for the matrix products; None when all count.

        Worked out again only when peft assigns a new ``rank_pattern`` (at mask steps and on saving) or
        the adapter moves or is resized, not on every forward.
        """
        if self.routing_variant in ("multiply", "add"):
            return None
        pattern = self.routing_peft_config[adapter].rank_pattern
        lora_A = self.lora_A[adapter]
        key = (lora_A.device, lora_A.dtype, lora_A.shape[0])
        cached = self.routing_kept.get(adapter)
        if cached is None or cached[0] is not pattern or cached[1] != key:
            cached = (pattern, key, self._kept_from(pattern, adapter))
            self.routing_kept[adapter] = cached
        return cached[2]

    def _kept_from(self, pattern: dict | None, adapter: str) -> torch.Tensor | None:
        if not pattern:  # before AdaLoRA's first mask
            return None
        # peft's save_pretrained renames the live keys (drops ``.{adapter}``): accept both forms.
        for key in rank_pattern_keys(self.routing_name, adapter):
            if key in pattern:
                break
        else:
            raise KeyError(f"AdaLoRA's rank_pattern has no entry for routed layer {self.routing_name!r}")
        bits = torch.as_tensor(pattern[key], dtype=torch.bool).reshape(-1)
        lora_A = self.lora_A[adapter]
        rank = lora_A.shape[0]
        if bits.numel() == rank:
            return bits.to(device=lora_A.device, dtype=lora_A.dtype)
        if int(bits.sum()) == rank:  # loaded trimmed to the kept directions
            return None
        raise RuntimeError(
            f"routed layer {self.routing_name!r} has rank {rank}, but its rank_pattern has {bits.numel()} "
            f"entries of which {int(bits.sum())} are kept"
        )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        adapters, visual = self._routed_adapters(x)
        for active_adapter in adapters:
            lora_A = self.lora_A[active_adapter]
            lora_B = self.lora_B[active_adapter]
            lora_E = self.lora_E[active_adapter]
            dropout = self.lora_dropout[active_adapter]
            ranknum = self.ranknum[active_adapter] + 1e-5
            x = cast_input_dtype(self, x, lora_A.dtype)
            x_t = dropout(x) @ lora_A.T
            x_v = self._as_token(dropout(cast_input_dtype(self, visual, lora_A.dtype)) @ lora_A.T, x_t)
            routed = route(self.routing_variant, x_t, x_v, self._kept(active_adapter))
            result = result + (routed * lora_E.T) @ lora_B.T * self.scaling[active_adapter] / ranknum
        return result


def routed_class(layer: torch.nn.Module, name: str) -> type[_Routed]:
    """The routed class for a peft layer; raises naming ``name`` when the layer cannot be routed."""
    if type(layer) is SVDLinear:
        return RoutedSVDLinear
    if type(layer) is LoraLinear:
        if layer.lora_variant:
            raise ValueError(
                f"cannot route LoRA layer {name!r}: adapter(s) {', '.join(sorted(layer.lora_variant))} use a "
                "LoRA variant (DoRA, aLoRA...); routing replaces plain LoRA's bottleneck only"
            )
        return RoutedLoraLinear
    raise TypeError(
        f"cannot route {name!r}: it is a {type(layer).__module__}.{type(layer).__name__}; routing supports "
        "peft's lora.Linear and AdaLoRA SVDLinear (not quantized, embedding or convolution layers)"
    )


def make_routed(
    layer: torch.nn.Module, variant: str, context: VisualContext, name: str, peft_config: dict
) -> _Routed:
    """Turn a peft ``lora.Linear`` or AdaLoRA ``SVDLinear`` into its routed form, in place.

    ``name`` is the layer's module name inside the base model (error messages, AdaLoRA's rank_pattern
    keys); ``peft_config`` is the tuner's ``{adapter: config}`` dict, which AdaLoRA's rank_pattern lives in.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown routing variant {variant!r}; variants are {', '.join(VARIANTS)}")
    swap_layer_class(layer, routed_class(layer, name))
    layer.routing_variant = variant
    layer.routing_context = context
    layer.routing_name = name
    layer.routing_peft_config = peft_config
    layer.routing_kept = {}  # adapter -> (rank_pattern, A's device, dtype and rank, kept directions)
    return layer
