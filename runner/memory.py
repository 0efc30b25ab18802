"""Peak memory of one training run on a GPU or a CPU, estimated from the preset's architecture alone.

:func:`estimate_peak_memory` adds four terms, and a fifth on a CPU, in bytes (``e`` = bytes per element of the
weights' ``dtype``):

- weights: every parameter of the preset, counted on the meta device (:func:`runner.params.census`), times ``e``;
  the runner loads every weight in ``dtype`` (transformers keeps modules in float32 only for float16, which the
  runner never uses);
- adapter: what the method trains (:func:`runner.params.trainable_parameters`), in float32 as peft keeps it on
  a bf16 base, plus its float32 gradients: ``8 x trainable``;
- optimizer: AdamW's two float32 moments, plus, for AdaLoRA variants, the rank allocator's three float32 copies
  (``ipt``, ``exp_avg_ipt``, ``exp_avg_unc``): ``8 x trainable`` or ``20 x trainable``;
- activations: :func:`activation_bytes`, what autograd keeps for the backward pass;
- process (on a CPU only): what the process holds before the model is built, measured by the caller
  (``process_bytes``: Python, torch, transformers, peft, the data and the processor; 0.51 GiB resident in
  ``qformer-budget rehearse``). A CPU's peak resident set size counts it and a GPU's ``max_memory_allocated``
  does not, so the dry run (per GPU) leaves it at 0. Without it the rehearsal measured 2.36 times the estimate
  for ``real-qformer``, whose weights (0.43 GiB) weigh less than the process, and 1.11 times for FlanT5-XL; with
  it, 1.22 and 1.04 (docs/performance.md, "Dry-run memory estimate").

Not counted: the CUDA context, the allocator's fragmentation (on a CPU, glibc keeps the freed activations and
temporaries of a step as free heap: 0.19 GiB for ``real-qformer``), the frozen vision encoder's transient
buffers, and evaluation (generation keeps no activations, and the trained model is released before the fresh
base is loaded: FlanT5-XL's peak rose 0.15 GiB through evaluation). The activation term is the one to tune
against a measured run; it is a function of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .methods import MethodSettings
from .params import census, trainable_parameters
from .presets import BlipConfig, get_preset

ADAPTER_BYTES_PER_PARAMETER = 4 + 4  # float32 weight and gradient
ADAM_BYTES_PER_PARAMETER = 4 + 4  # AdamW's exp_avg and exp_avg_sq, float32
ADALORA_ALLOCATOR_BYTES_PER_PARAMETER = 3 * 4  # peft's RankAllocator: ipt, exp_avg_ipt, exp_avg_unc, float32
MASK_BYTES = 1  # a dropout mask element
LOSS_BYTES_PER_LOGIT = 4 + 4  # the float32 copy of the logits the loss takes, and its log-softmax


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one run on one GPU, by term, in bytes."""

    weights_bytes: int
    adapter_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    process_bytes: int = 0  # a CPU process's own resident size before the model (0 per GPU)

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.adapter_bytes + self.optimizer_bytes + self.activation_bytes
                + self.process_bytes)


def estimate_peak_memory(
    preset_name: str,
    method: MethodSettings,
    batch_size: int,
    dtype: torch.dtype,
    prompt_tokens: int,
    target_tokens: int,
    process_bytes: int = 0,
) -> MemoryEstimate:
    """Peak memory of training ``method`` on ``preset_name`` with ``batch_size`` examples per step, weights in
    ``dtype``, prompts of ``prompt_tokens`` and targets of ``target_tokens`` tokens, in a process that holds
    ``process_bytes`` before the model (a CPU's; see the module docstring for the terms); nothing is loaded, the
    parameters are counted on the meta device.
    """
    trainable = trainable_parameters(preset_name, method)
    optimizer = ADAM_BYTES_PER_PARAMETER + (ADALORA_ALLOCATOR_BYTES_PER_PARAMETER if method.records_budget else 0)
    config = get_preset(preset_name).config_factory()
    return MemoryEstimate(
        weights_bytes=census(preset_name).total * dtype.itemsize,
        adapter_bytes=trainable * ADAPTER_BYTES_PER_PARAMETER,
        optimizer_bytes=trainable * optimizer,
        activation_bytes=activation_bytes(config, batch_size, dtype, prompt_tokens, target_tokens),
        process_bytes=process_bytes,
    )


def activation_bytes(
    config: BlipConfig, batch_size: int, dtype: torch.dtype, prompt_tokens: int, target_tokens: int
) -> int:
    """What autograd keeps for the backward pass of one training step, in bytes.

    The trainable path runs from the Q-Former to the loss: the Q-Former's output is the LLM's input, so the
    gradient flows back through the whole frozen LLM and its activations count as well as the Q-Former's. The
    frozen vision encoder keeps nothing; its output, the cross-attention's keys and values, is kept once.

    Each transformer block keeps, after Korthikanti et al. 2022 ("Reducing activation recomputation in large
    transformer models", 34·s·b·h + 5·a·s²·b bytes per layer in 16 bits), for ``n`` tokens of width ``h``,
    ``e`` bytes per element and 1-byte dropout masks:

    - attention, ``a`` heads, ``s_q`` queries over ``s_k`` keys: ``n·h·(6e + 1) + b·a·s_q·s_k·(2e + 1)``
      (norm, q/k/v and output inputs; scores after softmax and dropout, and the mask);
    - feed-forward of width ``f``: ``n·(h·(2e + 1) + k·f·e)``, ``k`` = 2 (activation and output input), 3 for a
      gated FFN (gate, up, product);
    - the loss: ``b·L·V·(e + 8)`` for ``L`` positions with logits over the vocabulary ``V`` (the logits, their
      float32 copy and its log-softmax).

    Sequences: ``Q`` query tokens, ``P = prompt_tokens`` (the Q-Former of InstructBLIP reads the prompt too),
    ``T = target_tokens``, ``I`` image tokens. Q-Former: every layer's self-attention and FFN on ``Q + P``
    tokens, cross-attention (every ``cross_attention_frequency``-th layer) of ``Q`` over ``I``. T5: encoder on
    ``Q + P`` tokens, decoder on ``T`` with cross-attention over ``Q + P``, logits on ``T``. LLaMA: one stack on
    ``Q + P + T`` tokens with logits on all of them. Dropout masks are counted everywhere (LLaMA has none), and
    MemVP is counted as if its visual tokens entered the LM, so the estimate errs high for those.
    """
    e = dtype.itemsize
    b = batch_size

    def attention(s_q: int, s_k: int, width: int, heads: int) -> int:
        return b * s_q * width * (6 * e + MASK_BYTES) + b * heads * s_q * s_k * (2 * e + MASK_BYTES)

    def ffn(s: int, width: int, inner: int, gated: bool) -> int:
        return b * s * (width * (2 * e + MASK_BYTES) + (3 if gated else 2) * inner * e)

    vision, qformer, text = config.vision_config, config.qformer_config, config.text_config
    queries = config.num_query_tokens
    image_tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    qformer_text = prompt_tokens if config.model_type == "instructblip" else 0
    qformer_tokens = queries + qformer_text
    cross_layers = len(range(0, qformer.num_hidden_layers, qformer.cross_attention_frequency))
    total = b * image_tokens * vision.hidden_size * e
    total += qformer.num_hidden_layers * (
        attention(qformer_tokens, qformer_tokens, qformer.hidden_size, qformer.num_attention_heads)
        + ffn(qformer_tokens, qformer.hidden_size, qformer.intermediate_size, gated=False)
    )
    total += cross_layers * attention(queries, image_tokens, qformer.hidden_size, qformer.num_attention_heads)

    if text.model_type == "t5":
        encoder, decoder, gated = queries + prompt_tokens, target_tokens, text.is_gated_act
        width, heads, inner = text.d_model, text.num_heads, text.d_ff
        encoder_layer = attention(encoder, encoder, width, heads) + ffn(encoder, width, inner, gated)
        decoder_layer = (attention(decoder, decoder, width, heads) + attention(decoder, encoder, width, heads)
                         + ffn(decoder, width, inner, gated))
        total += text.num_layers * encoder_layer + text.num_decoder_layers * decoder_layer
        logit_positions = decoder
    elif text.model_type == "llama":
        sequence = queries + prompt_tokens + target_tokens
        width, heads, inner = text.hidden_size, text.num_attention_heads, text.intermediate_size
        layer = attention(sequence, sequence, width, heads) + ffn(sequence, width, inner, gated=True)
        total += text.num_hidden_layers * layer
        logit_positions = sequence
    else:
        raise ValueError(f"no activation estimate for a {text.model_type!r} language model; known: t5, llama")
    return total + b * logit_positions * text.vocab_size * (e + LOSS_BYTES_PER_LOGIT)
