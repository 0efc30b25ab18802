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

import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

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


def load_scienceqa(root: str | os.PathLike, split: str) -> list[Example]:
    """Image problems of ``split`` (a key of ``pid_splits.json``) from the official release at ``root``.

    Images are read from ``images/{problem split}/{pid}/{image}``, so combined splits such as
    ``trainval`` find their images too.
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
        image_path = require_image_file(root / "images" / problem_split / pid / image_name, where)
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
