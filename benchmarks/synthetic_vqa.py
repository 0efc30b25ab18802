"""A generic synthetic visual question-answering task generated on the fly.

The tiny checkpoint is aligned on it (with synthetic captions) before any benchmark fine-tuning,
and the tests train on it.

Each image shows one to three shapes of one colour on a plain background; questions ask for the
colour, the shape or the count, so answering needs the image. Deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle", "triangle")
COUNTS = ("one", "two", "three")
QUESTIONS = {
    "color": "what color are the shapes?",
    "shape": "which shape is shown?",
    "count": "how many shapes are there?",
    "yesno": "are the shapes {color}?",
}
PROMPT = "Question: {question} Short answer:"
# Multiple-choice prompt styles of the kind the benchmarks use, so the aligned model knows the answer formats.
CHOICES_PROMPT = "Question: {question} Options: {options}. Short answer:"
CONTEXT_PROMPT = "Context: {{{context}}} Question: {{{question}}} Options: {{{options}}} Answer:"
NEUTRAL_CONTEXT = "Look at the picture."
STYLES = ("short", "choices", "context")


def _lettered(options: tuple[str, ...]) -> list[str]:
    return [f"({chr(ord('a') + i)}) {option}" for i, option in enumerate(options)]


@dataclass(frozen=True)
class VqaExample:
    """One question; ``style`` "short" asks for a word, "choices" and "context" for a lettered option."""

    image: Image.Image
    question: str
    answer: str
    options: tuple[str, ...] = ()
    style: str = "short"

    @property
    def prompt(self) -> str:
        if self.style == "short":
            return PROMPT.format(question=self.question)
        if self.style == "choices":
            return CHOICES_PROMPT.format(question=self.question, options=" ".join(_lettered(self.options)))
        lines = "".join(f"{line}\n" for line in _lettered(self.options))
        return CONTEXT_PROMPT.format(context=NEUTRAL_CONTEXT, question=self.question, options=lines)

    @property
    def target(self) -> str:
        if self.style == "short":
            return self.answer
        return _lettered(self.options)[self.options.index(self.answer)]

    def load_image(self) -> Image.Image:
        return self.image


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


def generate_examples(n: int, seed: int, image_size: int = 32, styles: tuple[str, ...] = ("short",)) -> list[VqaExample]:
    """``n`` examples, the same for the same ``seed``; each takes a prompt style from ``styles``."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        color = str(rng.choice(list(COLORS)))
        shape = str(rng.choice(SHAPES))
        count = int(rng.integers(1, 4))
        kind = str(rng.choice(list(QUESTIONS)))
        asked = color if rng.random() < 0.5 else str(rng.choice([c for c in COLORS if c != color]))
        question = QUESTIONS[kind].format(color=asked)
        answer = {"color": color, "shape": shape, "count": COUNTS[count - 1], "yesno": "yes" if asked == color else "no"}[kind]
        image = _draw(rng, image_size, color, shape, count)
        style = str(rng.choice(styles)) if len(styles) > 1 else styles[0]
        options: tuple[str, ...] = ()
        if style != "short":
            pool = {"color": list(COLORS), "shape": list(SHAPES), "count": list(COUNTS), "yesno": ["yes", "no"]}[kind]
            distractors = [o for o in pool if o != answer]
            chosen = [str(o) for o in rng.choice(distractors, size=int(rng.integers(1, len(distractors) + 1)), replace=False)]
            options = tuple(str(o) for o in rng.permutation([answer, *chosen]))
        examples.append(VqaExample(image, question, answer, options, style))
    return examples


def vocabulary_corpus() -> list[str]:
    """Every text the task can produce, for training the tiny tokenizers."""
    answers = [*COLORS, *SHAPES, *COUNTS, "yes", "no"]
    options = " ".join(_lettered(tuple(answers)))
    prompts = [
        template.format(question=q.format(color=color), options=options, context=NEUTRAL_CONTEXT)
        for q in QUESTIONS.values()
        for color in COLORS
        for template in (PROMPT, CHOICES_PROMPT, CONTEXT_PROMPT)
    ]
    return prompts + answers + _lettered(tuple(answers))
