"""Small synthetic stand-ins for the four benchmarks, written in each benchmark's official format.

Each keeps the character of its original, so a tiny model trained on it exercises the same skills:

* IconQA-like: abstract diagrams on white; counting, naming a shape or colour, comparing counts;
  2 to 5 text options in random order.
* ScienceQA-like: the hint states a made-up rule that varies per problem ("In this world, red things
  are hot and blue things are cold", or the other way round) and the image shows the object the rule
  applies to, so the answer needs both text and image; 2 to 4 options; a fifth of the problems are
  text-only (``image`` null, the fact stated in the hint), which the loader skips as in the real data.
* Flickr30k-like: one to three coloured shapes at positions, five paraphrased captions per image.
* VizWiz-like: noisy photo-like images, open questions (colour, count, shape, "what is this?",
  yes/no) with 10 answers carrying annotator noise, and a fifth unanswerable items (blank or heavily
  blurred image) whose answers are mostly "unanswerable".

``sizes`` counts the examples the loaders return per split (images for Flickr30k, whose train split
yields five examples per image). Extra records the loaders skip come on top: a tenth as many IconQA
``fill_in_blank`` problems and a quarter as many ScienceQA text-only problems. VizWiz has no
answered test split, so it writes only ``train`` and ``val``. Every split draws from its own random
stream (seed, benchmark, split), so the same seed writes byte-identical files and a split's content
does not depend on the other splits' sizes. The vocabulary stays at a few hundred words, all listed
by ``synthetic_corpus()``.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .examples import lettered_options
from .flickr30k import FLICKR30K_PROMPT
from .iconqa import iconqa_prompt
from .registry import BENCHMARKS
from .scienceqa import scienceqa_prompt
from .vizwiz import vizwiz_prompt

COLORS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 20),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle", "diamond")
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 800, "val": 100, "test": 100}
WHITE = (255, 255, 255)
GRID = 3  # diagrams with several shapes put each in its own cell of a GRID x GRID grid


# ---------------------------------------------------------------- shared drawing and file helpers


def _rng(seed: int, benchmark: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, BENCHMARKS.index(benchmark), SPLITS.index(split)])


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _sample(rng: np.random.Generator, options: Sequence[Any], count: int) -> list[Any]:
    """``count`` distinct entries of ``options`` in random order."""
    return [options[int(index)] for index in rng.choice(len(options), size=count, replace=False)]


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, center: tuple[float, float], radius: float, color: str
) -> None:
    x, y, r = round(center[0]), round(center[1]), max(round(radius), 2)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_grid_scene(
    rng: np.random.Generator, image: Image.Image, items: Sequence[tuple[str, str]]
) -> Image.Image:
    """Draw ``items`` ((shape, colour) pairs) on ``image``: one large in the centre, several in grid cells."""
    size = image.width
    draw = ImageDraw.Draw(image)
    if len(items) == 1:
        shape, color = items[0]
        _draw_shape(draw, shape, (size / 2, size / 2), size * 0.3, color)
        return image
    cell = size / GRID
    for (shape, color), cell_index in zip(items, rng.choice(GRID * GRID, size=len(items), replace=False)):
        row, column = divmod(int(cell_index), GRID)
        _draw_shape(draw, shape, ((column + 0.5) * cell, (row + 0.5) * cell), cell * 0.35, color)
    return image


def _noisy_background(rng: np.random.Generator, size: int, low: int, high: int, noise: float) -> Image.Image:
    base = rng.integers(low, high, size=3)
    pixels = base + rng.normal(0.0, noise, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=6)


def _save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90, subsampling=0)


def _write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _with_article(phrase: str) -> str:
    """``phrase`` after "a" or "an": "a red circle", "an orange square"."""
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def _lettered_variants(options: Sequence[str], max_options: int) -> set[str]:
    """Every ``(x) option`` text an option can take in a list of up to ``max_options`` options."""
    return {f"({chr(ord('a') + index)}) {option}" for option in options for index in range(max_options)}


# ---------------------------------------------------------------- IconQA-like

ICONQA_COUNT_QUESTION = "How many {shape}s are there?"
ICONQA_SHAPE_QUESTION = "Which shape is this?"
ICONQA_COLOR_QUESTION = "What color is the {shape}?"
ICONQA_COMPARE_QUESTION = "Are there more {color} shapes than {other} shapes?"
ICONQA_NUMBERS = tuple(str(number) for number in range(1, 10))
ICONQA_MAX_OPTIONS = 5


def _iconqa_problem(rng: np.random.Generator) -> tuple[str, str, list[str], list[tuple[str, str]]]:
    """(question, correct option, other options, diagram items) of one choose_txt problem."""
    kind = _pick(rng, ("count", "shape", "color", "compare"))
    if kind == "count":
        shape = _pick(rng, SHAPES)
        count = int(rng.integers(1, 7))
        distractor_shapes = [other for other in SHAPES if other != shape]
        items = [(shape, _pick(rng, COLOR_NAMES)) for _ in range(count)]
        distractor_count = int(rng.integers(0, 3))
        items += [(_pick(rng, distractor_shapes), _pick(rng, COLOR_NAMES)) for _ in range(distractor_count)]
        correct = str(count)
        others = _sample(rng, [n for n in ICONQA_NUMBERS if n != correct], int(rng.integers(2, 5)))
        return ICONQA_COUNT_QUESTION.format(shape=shape), correct, others, items
    if kind == "shape":
        shape = _pick(rng, SHAPES)
        others = _sample(rng, [other for other in SHAPES if other != shape], int(rng.integers(1, 4)))
        return ICONQA_SHAPE_QUESTION, shape, others, [(shape, _pick(rng, COLOR_NAMES))]
    if kind == "color":
        shape, color = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES)
        others = _sample(rng, [other for other in COLOR_NAMES if other != color], int(rng.integers(1, 5)))
        return ICONQA_COLOR_QUESTION.format(shape=shape), color, others, [(shape, color)]
    color, other = _sample(rng, COLOR_NAMES, 2)
    count, other_count = (int(n) + 1 for n in rng.choice(4, size=2, replace=False))
    items = [(_pick(rng, SHAPES), color) for _ in range(count)]
    items += [(_pick(rng, SHAPES), other) for _ in range(other_count)]
    correct = "yes" if count > other_count else "no"
    question = ICONQA_COMPARE_QUESTION.format(color=color, other=other)
    return question, correct, ["no" if correct == "yes" else "yes"], items


def _write_iconqa(root: Path, seed: int, sizes: dict[str, int], image_size: int) -> None:
    """``problems.json`` and ``iconqa/{split}/{ques_type}/{pid}/image.png``, as the official zip unpacks."""
    problems: dict[str, dict[str, Any]] = {}
    for split in (split for split in SPLITS if split in sizes):
        rng = _rng(seed, "iconqa", split)
        for _ in range(sizes[split]):
            question, correct, others, items = _iconqa_problem(rng)
            choices = _sample(rng, [correct, *others], len(others) + 1)
            pid = str(len(problems) + 1)
            problems[pid] = {
                "question": question,
                "choices": choices,
                "answer": choices.index(correct),
                "ques_type": "choose_txt",
                "split": split,
            }
            image = _draw_grid_scene(rng, Image.new("RGB", (image_size, image_size), WHITE), items)
            _save_png(image, root / "iconqa" / split / "choose_txt" / pid / "image.png")
        for _ in range((sizes[split] + 9) // 10):
            shape, count = _pick(rng, SHAPES), int(rng.integers(1, 7))
            pid = str(len(problems) + 1)
            problems[pid] = {
                "question": ICONQA_COUNT_QUESTION.format(shape=shape),
                "answer": str(count),
                "ques_type": "fill_in_blank",
                "split": split,
            }
            items = [(shape, _pick(rng, COLOR_NAMES)) for _ in range(count)]
            image = _draw_grid_scene(rng, Image.new("RGB", (image_size, image_size), WHITE), items)
            _save_png(image, root / "iconqa" / split / "fill_in_blank" / pid / "image.png")
    _write_json(problems, root / "problems.json")


def _iconqa_texts() -> set[str]:
    options_by_question = {ICONQA_SHAPE_QUESTION: SHAPES}
    for shape in SHAPES:
        options_by_question[ICONQA_COUNT_QUESTION.format(shape=shape)] = ICONQA_NUMBERS
        options_by_question[ICONQA_COLOR_QUESTION.format(shape=shape)] = COLOR_NAMES
    for color, other in itertools.permutations(COLOR_NAMES, 2):
        options_by_question[ICONQA_COMPARE_QUESTION.format(color=color, other=other)] = ("yes", "no")
    texts = set(options_by_question)
    for question, options in options_by_question.items():
        texts |= set(options) | _lettered_variants(options, ICONQA_MAX_OPTIONS)
        texts.add(iconqa_prompt(question, lettered_options(options[:ICONQA_MAX_OPTIONS])))
    return texts


# ---------------------------------------------------------------- ScienceQA-like


@dataclass(frozen=True)
class _RuleFamily:
    """A kind of made-up rule: which feature of the object (colour or shape) decides which property."""

    topic: str
    key_kind: str  # "color" or "shape": the feature the rule reads off the image
    clause: str  # one clause of the rule, with {key} and {value}
    values: tuple[str, ...]  # the properties the rule hands out
    answers: tuple[str, ...]  # the answer option for each value, same order
    nouns: tuple[str, ...]  # what the question calls the object
    question: str  # with {noun} and {where} (" in the picture" or "")
    lecture: str

    def keys(self) -> tuple[str, ...]:
        return COLOR_NAMES if self.key_kind == "color" else SHAPES

    def fact(self, noun: str, key: str) -> str:
        """The sentence a text-only problem adds to the hint, e.g. "The circle is red."."""
        return f"The {noun} is {key}." if self.key_kind == "color" else f"The {noun} is a {key}."

    def hint(self, keys: Sequence[str]) -> str:
        """The rule giving ``keys[i]`` the property ``values[i]``."""
        clauses = [self.clause.format(key=key, value=value) for key, value in zip(keys, self.values)]
        joined = clauses[0] if len(clauses) == 1 else f"{', '.join(clauses[:-1])} and {clauses[-1]}"
        return f"In this world, {joined}."

    def solution(self, noun: str, key: str, value_index: int) -> str:
        clause = self.clause.format(key=key, value=self.values[value_index])
        answer = self.answers[value_index]
        return f"{self.fact(noun, key)} In this world, {clause}. So, the answer is {answer}."

    def drawn_shape(self, noun: str, key: str) -> str:
        if self.key_kind == "shape":
            return key
        return noun if noun in SHAPES else "triangle"


_LECTURE = (
    "In a made-up world, a rule can link the {feature} of a thing to {property}. "
    "To use the rule, first find the {feature} of the object."
)
RULE_FAMILIES = (
    _RuleFamily(
        "physics", "color", "{key} things are {value}", ("hot", "cold"), ("hot", "cold"), SHAPES,
        "Is the {noun}{where} hot or cold?", _LECTURE.format(feature="colour", property="how hot it is"),
    ),
    _RuleFamily(
        "physics", "color", "{key} things {value}", ("float", "sink"), ("float", "sink"), SHAPES,
        "Will the {noun}{where} float or sink?",
        _LECTURE.format(feature="colour", property="whether it floats"),
    ),
    _RuleFamily(
        "physics", "shape", "{key}s are {value}", ("magnetic", "not magnetic"), ("yes", "no"), ("object",),
        "Is the {noun}{where} magnetic?", _LECTURE.format(feature="shape", property="whether it is magnetic"),
    ),
    _RuleFamily(
        "biology", "color", "{key} birds fly {value}", ("north", "south", "east", "west"),
        ("north", "south", "east", "west"), ("bird",),
        "Which way will the {noun}{where} fly?",
        _LECTURE.format(feature="colour", property="the way it flies"),
    ),
)
SCIENCEQA_GRADES = ("grade2", "grade3", "grade4", "grade5")
SCIENCEQA_MAX_OPTIONS = 4
IN_THE_PICTURE = " in the picture"


def _scienceqa_problem(
    rng: np.random.Generator, split: str, with_image: bool
) -> tuple[dict[str, Any], tuple[str, str]]:
    """One problems.json record and the (shape, colour) its image shows."""
    family = _pick(rng, RULE_FAMILIES)
    keys = _sample(rng, family.keys(), len(family.values))
    value_index = int(rng.integers(len(keys)))
    key, noun = keys[value_index], _pick(rng, family.nouns)
    correct = family.answers[value_index]
    option_count = int(rng.integers(2, len(family.answers) + 1))
    others = _sample(rng, [answer for answer in family.answers if answer != correct], option_count - 1)
    choices = _sample(rng, [correct, *others], option_count)
    hint = family.hint(keys) if with_image else f"{family.hint(keys)} {family.fact(noun, key)}"
    color = key if family.key_kind == "color" else _pick(rng, COLOR_NAMES)
    record = {
        "question": family.question.format(noun=noun, where=IN_THE_PICTURE if with_image else ""),
        "choices": choices,
        "answer": choices.index(correct),
        "hint": hint,
        "image": "image.png" if with_image else None,
        "task": "closed choice",
        "grade": _pick(rng, SCIENCEQA_GRADES),
        "subject": "natural science",
        "topic": family.topic,
        "category": "Rules of a made-up world",
        "skill": "Use a rule and a picture",
        "lecture": family.lecture,
        "solution": family.solution(noun, key, value_index),
        "split": split,
    }
    return record, (family.drawn_shape(noun, key), color)


def _write_scienceqa(root: Path, seed: int, sizes: dict[str, int], image_size: int) -> None:
    """``problems.json``, ``pid_splits.json`` (with ``trainval``) and ``images/{split}/{pid}/image.png``."""
    problems: dict[str, dict[str, Any]] = {}
    pid_splits: dict[str, list[str]] = {}
    for split in (split for split in SPLITS if split in sizes):
        rng = _rng(seed, "scienceqa", split)
        image_count, text_count = sizes[split], (sizes[split] + 3) // 4
        kinds = _sample(rng, [True] * image_count + [False] * text_count, image_count + text_count)
        pid_splits[split] = []
        for with_image in kinds:
            record, (shape, color) = _scienceqa_problem(rng, split, with_image)
            pid = str(len(problems) + 1)
            problems[pid] = record
            pid_splits[split].append(pid)
            if with_image:
                image = Image.new("RGB", (image_size, image_size), WHITE)
                center = tuple(rng.uniform(0.3, 0.7, size=2) * image_size)
                radius = rng.uniform(0.15, 0.25) * image_size
                _draw_shape(ImageDraw.Draw(image), shape, center, radius, color)
                _save_png(image, root / "images" / split / pid / "image.png")
    if "train" in pid_splits and "val" in pid_splits:
        pid_splits["trainval"] = pid_splits["train"] + pid_splits["val"]
    _write_json(problems, root / "problems.json")
    _write_json(pid_splits, root / "pid_splits.json")


def _scienceqa_texts() -> set[str]:
    texts = set()
    for family in RULE_FAMILIES:
        texts |= {family.lecture, *family.answers} | _lettered_variants(family.answers, SCIENCEQA_MAX_OPTIONS)
        for noun in family.nouns:
            texts |= {family.question.format(noun=noun, where=where) for where in (IN_THE_PICTURE, "")}
        for keys in itertools.permutations(family.keys(), len(family.values)):
            hint = family.hint(keys)
            texts.add(hint)
            for value_index, key in enumerate(keys):
                for noun in family.nouns:
                    texts.add(f"{hint} {family.fact(noun, key)}")
                    texts.add(family.solution(noun, key, value_index))
        first_hint = family.hint(family.keys()[: len(family.values)])
        for noun in family.nouns:
            question = family.question.format(noun=noun, where=IN_THE_PICTURE)
            options = lettered_options(family.answers)
            texts.add(scienceqa_prompt(question, first_hint, family.lecture, options))
    return texts


# ---------------------------------------------------------------- Flickr30k-like

FLICKR_POSITIONS = {
    "on the left": (0.25, 0.5),
    "on the right": (0.75, 0.5),
    "at the top": (0.5, 0.25),
    "at the bottom": (0.5, 0.75),
    "in the middle": (0.5, 0.5),
}
ONE_SHAPE_CAPTIONS = (
    "{a} {position}.",
    "{a} alone {position}.",
    "{a} on a plain background.",
    "A picture of {a}.",
    "There is {a} {position}.",
)
ROW_OF_TWO_CAPTIONS = (
    "{a} to the left of {b}.",
    "{b} to the right of {a}.",
    "{a} and {b} side by side.",
    "Two shapes: {a} on the left and {b} on the right.",
    "{a} next to {b}.",
)
COLUMN_OF_TWO_CAPTIONS = (
    "{a} above {b}.",
    "{b} below {a}.",
    "{a} and {b}, one above the other.",
    "Two shapes: {a} at the top and {b} at the bottom.",
    "{a} over {b}.",
)
ROW_OF_THREE_CAPTIONS = (
    "{a}, {b} and {c} in a row.",
    "Three shapes: {a} on the left, {b} in the middle and {c} on the right.",
    "{b} between {a} and {c}.",
    "{a} to the left of {b} and {c}.",
    "A row of three shapes: {a}, {b} and {c}.",
)
FLICKR_FIRST_IMAGE_ID = 100000001


def _caption(template: str, **names: str) -> str:
    """``template`` filled in, its first letter capitalised as in Flickr30k's sentences."""
    text = template.format(**names)
    return text[0].upper() + text[1:]


def _flickr_scene(rng: np.random.Generator) -> tuple[list[tuple[str, str, tuple[float, float]]], list[str]]:
    """((shape, colour, relative centre) of each shape, five captions). Colours differ within a scene."""
    count = int(rng.integers(1, 4))
    colors = _sample(rng, COLOR_NAMES, count)
    shapes = _sample(rng, SHAPES, 3) if count == 3 else [_pick(rng, SHAPES) for _ in range(count)]
    names = {letter: _with_article(f"{color} {shape}") for letter, color, shape in zip("abc", colors, shapes)}
    if count == 1:
        position = _pick(rng, tuple(FLICKR_POSITIONS))
        centers = [FLICKR_POSITIONS[position]]
        captions = [_caption(template, position=position, **names) for template in ONE_SHAPE_CAPTIONS]
    elif count == 2 and rng.random() < 0.5:
        centers = [(0.27, 0.5), (0.73, 0.5)]
        captions = [_caption(template, **names) for template in ROW_OF_TWO_CAPTIONS]
    elif count == 2:
        centers = [(0.5, 0.27), (0.5, 0.73)]
        captions = [_caption(template, **names) for template in COLUMN_OF_TWO_CAPTIONS]
    else:
        centers = [(1 / 6, 0.5), (0.5, 0.5), (5 / 6, 0.5)]
        captions = [_caption(template, **names) for template in ROW_OF_THREE_CAPTIONS]
    return list(zip(shapes, colors, centers)), _sample(rng, captions, len(captions))


def _write_flickr30k(root: Path, seed: int, sizes: dict[str, int], image_size: int) -> None:
    """``flickr30k-images/{id}.jpg`` and LAVIS's ``annotations/flickr30k_{split}.json``."""
    image_id = FLICKR_FIRST_IMAGE_ID
    for split in (split for split in SPLITS if split in sizes):
        rng = _rng(seed, "flickr30k", split)
        entries: list[dict[str, Any]] = []
        for _ in range(sizes[split]):
            shapes, captions = _flickr_scene(rng)
            image = _noisy_background(rng, image_size, 215, 256, noise=3.0)
            draw = ImageDraw.Draw(image)
            radius = image_size * (0.2, 0.15, 0.12)[len(shapes) - 1]
            for shape, color, (x, y) in shapes:
                jitter = rng.uniform(-0.04, 0.04, size=2)
                center = ((x + jitter[0]) * image_size, (y + jitter[1]) * image_size)
                _draw_shape(draw, shape, center, radius, color)
            image_name = f"flickr30k-images/{image_id}.jpg"
            _save_jpeg(image, root / image_name)
            if split == "train":
                entries += [
                    {"caption": caption, "image": image_name, "image_id": str(image_id)}
                    for caption in captions
                ]
            else:
                entries.append({"image": image_name, "caption": captions})
            image_id += 1
        _write_json(entries, root / "annotations" / f"flickr30k_{split}.json")


def _flickr30k_texts() -> set[str]:
    texts = {FLICKR30K_PROMPT}
    objects = [(color, _with_article(f"{color} {shape}")) for color in COLOR_NAMES for shape in SHAPES]
    for _, a in objects:
        for position in FLICKR_POSITIONS:
            texts |= {_caption(template, a=a, position=position) for template in ONE_SHAPE_CAPTIONS}
    for (color_a, a), (color_b, b) in itertools.permutations(objects, 2):
        if color_a != color_b:
            templates = ROW_OF_TWO_CAPTIONS + COLUMN_OF_TWO_CAPTIONS
            texts |= {_caption(template, a=a, b=b) for template in templates}
    for colors in itertools.permutations(COLOR_NAMES, 3):
        for shapes in itertools.permutations(SHAPES, 3):
            a, b, c = (_with_article(f"{color} {shape}") for color, shape in zip(colors, shapes))
            texts |= {_caption(template, a=a, b=b, c=c) for template in ROW_OF_THREE_CAPTIONS}
    return texts


# ---------------------------------------------------------------- VizWiz-like

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
    template = _pick(rng, VIZWIZ_QUESTIONS[kind])
    if kind == "color":
        wrong = [other for other in COLOR_NAMES if other != color]
        return template.format(shape=shape), color, COLOR_SYNONYMS[color], wrong
    if kind == "count":
        return template, str(count), (NUMBER_WORDS[count - 1],), [n for n in VIZWIZ_COUNTS if n != str(count)]
    if kind == "shape":
        return template, shape, SHAPE_SYNONYMS[shape], [other for other in SHAPES if other != shape]
    if kind == "identity":
        wrong = [f"{other} {shape}" for other in COLOR_NAMES if other != color]
        return template, f"{color} {shape}", (shape, _with_article(f"{color} {shape}")), wrong
    values = COLOR_NAMES if kind == "color_check" else SHAPES
    shown = color if kind == "color_check" else shape
    asked = shown if rng.random() < 0.5 else _pick(rng, [value for value in values if value != shown])
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
            answer = UNANSWERABLE if draw < 0.75 else _pick(rng, UNANSWERABLE_NOISE if draw < 0.9 else wrong)
        elif draw < 0.7 or (draw < 0.85 and not synonyms):
            answer = right
        elif draw < 0.85:
            answer = _pick(rng, synonyms)
        elif draw < 0.95:
            answer = _pick(rng, wrong)
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
        return _noisy_background(rng, size, low, high, noise=4.0)
    scene = _draw_grid_scene(rng, _noisy_background(rng, size, 90, 230, noise=10.0), items)
    return scene.filter(ImageFilter.GaussianBlur(1 if answerable else size / 4))


def _write_vizwiz(root: Path, seed: int, sizes: dict[str, int], image_size: int) -> None:
    """``annotations/{split}.json`` and ``{split}/VizWiz_{split}_{n:08d}.jpg`` for train and val."""
    for split in (split for split in ("train", "val") if split in sizes):
        rng = _rng(seed, "vizwiz", split)
        records = []
        for number in range(sizes[split]):
            kind = _pick(rng, tuple(VIZWIZ_QUESTIONS))
            shape, color, count = _pick(rng, SHAPES), _pick(rng, COLOR_NAMES), int(rng.integers(1, 6))
            question, right, synonyms, wrong = _vizwiz_question(rng, kind, shape, color, count)
            answerable = rng.random() >= UNANSWERABLE_SHARE
            if kind == "count":
                items = [(_pick(rng, SHAPES), _pick(rng, COLOR_NAMES)) for _ in range(count)]
            else:
                items = [(shape, color)]
            image_name = f"VizWiz_{split}_{number:08d}.jpg"
            _save_jpeg(_vizwiz_image(rng, items, answerable, image_size), root / split / image_name)
            records.append(
                {
                    "image": image_name,
                    "question": question,
                    "answers": _annotator_answers(rng, right, synonyms, wrong, answerable),
                    "answer_type": VIZWIZ_ANSWER_TYPES[kind] if answerable else UNANSWERABLE,
                    "answerable": int(answerable),
                }
            )
        _write_json(records, root / "annotations" / f"{split}.json")


def _vizwiz_texts() -> set[str]:
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
    answers |= set(objects) | {_with_article(name) for name in objects}
    return questions | answers | {vizwiz_prompt(question) for question in questions}


# ---------------------------------------------------------------- public API

_WRITERS: dict[str, Callable[[Path, int, dict[str, int], int], None]] = {
    "scienceqa": _write_scienceqa,
    "iconqa": _write_iconqa,
    "flickr30k": _write_flickr30k,
    "vizwiz": _write_vizwiz,
}


def write_synthetic(
    name: str,
    root: str | os.PathLike,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    image_size: int = 64,
) -> Path:
    """Write synthetic benchmark ``name`` in its official format under ``root``; return ``root``.

    ``sizes`` maps splits (``train``, ``val``, ``test``) to example counts (default 800/100/100);
    splits left out are not written. Files already under ``root`` are overwritten, others left alone.
    """
    if name not in _WRITERS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown_splits = sorted(set(sizes) - set(SPLITS))
    if unknown_splits:
        raise ValueError(
            f"unknown split(s) {', '.join(unknown_splits)} in sizes; splits are {', '.join(SPLITS)}"
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _WRITERS[name](root, seed, sizes, image_size)
    return root


def write_all_synthetic(
    root: str | os.PathLike, seed: int = 0, sizes: dict[str, int] | None = None, image_size: int = 64
) -> dict[str, Path]:
    """Write all four synthetic benchmarks under ``root/{name}/``; return their roots by name."""
    return {name: write_synthetic(name, Path(root) / name, seed, sizes, image_size) for name in BENCHMARKS}


def synthetic_corpus() -> list[str]:
    """Every text the generators can write or the loaders build from them, sorted, for training tokenizers.

    That is every question, option (bare and lettered, as in targets), hint, lecture, solution,
    caption and answer, plus one prompt per question with a full option list, so the prompts'
    scaffolding ("Context: {", "Short answer:", ...) appears in context.
    """
    return sorted(_iconqa_texts() | _scienceqa_texts() | _flickr30k_texts() | _vizwiz_texts())
