"""What the synthetic benchmarks share: colours, shapes, scenes, per-split random streams and files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .examples import BENCHMARK_KINDS

COLORS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 20),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle", "diamond")
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 800, "val": 100, "test": 100}
WHITE = (255, 255, 255)
GRID = 3  # diagrams with several shapes put each in its own cell of a GRID x GRID grid

def split_rng(seed: int, benchmark: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, tuple(BENCHMARK_KINDS).index(benchmark), SPLITS.index(split)])


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def sample(rng: np.random.Generator, options: Sequence[Any], count: int) -> list[Any]:
    """``count`` distinct entries of ``options`` in random order."""
    return [options[int(index)] for index in rng.choice(len(options), size=count, replace=False)]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, center: tuple[float, float], radius: float, color: str
) -> None:
    x, y, r = round(center[0]), round(center[1]), max(round(radius), 2)
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw_grid_scene(
    rng: np.random.Generator, image: Image.Image, items: Sequence[tuple[str, str]]
) -> Image.Image:
    """Draw ``items`` ((shape, colour) pairs) on ``image``: one large in the centre, several in grid cells."""
    size = image.width
    draw = ImageDraw.Draw(image)
    if len(items) == 1:
        shape, color = items[0]
        draw_shape(draw, shape, (size / 2, size / 2), size * 0.3, color)
        return image
    cell = size / GRID
    for (shape, color), cell_index in zip(items, rng.choice(GRID * GRID, size=len(items), replace=False)):
        row, column = divmod(int(cell_index), GRID)
        draw_shape(draw, shape, ((column + 0.5) * cell, (row + 0.5) * cell), cell * 0.35, color)
    return image


def noisy_background(rng: np.random.Generator, size: int, low: int, high: int, noise: float) -> Image.Image:
    base = rng.integers(low, high, size=3)
    pixels = base + rng.normal(0.0, noise, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def save_png(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", compress_level=6)


def save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90, subsampling=0)


def write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def with_article(phrase: str) -> str:
    """``phrase`` after "a" or "an": "a red circle", "an orange square"."""
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def lettered_variants(options: Sequence[str], max_options: int) -> set[str]:
    """Every ``(x) option`` text an option can take in a list of up to ``max_options`` options."""
    return {f"({chr(ord('a') + index)}) {option}" for option in options for index in range(max_options)}
