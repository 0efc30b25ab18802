"""The visual memory shared by every FFN of the LM, and the forward hooks that add it to each FFN.

For hidden states ``x`` (the FFN's input, after the block's layer norm), keys ``K = V + P_k`` and values
``V' = V + P_v`` (one memory per row of the batch), a hooked FFN returns

    FFN(x) + s * act(x K^T) V'

with ``act`` the FFN's own activation (SiLU for LLaMA, as the released code hard-codes; ReLU or GELU for T5).

- Non-gated FFN ``W_out act(W_in x)``: the sum equals one FFN with ``W_in' = [W_in; K]`` (memory rows appended
  to the input matrix) and ``W_out' = [W_out, s V'^T]`` (the values, scaled by ``s``, appended as columns).
- Gated FFN ``W_down (act(W_gate x) * W_up x)`` (LLaMA, FlanT5): the memory stays an ungated branch, as in the
  released LLaMA code. Appending ``K`` to ``W_gate`` and ``s V'^T`` to ``W_down`` would need the matching new
  rows of ``W_up`` to give ``W_up x = 1`` for every ``x``, which no linear map does; the gated case equals
  the concatenation into a second, ungated FFN of width ``memory_size`` beside the gated one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .config import MemVPConfig

Activation = Callable[[torch.Tensor], torch.Tensor]

# Child modules that make a module an FFN block, and the attribute holding its activation.
FFN_LAYOUTS: tuple[tuple[frozenset[str], str], ...] = (
    (frozenset({"wi_0", "wi_1", "wo"}), "act"),  # T5 gated (FlanT5): T5DenseGatedActDense
    (frozenset({"wi", "wo"}), "act"),  # T5: T5DenseActDense
    (frozenset({"gate_proj", "up_proj", "down_proj"}), "act_fn"),  # LLaMA / Vicuna: LlamaMLP
)
FFN_LAYOUT_NAMES = "T5 DenseReluDense (wi, wo or wi_0, wi_1, wo) or LLaMA-style MLP (gate_proj, up_proj, down_proj)"


def ffn_activation(module: nn.Module) -> Activation | None:
    """The activation of ``module`` if it is an FFN block of a recognised layout, else None."""
    children = {name for name, _ in module.named_children()}
    for names, attribute in FFN_LAYOUTS:
        if names <= children and hasattr(module, attribute):
            return getattr(module, attribute)
    return None


def find_ffns(language_model: nn.Module) -> list[tuple[str, nn.Module, Activation]]:
    """Every recognised FFN block of ``language_model`` (T5: encoder and decoder), in module order."""
    found = []
    for name, module in language_model.named_modules():
        activation = ffn_activation(module)
        if activation is not None:
            found.append((name, module, activation))
    return found


def memory_output(
    x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, activation: Activation, memory_scale: float,
    dropout: float = 0.0, training: bool = False,
) -> torch.Tensor:
    """``memory_scale * act(x K^T) V'`` for ``x`` (batch, seq, d) and a memory (memory batch, rows, d).

    Generation with beams or several returned sequences repeats each row of the batch (``repeat_interleave``);
    the memory is repeated the same way.
    """
    if x.shape[0] != keys.shape[0]:
        if x.shape[0] % keys.shape[0]:
            raise ValueError(
                f"hidden states have batch size {x.shape[0]}, not a multiple of the memory's {keys.shape[0]}"
            )
        repeats = x.shape[0] // keys.shape[0]
        keys, values = keys.repeat_interleave(repeats, dim=0), values.repeat_interleave(repeats, dim=0)
    hidden = activation(torch.matmul(x, keys.transpose(1, 2).to(x.dtype)))
    hidden = F.dropout(hidden, dropout, training)
    return memory_scale * torch.matmul(hidden, values.to(x.dtype))


class VisualMemory(nn.Module):
    """Projector, ``P_k`` and ``P_v``: one memory shared by all FFN blocks of the LM.

    The projector is ``Linear(visual_width, projector_hidden) -> SiLU -> Linear(projector_hidden, lm_hidden)``
    with Xavier-uniform weights and zero biases; ``P_k = prompt_key_std * randn``, ``P_v = 0``, all drawn from
    ``generator`` (the global RNG is neither used nor advanced when one is given).
    """

    def __init__(
        self, config: MemVPConfig, visual_width: int, lm_hidden: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.config = config
        hidden = config.projector_hidden
        self.projector = nn.Sequential(
            nn.utils.skip_init(nn.Linear, visual_width, hidden), nn.SiLU(), nn.utils.skip_init(nn.Linear, hidden, lm_hidden)
        )
        for linear in (self.projector[0], self.projector[2]):
            nn.init.xavier_uniform_(linear.weight, generator=generator)
            nn.init.zeros_(linear.bias)
        shape = (config.memory_size, lm_hidden)
        self.prompt_keys = nn.Parameter(torch.randn(shape, generator=generator) * config.prompt_key_std)
        self.prompt_values = nn.Parameter(torch.zeros(shape))

    def forward(self, visual_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys ``V + P_k`` and values ``V + P_v``, each (batch, memory_size, lm_hidden).

        ``V = scale * Projector(visual_tokens)`` fills the first rows; the remaining rows of ``V`` are zero.
        """
        tokens, rows = visual_tokens.shape[1], self.config.memory_size
        if tokens > rows:
            raise ValueError(f"{tokens} visual tokens do not fit a memory of memory_size={rows} rows")
        visual = self.config.scale * self.projector(visual_tokens.to(self.prompt_keys.dtype))
        visual = F.pad(visual, (0, 0, 0, rows - tokens))
        return visual + self.prompt_keys, visual + self.prompt_values

    @contextmanager
    def attached(
        self, ffns: Sequence[tuple[nn.Module, Activation]], keys: torch.Tensor, values: torch.Tensor
    ) -> Iterator[None]:
        """Inside the block each FFN in ``ffns`` adds the memory ``(keys, values)`` to its output."""
        handles = []
        try:
            for module, activation in ffns:
                handles.append(module.register_forward_hook(partial(self._add_memory, activation, keys, values)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _add_memory(
        self, activation: Activation, keys: torch.Tensor, values: torch.Tensor,
        module: nn.Module, args: tuple, output: torch.Tensor,
    ) -> torch.Tensor:
        config = self.config
        return output + memory_output(
            args[0], keys, values, activation, config.memory_scale, config.dropout, self.training
        )
