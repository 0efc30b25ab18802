"""ScienceQA (image subset) from its official JSON release or from the Hugging Face parquet export.

The prompt follows the paper's code (AttentionX/InstructBLIP_PEFT, read from the stored copy):
``scienceqa_data_preprocess.py`` sets ``context = hint + " " + lecture`` and the target to
``"(b) " + choices[answer]``; ``lavis/datasets/datasets/scienceqa_datasets.py`` (``get_text_input``)
joins the options as ``"(a) c1\\n(b) c2\\n"`` and builds
``f"Context: {{{context}}} Question: {{{question}}} Options: {{{options}}} Answer:"``. Those triple
braces put literal braces into the text, which the repository's README documents as the format
(``Context: { {hint} {lecture} } ...``), so the prompt here keeps them:

    Context: {<hint> <lecture>} Question: {<question>} Options: {(a) c1\\n(b) c2\\n} Answer:

The paper's text processor (``instruct_blip_question``) then deletes the characters ``!*#;``; that is
a tokenisation detail left to the runner, not applied here. Problems without an image are skipped,
as in the paper's preprocessing.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from .drawing import (
    COLOR_NAMES,
    SHAPES,
    SPLITS,
    WHITE,
    draw_shape,
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

PARQUET_SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
PARQUET_COLUMNS = ("image", "question", "choices", "answer", "hint", "lecture")


def scienceqa_prompt(question: str, hint: str, lecture: str, options: Sequence[str]) -> str:
    """The paper's ScienceQA prompt; ``options`` are already lettered, e.g. ``"(a) north"``."""
    context = f"{hint} {lecture}"
    option_lines = "".join(f"{option}\n" for option in options)
    return f"Context: {{{context}}} Question: {{{question}}} Options: {{{option_lines}}} Answer:"


def _example(example_id: str, record: dict, where: str, **image: Path | bytes) -> Example:
    """The Example of one checked ScienceQA record; ``image`` is ``image_path=`` or ``image_bytes=``."""
    question = require_field(record, "question", str, where)
    hint = require_field(record, "hint", str, where)
    lecture = require_field(record, "lecture", str, where)
    choices, answer = read_multiple_choice(record, where)
    options = lettered_options(choices)
    return Example(
        benchmark="scienceqa",
        example_id=example_id,
        prompt=scienceqa_prompt(question, hint, lecture, options),
        target=options[answer],
        choices=options,
        answer_index=answer,
        **image,
    )


def load_scienceqa(
    root: str | os.PathLike, split: str, missing_images: dict[Path, str] | None = None
) -> list[Example]:
    """Image problems of ``split`` (a key of ``pid_splits.json``) from the official release at ``root``.

    Images are read from ``images/{problem split}/{pid}/{image}``, so combined splits such as
    ``trainval`` find their images too. ``missing_images``: see ``examples.require_image_file``.
    """
    root = Path(root)
    problems_path = root / "problems.json"
    splits_path = root / "pid_splits.json"
    problems = require_type(read_json(problems_path), dict, str(problems_path), "the file")
    pid_splits = require_type(read_json(splits_path), dict, str(splits_path), "the file")
    if split not in pid_splits:
        raise BenchmarkDataError(f"{splits_path}: no split {split!r}; it has {', '.join(sorted(pid_splits))}")
    pids = require_type(pid_splits[split], list, str(splits_path), f"split {split!r}")
    examples = []
    for pid in pids:
        pid = str(pid)
        where = f"{problems_path}, pid {pid}"
        if pid not in problems:
            raise BenchmarkDataError(
                f"{splits_path} lists pid {pid} in split {split!r}, but {problems_path} has no such problem"
            )
        problem = problems[pid]
        image_name = require_field(problem, "image", (str, type(None)), where)
        if image_name is None:
            continue
        problem_split = require_field(problem, "split", str, where)
        image_path = require_image_file(root / "images" / problem_split / pid / image_name, where, missing_images)
        examples.append(_example(pid, problem, where, image_path=image_path))
    return examples


def scienceqa_parquet_files(path: str | os.PathLike, split: str) -> list[Path]:
    """The parquet shards of ``split`` (``val`` means ``validation``) at ``path`` or ``path/data``.

    ``path`` may also be one parquet file, which is then the whole split.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return [path]
    pattern = f"{PARQUET_SPLIT_NAMES.get(split, split)}-*.parquet"
    return sorted(path.glob(pattern)) + sorted((path / "data").glob(pattern))


def load_scienceqa_parquet(path: str | os.PathLike, split: str) -> list[Example]:
    """Image problems of ``split`` from the Hugging Face parquet export; images stay inline as bytes.

    Example ids are ``{split}-{row}``, the row counted over the split's shards in name order
    (text-only rows included, so ids do not shift when rows are skipped).
    """
    files = scienceqa_parquet_files(path, split)
    if not files:
        raise BenchmarkDataError(
            f"no parquet file for ScienceQA split {split!r}: looked for "
            f"{PARQUET_SPLIT_NAMES.get(split, split)}-*.parquet in {Path(path)} and {Path(path) / 'data'}"
        )
    split_name = PARQUET_SPLIT_NAMES.get(split, split)
    examples = []
    row_number = 0
    for file in files:
        table = pq.read_table(file)
        missing = [column for column in PARQUET_COLUMNS if column not in table.column_names]
        if missing:
            raise BenchmarkDataError(f"{file}: missing column(s) {', '.join(missing)}")
        for row_in_file, row in enumerate(table.select(list(PARQUET_COLUMNS)).to_pylist()):
            example_id = f"{split_name}-{row_number}"
            row_number += 1
            where = f"{file}, row {row_in_file}"
            image = require_field(row, "image", (dict, type(None)), where)
            if image is None:
                continue
            image_bytes = require_type(image.get("bytes"), bytes, where, "the image's bytes")
            examples.append(_example(example_id, row, where, image_bytes=image_bytes))
    return examples


# ---------------------------------------------------------------- the synthetic stand-in

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
    family = pick(rng, RULE_FAMILIES)
    keys = sample(rng, family.keys(), len(family.values))
    value_index = int(rng.integers(len(keys)))
    key, noun = keys[value_index], pick(rng, family.nouns)
    correct = family.answers[value_index]
    option_count = int(rng.integers(2, len(family.answers) + 1))
    others = sample(rng, [answer for answer in family.answers if answer != correct], option_count - 1)
    choices = sample(rng, [correct, *others], option_count)
    hint = family.hint(keys) if with_image else f"{family.hint(keys)} {family.fact(noun, key)}"
    color = key if family.key_kind == "color" else pick(rng, COLOR_NAMES)
    record = {
        "question": family.question.format(noun=noun, where=IN_THE_PICTURE if with_image else ""),
        "choices": choices,
        "answer": choices.index(correct),
        "hint": hint,
        "image": "image.png" if with_image else None,
        "task": "closed choice",
        "grade": pick(rng, SCIENCEQA_GRADES),
        "subject": "natural science",
        "topic": family.topic,
        "category": "Rules of a made-up world",
        "skill": "Use a rule and a picture",
        "lecture": family.lecture,
        "solution": family.solution(noun, key, value_index),
        "split": split,
    }
    return record, (family.drawn_shape(noun, key), color)


def write_synthetic_scienceqa(root: Path, seed: int, sizes: dict[str, int], image_size: int) -> None:
    """``problems.json``, ``pid_splits.json`` (with ``trainval``) and ``images/{split}/{pid}/image.png``."""
    problems: dict[str, dict[str, Any]] = {}
    pid_splits: dict[str, list[str]] = {}
    for split in (split for split in SPLITS if split in sizes):
        rng = split_rng(seed, "scienceqa", split)
        image_count, text_count = sizes[split], (sizes[split] + 3) // 4
        kinds = sample(rng, [True] * image_count + [False] * text_count, image_count + text_count)
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
                draw_shape(ImageDraw.Draw(image), shape, center, radius, color)
                save_png(image, root / "images" / split / pid / "image.png")
    if "train" in pid_splits and "val" in pid_splits:
        pid_splits["trainval"] = pid_splits["train"] + pid_splits["val"]
    write_json(problems, root / "problems.json")
    write_json(pid_splits, root / "pid_splits.json")


def synthetic_scienceqa_texts() -> set[str]:
    texts = set()
    for family in RULE_FAMILIES:
        texts |= {family.lecture, *family.answers} | lettered_variants(family.answers, SCIENCEQA_MAX_OPTIONS)
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
