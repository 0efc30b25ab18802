"""The sweep's folder layout: ``OUT/<benchmark>/<method tag>/seed<k>/``, the tag naming a method and its settings.

An unfinished attempt a sweep sets aside becomes ``<run>.unfinished-<time>`` beside it: kept, never read as a run.
"""

from __future__ import annotations

import os
from pathlib import Path


def check_folder_name(name: str, what: str) -> None:
    """Refuse ``name`` as one folder of a run path if it could lead outside the output folder."""
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    if name in ("", ".", "..") or "\0" in name or any(s in name for s in separators) or Path(name).is_absolute():
        raise ValueError(
            f"{what} {name!r}, which cannot name a run folder: it must not be empty, '.' or '..', "
            "absolute, or contain a path separator, so that every run stays inside [sweep].out"
        )


SET_ASIDE_MARK = ".unfinished-"


def set_aside_path(run_dir: Path, when: str) -> Path:
    """Where an unfinished attempt at ``run_dir`` is kept once set aside at ``when``."""
    return run_dir.with_name(f"{run_dir.name}{SET_ASIDE_MARK}{when}")


def is_set_aside(folder_name: str) -> bool:
    return SET_ASIDE_MARK in folder_name


def run_path(out: Path, benchmark: str, method_tag: str, seed: int) -> Path:
    """Where a sweep puts the run of ``benchmark``, ``method_tag`` and ``seed`` below ``out``."""
    return Path(out) / benchmark / method_tag / f"seed{seed}"


def method_tag_of(run_dir: str | os.PathLike) -> str:
    """The method tag of a run folder laid out by :func:`run_path`."""
    return Path(run_dir).parent.name


def adalora_tag(name: str, placement: str, init_r: int, target_r: int) -> str:
    """``adalora-all_linear-r12to4``; a routed variant's ``name`` carries its routing (``routed_adalora-add``)."""
    return f"{name}-{placement}-r{init_r}to{target_r}"


def lora_tag(name: str, placement: str, rank: int) -> str:
    """``lora-paper_all-r8``; a routed variant's ``name`` carries its routing (``routed_lora-add``)."""
    return f"{name}-{placement}-r{rank}"
