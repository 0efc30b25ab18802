"""Load any of the four benchmarks by name."""

from __future__ import annotations

import os
from pathlib import Path

from .examples import BENCHMARK_KINDS, BenchmarkDataError, Example
from .flickr30k import load_flickr30k
from .iconqa import load_iconqa
from .scienceqa import load_scienceqa, load_scienceqa_parquet, scienceqa_parquet_files
from .vizwiz import load_vizwiz

BENCHMARKS = tuple(BENCHMARK_KINDS)


def _load_scienceqa_any(
    root: str | os.PathLike, split: str, missing_images: dict[Path, str] | None
) -> list[Example]:
    """The official JSON release if ``root`` has ``problems.json``, else the parquet export (images inline)."""
    if (Path(root) / "problems.json").is_file():
        return load_scienceqa(root, split, missing_images)
    if scienceqa_parquet_files(root, split):
        return load_scienceqa_parquet(root, split)
    raise BenchmarkDataError(
        f"no ScienceQA data for split {split!r} under {root}: neither {Path(root) / 'problems.json'} "
        f"nor parquet files of that split in {root} or {Path(root) / 'data'}"
    )


_LOADERS = {
    "scienceqa": _load_scienceqa_any,
    "iconqa": load_iconqa,
    "flickr30k": load_flickr30k,
    "vizwiz": load_vizwiz,
}


def load_benchmark(
    name: str, root: str | os.PathLike, split: str, missing_images: dict[Path, str] | None = None
) -> list[Example]:
    """The examples of benchmark ``name``'s ``split`` stored at ``root`` in its official format.

    ``missing_images``: list every missing image file there instead of refusing the first
    (``examples.require_image_file``).
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    return _LOADERS[name](root, split, missing_images)
