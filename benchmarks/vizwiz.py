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


def load_vizwiz(root: str | os.PathLike, split: str) -> list[Example]:
    """Every question of ``split``, id = the image file's stem."""
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
        image_path = require_image_file(root / split / image_name, where)
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
