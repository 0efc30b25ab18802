"""The real InstructBLIP and BLIP-2 checkpoints as presets, with their architecture configs written out here.

Nothing is downloaded. :func:`build_on_meta` builds a preset's architecture on the meta device (shapes
only, no memory) for parameter accounting; :func:`load_preset` loads a real checkpoint from a local folder
and checks that it is the architecture the preset names (:func:`read_checkpoint_config` and
:func:`architecture_mismatches`, which read ``config.json`` only). :func:`get_preset` also knows ``tiny``, the
shipped offline checkpoint of ``runner/tiny.py`` (:data:`TINY_PRESET`), and ``real-qformer``, the real Q-Former
between a small vision encoder and LM (:data:`REDUCED_PRESET`), which are not real checkpoints and so not in
:data:`PRESETS`; :func:`build_architecture` builds any of them with random weights.

Where the numbers come from (the checkpoints' ``config.json`` as revised in Nov 2024 for transformers >= 4.47,
and transformers' ``convert_instructblip_original_to_pytorch.py``):

- vision: EVA ViT-g/14, 1408 wide, 39 layers, 16 heads, MLP 6144, 224 px images, 14 px patches, q/v biases;
- Q-Former: BERT-base, 12 layers x 768, 12 heads, FFN 3072, cross-attention every 2nd layer on 1408-wide
  image features, 32 query tokens; InstructBLIP's vocabulary is BERT's 30522 plus ``[DEC]`` (30523); BLIP-2's
  Q-Former reads no text (no word embeddings, no text FFN);
- FlanT5-XL / -XXL: ``google/flan-t5-xl`` / ``-xxl`` (gated-GELU FFN, untied LM head) with
  ``dense_act_fn="gelu"`` and ``bos_token_id=1`` as the conversion set them; ``<image>`` is token 32100,
  inside T5's padded 32128 vocabulary;
- Vicuna-7B / -13B (LLaMA-7B / -13B shapes): ``[PAD]`` 32000, ``<image>`` 32001, ``<video>`` 32002,
  vocabulary padded to 32064; bos/eos 0/1 and 2048 positions, as in the checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
    T5Config,
)

BlipModel = InstructBlipForConditionalGeneration | Blip2ForConditionalGeneration
BlipConfig = InstructBlipConfig | Blip2Config
BlipProcessor = InstructBlipProcessor | Blip2Processor

PROCESSOR_CLASSES: dict[type[BlipModel], type[BlipProcessor]] = {
    InstructBlipForConditionalGeneration: InstructBlipProcessor,
    Blip2ForConditionalGeneration: Blip2Processor,
}

# Config fields that must agree between a checkpoint folder and its preset before any weight is read.
ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "num_query_tokens",
    "qformer_config.hidden_size",
    "qformer_config.num_hidden_layers",
    "qformer_config.num_attention_heads",
    "qformer_config.intermediate_size",
    "qformer_config.cross_attention_frequency",
    "qformer_config.encoder_hidden_size",
    "text_config.model_type",
    "text_config.hidden_size",
)

_VIT_G = {
    "hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "layer_norm_eps": 1e-6, "qkv_bias": True,
}
_QFORMER = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "cross_attention_frequency": 2, "encoder_hidden_size": 1408, "max_position_embeddings": 512,
}
_NUM_QUERY_TOKENS = 32
_T5_IMAGE_TOKEN = 32100
_VICUNA_IMAGE_TOKEN = 32001


def _flan_t5(d_model: int, d_ff: int, num_heads: int, num_layers: int = 24) -> T5Config:
    return T5Config(
        vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=num_layers, num_decoder_layers=num_layers,
        num_heads=num_heads, feed_forward_proj="gated-gelu", dense_act_fn="gelu", tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=0,
    )


def _vicuna(hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=32064, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=2048, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False,
        pad_token_id=32000, bos_token_id=0, eos_token_id=1,
    )


def _instructblip(
    text_config: T5Config | LlamaConfig, image_token_index: int, vision_layers: int = 39
) -> InstructBlipConfig:
    return InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(**(_VIT_G | {"num_hidden_layers": vision_layers})).to_dict(),
        qformer_config=InstructBlipQFormerConfig(vocab_size=30523, **_QFORMER).to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=_NUM_QUERY_TOKENS,
        image_token_index=image_token_index,
    )


def instructblip_flan_t5_xl_config() -> InstructBlipConfig:
    return _instructblip(_flan_t5(d_model=2048, d_ff=5120, num_heads=32), _T5_IMAGE_TOKEN)


def instructblip_flan_t5_xxl_config() -> InstructBlipConfig:
    return _instructblip(_flan_t5(d_model=4096, d_ff=10240, num_heads=64), _T5_IMAGE_TOKEN)


def instructblip_vicuna_7b_config() -> InstructBlipConfig:
    return _instructblip(_vicuna(4096, 11008, num_layers=32, num_heads=32), _VICUNA_IMAGE_TOKEN)


def instructblip_vicuna_13b_config() -> InstructBlipConfig:
    return _instructblip(_vicuna(5120, 13824, num_layers=40, num_heads=40), _VICUNA_IMAGE_TOKEN)


def blip2_flan_t5_xl_config() -> Blip2Config:
    return Blip2Config(
        vision_config=Blip2VisionConfig(**_VIT_G).to_dict(),
        qformer_config=Blip2QFormerConfig(**_QFORMER).to_dict(),
        text_config=_flan_t5(d_model=2048, d_ff=5120, num_heads=32).to_dict(),
        num_query_tokens=_NUM_QUERY_TOKENS,
        image_token_index=_T5_IMAGE_TOKEN,
    )


def real_qformer_config() -> InstructBlipConfig:
    """InstructBLIP's real Q-Former, 32 queries and 257 image tokens 1408 wide, between a one-layer ViT-g and a
    two-layer FlanT5-style LM 256 wide with T5's vocabulary: a real-size Q-Former at a fraction of the cost."""
    text_config = _flan_t5(d_model=256, d_ff=512, num_heads=4, num_layers=2)
    return _instructblip(text_config, _T5_IMAGE_TOKEN, vision_layers=1)


@dataclass(frozen=True)
class ModelPreset:
    """One architecture: how to build it offline and what a local checkpoint of it must look like (a real
    checkpoint, the shipped tiny one, or the rehearsal's reduced ``real-qformer``)."""

    name: str
    model_class: type[BlipModel]
    config_factory: Callable[[], BlipConfig]
    llm_family: str  # "t5" or "llama"
    hub_id: str | None  # where the checkpoint is published; documentation only, never downloaded
    dtype: torch.dtype = torch.bfloat16  # weights' dtype on a GPU
    tied_lm_head: bool = False  # a T5 LM head shared with the embedding (tiny); FlanT5 checkpoints store their own


PRESETS: dict[str, ModelPreset] = {
    preset.name: preset
    for preset in (
        ModelPreset("instructblip-flan-t5-xl", InstructBlipForConditionalGeneration,
                    instructblip_flan_t5_xl_config, "t5", "Salesforce/instructblip-flan-t5-xl"),
        ModelPreset("instructblip-flan-t5-xxl", InstructBlipForConditionalGeneration,
                    instructblip_flan_t5_xxl_config, "t5", "Salesforce/instructblip-flan-t5-xxl"),
        ModelPreset("instructblip-vicuna-7b", InstructBlipForConditionalGeneration,
                    instructblip_vicuna_7b_config, "llama", "Salesforce/instructblip-vicuna-7b"),
        ModelPreset("instructblip-vicuna-13b", InstructBlipForConditionalGeneration,
                    instructblip_vicuna_13b_config, "llama", "Salesforce/instructblip-vicuna-13b"),
        ModelPreset("blip2-flan-t5-xl", Blip2ForConditionalGeneration,
                    blip2_flan_t5_xl_config, "t5", "Salesforce/blip2-flan-t5-xl"),
    )
}


TINY_CHECKPOINT_DIR = Path(__file__).parent / "assets" / "tiny-instructblip"


def tiny_checkpoint_config() -> InstructBlipConfig:
    """The shipped tiny checkpoint's architecture, read from its ``config.json`` (no weight is read)."""
    return InstructBlipConfig.from_pretrained(TINY_CHECKPOINT_DIR, local_files_only=True)


# The shipped offline checkpoint (runner/tiny.py): float32 everywhere, its T5 LM head tied to the embedding.
TINY_PRESET = ModelPreset(
    "tiny", InstructBlipForConditionalGeneration, tiny_checkpoint_config, "t5",
    hub_id=None, dtype=torch.float32, tied_lm_head=True,
)


# The real Q-Former between a small vision encoder and LM (real_qformer_config): no checkpoint is published, it
# is built with random weights (`qformer-budget rehearse real-qformer`, runner/rehearse.py).
REDUCED_PRESET = ModelPreset(
    "real-qformer", InstructBlipForConditionalGeneration, real_qformer_config, "t5", hub_id=None
)


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name`` (a real checkpoint's, ``tiny`` or ``real-qformer``); a ValueError lists the known
    ones."""
    others = {preset.name: preset for preset in (TINY_PRESET, REDUCED_PRESET)}
    try:
        return PRESETS[name] if name in PRESETS else others[name]
    except KeyError:
        known = ", ".join([*PRESETS, *others])
        raise ValueError(f"unknown preset {name!r}; known presets: {known}") from None


def build_on_meta(name: str) -> BlipModel:
    """The preset's architecture on the meta device: every shape, no weights, no memory."""
    return build_architecture(name, "meta")


def build_architecture(name: str, device: str | torch.device) -> BlipModel:
    """The preset's architecture on ``device`` with the parameter set of its checkpoint (a T5 LM head of its own);
    off the meta device, its weights are drawn from the global RNG in torch's default dtype."""
    preset = get_preset(name)
    with torch.device(device):
        model = preset.model_class(preset.config_factory())
        if preset.llm_family == "t5" and not preset.tied_lm_head:
            _untie_t5_lm_head(model)
    return model


def _untie_t5_lm_head(model: BlipModel) -> None:
    """Give the T5 LM head its own weight, as FlanT5 checkpoints store it: a copy of the shared embedding.

    transformers 5 ties ``lm_head`` to the shared embedding in a T5 built from a config and unties the two
    when a checkpoint holds both, so a build must untie them to count, and to hold, what a loaded model holds.
    """
    lm = model.language_model
    lm.lm_head.weight = nn.Parameter(lm.shared.weight.detach().clone())
    model.all_tied_weights_keys.pop("language_model.lm_head.weight", None)


def freeze_except_qformer(model: BlipModel) -> None:
    """Freeze the vision encoder and the LLM; Q-Former, query tokens and language projection stay trainable.

    That trainable set is the paper's full Q-Former fine-tuning baseline; a peft wrapper later freezes it as
    well and trains only its adapters.
    """
    model.requires_grad_(True)
    model.vision_model.requires_grad_(False)
    model.language_model.requires_grad_(False)


def load_preset(
    name: str, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[BlipModel, BlipProcessor]:
    """Load the preset's checkpoint and processor from the local folder ``path`` (:func:`load_checkpoint`).

    ``dtype`` defaults to the preset's dtype on CUDA and float32 elsewhere.
    """
    preset = get_preset(name)
    if dtype is None:
        dtype = preset.dtype if torch.device(device).type == "cuda" else torch.float32
    expected = preset.config_factory()
    return load_checkpoint(path, preset.model_class, expected=expected, device=device, dtype=dtype)


def load_checkpoint(
    path: str | Path,
    model_class: type[BlipModel],
    expected: BlipConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[BlipModel, BlipProcessor]:
    """Load a model and its processor from a local folder, with the vision encoder and the LLM frozen.

    The folder's config is checked before any weight is read: its ``model_type`` must be ``model_class``'s
    and, when ``expected`` is given, the :data:`ARCHITECTURE_FIELDS` must match it.
    """
    folder = Path(path)
    config = read_checkpoint_config(folder, model_class)
    if expected is not None:
        check_architecture(config, expected, folder)
    model = model_class.from_pretrained(
        folder, config=config, local_files_only=True, dtype=dtype, device_map=device
    )
    processor = PROCESSOR_CLASSES[model_class].from_pretrained(folder, local_files_only=True)
    freeze_except_qformer(model)
    return model, processor


def read_checkpoint_config(folder: str | Path, model_class: type[BlipModel]) -> BlipConfig:
    """The config of the checkpoint folder ``folder``, read from its ``config.json`` alone (no weight).

    A missing folder or ``config.json`` raises FileNotFoundError; a ``config.json`` that is not JSON, or whose
    ``model_type`` is not ``model_class``'s (a BLIP-2 or LLaMA folder where InstructBLIP is expected), a
    ValueError naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a saved checkpoint folder")
    try:
        document = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_file}: not valid JSON ({exc})") from exc
    model_type = document.get("model_type") if isinstance(document, dict) else None
    wanted_type = model_class.config_class.model_type
    if model_type != wanted_type:
        raise ValueError(
            f"{config_file}: model_type is {model_type!r}, but {model_class.__name__} needs {wanted_type!r}"
        )
    return model_class.config_class.from_pretrained(folder, local_files_only=True)


def architecture_mismatches(config: BlipConfig, expected: BlipConfig) -> list[str]:
    """Each :data:`ARCHITECTURE_FIELDS` entry where ``config`` differs from ``expected``: ``field is X, expected Y``."""
    return [
        f"{field} is {found!r}, expected {wanted!r}"
        for field in ARCHITECTURE_FIELDS
        if (found := _field(config, field)) != (wanted := _field(expected, field))
    ]


def check_architecture(config: BlipConfig, expected: BlipConfig, folder: str | Path) -> None:
    """Raise a ValueError naming ``folder``'s config.json and each :data:`ARCHITECTURE_FIELDS` entry that differs."""
    mismatches = architecture_mismatches(config, expected)
    if mismatches:
        config_file = Path(folder) / "config.json"
        raise ValueError(f"{config_file} is not the expected architecture: {'; '.join(mismatches)}")


def _field(config: BlipConfig, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
