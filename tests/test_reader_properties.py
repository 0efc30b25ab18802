"""Property-based tests of the record reader (``analysis.load_runs``) and the sublayer name parser.

- Round trip: any valid records written as run folders (by the real sink, or as the part files a
  killed run leaves) come back from ``load_runs`` row for row.
- Damage: a record file or ``run.json`` cut short or with bytes changed either loads or raises
  ``RecordError`` naming the damaged file; no other exception may escape.
- Parser: any prefix ending in a dot before a Q-Former name keeps the name's (layer, block, proj);
  anything appended after it makes the name no sublayer; it accepts exactly the names the
  ``all_linear`` target regex selects. (``tests/test_taxonomy.py`` already checks arbitrary text and
  generated names.)

Examples are derandomized (the same on every run) and few, so the file runs in seconds.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qformer_budget.analysis import RecordError, load_runs
from qformer_budget.core.grammar import _SUFFIXES, Sublayer, parse_module, parse_sublayer, target_modules_regex
from qformer_budget.core.records import ModuleInfo, StepRecord
from qformer_budget.core.schema import (
    COLUMN_NAMES,
    PHASES,
    RECORDS_FILE,
    RECORDS_PARTS_DIR,
    RUN_META_FILE,
    SCHEMA_VERSION,
)
from qformer_budget.peft_hooks.sinks import ParquetSink

SETTINGS = settings(
    derandomize=True, database=None, deadline=None, max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Q-Former module names in both namings (transformers, LAVIS), and Linear layers outside the Q-Former.
QFORMER_NAMES = [
    f"{prefix}encoder.layer.{layer}.{suffix}"
    for prefix, layer, suffixes in itertools.product(("qformer.", "Qformer.bert."), (0, 1, 11), _SUFFIXES.values())
    for suffix in suffixes
]
OTHER_NAMES = ["language_model.lm_head", "vision_model.encoder.layers.0.mlp.fc1", "qformer.layernorm"]


# ---------------------------------------------------------------- round trip


@st.composite
def step_records(draw) -> list[StepRecord]:
    """Records of one run: increasing steps, one module list, random masks, scores with NaN or cleared."""
    benchmark, seed = draw(st.text(max_size=12)), draw(st.integers(-(2**63), 2**63 - 1))
    modules = tuple(
        ModuleInfo(name, draw(st.integers(1, 64)), draw(st.integers(1, 64)))
        for name in draw(st.lists(st.sampled_from(QFORMER_NAMES + OTHER_NAMES), min_size=1, max_size=6, unique=True))
    )
    init_r = draw(st.integers(1, 6))
    steps = sorted(draw(st.sets(st.integers(0, 10_000), min_size=1, max_size=5)))
    shape = (len(modules), init_r)
    records = []
    for global_step in steps:
        size = math.prod(shape)
        kept = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))).reshape(shape)
        scores = draw(
            st.none()
            | st.lists(
                st.floats(width=32) | st.just(float("nan")),
                min_size=size, max_size=size,
            ).map(lambda values: np.array(values, dtype=np.float32).reshape(shape))
        )
        records.append(
            StepRecord(
                benchmark=benchmark, seed=seed, global_step=global_step, phase=draw(st.sampled_from(PHASES)),
                mask_step=draw(st.booleans()), budget=draw(st.integers(0, 10**6)),
                threshold=draw(st.floats()), init_r=init_r, modules=modules,
                direction_kept=kept, direction_scores=scores,
            )
        )
    return records


@st.composite
def run_folders(draw) -> list[tuple[str, list[StepRecord], bool]]:
    """One to three runs: (folder name, records, closed by the sink or left as a killed run's parts)."""
    return [(f"run{i}", draw(step_records()), draw(st.booleans())) for i in range(draw(st.integers(1, 3)))]


def write_run(run_dir: Path, records: list[StepRecord], closed: bool) -> None:
    meta = {"schema_version": SCHEMA_VERSION, "benchmark": records[0].benchmark, "seed": records[0].seed}
    if closed:
        sink = ParquetSink(run_dir)
        sink.start(meta)
        for record in records:
            sink.write(record)
        sink.close("finished")
        return
    (run_dir / RECORDS_PARTS_DIR).mkdir(parents=True)
    (run_dir / RUN_META_FILE).write_text(json.dumps(meta | {"status": "running"}))
    for part, record in enumerate(records):
        pq.write_table(record.to_table(), run_dir / RECORDS_PARTS_DIR / f"part-{part:06d}.parquet")


def expected_rows(run_dir: Path, records: list[StepRecord], closed: bool) -> list[dict]:
    """The rows ``load_runs`` must give for ``records``, worked out from the records, not from their tables."""
    rows = []
    for record in records:
        for i, module in enumerate(record.modules):
            position = parse_module(module.module)
            scores = None if record.direction_scores is None else record.direction_scores[i].tolist()
            rows.append({
                "run": str(run_dir), "benchmark": record.benchmark, "seed": record.seed,
                "step": record.global_step + 1, "global_step": record.global_step, "phase": record.phase,
                "mask_step": record.mask_step, "module": module.module,
                "component": "other" if position is None else position.component,
                "sublayer": module.module if position is None else position.label,
                "layer": None if position is None else position.layer,
                "block": "other" if position is None else position.block,
                "proj": module.module.rsplit(".", 1)[-1] if position is None else position.proj,
                "in_features": module.in_features, "out_features": module.out_features,
                "init_r": record.init_r, "rank": int(record.direction_kept[i].sum()),
                "score": math.nan if scores is None else float(np.sum(np.array(scores, dtype=np.float64))),
                "direction_scores": scores, "direction_kept": record.direction_kept[i].tolist(),
                "budget": record.budget, "threshold": record.threshold,
                "status": "finished" if closed else "running",
            })
    return rows


def same(found, wanted) -> bool:
    """Equal, with NaN equal to NaN and missing values (None, NaN, pd.NA) equal to None."""
    if wanted is None:
        return found is None or (np.ndim(found) == 0 and pd.isna(found))
    if isinstance(wanted, list):
        return found is not None and len(found) == len(wanted) and all(same(f, w) for f, w in zip(found, wanted))
    if isinstance(wanted, float) and math.isnan(wanted):
        return math.isnan(found)
    return found == wanted


@SETTINGS
@given(runs=run_folders())
def test_valid_records_come_back_row_for_row(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    wanted = []
    for name, records, closed in runs:
        write_run(root / name, records, closed)
        wanted += expected_rows(root / name, records, closed)
    loaded = load_runs(root)
    found = loaded.sort_values(["run", "step"], kind="stable").to_dict("records")
    wanted.sort(key=lambda row: (row["run"], row["step"]))
    assert len(found) == len(wanted)
    for found_row, wanted_row in zip(found, wanted):
        mismatched = {key: (found_row[key], want) for key, want in wanted_row.items() if not same(found_row[key], want)}
        assert not mismatched, f"{wanted_row['module']} at step {wanted_row['step']}: {mismatched}"


# ---------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def pristine_run() -> dict[str, bytes]:
    """The files of a closed run, NaN and cleared scores included, by name."""
    modules = tuple(ModuleInfo(name, 8, 8) for name in QFORMER_NAMES[:12] + OTHER_NAMES[:1])
    rng = np.random.default_rng(0)
    records = [
        StepRecord(
            benchmark="scienceqa", seed=1, global_step=step, phase=phase, mask_step=step > 0, budget=40 - step,
            threshold=0.5 if step else math.nan, init_r=4, modules=modules,
            direction_kept=rng.random((len(modules), 4)) > 0.3,
            direction_scores=None if phase == "final" else rng.random((len(modules), 4)).astype(np.float32),
        )
        for step, phase in [(0, "warmup"), (5, "budgeting"), (9, "final")]
    ]
    with tempfile.TemporaryDirectory() as folder:
        write_run(Path(folder) / "run", records, closed=True)
        return {name: (Path(folder) / "run" / name).read_bytes() for name in (RUN_META_FILE, RECORDS_FILE)}


def footer_of(data: bytes) -> tuple[int, int]:
    """Start and end of a Parquet file's footer (its schema, column names and metadata)."""
    length = int.from_bytes(data[-8:-4], "little")
    return len(data) - 8 - length, len(data) - 8


@st.composite
def damages(draw, size: int, footer: tuple[int, int]) -> list[tuple[str, int, int]]:
    """Edits of a file of ``size`` bytes: truncations, bit flips and overwritten bytes, some aimed at the footer."""
    anywhere, in_footer = st.integers(0, size - 1), st.integers(*footer)
    edit = st.one_of(
        st.tuples(st.just("truncate"), st.integers(0, size - 1), st.just(0)),
        st.tuples(st.just("flip"), anywhere | in_footer, st.integers(0, 7)),
        st.tuples(st.just("set"), anywhere | in_footer, st.integers(0, 255)),
    )
    return draw(st.lists(edit, min_size=1, max_size=4))


def damaged(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    damaged_data = bytearray(data)
    for kind, position, value in edits:
        if kind == "truncate":
            del damaged_data[position:]
        elif position < len(damaged_data):
            damaged_data[position] = damaged_data[position] ^ (1 << value) if kind == "flip" else value
    return bytes(damaged_data)


def column_name_byte(data: bytes, name: bytes = b"direction_scores") -> int:
    """The offset of ``name``'s first byte in the footer's schema (its first mention there)."""
    return data.index(name, *footer_of(data))


def column_chunk_end(data: bytes, column: str = "module") -> int:
    """The offset just past ``column``'s data in the first row group: the tail of its dictionary indices."""
    chunk = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(COLUMN_NAMES.index(column))
    return (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size


def uncompressed(data: bytes) -> bytes:
    """The same records as another tool may write them: no compression, so damage reaches the values."""
    buffer = io.BytesIO()
    pq.write_table(pq.read_table(io.BytesIO(data)), buffer, compression="none")
    return buffer.getvalue()


def load_damaged(pristine: dict[str, bytes], name: str, edits: list[tuple[str, int, int]], categorical: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        run_dir.mkdir()
        for file_name, data in pristine.items():
            (run_dir / file_name).write_bytes(damaged(data, edits) if file_name == name else data)
        try:
            frame = load_runs(run_dir, categorical=categorical)
        except RecordError as error:
            assert str(run_dir / name) in str(error), f"{error} does not name {run_dir / name}"
        else:
            assert isinstance(frame, pd.DataFrame)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_damaged_records_raise_record_error_or_load(pristine_run, compression):
    pristine = dict(pristine_run)
    if compression == "none":
        pristine[RECORDS_FILE] = uncompressed(pristine[RECORDS_FILE])
    data = pristine[RECORDS_FILE]

    @SETTINGS
    @given(edits=damages(len(data), footer_of(data)), categorical=st.booleans())
    @example(edits=[("flip", column_name_byte(data), 7)], categorical=False)  # a column name no longer UTF-8
    @example(edits=[("set", column_chunk_end(data) - 1, 0xFF)], categorical=True)  # labels past their dictionary
    @example(edits=[("truncate", len(data) // 2, 0)], categorical=True)
    def check(edits, categorical):
        load_damaged(pristine, RECORDS_FILE, edits, categorical)

    check()


def test_damaged_run_description_raises_record_error_or_loads(pristine_run):
    size = len(pristine_run[RUN_META_FILE])

    @SETTINGS
    @given(edits=damages(size, (0, size - 1)))
    @example(edits=[("set", 0, 0xFF)])  # not UTF-8
    @example(edits=[("truncate", size // 2, 0)])
    def check(edits):
        load_damaged(pristine_run, RUN_META_FILE, edits, categorical=False)

    check()


# ---------------------------------------------------------------- the name parser

SUBLAYER_NAMES = st.sampled_from([(key, suffix) for key, suffixes in _SUFFIXES.items() for suffix in suffixes])
PREFIXES = st.lists(st.text(st.characters(blacklist_characters="\n."), min_size=1, max_size=8), max_size=4).map(
    lambda parts: "".join(f"{part}." for part in parts)
)
ROOTS = st.sampled_from(["qformer.", "Qformer.bert."])
ALL_LINEAR = re.compile(target_modules_regex("all_linear"))


@SETTINGS
@given(prefix=PREFIXES, root=ROOTS, layer=st.integers(0, 10**6), sublayer=SUBLAYER_NAMES)
def test_any_prefix_keeps_the_sublayer(prefix, root, layer, sublayer):
    (block, proj), suffix = sublayer
    assert parse_sublayer(f"{prefix}{root}encoder.layer.{layer}.{suffix}") == Sublayer(layer, block, proj)


@SETTINGS
@given(root=ROOTS, layer=st.integers(0, 99), sublayer=SUBLAYER_NAMES, tail=st.text(min_size=1, max_size=12))
def test_anything_after_a_sublayer_name_makes_it_no_sublayer(root, layer, sublayer, tail):
    """``...query.lora_A``, ``...dense_extra``: submodules and look-alikes are not the Linear itself."""
    _, suffix = sublayer
    assert parse_sublayer(f"{root}encoder.layer.{layer}.{suffix}{tail}") is None


LAYER_TEXTS = st.integers(0, 99).map(str) | st.text(max_size=3)
SUFFIX_TEXTS = SUBLAYER_NAMES.map(lambda sublayer: sublayer[1]) | st.text(max_size=30)


@SETTINGS
@given(prefix=PREFIXES | st.text(max_size=10), root=ROOTS, layer=LAYER_TEXTS, suffix=SUFFIX_TEXTS)
def test_parser_and_placement_regex_agree(prefix, root, layer, suffix):
    """What the recorder parses as a sublayer is exactly what ``add_adalora``'s all_linear regex selects."""
    name = f"{prefix}{root}encoder.layer.{layer}.{suffix}"
    assert (parse_sublayer(name) is not None) == bool(re.fullmatch(ALL_LINEAR, name))
