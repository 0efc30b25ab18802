"""A synthetic visual question-answering task generated on the fly, for the offline demo.

Each image shows one to three shapes of one colour on a plain background; questions ask for the
colour, the shape or the count, so answering needs the image. Deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
COUNTS = ("one", "two", "three")
QUESTIONS = {
    "color": "what color are the shapes?",
    "shape": "which shape is shown?",
    "count": "how many shapes are there?",
}
PROMPT = "Question: {question} Short answer:"


@dataclass(frozen=True)
class VqaExample:
    image: Image.Image
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        return PROMPT.format(question=self.question)


def _draw(rng: np.random.Generator, size: int, color: str, shape: str, count: int) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cell = size // count
    radius = max(cell // 3, 2)
    for i in range(count):
        cx = cell * i + cell // 2
        cy = int(rng.integers(radius, size - radius))
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        if shape == "square":
            draw.rectangle(box, fill=COLORS[color])
        elif shape == "circle":
            draw.ellipse(box, fill=COLORS[color])
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=COLORS[color])
    return image


def generate_examples(n: int, seed: int, image_size: int = 32) -> list[VqaExample]:
    """``n`` examples, the same for the same ``seed``."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        color = str(rng.choice(list(COLORS)))
        shape = str(rng.choice(SHAPES))
        count = int(rng.integers(1, 4))
        kind = str(rng.choice(list(QUESTIONS)))
        answer = {"color": color, "shape": shape, "count": COUNTS[count - 1]}[kind]
        examples.append(VqaExample(_draw(rng, image_size, color, shape, count), QUESTIONS[kind], answer))
    return examples


def vocabulary_corpus() -> list[str]:
    """Every text the task can produce, for training the tiny tokenizers."""
    answers = [*COLORS, *SHAPES, *COUNTS]
    return [PROMPT.format(question=q) for q in QUESTIONS.values()] + answers


class VqaCollator:
    """Turns examples into InstructBLIP inputs with answer labels (padding masked as -100)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, examples: list[VqaExample]) -> dict[str, torch.Tensor]:
        batch = self.processor(
            images=[e.image for e in examples], text=[e.prompt for e in examples], padding=True, return_tensors="pt"
        )
        labels = self.processor.tokenizer([e.answer for e in examples], padding=True, return_tensors="pt").input_ids
        labels[labels == self.processor.tokenizer.pad_token_id] = -100
        batch["labels"] = labels
        return dict(batch)
