"""One benchmark example as the runner sees it, and the checks every loader shares.

Loaders read the benchmarks' official files, check each record as they go and raise
``BenchmarkDataError`` naming the file and the record at fault, so a broken download fails at load
time with a message that says where to look, not deep inside a training step. Given a
``missing_images`` dict, they list every missing image file there instead of refusing the first.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

BENCHMARK_KINDS = {
    "scienceqa": "multiple_choice",
    "iconqa": "multiple_choice",
    "flickr30k": "caption",
    "vizwiz": "open_vqa",
}


T = TypeVar("T")


class BenchmarkDataError(ValueError):
    """Bad benchmark data; the message names the file and the record at fault."""


@dataclass(frozen=True)
class Example:
    """One benchmark example: the prompt the paper's code builds, its target and its image."""

    benchmark: str
    example_id: str
    prompt: str
    target: str
    image_path: Path | None = None
    image_bytes: bytes | None = field(default=None, repr=False)
    choices: tuple[str, ...] = ()
    answer_index: int | None = None
    references: tuple[str, ...] = ()
    answerable: bool | None = None

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARK_KINDS:
            raise ValueError(f"unknown benchmark {self.benchmark!r}; known: {', '.join(BENCHMARK_KINDS)}")
        if self.image_path is None and self.image_bytes is None:
            raise ValueError(f"example {self.example_id}: needs an image_path or image_bytes")
        if self.choices and self.answer_index not in range(len(self.choices)):
            raise ValueError(f"example {self.example_id}: answer_index {self.answer_index} is not an option")

    @property
    def kind(self) -> str:
        """``"multiple_choice"``, ``"caption"`` or ``"open_vqa"``: how the example is scored."""
        return BENCHMARK_KINDS[self.benchmark]

    def load_image(self) -> Image.Image:
        """The image in RGB; ``BenchmarkDataError`` names the file and example if it cannot be read."""
        return self._read_image(lambda image: image.convert("RGB"))

    def verify_image(self) -> None:
        """Check that the image opens, from its header (and a PNG's checksums) without decoding the pixels;
        ``BenchmarkDataError`` names the file and example if it cannot be read."""
        self._read_image(Image.Image.verify)

    def _read_image(self, read: Callable[[Image.Image], T]) -> T:
        """``read`` applied to the opened image; any failure to read it as a ``BenchmarkDataError``."""
        source = "inline image bytes" if self.image_bytes is not None else f"image file {self.image_path}"
        try:
            if self.image_bytes is not None:
                image = Image.open(io.BytesIO(self.image_bytes))
            else:
                image = Image.open(self.image_path)
            with image:
                return read(image)
        except (OSError, SyntaxError) as error:  # PIL raises SyntaxError for a damaged file (a PNG checksum)
            raise BenchmarkDataError(
                f"{self.benchmark} example {self.example_id}: cannot read {source}: {error}"
            ) from error


def read_json(path: Path) -> Any:
    """The parsed JSON file at ``path``; a missing or unparsable file names the path."""
    if not path.is_file():
        raise BenchmarkDataError(f"annotation file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise BenchmarkDataError(f"{path}: not valid JSON ({error})") from error


def require_type(value: Any, expected: type | tuple[type, ...], where: str, what: str) -> Any:
    """``value`` if it has the ``expected`` type (a bool is not an int here), else an error at ``where``."""
    expected_types = expected if isinstance(expected, tuple) else (expected,)
    is_bool_for_int = isinstance(value, bool) and bool not in expected_types
    if not isinstance(value, expected_types) or is_bool_for_int:
        names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in expected_types)
        got = f"{type(value).__name__} {value!r:.80}"
        raise BenchmarkDataError(f"{where}: {what} should be {names}, got {got}")
    return value


def require_field(record: Any, name: str, expected: type | tuple[type, ...], where: str) -> Any:
    """Field ``name`` of the JSON object ``record``, checked against ``expected``."""
    require_type(record, dict, where, "the record")
    if name not in record:
        raise BenchmarkDataError(f"{where}: missing field {name!r}")
    return require_type(record[name], expected, where, f"field {name!r}")


def require_string_list(record: Any, name: str, where: str, min_length: int = 1) -> list[str]:
    """Field ``name`` as a list of at least ``min_length`` strings."""
    values = require_field(record, name, list, where)
    if len(values) < min_length:
        raise BenchmarkDataError(
            f"{where}: field {name!r} needs at least {min_length} entries, has {len(values)}"
        )
    for index, value in enumerate(values):
        require_type(value, str, where, f"field {name!r}[{index}]")
    return values


def require_image_file(path: Path, where: str, missing_images: dict[Path, str] | None = None) -> Path:
    """``path`` if it is an existing file, else an error naming the expected image file.

    With ``missing_images`` given, the error's message is stored there under ``path``, which is returned, so
    that a loader lists every missing image of a split (the dry run) rather than stopping at the first.
    """
    if not path.is_file():
        message = f"{where}: image file not found: {path}"
        if missing_images is None:
            raise BenchmarkDataError(message)
        missing_images[path] = message
    return path


def lettered_options(choices: Sequence[str]) -> tuple[str, ...]:
    """Options as the paper's code labels them: ``("(a) north", "(b) south", ...)``."""
    return tuple(f"({chr(ord('a') + index)}) {choice}" for index, choice in enumerate(choices))


def read_multiple_choice(record: Any, where: str) -> tuple[list[str], int]:
    """``choices`` (2 to 26 strings) and ``answer`` (an index into them) of a multiple-choice record."""
    choices = require_string_list(record, "choices", where, min_length=2)
    if len(choices) > 26:
        raise BenchmarkDataError(
            f"{where}: field 'choices' has {len(choices)} options; at most 26 can be lettered"
        )
    answer = require_field(record, "answer", int, where)
    if not 0 <= answer < len(choices):
        raise BenchmarkDataError(f"{where}: answer index {answer} is out of range for {len(choices)} choices")
    return choices, answer
