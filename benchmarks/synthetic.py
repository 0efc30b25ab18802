"""Small synthetic stand-ins for the four benchmarks, written in each benchmark's official format.

Each benchmark's module holds its loader and its writer; this module is their common entry point.

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

import os
from collections.abc import Callable
from pathlib import Path

from .drawing import DEFAULT_SIZES, SPLITS
from .flickr30k import synthetic_flickr30k_texts, write_synthetic_flickr30k
from .iconqa import synthetic_iconqa_texts, write_synthetic_iconqa
from .registry import BENCHMARKS
from .scienceqa import synthetic_scienceqa_texts, write_synthetic_scienceqa
from .vizwiz import synthetic_vizwiz_texts, write_synthetic_vizwiz

_WRITERS: dict[str, Callable[[Path, int, dict[str, int], int], None]] = {
    "scienceqa": write_synthetic_scienceqa,
    "iconqa": write_synthetic_iconqa,
    "flickr30k": write_synthetic_flickr30k,
    "vizwiz": write_synthetic_vizwiz,
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
    return sorted(synthetic_iconqa_texts() | synthetic_scienceqa_texts() | synthetic_flickr30k_texts() | synthetic_vizwiz_texts())
