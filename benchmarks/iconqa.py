"""IconQA multi-text-choice (``choose_txt``) problems from the official release.

Layout: ``problems.json`` (pid -> {question, choices, answer, ques_type, split, ...}) at ``root``;
images at ``iconqa/{split}/choose_txt/{pid}/image.png`` as the official zip unpacks them
(``iconqa_data/iconqa/...``), or at ``{split}/choose_txt/{pid}/image.png`` directly under ``root``.

The prompt follows the paper's code (AttentionX/InstructBLIP_PEFT,
``lavis/datasets/datasets/iconqa_datasets.py``, read from the stored copy), which builds
``f'<Image> Question: {question} Options: {options}. Short answer:'`` with the options joined by a
space as ``(a) c1 (b) c2`` and the target ``"(b) " + choices[answer]``. The literal ``<Image>`` text
is dropped here: transformers' ``InstructBlipProcessor`` inserts the image placeholder tokens itself,
and the marker would only add a text token the tokenizers know nothing about. So the prompt is

    Question: <question> Options: (a) c1 (b) c2. Short answer:
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .drawing import (
    COLOR_NAMES,
    SHAPES,
    SPLITS,
    WHITE,
    draw_grid_scene,
    lettered_variants,
    pick,
    sample,
    save_png,
    split_rng,
    write_json,
)
from .examples import (
    BenchmarkDataError,
    Example,
    lettered_options,
    read_json,
    read_multiple_choice,
    require_field,
    require_image_file,
    require_type,
)

QUESTION_TYPE = "choose_txt"


def iconqa_prompt(question: str, options: Sequence[str]) -> str:
    """The paper's IconQA prompt without ``<Image>``; ``options`` are already lettered."""
    return f"Question: {question} Options: {' '.join(options)}. Short answer:"


def load_iconqa(
    root: str | os.PathLike, split: str, missing_images: dict[Path, str] | None = None
) -> list[Example]:
    """The ``choose_txt`` problems of ``split``, in the order of ``problems.json`` (``missing_images``: see
    ``examples.require_image_file``)."""
    root = Path(root)
    problems_path = root / "problems.json"
    problems = require_type(read_json(problems_path), dict, str(problems_path), "the file")
    image_root = root / "iconqa" if (root / "iconqa").is_dir() else root
    examples = []
    for pid, problem in problems.items():
        where = f"{problems_path}, pid {pid}"
        if require_field(problem, "ques_type", str, where) != QUESTION_TYPE:
            continue
        if require_field(problem, "split", str, where) != split:
            continue
        question = require_field(problem, "question", str, where)
        choices, answer = read_multiple_choice(problem, where)
        options = lettered_options(choices)
        image_file = image_root / split / QUESTION_TYPE / pid / "image.png"
        image_path = require_image_file(image_file, where, missing_images)
        examples.append(
            Example(
                benchmark="iconqa",
                example_id=pid,
                prompt=iconqa_prompt(question, options),
                target=options[answer],
                image_path=image_path,
                choices=options,
                answer_index=answer,
            )
        )
    if not examples:
        raise BenchmarkDataError(f"{problems_path}: no {QUESTION_TYPE} problem has split {split!r}")
    return examples


# ---------------------------------------------------------------- the synthetic stand-in

ICONQA_COUNT_QUESTION = "How many {shape}s are there?"
ICONQA_SHAPE_QUESTION = "Which shape is this?"
ICONQA_COLOR_QUESTION = "What color is the {shape}?"
ICONQA_COMPARE_QUESTION = "Are there more {color} shapes than {other} shapes?"
ICONQA_NUMBERS = tuple(str(number) for number in range(1, 10))
ICONQA_MAX_OPTIONS = 5


def _iconqa_problem(rng: np.random.Generator) -> tuple[str, str, list[str], list[tuple[str, str]]]:
    """(question, correct option, other options, diagram items) of one choose_txt problem."""
    kind = pick(rng, ("count", "shape", "color", "compare"))
    if kind == "count":
        shape = pick(rng, SHAPES)
        count = int(rng.integers(1, 7))
        distractor_shapes = [other for other in SHAPES if other != shape]
        items = [(shape, pick(rng, COLOR_NAMES)) for _ in range(count)]
        distractor_count = int(rng.integers(0, 3))
        items += [(pick(rng, distractor_shapes), pick(rng, COLOR_NAMES)) for _ in range(distractor_count)]
        correct = str(count)
        others = sample(rng, [n for n in ICONQA_NUMBERS if n != correct], int(rng.integers(2, 5)))
        return ICONQA_COUNT_QUESTION.format(shape=shape), correct, others, items
    if kind == "shape":
        shape = pick(rng, SHAPES)
        others = sample(rng, [other for other in SHAPES if other != shape], int(rng.integers(1, 4)))
        return ICONQA_SHAPE_QUESTION, shape, others, [(shape, pick(rng, COLOR_NAMES))]
    if kind == "color":
        shape, color = pick(rng, SHAPES), pick(rng, COLOR_NAMES)
        others = sample(rng, [other for other in COLOR_NAMES if other != color], int(rng.integers(1, 5)))
        return ICONQA_COLOR_QUESTION.format(shape=shape), color, others, [(shape, color)]
    color, other = sample(rng, COLOR_NAMES, 2)
    count, other_count = (int(n) + 1 for n in rng.choice(4, size=2, replace=False))
    items = [(pick(rng, SHAPES), color) for _ in range(count)]
    items += [(pick(rng, SHAPES), other) for _ in range(other_count)]
    correct = "yes" if count > other_count else "no"
    question = ICONQA_COMPARE_QUESTION.format(color=color, other=other)
    return question, correct, ["no" if correct == "yes" else "yes"], items


def write_synthetic_iconqa(root: Path, seed: int, sizes: dict[str, int], image_size: int) -> None:
    """``problems.json`` and ``iconqa/{split}/{ques_type}/{pid}/image.png``, as the official zip unpacks."""
    problems: dict[str, dict[str, Any]] = {}
    for split in (split for split in SPLITS if split in sizes):
        rng = split_rng(seed, "iconqa", split)
        for _ in range(sizes[split]):
            question, correct, others, items = _iconqa_problem(rng)
            choices = sample(rng, [correct, *others], len(others) + 1)
            pid = str(len(problems) + 1)
            problems[pid] = {
                "question": question,
                "choices": choices,
                "answer": choices.index(correct),
                "ques_type": "choose_txt",
                "split": split,
            }
            image = draw_grid_scene(rng, Image.new("RGB", (image_size, image_size), WHITE), items)
            save_png(image, root / "iconqa" / split / "choose_txt" / pid / "image.png")
        for _ in range((sizes[split] + 9) // 10):
            shape, count = pick(rng, SHAPES), int(rng.integers(1, 7))
            pid = str(len(problems) + 1)
            problems[pid] = {
                "question": ICONQA_COUNT_QUESTION.format(shape=shape),
                "answer": str(count),
                "ques_type": "fill_in_blank",
                "split": split,
            }
            items = [(shape, pick(rng, COLOR_NAMES)) for _ in range(count)]
            image = draw_grid_scene(rng, Image.new("RGB", (image_size, image_size), WHITE), items)
            save_png(image, root / "iconqa" / split / "fill_in_blank" / pid / "image.png")
    write_json(problems, root / "problems.json")


def synthetic_iconqa_texts() -> set[str]:
    options_by_question = {ICONQA_SHAPE_QUESTION: SHAPES}
    for shape in SHAPES:
        options_by_question[ICONQA_COUNT_QUESTION.format(shape=shape)] = ICONQA_NUMBERS
        options_by_question[ICONQA_COLOR_QUESTION.format(shape=shape)] = COLOR_NAMES
    for color, other in itertools.permutations(COLOR_NAMES, 2):
        options_by_question[ICONQA_COMPARE_QUESTION.format(color=color, other=other)] = ("yes", "no")
    texts = set(options_by_question)
    for question, options in options_by_question.items():
        texts |= set(options) | lettered_variants(options, ICONQA_MAX_OPTIONS)
        texts.add(iconqa_prompt(question, lettered_options(options[:ICONQA_MAX_OPTIONS])))
    return texts
