"""The benchmark loaders on small files written by hand in each benchmark's official format."""

import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from qformer_budget.benchmarks import (
    BENCHMARKS,
    BenchmarkDataError,
    load_benchmark,
    load_flickr30k,
    load_iconqa,
    load_scienceqa,
    load_scienceqa_parquet,
    load_vizwiz,
)


def png_bytes(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes())


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def ids(examples: list) -> list[str]:
    return [example.example_id for example in examples]


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- ScienceQA

COMPASS = {
    "question": "Which direction is up on this map?",
    "choices": ["south", "north"],
    "answer": 1,
    "hint": "The map has a compass rose.",
    "lecture": "Maps show north at the top.",
    "solution": "North is at the top.",
    "image": "image.png",
    "split": "train",
    "subject": "social science",
    "grade": "grade4",
    "topic": "geography",
    "category": "Geography",
    "skill": "Read a map",
    "task": "closed choice",
}
COMPASS_PROMPT = (
    "Context: {The map has a compass rose. Maps show north at the top.} "
    "Question: {Which direction is up on this map?} Options: {(a) south\n(b) north\n} Answer:"
)


@pytest.fixture
def scienceqa_root(tmp_path: Path) -> Path:
    problems = {
        "1": COMPASS,
        "2": {**COMPASS, "image": None, "question": "Which word is a noun?"},
        "3": {**COMPASS, "split": "val", "hint": "", "choices": ["hot", "cold", "warm"], "answer": 2},
    }
    write_json(tmp_path / "problems.json", problems)
    splits = {"train": ["1", "2"], "val": ["3"], "test": [], "trainval": ["1", "2", "3"]}
    write_json(tmp_path / "pid_splits.json", splits)
    write_image(tmp_path / "images" / "train" / "1" / "image.png")
    write_image(tmp_path / "images" / "val" / "3" / "image.png")
    return tmp_path


def test_scienceqa_builds_the_papers_prompt_and_skips_problems_without_image(scienceqa_root: Path) -> None:
    [example] = load_scienceqa(scienceqa_root, "train")
    assert example.benchmark == "scienceqa" and example.kind == "multiple_choice"
    assert example.example_id == "1"
    assert example.prompt == COMPASS_PROMPT
    assert example.target == "(b) north"
    assert example.choices == ("(a) south", "(b) north")
    assert example.answer_index == 1
    assert example.image_path == scienceqa_root / "images" / "train" / "1" / "image.png"
    assert example.load_image().mode == "RGB"


def test_scienceqa_context_joins_an_empty_hint_and_the_lecture_with_a_space(scienceqa_root: Path) -> None:
    [example] = load_scienceqa(scienceqa_root, "val")
    assert example.prompt.startswith("Context: { Maps show north at the top.} Question:")
    assert example.prompt.endswith("Options: {(a) hot\n(b) cold\n(c) warm\n} Answer:")
    assert example.target == "(c) warm" and example.answer_index == 2


def test_scienceqa_combined_split_finds_images_under_each_problems_own_split(scienceqa_root: Path) -> None:
    examples = load_scienceqa(scienceqa_root, "trainval")
    assert ids(examples) == ["1", "3"]
    assert examples[1].image_path == scienceqa_root / "images" / "val" / "3" / "image.png"


def test_scienceqa_an_empty_split_gives_no_examples(scienceqa_root: Path) -> None:
    assert load_scienceqa(scienceqa_root, "test") == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: data["1"].pop("question"), r"missing field 'question'"),
        (lambda data: data["1"].update(answer="1"), r"field 'answer' should be int, got str"),
        (lambda data: data["1"].update(answer=True), r"field 'answer' should be int, got bool"),
        (lambda data: data["1"].update(answer=2), r"answer index 2 is out of range for 2 choices"),
        (lambda data: data["1"].update(choices="north"), r"field 'choices' should be list"),
        (lambda data: data["1"].update(choices=["north"]), r"field 'choices' needs at least 2"),
        (lambda data: data["1"].update(choices=["north", 3]), r"field 'choices'\[1\] should be str"),
        (lambda data: data["1"].update(hint=None), r"field 'hint' should be str, got NoneType"),
        (lambda data: data.update({"1": ["not", "an", "object"]}), r"the record should be dict"),
    ],
)
def test_scienceqa_malformed_problem_names_file_pid_and_field(scienceqa_root: Path, edit, message) -> None:
    edit_json(scienceqa_root / "problems.json", edit)
    with pytest.raises(BenchmarkDataError, match=r"problems\.json, pid 1: " + message):
        load_scienceqa(scienceqa_root, "train")


def test_scienceqa_missing_image_names_the_expected_file_and_pid(scienceqa_root: Path) -> None:
    (scienceqa_root / "images" / "train" / "1" / "image.png").unlink()
    with pytest.raises(BenchmarkDataError, match=r"pid 1: image file not found: .*images/train/1/image\.png"):
        load_scienceqa(scienceqa_root, "train")


def test_scienceqa_wrong_root_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"annotation file not found: .*nowhere/problems\.json"):
        load_scienceqa(tmp_path / "nowhere", "train")


def test_scienceqa_split_listing_an_unknown_pid_names_both_files(scienceqa_root: Path) -> None:
    edit_json(scienceqa_root / "pid_splits.json", lambda splits: splits["train"].append("99"))
    with pytest.raises(BenchmarkDataError, match=r"pid_splits\.json lists pid 99 .*problems\.json has no"):
        load_scienceqa(scienceqa_root, "train")


def test_scienceqa_unknown_split_lists_the_known_ones(scienceqa_root: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"no split 'minitrain'; it has test, train, trainval, val"):
        load_scienceqa(scienceqa_root, "minitrain")


def test_load_image_names_file_and_example_when_the_image_is_corrupt(scienceqa_root: Path) -> None:
    (scienceqa_root / "images" / "train" / "1" / "image.png").write_bytes(b"not a png")
    [example] = load_scienceqa(scienceqa_root, "train")
    message = r"scienceqa example 1: cannot read image file .*train/1/image\.png"
    with pytest.raises(BenchmarkDataError, match=message):
        example.load_image()


# ---------------------------------------------------------------- ScienceQA parquet export


def write_scienceqa_parquet(path: Path, rows: list[dict]) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {
        "image": pa.array([row["image"] for row in rows], type=image_type),
        "question": pa.array([row["question"] for row in rows]),
        "choices": pa.array([row["choices"] for row in rows], type=pa.list_(pa.string())),
        "answer": pa.array([row["answer"] for row in rows], type=pa.int8()),
    }
    for name in ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution"):
        columns[name] = pa.array([row[name] for row in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


@pytest.fixture
def parquet_root(tmp_path: Path) -> Path:
    with_image = {**COMPASS, "image": {"bytes": png_bytes((10, 200, 10)), "path": "image.png"}}
    without_image = {**COMPASS, "image": None}
    root = tmp_path / "ScienceQA"
    write_scienceqa_parquet(root / "data" / "validation-00000-of-00001.parquet", [without_image, with_image])
    write_scienceqa_parquet(root / "data" / "train-00000-of-00001.parquet", [with_image])
    return root


def test_scienceqa_parquet_keeps_images_inline_and_builds_the_same_prompt(parquet_root: Path) -> None:
    [example] = load_scienceqa_parquet(parquet_root, "val")
    assert example.example_id == "validation-1"  # row 0 has no image and is skipped
    assert example.image_path is None
    assert example.load_image().getpixel((0, 0)) == (10, 200, 10)
    assert example.prompt == COMPASS_PROMPT
    assert (example.target, example.answer_index) == ("(b) north", 1)
    assert example.choices == ("(a) south", "(b) north")
    assert ids(load_scienceqa_parquet(parquet_root, "train")) == ["train-0"]


def test_scienceqa_parquet_missing_column_names_file_and_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "test-00000-of-00001.parquet")
    message = r"test-00000-of-00001\.parquet: missing column\(s\) image, choices"
    with pytest.raises(BenchmarkDataError, match=message):
        load_scienceqa_parquet(tmp_path, "test")


def test_scienceqa_parquet_bad_answer_names_file_and_row(tmp_path: Path) -> None:
    row = {**COMPASS, "image": {"bytes": png_bytes(), "path": "image.png"}, "answer": 7}
    write_scienceqa_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", [row])
    message = r"test-00000-of-00001\.parquet, row 0: answer index 7 is out of range"
    with pytest.raises(BenchmarkDataError, match=message):
        load_scienceqa_parquet(tmp_path, "test")


def test_scienceqa_parquet_wrong_root_names_where_it_looked(tmp_path: Path) -> None:
    message = r"no parquet file for ScienceQA split 'val': .*validation-\*\.parquet"
    with pytest.raises(BenchmarkDataError, match=message):
        load_scienceqa_parquet(tmp_path, "val")


def test_registry_picks_the_scienceqa_format_from_the_files(scienceqa_root: Path, parquet_root: Path) -> None:
    assert ids(load_benchmark("scienceqa", scienceqa_root, "train")) == ["1"]
    assert ids(load_benchmark("scienceqa", parquet_root, "val")) == ["validation-1"]
    parquet_file = parquet_root / "data" / "train-00000-of-00001.parquet"
    assert ids(load_scienceqa_parquet(parquet_file, "train")) == ["train-0"]


def test_registry_scienceqa_without_data_names_both_formats(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"neither .*problems\.json nor parquet files"):
        load_benchmark("scienceqa", tmp_path, "train")


def test_registry_unknown_benchmark_lists_the_known_ones(tmp_path: Path) -> None:
    assert BENCHMARKS == ("scienceqa", "iconqa", "flickr30k", "vizwiz")
    message = r"unknown benchmark 'gqa'; known benchmarks: scienceqa, iconqa, flickr30k, vizwiz"
    with pytest.raises(ValueError, match=message):
        load_benchmark("gqa", tmp_path, "train")


# ---------------------------------------------------------------- IconQA

DOTS = {
    "question": "How many dots are there?",
    "choices": ["2", "3", "4"],
    "answer": 1,
    "ques_type": "choose_txt",
    "split": "train",
}


@pytest.fixture
def iconqa_root(tmp_path: Path) -> Path:
    problems = {
        "10": DOTS,
        "11": {**DOTS, "choices": ["image1.png", "image2.png"], "answer": 0, "ques_type": "choose_img"},
        "12": {"question": "How many dots?", "answer": "3", "ques_type": "fill_in_blank", "split": "train"},
        "13": {**DOTS, "split": "val", "choices": ["yes", "no"], "answer": 0},
    }
    write_json(tmp_path / "problems.json", problems)
    write_image(tmp_path / "iconqa" / "train" / "choose_txt" / "10" / "image.png")
    write_image(tmp_path / "iconqa" / "val" / "choose_txt" / "13" / "image.png")
    return tmp_path


def test_iconqa_keeps_choose_txt_of_the_split_and_drops_the_image_marker(iconqa_root: Path) -> None:
    [example] = load_iconqa(iconqa_root, "train")
    assert example.example_id == "10" and example.kind == "multiple_choice"
    assert example.prompt == "Question: How many dots are there? Options: (a) 2 (b) 3 (c) 4. Short answer:"
    assert "<Image>" not in example.prompt
    assert (example.target, example.answer_index) == ("(b) 3", 1)
    assert example.choices == ("(a) 2", "(b) 3", "(c) 4")
    assert example.image_path == iconqa_root / "iconqa" / "train" / "choose_txt" / "10" / "image.png"
    [val_example] = load_iconqa(iconqa_root, "val")
    assert (val_example.example_id, val_example.target) == ("13", "(a) yes")


def test_iconqa_reads_images_directly_under_root_too(tmp_path: Path) -> None:
    write_json(tmp_path / "problems.json", {"10": DOTS})
    write_image(tmp_path / "train" / "choose_txt" / "10" / "image.png")
    [example] = load_iconqa(tmp_path, "train")
    assert example.image_path == tmp_path / "train" / "choose_txt" / "10" / "image.png"


def test_iconqa_missing_image_names_the_expected_file_and_pid(iconqa_root: Path) -> None:
    (iconqa_root / "iconqa" / "train" / "choose_txt" / "10" / "image.png").unlink()
    message = r"problems\.json, pid 10: image file not found: .*train/choose_txt/10/image\.png"
    with pytest.raises(BenchmarkDataError, match=message):
        load_iconqa(iconqa_root, "train")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: data["10"].pop("ques_type"), r"pid 10: missing field 'ques_type'"),
        (lambda data: data["10"].update(choices={"a": "2"}), r"pid 10: field 'choices' should be list"),
        (lambda data: data["10"].update(answer=-1), r"pid 10: answer index -1 is out of range for 3"),
        (lambda data: data["10"].pop("question"), r"pid 10: missing field 'question'"),
    ],
)
def test_iconqa_malformed_problem_names_file_pid_and_field(iconqa_root: Path, edit, message: str) -> None:
    edit_json(iconqa_root / "problems.json", edit)
    with pytest.raises(BenchmarkDataError, match=r"problems\.json, " + message):
        load_iconqa(iconqa_root, "train")


def test_iconqa_wrong_root_and_unknown_split(iconqa_root: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"annotation file not found: .*missing/problems\.json"):
        load_iconqa(tmp_path / "missing", "train")
    with pytest.raises(BenchmarkDataError, match=r"problems\.json: no choose_txt problem has split 'minival"):
        load_iconqa(iconqa_root, "minival")


# ---------------------------------------------------------------- Flickr30k

VAL_CAPTIONS = ["A dog runs.", "A brown dog runs.", "A dog outside.", "The dog plays.", "A pet in a park."]


@pytest.fixture
def flickr_root(tmp_path: Path) -> Path:
    train = [
        {"caption": "Two men talk.", "image": "flickr30k-images/1000.jpg", "image_id": "1000"},
        {"caption": "Two people talk.", "image": "flickr30k-images/1000.jpg", "image_id": "1000"},
        {"caption": "A girl reads.", "image": "flickr30k-images/2000.jpg", "image_id": "2000"},
    ]
    write_json(tmp_path / "annotations" / "flickr30k_train.json", train)
    val = [{"image": "flickr30k-images/3000.jpg", "caption": VAL_CAPTIONS}]
    write_json(tmp_path / "annotations" / "flickr30k_val.json", val)
    for image_id in ("1000", "2000", "3000"):
        write_image(tmp_path / "flickr30k-images" / f"{image_id}.jpg")
    return tmp_path


def test_flickr30k_lavis_train_gives_one_example_per_caption(flickr_root: Path) -> None:
    examples = load_flickr30k(flickr_root, "train")
    assert ids(examples) == ["1000#0", "1000#1", "2000#0"]
    assert [example.target for example in examples] == ["Two men talk.", "Two people talk.", "A girl reads."]
    assert examples[1].references == ("Two people talk.",)
    assert {example.prompt for example in examples} == {"A short image description:"}
    assert examples[0].kind == "caption"
    assert examples[0].image_path == flickr_root / "flickr30k-images" / "1000.jpg"


def test_flickr30k_lavis_val_gives_one_example_per_image_with_all_references(flickr_root: Path) -> None:
    [example] = load_flickr30k(flickr_root, "val")
    assert example.example_id == "3000"
    assert example.target == VAL_CAPTIONS[0]
    assert example.references == tuple(VAL_CAPTIONS)


def test_flickr30k_lavis_file_directly_under_root(flickr_root: Path) -> None:
    (flickr_root / "annotations" / "flickr30k_val.json").rename(flickr_root / "flickr30k_val.json")
    assert ids(load_flickr30k(flickr_root, "val")) == ["3000"]


def test_flickr30k_karpathy_file(tmp_path: Path) -> None:
    karpathy = {
        "dataset": "flickr30k",
        "images": [
            {
                "filename": "1000.jpg",
                "split": "train",
                "sentences": [{"raw": "Two men talk.", "tokens": ["two", "men"]}, {"raw": "Men talk."}],
            },
            {"filename": "3000.jpg", "split": "test", "sentences": [{"raw": text} for text in VAL_CAPTIONS]},
            {"filename": "4000.jpg", "split": "val", "sentences": [{"raw": "A cat."}]},
        ],
    }
    write_json(tmp_path / "dataset_flickr30k.json", karpathy)
    for image_id in ("1000", "3000", "4000"):
        write_image(tmp_path / "flickr30k-images" / f"{image_id}.jpg")
    train = load_flickr30k(tmp_path, "train")
    assert ids(train) == ["1000#0", "1000#1"]
    assert [example.target for example in train] == ["Two men talk.", "Men talk."]
    [test] = load_flickr30k(tmp_path, "test")
    assert (test.example_id, test.target, test.references) == ("3000", VAL_CAPTIONS[0], tuple(VAL_CAPTIONS))


def test_flickr30k_karpathy_missing_raw_names_file_image_and_sentence(tmp_path: Path) -> None:
    image = {"filename": "1.jpg", "split": "train", "sentences": [{"tokens": []}]}
    write_json(tmp_path / "dataset_flickr30k.json", {"images": [image]})
    message = r"dataset_flickr30k\.json, image 0 \(1\.jpg\), sentence 0: missing field 'raw'"
    with pytest.raises(BenchmarkDataError, match=message):
        load_flickr30k(tmp_path, "train")


def test_flickr30k_missing_image_names_the_expected_file_and_entry(flickr_root: Path) -> None:
    (flickr_root / "flickr30k-images" / "2000.jpg").unlink()
    entry = r"flickr30k_train\.json, entry 2 \(image flickr30k-images/2000\.jpg\)"
    message = entry + r": image file not found: .*flickr30k-images/2000\.jpg"
    with pytest.raises(BenchmarkDataError, match=message):
        load_flickr30k(flickr_root, "train")


DOG_IMAGE = "flickr30k-images/3000.jpg"
DOG_ENTRY = r"entry 0 \(image flickr30k-images/3000\.jpg\)"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image": DOG_IMAGE, "caption": 5}, DOG_ENTRY + r": field 'caption' should be str or list, got int"),
        ({"image": DOG_IMAGE, "caption": []}, DOG_ENTRY + r": field 'caption' needs at least 1"),
        ({"caption": ["A dog."]}, r"entry 0: missing field 'image'"),
    ],
)
def test_flickr30k_malformed_entry_names_file_and_entry(flickr_root: Path, entry: dict, message: str) -> None:
    write_json(flickr_root / "annotations" / "flickr30k_val.json", [entry])
    with pytest.raises(BenchmarkDataError, match=r"flickr30k_val\.json, " + message):
        load_flickr30k(flickr_root, "val")


def test_flickr30k_wrong_root_names_every_path_it_looked_for(tmp_path: Path) -> None:
    message = r"Flickr30k split 'test': looked for .*flickr30k_test\.json.*/dataset_flickr30k\.json"
    with pytest.raises(BenchmarkDataError, match=message):
        load_flickr30k(tmp_path, "test")


# ---------------------------------------------------------------- VizWiz


SHIRT = r"entry 0 \(image VizWiz_val_00000000\.jpg\)"
CUP = r"entry 1 \(image VizWiz_val_00000001\.jpg\)"


def answers(*texts: str) -> list[dict]:
    return [{"answer": text, "answer_confidence": "yes"} for text in texts]


@pytest.fixture
def vizwiz_root(tmp_path: Path) -> Path:
    records = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "What color is this shirt?",
            "answers": answers("red", "blue", "blue", "red", "green", "green", "tan", "pink", "gray", "teal"),
            "answer_type": "other",
            "answerable": 1,
        },
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "What is this?",
            "answers": answers(*["unanswerable"] * 8, "blurry", "cup"),
            "answer_type": "unanswerable",
            "answerable": 0,
        },
    ]
    write_json(tmp_path / "annotations" / "val.json", records)
    write_image(tmp_path / "val" / "VizWiz_val_00000000.jpg")
    write_image(tmp_path / "val" / "VizWiz_val_00000001.jpg")
    return tmp_path


def test_vizwiz_target_is_the_most_frequent_answer_ties_to_the_first(vizwiz_root: Path) -> None:
    shirt, unreadable = load_vizwiz(vizwiz_root, "val")
    assert shirt.example_id == "VizWiz_val_00000000" and shirt.kind == "open_vqa"
    assert shirt.prompt == "Question: What color is this shirt? Short answer:"
    assert shirt.target == "red"  # red, blue and green are given twice each; red comes first
    assert len(shirt.references) == 10 and shirt.references[:3] == ("red", "blue", "blue")
    assert shirt.answerable is True
    assert shirt.image_path == vizwiz_root / "val" / "VizWiz_val_00000000.jpg"
    assert (unreadable.target, unreadable.answerable) == ("unanswerable", False)


def test_vizwiz_missing_image_names_the_expected_file_and_entry(vizwiz_root: Path) -> None:
    (vizwiz_root / "val" / "VizWiz_val_00000001.jpg").unlink()
    message = CUP + r": image file not found: .*val/VizWiz_val_00000001\.jpg"
    with pytest.raises(BenchmarkDataError, match=r"val\.json, " + message):
        load_vizwiz(vizwiz_root, "val")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda data: data[1].update(answers="none"), CUP + r": field 'answers' should be list, got str"),
        (lambda data: data[1].update(answers=[]), CUP + r": field 'answers' is empty"),
        (lambda data: data[0]["answers"][3].pop("answer"), SHIRT + r", answers\[3\]: missing field 'answer'"),
        (lambda data: data[0].update(answerable=2), SHIRT + r": field 'answerable' should be 0 or 1"),
        (lambda data: data[0].update(answerable="1"), SHIRT + r": field 'answerable' should be int or bool"),
        (lambda data: data[1].pop("image"), r"entry 1: missing field 'image'"),
        (lambda data: data[0].pop("question"), SHIRT + r": missing field 'question'"),
    ],
)
def test_vizwiz_malformed_record_names_file_and_record(vizwiz_root: Path, edit, message: str) -> None:
    edit_json(vizwiz_root / "annotations" / "val.json", edit)
    with pytest.raises(BenchmarkDataError, match=r"annotations/val\.json, " + message):
        load_vizwiz(vizwiz_root, "val")


def test_vizwiz_wrong_root_and_broken_json_name_the_file(vizwiz_root: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDataError, match=r"annotation file not found: .*annotations/train\.json"):
        load_vizwiz(vizwiz_root, "train")
    (vizwiz_root / "annotations" / "val.json").write_text("[{")
    message = re.escape(str(vizwiz_root / "annotations" / "val.json")) + ": not valid JSON"
    with pytest.raises(BenchmarkDataError, match=message):
        load_vizwiz(vizwiz_root, "val")


def test_registry_dispatches_every_benchmark(iconqa_root: Path, flickr_root: Path, vizwiz_root: Path) -> None:
    assert ids(load_benchmark("iconqa", iconqa_root, "train")) == ["10"]
    assert ids(load_benchmark("flickr30k", flickr_root, "val")) == ["3000"]
    assert len(load_benchmark("vizwiz", vizwiz_root, "val")) == 2
