"""Benchmark examples to InstructBLIP / BLIP-2 inputs, one rule for training and evaluation.

The prompt rule, shared by training, option scoring and generation: prompts are cut to their last
``max_prompt_tokens`` tokens (left truncation, so the question and the answer cue always survive),
for the LM and for the Q-Former alike. The paper's code truncated training prompts only.

T5 LMs get the prompt as encoder input and the target as labels. Decoder-only LMs (Vicuna) get
``image tokens, prompt, target, eos`` as one sequence with labels on the target only, and are
left-padded for generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

IGNORE_INDEX = -100


class InstructBlipCollator:
    """Builds model inputs from images, prompts and targets with the processor's own components."""

    def __init__(self, processor, max_prompt_tokens: int = 128, decoder_only: bool = False) -> None:
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.qformer_tokenizer = getattr(processor, "qformer_tokenizer", None)
        self.num_query_tokens = processor.num_query_tokens
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token.content)
        self.max_prompt_tokens = max_prompt_tokens
        self.decoder_only = decoder_only
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        """Training batch from ``benchmarks.Example`` objects: prompt in, target as labels."""
        return self.encode([e.load_image() for e in examples], [e.prompt for e in examples], [e.target for e in examples])

    def _prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        self.tokenizer.truncation_side = "left"
        return self.tokenizer(list(prompts), truncation=True, max_length=self.max_prompt_tokens)["input_ids"]

    def _vision_inputs(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        inputs = {"pixel_values": self.image_processor(list(images), return_tensors="pt")["pixel_values"]}
        if self.qformer_tokenizer is not None:
            self.qformer_tokenizer.truncation_side = "left"
            qformer = self.qformer_tokenizer(
                list(prompts), padding=True, truncation=True, max_length=self.max_prompt_tokens, return_tensors="pt"
            )
            inputs["qformer_input_ids"] = qformer["input_ids"]
            inputs["qformer_attention_mask"] = qformer["attention_mask"]
        return inputs

    def _pad(self, rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
        width = max(len(r) for r in rows)
        padded = [[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows]
        return torch.tensor(padded, dtype=torch.long)

    def encode(
        self, images: Sequence[Image.Image], prompts: Sequence[str], targets: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Inputs with ``labels`` for the targets (training and option scoring)."""
        image_ids = [self.image_token_id] * self.num_query_tokens
        prompt_ids = self._prompt_ids(prompts)
        if self.decoder_only:
            target_ids = [
                ids + [self.tokenizer.eos_token_id]
                for ids in self.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
            ]
            sequences = [image_ids + p + t for p, t in zip(prompt_ids, target_ids)]
            labels = [[IGNORE_INDEX] * (len(image_ids) + len(p)) + t for p, t in zip(prompt_ids, target_ids)]
            input_ids = self._pad(sequences, self.pad_id)
            batch = {
                "input_ids": input_ids,
                "attention_mask": self._pad([[1] * len(s) for s in sequences], 0),
                "labels": self._pad(labels, IGNORE_INDEX),
            }
        else:
            sequences = [image_ids + p for p in prompt_ids]
            batch = {
                "input_ids": self._pad(sequences, self.pad_id),
                "attention_mask": self._pad([[1] * len(s) for s in sequences], 0),
                "labels": self._pad(self.tokenizer(list(targets))["input_ids"], IGNORE_INDEX),
            }
        return self._vision_inputs(images, prompts) | batch

    def encode_for_generation(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Inputs for ``generate``: no labels; decoder-only LMs are left-padded."""
        image_ids = [self.image_token_id] * self.num_query_tokens
        sequences = [image_ids + p for p in self._prompt_ids(prompts)]
        left = self.decoder_only
        return self._vision_inputs(images, prompts) | {
            "input_ids": self._pad(sequences, self.pad_id, left=left),
            "attention_mask": self._pad([[1] * len(s) for s in sequences], 0, left=left),
        }
