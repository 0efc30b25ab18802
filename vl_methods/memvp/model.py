"""MemVP on transformers' InstructBLIP (and BLIP-2): the Q-Former's query outputs become FFN memory of the LM.

Design (Jie et al., ICML 2024; released code JieShibo/MemVP):

- Visual tokens: the Q-Former's ``num_query_tokens`` outputs (Q-Former width, 768 in the real models), taken
  before ``language_projection``. As in the paper, where a new projector reads the vision encoder's tokens, the
  trainable projector maps them to the LM width; ``language_projection`` is unused.
- Placement: every FFN block of the LM, all sharing one memory. For T5 that is every encoder and every decoder
  FFN (the paper puts the memory in every FFN of the LLM; the encoder reads the prompt with the image in memory,
  the decoder writes the answer with it).
- Image placeholders: the processor and ``runner.collate.InstructBlipCollator`` put ``num_query_tokens``
  ``<image>`` tokens in ``input_ids`` for the base model to overwrite with the query outputs. MemVP removes
  those positions (and the same positions of ``attention_mask`` and, for decoder-only LMs, ``labels``) before
  the LM, so the LM reads only the text prompt; inputs built without placeholders are used as they are.
- Trainable: projector, ``P_k``, ``P_v``; everything else is frozen, and the vision encoder and the Q-Former
  run without autograd. (The released code also trains adapters inside its CLIP encoder; they are not part
  of MemVP's memory and are left out here.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn
from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

from qformer_budget.core.atomic import atomic_write, write_text_atomic

from .config import MemVPConfig
from .layer import FFN_LAYOUT_NAMES, VisualMemory, find_ffns

WEIGHTS_NAME = "memvp.safetensors"
CONFIG_NAME = "memvp_config.json"
SUPPORTED_MODELS = (InstructBlipForConditionalGeneration, Blip2ForConditionalGeneration)


class MemVPModel(nn.Module):
    """A frozen InstructBLIP or BLIP-2 model whose LM reads the image from FFN memory, not input tokens.

    ``forward`` and ``generate`` take the base model's inputs (``pixel_values``, ``qformer_input_ids``,
    ``input_ids``...). ``forward`` returns the LM's output, with the loss when ``labels`` are given. For
    decoder-only LMs ``generate`` returns the ``input_ids`` as given followed by the new tokens, as the base
    model does, so callers can cut the prompt off by its length.
    """

    def __init__(self, base_model: nn.Module, config: MemVPConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(base_model, SUPPORTED_MODELS):
            raise TypeError(
                f"MemVP needs an InstructBlipForConditionalGeneration or Blip2ForConditionalGeneration, "
                f"got {type(base_model).__name__}"
            )
        language_model = base_model.language_model
        ffns = find_ffns(language_model)
        if not ffns:
            raise ValueError(
                f"{type(base_model).__name__}: its language model {type(language_model).__name__} has no FFN block "
                f"MemVP recognises ({FFN_LAYOUT_NAMES})"
            )
        model_config = base_model.config
        if config.memory_size < model_config.num_query_tokens:
            raise ValueError(
                f"memory_size={config.memory_size} is smaller than the {model_config.num_query_tokens} query tokens "
                f"of {type(base_model).__name__}"
            )
        base_model.requires_grad_(False)
        self.base_model = base_model
        self.memvp_config = config
        self.ffn_names = [name for name, _, _ in ffns]
        self._ffns = [(module, activation) for _, module, activation in ffns]
        parameter = next(language_model.parameters())
        memory = VisualMemory(
            config, model_config.qformer_config.hidden_size, model_config.text_config.hidden_size, generator
        )
        self.memory = memory.to(parameter.device)

    @property
    def config(self):
        """The base model's config (InstructBlipConfig or Blip2Config)."""
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    @property
    def decoder_only(self) -> bool:
        return not self.base_model.language_model.config.is_encoder_decoder

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Refused: the memory hooks exist only during the forward pass, so a recomputation would miss them."""
        raise NotImplementedError(
            "MemVP does not support gradient checkpointing: the FFN memory hooks are removed after each forward "
            "pass, so the recomputed activations would differ; set gradient_checkpointing=False"
        )

    def query_outputs(
        self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The frozen Q-Former's query outputs, (batch, num_query_tokens, Q-Former width)."""
        text = {}
        if isinstance(self.base_model, InstructBlipForConditionalGeneration):
            text = {"qformer_input_ids": qformer_input_ids, "qformer_attention_mask": qformer_attention_mask}
        with torch.no_grad():
            features = self.base_model.get_image_features(pixel_values, **text, return_dict=True)
        return features.qformer_outputs.last_hidden_state[:, : self.config.num_query_tokens]

    @contextmanager
    def visual_memory(
        self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Inside the block every FFN of the LM adds the memory read from these images."""
        keys, values = self.memory(self.query_outputs(pixel_values, qformer_input_ids, qformer_attention_mask))
        with self.memory.attached(self._ffns, keys, values):
            yield

    def text_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` (and ``labels``) without the image placeholder positions.

        Every row must hold the same number of placeholders (the collator and the processor put
        ``num_query_tokens`` in each); ``attention_mask`` and ``labels`` must then align with ``input_ids``.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        aligned = {"input_ids": input_ids, "attention_mask": attention_mask}
        if labels is not None:
            aligned["labels"] = labels
        image = input_ids == self.config.image_token_index
        if not image.any():
            return aligned
        counts = image.sum(dim=1)
        if (counts != counts[0]).any():
            raise ValueError(
                f"rows of input_ids hold different numbers of image placeholder tokens "
                f"(id {self.config.image_token_index}): {counts.tolist()}"
            )
        for name, tensor in aligned.items():
            if tensor.shape != input_ids.shape:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)}, input_ids {tuple(input_ids.shape)}: "
                    "cannot drop the image placeholder positions from both"
                )
        shape = (input_ids.shape[0], input_ids.shape[1] - int(counts[0]))
        return {name: tensor[~image].view(shape) for name, tensor in aligned.items()}

    def forward(
        self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs: Any,
    ):
        """The LM's output on the text prompt, with the images in FFN memory; ``kwargs`` go to the LM."""
        text = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if input_ids is not None:  # T5 labels are decoder targets: no placeholders there
            text |= self.text_inputs(input_ids, attention_mask, labels if self.decoder_only else None)
        with self.visual_memory(pixel_values, qformer_input_ids, qformer_attention_mask):
            return self.base_model.language_model(**text, **kwargs)

    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor, qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None, **generate_kwargs: Any,
    ):
        """The LM's ``generate`` on the text prompt (a BOS token if none), with the images in FFN memory."""
        if input_ids is None:
            bos = self.config.text_config.bos_token_id
            input_ids = torch.full((pixel_values.shape[0], 1), bos, dtype=torch.long, device=pixel_values.device)
        text = self.text_inputs(input_ids, attention_mask)
        with self.visual_memory(pixel_values, qformer_input_ids, qformer_attention_mask):
            output = self.base_model.language_model.generate(**text, **generate_kwargs)
        if not self.decoder_only:
            return output
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        prompt = input_ids.repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
        sequences = torch.cat([prompt, sequences[:, text["input_ids"].shape[1] :]], dim=1)
        if isinstance(output, torch.Tensor):
            return sequences
        output.sequences = sequences
        return output


def add_memvp(model: nn.Module, config: MemVPConfig, seed: int | None = None) -> MemVPModel:
    """Wrap ``model`` with MemVP; only the projector, ``P_k`` and ``P_v`` train.

    With ``seed`` the adapter's initialisation is drawn from a generator seeded with it, leaving the global RNG
    untouched. Raises TypeError for a model that is not InstructBLIP or BLIP-2, and ValueError naming the model
    class when its LM has no FFN block MemVP recognises.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return MemVPModel(model, config, generator)


def memvp_state_dict(model: MemVPModel) -> dict[str, torch.Tensor]:
    """The trainable tensors: projector weights and biases, ``prompt_keys`` (P_k), ``prompt_values`` (P_v)."""
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.memory.state_dict().items()}


def save_memvp(model: MemVPModel, path: str | os.PathLike) -> None:
    """Write ``memvp.safetensors`` (the trainable tensors) and ``memvp_config.json`` into the folder ``path``."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / WEIGHTS_NAME, "wb") as f:
        f.write(save(memvp_state_dict(model), metadata={"format": "pt"}))
    write_text_atomic(folder / CONFIG_NAME, json.dumps(model.memvp_config.to_dict(), indent=2) + "\n")


def load_memvp(base_model: nn.Module, path: str | os.PathLike) -> MemVPModel:
    """``base_model`` with the MemVP adapter saved by :func:`save_memvp` in the folder ``path``."""
    folder = Path(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: not a folder written by save_memvp")
    config = MemVPConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
    model = MemVPModel(base_model, config, torch.Generator())  # initial values are overwritten below
    model.memory.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    return model
