"""VizWiz-VQA from its official files: ``annotations/{split}.json`` and images in ``{split}/``.

Each record is ``{"image": "VizWiz_val_00000000.jpg", "question", "answers": [{"answer",
"answer_confidence"}, ...] (10 of them), "answer_type", "answerable": 0 or 1}``. The public test split
has no answers and so cannot be loaded for training or scoring.

The paper's code (``lavis/datasets/datasets/vizwiz_datasets.py``) prompts with
``f'<Image> Question: {question} Short answer:'``; the ``<Image>`` text is dropped because
``InstructBlipProcessor`` inserts the image tokens itself. The target is the most frequent of the
human answers (ties go to the one given first); all of them are kept as references for VQA accuracy.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from .drawing import (
    COLOR_NAMES,
    SHAPES,
    draw_grid_scene,
    noisy_background,
    pick,
    save_jpeg,
    split_rng,
    with_article,
    write_json,
)
from .examples import (
    BenchmarkDataError,
    Example,
    read_json,
    require_field,
    require_image_file,
    require_type,
)


def vizwiz_prompt(question: str) -> str:
    """The paper's VizWiz prompt without ``<Image>``."""
    return f"Question: {question} Short answer:"


def most_frequent_answer(answers: Sequence[str]) -> str:
    """The answer given most often; among equally frequent answers, the one given first."""
    counts = Counter(answers)
    return max(answers, key=counts.__getitem__)


def load_vizwiz(
    root: str | os.PathLike, split: str, missing_images: dict[Path, str] | None = None
) -> list[Example]:
    """Every question of ``split``, id = the image file's stem (``missing_images``: see
    ``examples.require_image_file``)."""
    root = Path(root)
    path = root / "annotations" / f"{split}.json"
    records = require_type(read_json(path), list, str(path), "the file")
    examples = []
    for index, record in enumerate(records):
        where = f"{path}, entry {index}"
        image_name = require_field(record, "image", str, where)
        where = f"{path}, entry {index} (image {image_name})"
        question = require_field(record, "question", str, where)
        answer_records = require_field(record, "answers", list, where)
        if not answer_records:
            raise BenchmarkDataError(f"{where}: field 'answers' is empty")
        answers = [
            require_field(answer, "answer", str, f"{where}, answers[{k}]")
            for k, answer in enumerate(answer_records)
        ]
        answerable = require_field(record, "answerable", (int, bool), where)
        if answerable not in (0, 1):
            raise BenchmarkDataError(f"{where}: field 'answerable' should be 0 or 1, got {answerable!r}")
        image_path = require_image_file(root / split / image_name, where, missing_images)
        examples.append(
            Example(
                benchmark="vizwiz",
                example_id=Path(image_name).stem,
                prompt=vizwiz_prompt(question),
                target=most_frequent_answer(answers),
                image_path=image_path,
                references=tuple(answers),
                answerable=bool(answerable),
            )
        )
    return examples


# ---------------------------------------------------------------- the synthetic stand-in

VIZWIZ_QUESTIONS = {
    "color": (
        "What color is this?",
        "What colour is this?",
        "Can you tell me what color this is?",
        "What color is the {shape}?",
    ),
    "count": ("How many shapes are there?", "How many things are in this picture?"),
    "shape": ("What shape is this?", "What is the shape of this object?"),
    "identity": ("What is this?", "Can you tell me what this is?"),
    "color_check": ("Is this {color}?",),
    "shape_check": ("Is this a {shape}?",),
}
VIZWIZ_ANSWER_TYPES = {
    "color": "other",
    "count": "number",
    "shape": "other",
    "identity": "other",
    "color_check": "yes/no",
    "shape_check": "yes/no",
}
COLOR_SYNONYMS = {
    "red": ("dark red", "bright red"),
    "blue": ("dark blue", "light blue"),
    "green": ("dark green", "light green"),
    "yellow": ("light yellow", "gold"),
    "purple": ("violet", "dark purple"),
    "orange": ("dark orange", "light orange"),
}
SHAPE_SYNONYMS = {
    "circle": ("round", "a circle"),
    "square": ("a square", "box"),
    "triangle": ("a triangle", "triangular"),
    "diamond": ("a diamond", "rhombus"),
}
VIZWIZ_COUNTS = ("1", "2", "3", "4", "5", "6")
NUMBER_WORDS = ("one", "two", "three", "four", "five")
UNANSWERABLE = "unanswerable"
UNANSWERABLE_NOISE = ("unsuitable", "blurry", "too dark", "nothing", "no idea")
ANSWER_CONFIDENCES = ("yes", "maybe", "no")
UNANSWERABLE_SHARE = 0.2


def _vizwiz_question(
    rng: np.random.Generator, kind: str, shape: str, color: str, count: int
) -> tuple[str, str, tuple[str, ...], list[str]]:
    """(question, right answer, its synonyms, wrong answers) about ``count`` shapes or one shape."""
    template = pick(rng, VIZWIZ_QUESTIONS[kind])
    if kind == "color":
        wrong = [other for other in COLOR_NAMES if other != color]
        return template.format(shape=shape), color, COLOR_SYNONYMS[color], wrong
    if kind == "count":
        return template, str(count), (NUMBER_WORDS[count - 1],), [n for n in VIZWIZ_COUNTS if n != str(count)]
    if kind == "shape":
        return template, shape, SHAPE_SYNONYMS[shape], [other for other in SHAPES if other != shape]
    if kind == "identity":
        wrong = [f"{other} {shape}" for other in COLOR_NAMES if other != color]
        return template, f"{color} {shape}", (shape, with_article(f"{color} {shape}")), wrong
    values = COLOR_NAMES if kind == "color_check" else SHAPES
    shown = color if kind == "color_check" else shape
    asked = shown if rng.random() < 0.5 else pick(rng, [value for value in values if value != shown])
    right = "yes" if asked == shown else "no"
    return template.format(color=asked, shape=asked), right, (), ["no" if right == "yes" else "yes"]


def _annotator_answers(
    rng: np.random.Generator, right: str, synonyms: Sequence[str], wrong: Sequence[str], answerable: bool
) -> list[dict[str, str]]:
    """Ten answers with VizWiz-like noise: synonyms, some wrong answers, "unanswerable" now and then."""
    answers = []
    for _ in range(10):
        draw = rng.random()
        if not answerable:
            answer = UNANSWERABLE if draw < 0.75 else pick(rng, UNANSWERABLE_NOISE if draw < 0.9 else wrong)
        elif draw < 0.7 or (draw < 0.85 and not synonyms):
            answer = right
        elif draw < 0.85:
            answer = pick(rng, synonyms)
        elif draw < 0.95:
            answer = pick(rng, wrong)
        else:
            answer = UNANSWERABLE
        confidence = ANSWER_CONFIDENCES[int(rng.choice(3, p=(0.8, 0.15, 0.05)))]
        answers.append({"answer": answer, "answer_confidence": confidence})
    return answers


def _vizwiz_image(
    rng: np.random.Generator, items: list[tuple[str, str]], answerable: bool, size: int
) -> Image.Image:
    """A noisy photo-like image of ``items``; unanswerable ones are blank or blurred beyond use."""
    if not answerable and rng.random() < 0.5:  # lens covered, or pointed at a wall or a light
        low, high = (0, 40) if rng.random() < 0.5 else (215, 256)
        return noisy_background(rng, size, low, high, noise=4.0)
    scene = draw_grid_scene(rng, noisy_background(rng, size, 90, 230, noise=10.0), items)
    return scene.filter(ImageFilter.GaussianBlur(1 if answerable else size / 4))


def write_synthetic_vizwiz(root: Path, seed: int, sizes: dict[str, int], image_size: int) -> None:
    """``annotations/{split}.json`` and ``{split}/VizWiz_{split}_{n:08d}.jpg`` for train and val."""
    for split in (split for split in ("train", "val") if split in sizes):
        rng = split_rng(seed, "vizwiz", split)
        records = []
        for number in range(sizes[split]):
            kind = pick(rng, tuple(VIZWIZ_QUESTIONS))
            shape, color, count = pick(rng, SHAPES), pick(rng, COLOR_NAMES), int(rng.integers(1, 6))
            question, right, synonyms, wrong = _vizwiz_question(rng, kind, shape, color, count)
            answerable = rng.random() >= UNANSWERABLE_SHARE
            if kind == "count":
                items = [(pick(rng, SHAPES), pick(rng, COLOR_NAMES)) for _ in range(count)]
            else:
                items = [(shape, color)]
            image_name = f"VizWiz_{split}_{number:08d}.jpg"
            save_jpeg(_vizwiz_image(rng, items, answerable, image_size), root / split / image_name)
            records.append(
                {
                    "image": image_name,
                    "question": question,
                    "answers": _annotator_answers(rng, right, synonyms, wrong, answerable),
                    "answer_type": VIZWIZ_ANSWER_TYPES[kind] if answerable else UNANSWERABLE,
                    "answerable": int(answerable),
                }
            )
        write_json(records, root / "annotations" / f"{split}.json")


def synthetic_vizwiz_texts() -> set[str]:
    questions = set()
    for templates in VIZWIZ_QUESTIONS.values():
        for template in templates:
            for shape in SHAPES:
                questions |= {template.format(shape=shape, color=color) for color in COLOR_NAMES}
    answers = {UNANSWERABLE, "yes", "no", *UNANSWERABLE_NOISE, *VIZWIZ_COUNTS, *NUMBER_WORDS}
    answers |= {*COLOR_NAMES, *SHAPES}
    answers |= {synonym for synonyms in COLOR_SYNONYMS.values() for synonym in synonyms}
    answers |= {synonym for synonyms in SHAPE_SYNONYMS.values() for synonym in synonyms}
    objects = [f"{color} {shape}" for color in COLOR_NAMES for shape in SHAPES]
    answers |= set(objects) | {with_article(name) for name in objects}
    return questions | answers | {vizwiz_prompt(question) for question in questions}
