"""The study's four benchmarks (ScienceQA, IconQA, Flickr30k, VizWiz) read from their official files.

Loaders turn each benchmark's real on-disk format into ``Example`` records carrying the prompt the
paper's code builds; ``write_synthetic`` writes small stand-ins in exactly those formats, so the
same loaders and runner serve both the real data and offline tests.
"""

from .examples import BenchmarkDataError, Example
from .flickr30k import load_flickr30k
from .iconqa import load_iconqa
from .registry import BENCHMARKS, load_benchmark
from .scienceqa import load_scienceqa, load_scienceqa_parquet
from .synthetic import synthetic_corpus, write_all_synthetic, write_synthetic
from .vizwiz import load_vizwiz

__all__ = [
    "BENCHMARKS",
    "BenchmarkDataError",
    "Example",
    "load_benchmark",
    "load_flickr30k",
    "load_iconqa",
    "load_scienceqa",
    "load_scienceqa_parquet",
    "load_vizwiz",
    "synthetic_corpus",
    "write_all_synthetic",
    "write_synthetic",
]
