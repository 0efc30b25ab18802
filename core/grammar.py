"""The one naming grammar for Q-Former sublayers, and for every Linear of the whole model (:func:`parse_module`).

Every Linear layer of a Q-Former is named by ``(layer, block, proj)``:

- ``block`` is ``self_attn``, ``cross_attn``, ``ffn_query`` (the FFN that only query tokens pass
  through) or ``ffn_text`` (the FFN that only instruction-text tokens pass through);
- ``proj`` is ``query``, ``key``, ``value``, ``output`` for attention blocks and ``intermediate``,
  ``output`` for FFN blocks.

Its string form, :func:`sublayer_label`, is ``L{layer:02d}.{block}.{proj}`` (``L02.cross_attn.value``)
and is used for table keys, TensorBoard tags and figure labels alike.

Both the transformers names (InstructBLIP, InstructBLIP-Video, BLIP-2:
``qformer.encoder.layer.3.crossattention.attention.value``) and the LAVIS names
(``Qformer.bert.encoder.layer.3.crossattention.self.value``) are understood, with any prefix
(``base_model.model.`` from peft, ``module.`` from DDP).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

BLOCKS: tuple[str, ...] = ("self_attn", "cross_attn", "ffn_query", "ffn_text")
ATTENTION_PROJS: tuple[str, ...] = ("query", "key", "value", "output")
FFN_PROJS: tuple[str, ...] = ("intermediate", "output")
BLOCK_PROJS: dict[str, tuple[str, ...]] = {
    "self_attn": ATTENTION_PROJS,
    "cross_attn": ATTENTION_PROJS,
    "ffn_query": FFN_PROJS,
    "ffn_text": FFN_PROJS,
}

# Module-name suffix (after ``encoder.layer.N.``) of every sublayer, in both naming conventions.
_SUFFIXES: dict[tuple[str, str], tuple[str, ...]] = {
    ("self_attn", "query"): ("attention.attention.query", "attention.self.query"),
    ("self_attn", "key"): ("attention.attention.key", "attention.self.key"),
    ("self_attn", "value"): ("attention.attention.value", "attention.self.value"),
    ("self_attn", "output"): ("attention.output.dense",),
    ("cross_attn", "query"): ("crossattention.attention.query", "crossattention.self.query"),
    ("cross_attn", "key"): ("crossattention.attention.key", "crossattention.self.key"),
    ("cross_attn", "value"): ("crossattention.attention.value", "crossattention.self.value"),
    ("cross_attn", "output"): ("crossattention.output.dense",),
    ("ffn_query", "intermediate"): ("intermediate_query.dense",),
    ("ffn_query", "output"): ("output_query.dense",),
    ("ffn_text", "intermediate"): ("intermediate.dense",),
    ("ffn_text", "output"): ("output.dense",),
}
_SUFFIX_TO_SUBLAYER = {suffix: key for key, suffixes in _SUFFIXES.items() for suffix in suffixes}
_ENCODER_PREFIX = r"(?:.*\.)?(?:qformer|Qformer\.bert)\.encoder\.layer\."
_NAME_RE = re.compile(_ENCODER_PREFIX + r"(?P<layer>\d+)\.(?P<suffix>.+)")


class Sublayer(NamedTuple):
    """Where a Linear layer sits in the Q-Former."""

    layer: int
    block: str
    proj: str

    @property
    def label(self) -> str:
        return sublayer_label(self.layer, self.block, self.proj)

    def __str__(self) -> str:
        """The grammar's string form, :attr:`label`."""
        return self.label


def parse_sublayer(module_name: str) -> Sublayer | None:
    """Map a Q-Former Linear's full module name to ``(layer, block, proj)``; None for anything else."""
    match = _NAME_RE.fullmatch(module_name)
    if match is None:
        return None
    key = _SUFFIX_TO_SUBLAYER.get(match["suffix"])
    if key is None:
        return None
    return Sublayer(int(match["layer"]), *key)


def sublayer_label(layer: int, block: str, proj: str) -> str:
    """The grammar's string form: ``L02.cross_attn.value``."""
    return f"L{layer:02d}.{block}.{proj}"


# The paper's Q-Former LoRA placements (Kim et al. 2024, AttentionX/InstructBLIP_PEFT), plus every Linear.
PLACEMENTS: dict[str, dict[str, tuple[str, ...]]] = {
    "self_attn_qv": {"self_attn": ("query", "value")},
    "cross_attn_qkvo": {"cross_attn": ATTENTION_PROJS},
    "ffn_text_query": {"ffn_query": FFN_PROJS, "ffn_text": FFN_PROJS},
    "paper_all": {
        "self_attn": ("query", "value"),
        "cross_attn": ATTENTION_PROJS,
        "ffn_query": FFN_PROJS,
        "ffn_text": FFN_PROJS,
    },
    "all_linear": dict(BLOCK_PROJS),
}


def in_block_order(blocks: Iterable[str]) -> list[str]:
    """The distinct ``blocks`` in the grammar's order (the Q-Former's, then the other components'), unknown ones
    after it, alphabetically."""
    present = set(blocks)
    return [b for b in BLOCK_ORDER if b in present] + sorted(present - set(BLOCK_ORDER))


def layer_stack(block: str) -> str:
    """Which stack of layers a block sits in: ``encoder`` or ``decoder`` for T5's blocks (layer ``i`` of the
    encoder is not layer ``i`` of the decoder), ``""`` for a component with one stack."""
    return {"enc_": "encoder", "dec_": "decoder"}.get(block[:4], "")


def block_key(component: str, block: str) -> str:
    """A block's name across components (live-view tags, summary columns): the Q-Former's bare (``cross_attn``),
    the others' prefixed with their component (``llm.mlp``), since LLaMA has a ``self_attn`` of its own."""
    return block if component == "qformer" else f"{component}.{block}"


def block_order(blocks: Iterable[str]) -> dict[str, int]:
    """Sort position of each of ``blocks``, as :func:`in_block_order` places them."""
    return {block: i for i, block in enumerate(in_block_order(blocks))}


# Structural zeros: only the query positions of the last Q-Former layer reach the LLM, so the text FFN of
# the deepest layer gets exactly zero task gradient; its importance and rank are architecture, not findings.
STRUCTURAL_BLOCK = "ffn_text"


def is_structural(block, layer, last_layer):
    """True for the text FFN of ``last_layer``; takes single values or pandas/numpy columns alike."""
    return (block == STRUCTURAL_BLOCK) & (layer == last_layer)


def resolve_placement(placement: str | dict[str, Iterable[str]]) -> dict[str, tuple[str, ...]]:
    """Turn a placement name or a ``{block: projs}`` mapping into a validated ``{block: projs}`` mapping."""
    if isinstance(placement, str):
        if placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; known placements: {', '.join(PLACEMENTS)}")
        return PLACEMENTS[placement]
    resolved: dict[str, tuple[str, ...]] = {}
    for block, projs in placement.items():
        if block not in BLOCK_PROJS:
            raise ValueError(f"unknown block {block!r}; blocks are {', '.join(BLOCKS)}")
        projs = tuple(projs)
        unknown = [p for p in projs if p not in BLOCK_PROJS[block]]
        if unknown or not projs:
            raise ValueError(
                f"block {block!r} takes projections from {', '.join(BLOCK_PROJS[block])}; got {list(projs)}"
            )
        resolved[block] = projs
    if not resolved:
        raise ValueError("a placement needs at least one block")
    return resolved


def _qformer_regex(placement: str | dict[str, Iterable[str]], layers: Iterable[int] | None) -> str:
    """The anchored regex of one Q-Former placement, optionally on some layers only."""
    blocks = resolve_placement(placement)
    suffixes = sorted(
        re.escape(suffix) for block, projs in blocks.items() for proj in projs for suffix in _SUFFIXES[block, proj]
    )
    if layers is None:
        layer_re = r"\d+"
    else:
        layer_list = sorted(set(int(i) for i in layers))
        if not layer_list or layer_list[0] < 0:
            raise ValueError(f"layers must be a non-empty set of non-negative integers; got {layer_list}")
        layer_re = "(?:" + "|".join(str(i) for i in layer_list) + ")"
    return _ENCODER_PREFIX + layer_re + r"\.(?:" + "|".join(suffixes) + ")"


def placement_regexes(
    placement: str | dict[str, Iterable[str]] = "all_linear", layers: Iterable[int] | None = None
) -> dict[str, str]:
    """One anchored regex per part of ``placement``, keyed by the part's name (a mapping's key is ``"qformer"``).

    ``placement`` is a Q-Former placement (a name of :data:`PLACEMENTS` or a ``{block: projs}`` mapping), a
    placement of another component (:data:`COMPONENT_PLACEMENTS`), or several names joined with ``+``
    (``paper_all+llm_all``). ``layers`` chooses Q-Former layers, so it takes Q-Former parts only.
    """
    if not isinstance(placement, str):
        return {"qformer": _qformer_regex(placement, layers)}
    parts = placement.split("+")
    names = [PLACEMENT_ALIASES.get(part, part) for part in parts]
    if len(set(names)) < len(names):
        raise ValueError(f"placement {placement!r} names a part twice")
    regexes = {}
    for part in parts:
        name = PLACEMENT_ALIASES.get(part, part)
        if name in PLACEMENTS:
            regexes[part] = _qformer_regex(name, layers)
        elif name in COMPONENT_PLACEMENTS:
            if layers is not None:
                raise ValueError(f"layers chooses Q-Former layers; placement part {part!r} is outside the Q-Former")
            regexes[part] = COMPONENT_PLACEMENTS[name][1]
        else:
            known = [*PLACEMENTS, *PLACEMENT_ALIASES, *COMPONENT_PLACEMENTS]
            raise ValueError(f"unknown placement {part!r}; known placements: {', '.join(known)}, joined with '+'")
    return regexes


def placement_component(part: str) -> str:
    """The component a part of a placement (a key of :func:`placement_regexes`) adapts."""
    name = PLACEMENT_ALIASES.get(part, part)
    return COMPONENT_PLACEMENTS[name][0] if name in COMPONENT_PLACEMENTS else "qformer"


def target_modules_regex(
    placement: str | dict[str, Iterable[str]] = "all_linear", layers: Iterable[int] | None = None
) -> str:
    """An anchored regex for peft's ``target_modules`` that matches exactly the chosen modules.

    peft applies a string ``target_modules`` with ``re.fullmatch`` to every module name, so the
    regex carries its own prefix and cannot suffix-match ``output.dense`` in other blocks.
    Matches transformers and LAVIS names alike. ``placement`` as in :func:`placement_regexes`.
    """
    regexes = list(placement_regexes(placement, layers).values())
    return regexes[0] if len(regexes) == 1 else "(?:" + "|".join(regexes) + ")"


def qformer_sublayers(module_names: Iterable[str]) -> dict[str, Sublayer]:
    """The Q-Former sublayers among ``module_names``, keyed by module name, in the given order."""
    found = {}
    for name in module_names:
        sub = parse_sublayer(name)
        if sub is not None:
            found[name] = sub
    return found


# --- The whole model: vision encoder, Q-Former, LLM ---

COMPONENTS: tuple[str, ...] = ("vision", "qformer", "llm")
COMPONENT_TITLES: dict[str, str] = {"vision": "vision encoder", "qformer": "Q-Former", "llm": "LLM"}

# Each component's Linear names behind any prefix, transformers and LAVIS spellings; {kinds} and {projs} choose.
_VISION_PATTERN = (
    r"(?:.*\.)?(?:vision_model\.encoder\.layers|visual_encoder\.blocks)\.(?P<layer>\d+)\."
    r"(?P<kind>{kinds})\.(?P<proj>{projs})"
)
_T5_PATTERN = (
    r"(?:.*\.)?(?P<stack>encoder|decoder)\.block\.(?P<layer>\d+)\.layer\.\d+\."
    r"(?P<kind>{kinds})\.(?P<proj>{projs})"
)
# Not inside a vision tower: CLIP-style encoders (LLaVA) name their projections like LLaMA's.
_LLAMA_PATTERN = r"(?!(?:.*\.)?vision_model\.)(?:.*\.)?layers\.(?P<layer>\d+)\.(?P<kind>{kinds})\.(?P<proj>{projs})"
_T5_ATTENTION, _T5_FFN = "SelfAttention|EncDecAttention", "DenseReluDense"
_T5_FFN_PROJS = "wi|wi_0|wi_1|wo"
_LLAMA_FFN_PROJS = "gate_proj|up_proj|down_proj"
_VISION_RE = re.compile(_VISION_PATTERN.format(kinds="self_attn|attn|mlp", projs="qkv|projection|proj|fc1|fc2"))
_T5_RE = re.compile(_T5_PATTERN.format(kinds=f"{_T5_ATTENTION}|{_T5_FFN}", projs=f"q|k|v|o|{_T5_FFN_PROJS}"))
_LLAMA_RE = re.compile(
    _LLAMA_PATTERN.format(kinds="self_attn|mlp", projs=f"q_proj|k_proj|v_proj|o_proj|{_LLAMA_FFN_PROJS}")
)


def _unnamed(pattern: str) -> str:
    """``pattern`` without its named groups, so that several can be joined into one regex."""
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


def _llm_regex(t5_kinds: str, t5_projs: str, llama_kinds: str, llama_projs: str) -> str:
    """One regex for a placement in T5 / FlanT5 and in LLaMA / Vicuna: each family's names match only their own."""
    t5 = _T5_PATTERN.format(kinds=t5_kinds, projs=t5_projs)
    llama = _LLAMA_PATTERN.format(kinds=llama_kinds, projs=llama_projs)
    return _unnamed(f"(?:{t5}|{llama})")


# Placements outside the Q-Former: (component, anchored regex). The paper's LLM placements are its peft
# target_modules (AttentionX/InstructBLIP_PEFT): LoRA on q and v only for attention, every FFN matrix; "all
# linear" is every Linear inside the component's layers (like peft's "all-linear", the LM head is left out).
_LLM_ATTN = _llm_regex(_T5_ATTENTION, "q|v", "self_attn", "q_proj|v_proj")
_LLM_FFN = _llm_regex(_T5_FFN, _T5_FFN_PROJS, "mlp", _LLAMA_FFN_PROJS)
COMPONENT_PLACEMENTS: dict[str, tuple[str, str]] = {
    "llm_attn": ("llm", _LLM_ATTN),
    "llm_ffn": ("llm", _LLM_FFN),
    "llm_all": ("llm", f"(?:{_LLM_ATTN}|{_LLM_FFN})"),
    "llm_all_linear": ("llm", _llm_regex(
        f"{_T5_ATTENTION}|{_T5_FFN}", f"q|k|v|o|{_T5_FFN_PROJS}", "self_attn|mlp",
        f"q_proj|k_proj|v_proj|o_proj|{_LLAMA_FFN_PROJS}",
    )),
    "vision_all_linear": ("vision", _unnamed(_VISION_RE.pattern)),
}
# Every block and projection of every component, in the order tables and figures list them.
COMPONENT_BLOCK_PROJS: dict[str, dict[str, tuple[str, ...]]] = {
    "vision": {"attn": ("qkv", "projection"), "mlp": ("fc1", "fc2")},
    "qformer": {**BLOCK_PROJS, "language_projection": ("dense",)},
    "llm": {  # T5's encoder, then its decoder; LLaMA's layers; the head
        "enc_self_attn": ("q", "k", "v", "o"),
        "enc_ffn": ("wi", "wi_0", "wi_1", "wo"),
        "dec_self_attn": ("q", "k", "v", "o"),
        "dec_cross_attn": ("q", "k", "v", "o"),
        "dec_ffn": ("wi", "wi_0", "wi_1", "wo"),
        "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
        "mlp": ("gate_proj", "up_proj", "down_proj"),
        "lm_head": ("dense",),
    },
}
BLOCK_ORDER: tuple[str, ...] = tuple(dict.fromkeys(
    block for blocks in (COMPONENT_BLOCK_PROJS[c] for c in ("qformer", "vision", "llm")) for block in blocks
))
PROJ_ORDER: tuple[str, ...] = tuple(dict.fromkeys(
    projection for blocks in COMPONENT_BLOCK_PROJS.values() for projs in blocks.values() for projection in projs
))


def component_columns(component: str, columns: Iterable[str]) -> list[str]:
    """The distinct ``block.proj`` heatmap columns of a component in grammar order (every Q-Former column)."""
    if component == "qformer":
        return [f"{block}.{proj}" for block in BLOCKS for proj in BLOCK_PROJS[block]]
    present = set(columns)
    order = [f"{block}.{proj}" for block, projs in COMPONENT_BLOCK_PROJS.get(component, {}).items() for proj in projs]
    return [c for c in order if c in present] + sorted(present - set(order))


# Other names of Q-Former placements: the paper calls its "all" placement the Q-Former's.
PLACEMENT_ALIASES: dict[str, str] = {"qformer_all": "paper_all", "qformer_all_linear": "all_linear"}
_T5_BLOCKS = {
    ("encoder", "SelfAttention"): "enc_self_attn",
    ("encoder", "DenseReluDense"): "enc_ffn",
    ("decoder", "SelfAttention"): "dec_self_attn",
    ("decoder", "EncDecAttention"): "dec_cross_attn",
    ("decoder", "DenseReluDense"): "dec_ffn",
}
_VISION_PROJS = {"proj": "projection"}  # LAVIS spelling -> transformers
# Linear layers outside any layer: the projection from the Q-Former into the LLM, and the LLM's output head.
# LAVIS calls the projection t5_proj (FlanT5) or llm_proj (Vicuna).
_LAYERLESS = {
    "language_projection": ("qformer", "language_projection"),
    "t5_proj": ("qformer", "language_projection"),
    "llm_proj": ("qformer", "language_projection"),
    "lm_head": ("llm", "lm_head"),
}
_LAYERLESS_RE = re.compile(r"(?:.*\.)?(?P<name>" + "|".join(_LAYERLESS) + ")")


class ModulePosition(NamedTuple):
    """Where a Linear layer sits in the whole model: ``component`` (vision, qformer, llm), ``layer`` (None
    outside the layers), ``block`` and ``proj``."""

    component: str
    layer: int | None
    block: str
    proj: str

    @property
    def label(self) -> str:
        """One string per module: the Q-Former's grammar label unchanged (``L02.cross_attn.value``), the other
        components' prefixed with the component (``llm.L05.dec_cross_attn.q``, ``vision.L00.mlp.fc1``)."""
        if self.component == "qformer" and self.layer is not None:
            return sublayer_label(self.layer, self.block, self.proj)
        where = "" if self.layer is None else f"L{self.layer:02d}."
        return f"{self.component}.{where}{self.block}.{self.proj}"

    def __str__(self) -> str:
        return self.label


def parse_module(module_name: str) -> ModulePosition | None:
    """Map a Linear's full module name anywhere in InstructBLIP, BLIP-2 or a plain T5 / LLaMA LM to its
    :class:`ModulePosition`; None for a name the grammar does not know.

    Q-Former names parse as :func:`parse_sublayer` does. The EVA ViT's blocks are ``attn`` (``qkv``,
    ``projection``) and ``mlp`` (``fc1``, ``fc2``). T5's are ``enc_self_attn``, ``enc_ffn``,
    ``dec_self_attn``, ``dec_cross_attn`` and ``dec_ffn`` with T5's own projections (``q k v o``, ``wi`` or
    ``wi_0 wi_1``, ``wo``); LLaMA's are ``self_attn`` and ``mlp`` with ``q_proj`` ... ``down_proj``.
    """
    sublayer = parse_sublayer(module_name)
    if sublayer is not None:
        return ModulePosition("qformer", *sublayer)
    if match := _VISION_RE.fullmatch(module_name):
        block = "attn" if match["kind"] in ("self_attn", "attn") else "mlp"
        return ModulePosition("vision", int(match["layer"]), block, _VISION_PROJS.get(match["proj"], match["proj"]))
    if match := _T5_RE.fullmatch(module_name):
        block = _T5_BLOCKS.get((match["stack"], match["kind"]))
        return None if block is None else ModulePosition("llm", int(match["layer"]), block, match["proj"])
    if match := _LLAMA_RE.fullmatch(module_name):
        return ModulePosition("llm", int(match["layer"]), match["kind"], match["proj"])
    if match := _LAYERLESS_RE.fullmatch(module_name):
        component, block = _LAYERLESS[match["name"]]
        return ModulePosition(component, None, block, "dense")
    return None
