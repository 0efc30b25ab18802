"""Save and load AdaLoRA adapters with peft, without peft's false alarms about AdaLoRA's rank-0 modules."""

from __future__ import annotations

import os
import warnings

import torch
from peft import PeftModel

from .model import AdaLoraPeftModel
from .peft_internals import EMPTY_TENSOR_SAVE_WARNING, RANK_PATTERN_LOAD_WARNING


def save_adapter(model: AdaLoraPeftModel, path: str | os.PathLike) -> None:
    """peft's ``save_pretrained``, without its false alarm about AdaLoRA's rank-0 modules.

    peft slices A, E and B to the kept ranks, so a module pruned to rank 0 saves empty tensors on
    purpose; peft's save check mistakes them for unsharded DeepSpeed/FSDP tensors and warns.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=EMPTY_TENSOR_SAVE_WARNING)
        model.save_pretrained(str(path))


def load_adapter(base_model: torch.nn.Module, path: str | os.PathLike) -> PeftModel:
    """peft's ``PeftModel.from_pretrained`` for an adapter written by :func:`save_adapter`.

    peft resizes the modules to the saved ranks, then warns that the AdaLoRA ``rank_pattern`` keys
    match no module, because its LoRA-level check expects module names; the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=RANK_PATTERN_LOAD_WARNING)
        return PeftModel.from_pretrained(base_model, str(path))
