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

import os
from collections.abc import Sequence
from pathlib import Path

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


def load_iconqa(root: str | os.PathLike, split: str) -> list[Example]:
    """The ``choose_txt`` problems of ``split``, in the order of ``problems.json``."""
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
        image_path = require_image_file(image_root / split / QUESTION_TYPE / pid / "image.png", where)
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
