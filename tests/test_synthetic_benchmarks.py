"""The synthetic benchmarks: real formats, determinism, the character of each original, corpus coverage."""

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qformer_budget.benchmarks import (
    BENCHMARKS,
    load_benchmark,
    synthetic_corpus,
    write_all_synthetic,
    write_synthetic,
)
from qformer_budget.benchmarks.drawing import COLORS

SIZES = {"train": 120, "val": 20, "test": 20}
SPLITS_WRITTEN = {name: ("train", "val", "test") for name in BENCHMARKS} | {"vizwiz": ("train", "val")}
WORD_PIECES = re.compile(r"\w+|[^\w\s]+")


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_all_synthetic(tmp_path_factory.mktemp("seed0"), seed=0, sizes=SIZES)


@pytest.fixture(scope="module")
def examples(roots: dict[str, Path]) -> dict[tuple[str, str], list]:
    """Every written split, loaded by the real loaders, keyed by (benchmark, split)."""
    return {
        (name, split): load_benchmark(name, roots[name], split)
        for name in BENCHMARKS
        for split in SPLITS_WRITTEN[name]
    }


def all_splits(examples: dict, name: str) -> list:
    return [example for split in SPLITS_WRITTEN[name] for example in examples[(name, split)]]


def read_json(path: Path):
    return json.loads(path.read_text())


def file_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return {str(path.relative_to(root)): path.read_bytes() for path in files}


def test_every_split_loads_with_the_real_loaders(examples: dict) -> None:
    for (name, split), loaded in examples.items():
        per_image = 5 if (name, split) == ("flickr30k", "train") else 1
        assert len(loaded) == SIZES[split] * per_image, (name, split)
        assert len({example.example_id for example in loaded}) == len(loaded)
    for name in BENCHMARKS:
        assert examples[(name, "val")][0].load_image().size == (64, 64)


def test_vizwiz_writes_no_test_split(roots: dict[str, Path]) -> None:
    annotation_files = sorted(path.name for path in (roots["vizwiz"] / "annotations").iterdir())
    assert annotation_files == ["train.json", "val.json"]


def test_same_seed_writes_identical_files_and_another_seed_differs(roots: dict, tmp_path: Path) -> None:
    again = write_all_synthetic(tmp_path / "again", seed=0, sizes=SIZES)
    other = write_all_synthetic(tmp_path / "other", seed=1, sizes=SIZES)
    for name in BENCHMARKS:
        original = file_bytes(roots[name])
        assert file_bytes(again[name]) == original, name
        different = file_bytes(other[name])
        changed = [path for path, content in original.items() if different.get(path) != content]
        assert len(changed) > len(original) / 2, name  # pid lists may coincide; records and images do not


def test_a_split_does_not_depend_on_the_other_splits_sizes(roots: dict[str, Path], tmp_path: Path) -> None:
    write_synthetic("vizwiz", tmp_path, seed=0, sizes={"val": SIZES["val"]})
    val = "annotations/val.json"
    assert (tmp_path / val).read_bytes() == (roots["vizwiz"] / val).read_bytes()


def test_sizes_with_an_unknown_split_or_an_unknown_benchmark_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        write_synthetic("iconqa", tmp_path, sizes={"dev": 3})
    with pytest.raises(ValueError, match="known benchmarks: scienceqa, iconqa, flickr30k, vizwiz"):
        write_synthetic("gqa", tmp_path)


def image_color(path: Path) -> str:
    """The palette colour covering most non-white pixels of a synthetic ScienceQA image."""
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    counts = Counter(map(tuple, pixels[(pixels != 255).any(axis=1)]))
    by_rgb = {rgb: name for name, rgb in COLORS.items()}
    return by_rgb[counts.most_common(1)[0][0]]


COLOR_RULE = re.compile(r"(\w+) (?:things are|things|birds fly) (\w+)")


def test_scienceqa_like_answers_need_both_the_hint_and_the_image(roots: dict, examples: dict) -> None:
    problems = read_json(roots["scienceqa"] / "problems.json")
    answers_by_question_and_color = defaultdict(set)
    answers_by_hint = defaultdict(set)
    for example in all_splits(examples, "scienceqa"):
        problem = problems[example.example_id]
        answer = problem["choices"][problem["answer"]]
        answers_by_hint[problem["hint"]].add(answer)
        rule = dict(COLOR_RULE.findall(problem["hint"]))
        if rule:  # a colour rule: the image's colour, read from its pixels, decides the answer
            color = image_color(example.image_path)
            assert rule[color] == answer, example.example_id
            answers_by_question_and_color[(problem["question"], color)].add(answer)
    assert any(len(answers) > 1 for answers in answers_by_question_and_color.values()), "image alone decides"
    assert any(len(answers) > 1 for answers in answers_by_hint.values()), "hint alone decides"


def test_scienceqa_like_has_text_only_problems_the_loader_skips(roots: dict, examples: dict) -> None:
    problems = read_json(roots["scienceqa"] / "problems.json")
    splits = read_json(roots["scienceqa"] / "pid_splits.json")
    text_only = {pid for pid, problem in problems.items() if problem["image"] is None}
    assert text_only
    loaded = all_splits(examples, "scienceqa")
    loaded_pids = {example.example_id for example in loaded}
    assert loaded_pids.isdisjoint(text_only) and loaded_pids | text_only == set(problems)
    assert splits["trainval"] == splits["train"] + splits["val"]
    assert {len(example.choices) for example in loaded} == {2, 3, 4}


def test_iconqa_like_options_vary_in_number_and_answer_position(roots: dict, examples: dict) -> None:
    loaded = all_splits(examples, "iconqa")
    assert {len(example.choices) for example in loaded} == {2, 3, 4, 5}
    assert len(Counter(example.answer_index for example in loaded)) >= 4
    problems = read_json(roots["iconqa"] / "problems.json")
    assert Counter(problem["ques_type"] for problem in problems.values())["fill_in_blank"] > 0
    choose_txt = {pid for pid, problem in problems.items() if problem["ques_type"] == "choose_txt"}
    assert {example.example_id for example in loaded} == choose_txt


def test_flickr30k_like_has_five_distinct_references_per_evaluation_image(examples: dict) -> None:
    for split in ("val", "test"):
        for example in examples[("flickr30k", split)]:
            assert len(set(example.references)) == 5 and example.target == example.references[0]
    captions_per_image = Counter(example.image_path for example in examples[("flickr30k", "train")])
    assert set(captions_per_image.values()) == {5}


def test_vizwiz_like_mixes_answerable_and_unanswerable_noisy_answers(roots: dict, examples: dict) -> None:
    loaded = all_splits(examples, "vizwiz")
    assert {example.answerable for example in loaded} == {True, False}
    assert all(example.target == "unanswerable" for example in loaded if not example.answerable)
    assert all(len(example.references) == 10 for example in loaded)
    assert any(len(set(example.references)) > 1 for example in loaded if example.answerable)
    records = read_json(roots["vizwiz"] / "annotations" / "train.json")
    assert {record["answer_type"] for record in records} == {"other", "number", "unanswerable", "yes/no"}
    confidences = {answer["answer_confidence"] for record in records for answer in record["answers"]}
    assert confidences <= {"yes", "maybe", "no"}


def written_texts(roots: dict[str, Path]) -> list[str]:
    """Every question, option, hint, lecture, solution, caption and answer in the written files."""
    texts = []
    for problem in read_json(roots["scienceqa"] / "problems.json").values():
        texts += [problem["question"], problem["hint"], problem["lecture"], problem["solution"]]
        texts += problem["choices"]
    for problem in read_json(roots["iconqa"] / "problems.json").values():
        texts += [problem["question"]]
        texts += [problem["answer"]] if problem["ques_type"] == "fill_in_blank" else problem["choices"]
    for split in SPLITS_WRITTEN["flickr30k"]:
        for entry in read_json(roots["flickr30k"] / "annotations" / f"flickr30k_{split}.json"):
            texts += [entry["caption"]] if isinstance(entry["caption"], str) else entry["caption"]
    for split in SPLITS_WRITTEN["vizwiz"]:
        for record in read_json(roots["vizwiz"] / "annotations" / f"{split}.json"):
            texts += [record["question"], *(answer["answer"] for answer in record["answers"])]
    return texts


def test_the_corpus_covers_every_text_written_and_every_prompt_built(roots: dict, examples: dict) -> None:
    corpus = synthetic_corpus()
    assert corpus == sorted(set(corpus))
    texts = set(corpus)
    pieces = {piece for text in corpus for piece in WORD_PIECES.findall(text)}
    assert len({piece.lower() for piece in pieces if piece.isalpha()}) < 300  # tiny tokenizers cover it
    assert set(written_texts(roots)) - texts == set()
    for loaded in examples.values():
        for example in loaded:
            assert {example.target, *example.choices, *example.references} <= texts, example.example_id
            assert set(WORD_PIECES.findall(example.prompt)) <= pieces, example.prompt
