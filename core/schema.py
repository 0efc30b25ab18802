"""The record schema shared by the writer (peft_hooks) and the readers (analysis).

The budget records are one row per adapted module per recorded step, as Parquet (see
:mod:`qformer_budget.core.run_folder` for the files); they read with plain pandas too:
``pd.read_parquet(run / "records.parquet")`` or ``pd.read_parquet(run / "records")``.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 added ``component``; version-1 records (Q-Former only) are read with ``component`` ``"qformer"``."""
V1_COMPONENT = "qformer"

RUN_META_FILE = "run.json"
RECORDS_FILE = "records.parquet"
RECORDS_PARTS_DIR = "records"

# run.json's list of resumes, and the compacted file's Parquet metadata (see core.run_folder).
RESUMES_FIELD = "resumes"
COMPACTED_PARTS_KEY = b"qformer_budget.compacted_parts"
RESUMES_APPLIED_KEY = b"qformer_budget.resumes_applied"

PHASES = ("warmup", "budgeting", "final")

# (column, type, meaning): the meaning column is the documentation of the schema.
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    ("schema_version", pa.int16(), "version of this schema"),
    ("benchmark", pa.string(), "benchmark (task) the run trained on"),
    ("seed", pa.int64(), "the run's random seed"),
    ("step", pa.int64(), "optimizer steps completed, this one included (global_step + 1)"),
    ("global_step", pa.int64(), "the 0-based step passed to peft's update_and_allocate"),
    ("phase", pa.string(), "AdaLoRA phase at this step: warmup, budgeting or final"),
    ("mask_step", pa.bool_(), "peft masked singular values at this step"),
    ("module", pa.string(), "full module name in the base model"),
    ("component", pa.string(), "vision, qformer or llm (version 2; version-1 records read as qformer)"),
    ("sublayer", pa.string(), "grammar label: L{layer:02d}.{block}.{proj} in the Q-Former, llm.L05.dec_ffn.wo elsewhere"),
    ("layer", pa.int16(), "layer index within the component; null outside the layers (projection, LM head)"),
    ("block", pa.string(), "Q-Former: self_attn, cross_attn, ffn_query, ffn_text; LLM and vision: see the grammar"),
    ("proj", pa.string(), "Q-Former: query, key, value, output, intermediate; others their own (q, wo, q_proj...)"),
    ("in_features", pa.int32(), "input width of the Linear"),
    ("out_features", pa.int32(), "output width of the Linear"),
    ("init_r", pa.int16(), "initial rank (AdaLoRA init_r)"),
    ("rank", pa.int16(), "kept rank after this step (init_r before the first mask)"),
    ("score", pa.float64(), "sum of AdaLoRA triplet scores over the init_r directions; NaN once peft cleared them"),
    ("direction_scores", pa.list_(pa.float32()), "AdaLoRA triplet score of each direction; null once cleared"),
    ("direction_kept", pa.list_(pa.bool_()), "which directions are kept (the module's rank_pattern)"),
    ("budget", pa.int64(), "total rank budget of budget_schedule at this step"),
    ("threshold", pa.float64(), "mask threshold (kthvalue of all triplet scores); NaN if not a mask step"),
)

SCHEMA_VERSION_KEY = b"qformer_budget.schema_version"  # Parquet metadata of every record file
RECORD_SCHEMA = pa.schema(
    [pa.field(name, dtype) for name, dtype, _ in COLUMNS],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION)},
)
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)

STRING_COLUMNS: tuple[str, ...] = (
    "run",
    *(name for name, dtype, _ in COLUMNS if dtype == pa.string()),
    "status",
)
"""Label columns of loaded records (the record's strings, plus the loader's ``run`` and ``status``):
``load_runs(..., categorical=True)`` gives them as pandas categoricals."""
