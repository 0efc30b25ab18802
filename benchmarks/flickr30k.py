"""Flickr30k captions from LAVIS's annotation files or Andrej Karpathy's split file.

LAVIS (``flickr30k_{split}.json`` in ``root/annotations`` or ``root``; the paper's own layout,
``annotations/{split}.json``, is accepted too) is a list of ``{"image": "flickr30k-images/1.jpg",
"caption": ...}``: one entry per caption in train, one entry with the list of five captions in
val/test. Karpathy's ``dataset_flickr30k.json`` (in ``root`` or ``root/annotations``) lists
``{"filename", "split", "sentences": [{"raw"}]}`` with images under ``flickr30k-images/``.

A caption entry gives one Example per (image, caption), id ``{image stem}#{k}``; a val/test image
gives one Example with every caption as a reference and the first as target, id ``{image stem}``.
The paper's code (``lavis/datasets/datasets/flickr_datasets.py``) prompts with
``"<Image> A short image description:"``; the ``<Image>`` text is dropped because
``InstructBlipProcessor`` inserts the image tokens itself. Captions are kept as written; the
paper's ``blip_caption`` processor lowercases them and strips punctuation, which is left to the runner.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .examples import (
    BenchmarkDataError,
    Example,
    read_json,
    require_field,
    require_image_file,
    require_string_list,
    require_type,
)

FLICKR30K_PROMPT = "A short image description:"
KARPATHY_FILE = "dataset_flickr30k.json"
IMAGE_FOLDER = "flickr30k-images"


def _lavis_paths(root: Path, split: str) -> list[Path]:
    return [
        root / "annotations" / f"flickr30k_{split}.json",
        root / f"flickr30k_{split}.json",
        root / "annotations" / f"{split}.json",
    ]


def _karpathy_paths(root: Path) -> list[Path]:
    return [root / KARPATHY_FILE, root / "annotations" / KARPATHY_FILE]


def _caption_examples(image_path: Path, captions: list[str], first_index: int) -> list[Example]:
    """One Example per caption, numbered from ``first_index`` within the image."""
    return [
        Example(
            benchmark="flickr30k",
            example_id=f"{image_path.stem}#{first_index + offset}",
            prompt=FLICKR30K_PROMPT,
            target=caption,
            image_path=image_path,
            references=(caption,),
        )
        for offset, caption in enumerate(captions)
    ]


def _image_example(image_path: Path, captions: list[str]) -> Example:
    """One Example for an evaluation image: the first caption as target, all as references."""
    return Example(
        benchmark="flickr30k",
        example_id=image_path.stem,
        prompt=FLICKR30K_PROMPT,
        target=captions[0],
        image_path=image_path,
        references=tuple(captions),
    )


def _load_lavis(root: Path, path: Path) -> list[Example]:
    entries = require_type(read_json(path), list, str(path), "the file")
    captions_seen: Counter[str] = Counter()
    examples = []
    for index, entry in enumerate(entries):
        where = f"{path}, entry {index}"
        image_name = require_field(entry, "image", str, where)
        where = f"{path}, entry {index} (image {image_name})"
        image_path = require_image_file(root / image_name, where)
        caption = require_field(entry, "caption", (str, list), where)
        if isinstance(caption, str):
            examples += _caption_examples(image_path, [caption], captions_seen[image_name])
            captions_seen[image_name] += 1
        else:
            examples.append(_image_example(image_path, require_string_list(entry, "caption", where)))
    return examples


def _load_karpathy(root: Path, path: Path, split: str) -> list[Example]:
    dataset = read_json(path)
    images = require_field(dataset, "images", list, str(path))
    examples = []
    for index, image in enumerate(images):
        where = f"{path}, image {index}"
        filename = require_field(image, "filename", str, where)
        where = f"{path}, image {index} ({filename})"
        if require_field(image, "split", str, where) != split:
            continue
        sentences = require_field(image, "sentences", list, where)
        if not sentences:
            raise BenchmarkDataError(f"{where}: field 'sentences' is empty")
        captions = [
            require_field(sentence, "raw", str, f"{where}, sentence {k}")
            for k, sentence in enumerate(sentences)
        ]
        image_path = require_image_file(root / IMAGE_FOLDER / filename, where)
        if split == "train":
            examples += _caption_examples(image_path, captions, 0)
        else:
            examples.append(_image_example(image_path, captions))
    if not examples:
        raise BenchmarkDataError(f"{path}: no image has split {split!r}")
    return examples


def load_flickr30k(root: str | os.PathLike, split: str) -> list[Example]:
    """Flickr30k ``split`` from the first annotation file found: LAVIS files first, then Karpathy's."""
    root = Path(root)
    for path in _lavis_paths(root, split):
        if path.is_file():
            return _load_lavis(root, path)
    for path in _karpathy_paths(root):
        if path.is_file():
            return _load_karpathy(root, path, split)
    looked_for = ", ".join(str(path) for path in _lavis_paths(root, split) + _karpathy_paths(root))
    raise BenchmarkDataError(
        f"annotation file not found for Flickr30k split {split!r}: looked for {looked_for}"
    )
