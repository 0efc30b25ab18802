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

import itertools
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageDraw

from .drawing import (
    COLOR_NAMES,
    SHAPES,
    SPLITS,
    draw_shape,
    noisy_background,
    pick,
    sample,
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


def _load_lavis(root: Path, path: Path, missing_images: dict[Path, str] | None) -> list[Example]:
    entries = require_type(read_json(path), list, str(path), "the file")
    captions_seen: Counter[str] = Counter()
    examples = []
    for index, entry in enumerate(entries):
        where = f"{path}, entry {index}"
        image_name = require_field(entry, "image", str, where)
        where = f"{path}, entry {index} (image {image_name})"
        image_path = require_image_file(root / image_name, where, missing_images)
        caption = require_field(entry, "caption", (str, list), where)
        if isinstance(caption, str):
            examples += _caption_examples(image_path, [caption], captions_seen[image_name])
            captions_seen[image_name] += 1
        else:
            examples.append(_image_example(image_path, require_string_list(entry, "caption", where)))
    return examples


def _load_karpathy(
    root: Path, path: Path, split: str, missing_images: dict[Path, str] | None
) -> list[Example]:
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
        image_path = require_image_file(root / IMAGE_FOLDER / filename, where, missing_images)
        if split == "train":
            examples += _caption_examples(image_path, captions, 0)
        else:
            examples.append(_image_example(image_path, captions))
    if not examples:
        raise BenchmarkDataError(f"{path}: no image has split {split!r}")
    return examples


def load_flickr30k(
    root: str | os.PathLike, split: str, missing_images: dict[Path, str] | None = None
) -> list[Example]:
    """Flickr30k ``split`` from the first annotation file found: LAVIS files first, then Karpathy's
    (``missing_images``: see ``examples.require_image_file``)."""
    root = Path(root)
    for path in _lavis_paths(root, split):
        if path.is_file():
            return _load_lavis(root, path, missing_images)
    for path in _karpathy_paths(root):
        if path.is_file():
            return _load_karpathy(root, path, split, missing_images)
    looked_for = ", ".join(str(path) for path in _lavis_paths(root, split) + _karpathy_paths(root))
    raise BenchmarkDataError(
        f"annotation file not found for Flickr30k split {split!r}: looked for {looked_for}"
    )


# ---------------------------------------------------------------- the synthetic stand-in

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
    colors = sample(rng, COLOR_NAMES, count)
    shapes = sample(rng, SHAPES, 3) if count == 3 else [pick(rng, SHAPES) for _ in range(count)]
    names = {letter: with_article(f"{color} {shape}") for letter, color, shape in zip("abc", colors, shapes)}
    if count == 1:
        position = pick(rng, tuple(FLICKR_POSITIONS))
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
    return list(zip(shapes, colors, centers)), sample(rng, captions, len(captions))


def write_synthetic_flickr30k(root: Path, seed: int, sizes: dict[str, int], image_size: int) -> None:
    """``flickr30k-images/{id}.jpg`` and LAVIS's ``annotations/flickr30k_{split}.json``."""
    image_id = FLICKR_FIRST_IMAGE_ID
    for split in (split for split in SPLITS if split in sizes):
        rng = split_rng(seed, "flickr30k", split)
        entries: list[dict[str, Any]] = []
        for _ in range(sizes[split]):
            shapes, captions = _flickr_scene(rng)
            image = noisy_background(rng, image_size, 215, 256, noise=3.0)
            draw = ImageDraw.Draw(image)
            radius = image_size * (0.2, 0.15, 0.12)[len(shapes) - 1]
            for shape, color, (x, y) in shapes:
                jitter = rng.uniform(-0.04, 0.04, size=2)
                center = ((x + jitter[0]) * image_size, (y + jitter[1]) * image_size)
                draw_shape(draw, shape, center, radius, color)
            image_name = f"flickr30k-images/{image_id}.jpg"
            save_jpeg(image, root / image_name)
            if split == "train":
                entries += [
                    {"caption": caption, "image": image_name, "image_id": str(image_id)}
                    for caption in captions
                ]
            else:
                entries.append({"image": image_name, "caption": captions})
            image_id += 1
        write_json(entries, root / "annotations" / f"flickr30k_{split}.json")


def synthetic_flickr30k_texts() -> set[str]:
    texts = {FLICKR30K_PROMPT}
    objects = [(color, with_article(f"{color} {shape}")) for color in COLOR_NAMES for shape in SHAPES]
    for _, a in objects:
        for position in FLICKR_POSITIONS:
            texts |= {_caption(template, a=a, position=position) for template in ONE_SHAPE_CAPTIONS}
    for (color_a, a), (color_b, b) in itertools.permutations(objects, 2):
        if color_a != color_b:
            templates = ROW_OF_TWO_CAPTIONS + COLUMN_OF_TWO_CAPTIONS
            texts |= {_caption(template, a=a, b=b) for template in templates}
    for colors in itertools.permutations(COLOR_NAMES, 3):
        for shapes in itertools.permutations(SHAPES, 3):
            a, b, c = (with_article(f"{color} {shape}") for color, shape in zip(colors, shapes))
            texts |= {_caption(template, a=a, b=b, c=c) for template in ROW_OF_THREE_CAPTIONS}
    return texts
