"""The catalogue of bad inputs: each fails with a clear error naming what is at fault, and loses nothing recorded.

Every case builds one bad input in a fresh folder and returns the action that must fail. For every
case the test checks the exception type, that the message names the file, field or module at
fault, and that no file that existed before the action was changed or removed; where the folder
holds readable records, ``load_runs`` reads the same rows afterwards. The file also checks that
run folders named by a config stay inside ``[sweep].out`` and that the package source never turns
data into code (pickle, ``torch.load`` without ``weights_only=True``, ``yaml.load``, eval/exec).

``python tests/test_bad_inputs.py --markdown`` prints the catalogue as a markdown table with the
messages the cases actually produce.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import BlipConfig, BlipForConditionalGeneration, Trainer

from qformer_budget.analysis import RecordError, load_runs
from qformer_budget.benchmarks import BenchmarkDataError, load_benchmark, write_synthetic
from qformer_budget.peft_hooks import AdaLoraBudgetCallback, AdaLoraSetup, add_adalora
from qformer_budget.peft_hooks import sinks as sinks_module
from qformer_budget.peft_hooks.sinks import ParquetSink
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.config import ConfigError, load_config
from qformer_budget.runner.tiny import build_tiny_instructblip

from fake_runs import fake_modules, fake_record, write_fake_run
from tiny_training import FixedOrder, tiny_adalora, tiny_setup, trainer_arguments

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("peft_hooks", "analysis", "runner", "benchmarks", "qformer_budget", "figures", "perf")

Action = Callable[[], object]


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``arrange(folder)`` builds it under ``folder`` and returns the action that must fail."""

    id: str
    bad_input: str
    arrange: Callable[[Path], Action]
    error: type[Exception]
    message: str  # regex; names the file, field or module at fault
    holds_records: bool = False  # ``folder / "run"`` holds readable records that must survive the action
    closes_run: bool = False  # the action closes the live run as failed: its files change, its rows stay


# ---------------------------------------------------------------- models and AdaLoRA setups


def tiny_blip_without_qformer() -> BlipForConditionalGeneration:
    """BLIP-1: a BERT text decoder with cross-attention, named like a Q-Former but not one."""
    widths = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    vision = widths | dict(image_size=16, patch_size=8)
    tokens = dict(vocab_size=50, bos_token_id=1, sep_token_id=2, pad_token_id=0, eos_token_id=2)
    text = widths | tokens | dict(encoder_hidden_size=16)
    return BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text))


def model_without_qformer(folder: Path) -> Action:
    model = tiny_blip_without_qformer()
    return lambda: add_adalora(model, AdaLoraSetup(total_step=20))


def regex_matching_nothing(folder: Path) -> Action:
    model, _ = build_tiny_instructblip(seed=0)
    setup = AdaLoraSetup(total_step=20, target_regex=r"qformer\.encoder\.layer\.\d+\.attn\.q")
    return lambda: add_adalora(model, setup)


def regex_outside_grammar(folder: Path) -> Action:
    model, _ = build_tiny_instructblip(seed=0)
    model.value_head = torch.nn.Linear(4, 1)  # a head of the user's own, which the grammar cannot name
    return lambda: add_adalora(model, AdaLoraSetup(total_step=20, target_regex=r".*\.(query|q)|value_head"))


def setup_with(**settings) -> Callable[[Path], Action]:
    return lambda folder: lambda: AdaLoraSetup(**settings)


def tiny_trainer(output_dir: Path, total_step: int, trainer_steps: int) -> Trainer:
    """A Trainer of ``trainer_steps`` steps recording into ``output_dir``, on a tiny model set up for ``total_step``."""
    model, processor = tiny_adalora(tiny_setup(total_step=total_step), seed=0)
    return Trainer(
        model=model, args=trainer_arguments(output_dir, tiny_setup(total_step=trainer_steps)),
        train_dataset=FixedOrder(trainer_steps, 0), data_collator=InstructBlipCollator(processor),
        callbacks=[AdaLoraBudgetCallback()],
    )


def trainer_with_other_step_count(folder: Path) -> Action:
    return tiny_trainer(folder / "out", total_step=40, trainer_steps=30).train


# ---------------------------------------------------------------- run folders


def kept_directions(rank: int, init_r: int = 4) -> np.ndarray:
    kept = np.zeros((len(fake_modules()), init_r), dtype=bool)
    kept[:, :rank] = True
    return kept


def finished_run(run_dir: Path) -> Path:
    """A closed run folder: ``run.json`` and ``records.parquet`` with two recorded steps."""
    write_fake_run(run_dir, [fake_record(0, kept_directions(4)), fake_record(9, kept_directions(2))])
    return run_dir


def interrupted_run(run_dir: Path) -> Path:
    """The folder a killed run leaves: ``run.json`` saying running and one part file per flushed step."""
    (run_dir / "records").mkdir(parents=True)
    meta = {"schema_version": 1, "benchmark": "bench", "seed": 0, "status": "running"}
    (run_dir / "run.json").write_text(json.dumps(meta))
    for part, step in enumerate((0, 9)):
        part_file = run_dir / "records" / f"part-{part:06d}.parquet"
        pq.write_table(fake_record(step, kept_directions(4)).to_table(), part_file)
    return run_dir


def trainer_into_finished_run(folder: Path) -> Action:
    return tiny_trainer(finished_run(folder / "run"), total_step=40, trainer_steps=40).train


def second_writer_on_interrupted_run(folder: Path) -> Action:
    sink = ParquetSink(interrupted_run(folder / "run"))
    return lambda: sink.start({"schema_version": 1, "benchmark": "bench", "seed": 0})


def wait_for_part_file(run_dir: Path, seconds: float = 10.0) -> None:
    """Wait until the sink's writer thread has put a part file in place."""
    deadline = time.monotonic() + seconds
    while not any((run_dir / "records").glob("part-*.parquet")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no part file in {run_dir / 'records'} after {seconds} s")
        time.sleep(0.01)


def sink_failing_after_one_step(folder: Path) -> Action:
    """A live sink whose first step is on disk; writing the next one fails as on a full disk."""
    sink = ParquetSink(folder / "run")
    sink.start({"schema_version": 1, "benchmark": "bench", "seed": 0})
    sink.write(fake_record(0, kept_directions(4)))
    wait_for_part_file(folder / "run")

    def write_on_full_disk():
        disk_full = OSError(28, "No space left on device")
        with mock.patch.object(sinks_module, "write_parquet_atomic", side_effect=disk_full):
            sink.write(fake_record(9, kept_directions(2)))
            sink.close("finished")

    return write_on_full_disk


def damaged_run(damage: Callable[[Path], None], run: Callable[[Path], Path] = finished_run) -> Callable[[Path], Action]:
    """A run folder (beside a healthy one) damaged by ``damage(run_dir)``; the action loads both."""

    def arrange(folder: Path) -> Action:
        finished_run(folder / "runs" / "healthy")
        damage(run(folder / "runs" / "damaged"))
        return lambda: load_runs(folder / "runs")

    return arrange


def rewrite_records(edit: Callable[[pa.Table], pa.Table]) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        path = run_dir / "records.parquet"
        pq.write_table(edit(pq.read_table(path)), path)

    return damage


def write_file(relative: str, content: bytes | str) -> Callable[[Path], None]:
    def damage(run_dir: Path) -> None:
        path = run_dir / relative
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return damage


def with_column(name: str, values: pa.Array) -> Callable[[pa.Table], pa.Table]:
    return lambda table: table.set_column(table.schema.get_field_index(name), name, values)


def as_schema_version_3(table: pa.Table) -> pa.Table:
    """Records as a newer qformer-budget would write them: version 3 in the column and the file metadata."""
    table = with_column("schema_version", pa.array(np.full(table.num_rows, 3, dtype=np.int16)))(table)
    return table.replace_schema_metadata({"qformer_budget.schema_version": "3"})


def truncated_run_json(run_dir: Path) -> None:
    meta = run_dir / "run.json"
    meta.write_bytes(meta.read_bytes()[:25])


RANDOM_BYTES = np.random.default_rng(0).bytes(256)


# ---------------------------------------------------------------- config files

GOOD_SWEEP = """
[sweep]
out = {out}
benchmarks = ["iconqa"]
[training]
batch_size = 4
[[methods]]
name = "adalora"
placement = "all_linear"
"""


def config_file(text: str) -> Callable[[Path], Action]:
    """A sweep config file holding ``text`` (``{out}`` becomes the folder's ``runs``), loaded."""

    def arrange(folder: Path) -> Action:
        path = folder / "sweep.toml"
        path.write_text(text.replace("{out}", json.dumps(str(folder / "runs"))))
        return lambda: load_config(path)

    return arrange


# ---------------------------------------------------------------- benchmark data


def damaged_benchmark(name: str, damage: Callable[[Path], None]) -> Callable[[Path], Action]:
    """Synthetic ``name`` data in the official format, damaged by ``damage(root)``, then loaded."""

    def arrange(folder: Path) -> Action:
        root = write_synthetic(name, folder / name, sizes={"train": 3}, image_size=8)
        damage(root)
        return lambda: load_benchmark(name, root, "train")

    return arrange


def edit_json(relative: str, edit: Callable[[object], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / relative
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    return damage


def first_scienceqa_image_pid(root: Path) -> str:
    problems = json.loads((root / "problems.json").read_text())
    return next(pid for pid in json.loads((root / "pid_splits.json").read_text())["train"] if problems[pid]["image"])


def remove_scienceqa_image(root: Path) -> None:
    pid = first_scienceqa_image_pid(root)
    (root / "images" / "train" / pid / "image.png").unlink()


def remove_scienceqa_question(root: Path) -> None:
    pid = first_scienceqa_image_pid(root)
    edit_json("problems.json", lambda problems: problems[pid].pop("question"))(root)


def truncate(relative: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / relative
        path.write_bytes(path.read_bytes()[:40])

    return damage


def remove(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def vizwiz_with_corrupt_image(folder: Path) -> Action:
    root = write_synthetic("vizwiz", folder / "vizwiz", sizes={"train": 3}, image_size=8)
    (root / "train" / "VizWiz_train_00000000.jpg").write_bytes(RANDOM_BYTES)
    examples = load_benchmark("vizwiz", root, "train")
    return examples[0].load_image


# ---------------------------------------------------------------- the catalogue

CASES: tuple[BadInput, ...] = (
    BadInput(
        "model-without-qformer", "BLIP-1 (BERT text decoder with cross-attention, no Q-Former) given to add_adalora",
        model_without_qformer, ValueError, r"^BlipForConditionalGeneration has no Q-Former",
    ),
    BadInput(
        "regex-matches-nothing", "target_regex that matches no Linear layer", regex_matching_nothing, ValueError,
        r"target regex '.*attn\\\\.q' matches no Linear layer of InstructBlipForConditionalGeneration",
    ),
    BadInput(
        "regex-outside-grammar", "target_regex that also matches a head of the user's own, outside the grammar",
        regex_outside_grammar, ValueError,
        r"matches 1 Linear layers the grammar cannot name \(first: 'value_head'\)",
    ),
    BadInput(
        "schedule-no-budgeting-phase", "tinit >= total_step - tfinal (tinit=45, tfinal=5, total_step=50)",
        setup_with(total_step=50, tinit=45, tfinal=5), ValueError,
        r"impossible AdaLoRA schedule: tinit \(45\) must be < total_step - tfinal \(50 - 5 = 45\)",
    ),
    BadInput(
        "schedule-tfinal-0", "tfinal = 0 (peft never reaches its final mask step)",
        setup_with(total_step=50, tfinal=0), ValueError, r"^tfinal must be >= 1, got 0",
    ),
    BadInput(
        "schedule-target-above-init", "target_r > init_r (8 > 4)",
        setup_with(total_step=50, init_r=4, target_r=8), ValueError, r"target_r=8, init_r=4",
    ),
    BadInput(
        "schedule-beta-out-of-range", "beta2 = 1.5", setup_with(total_step=50, beta2=1.5), ValueError,
        r"^beta2 must be in \(0, 1\), got 1.5",
    ),
    BadInput(
        "total-step-vs-trainer", "AdaLoRA total_step 40, Trainer max_steps 30", trainer_with_other_step_count,
        ValueError, r"AdaLoRA total_step \(40\) differs from the Trainer's number of optimizer steps \(30\)",
    ),
    BadInput(
        "train-into-finished-run", "Trainer + AdaLoraBudgetCallback with output_dir holding a finished run's records",
        trainer_into_finished_run, FileExistsError, r"/run already holds budget records", holds_records=True,
    ),
    BadInput(
        "second-writer-on-live-run", "a second writer on a run folder whose part files a killed run left",
        second_writer_on_interrupted_run, FileExistsError, r"/run already holds budget records", holds_records=True,
    ),
    BadInput(
        "sink-disk-full", "the Parquet sink cannot write its second step (disk full)", sink_failing_after_one_step,
        RuntimeError, r"writing budget records under .*/run/records failed: .*No space left on device.*"
        r"the 1 steps written before are intact", holds_records=True, closes_run=True,
    ),
    BadInput(
        "records-csv-as-part", "a CSV file named records/part-00000.parquet among a live run's parts (not its newest)",
        damaged_run(write_file("records/part-00000.parquet", "step,rank\n1,4\n"), run=interrupted_run), RecordError,
        r"damaged/records/part-00000\.parquet: not a readable Parquet record file",
    ),
    BadInput(
        "records-random-bytes", "records.parquet holding 256 random bytes",
        damaged_run(write_file("records.parquet", RANDOM_BYTES)), RecordError,
        r"damaged/records\.parquet: not a readable Parquet record file",
    ),
    BadInput(
        "run-json-truncated", "run.json cut off mid-object", damaged_run(truncated_run_json), RecordError,
        r"damaged/run\.json: not a readable run description",
    ),
    BadInput(
        "run-json-foreign", "run.json from another tool (no schema_version)",
        damaged_run(write_file("run.json", '{"model": "llava", "epochs": 3}')), RecordError,
        r"damaged/run\.json: missing field 'schema_version'",
    ),
    BadInput(
        "run-json-newer-schema", "run.json with schema_version 3",
        damaged_run(write_file("run.json", '{"schema_version": 3, "status": "finished"}')), RecordError,
        r"damaged/run\.json: schema_version 3, this qformer-budget reads versions 1 and 2",
    ),
    BadInput(
        "records-missing-column", "records.parquet without the rank column",
        damaged_run(rewrite_records(lambda table: table.drop_columns(["rank"]))), RecordError,
        r"damaged/records\.parquet: missing record columns \['rank'\]",
    ),
    BadInput(
        "records-wrong-type", "records.parquet whose rank column holds strings",
        damaged_run(rewrite_records(lambda table: with_column("rank", pa.array(["four"] * table.num_rows))(table))),
        RecordError, r"damaged/records\.parquet: record columns have the wrong types",
    ),
    BadInput(
        "records-newer-schema", "records.parquet written with schema_version 3 (run.json says 2)",
        damaged_run(rewrite_records(as_schema_version_3)), RecordError,
        r"damaged/records\.parquet: schema_version 3, this qformer-budget reads versions 1 and 2",
    ),
    BadInput(
        "config-unknown-key", "sweep config with [training] learning_rat (typo)",
        config_file(GOOD_SWEEP.replace("batch_size = 4", "learning_rat = 0.1")), ConfigError,
        r"sweep\.toml \[training\]: unknown key\(s\) \['learning_rat'\]",
    ),
    BadInput(
        "config-wrong-type", "sweep config with batch_size = \"4\"",
        config_file(GOOD_SWEEP.replace("batch_size = 4", 'batch_size = "4"')), ConfigError,
        r"sweep\.toml \[training\]\.batch_size: expected int, got str '4'",
    ),
    BadInput(
        "config-bad-toml", "sweep config with an unclosed table header",
        config_file(GOOD_SWEEP.replace("[training]", "[training")), ConfigError, r"sweep\.toml: not valid TOML",
    ),
    BadInput(
        "config-benchmark-escapes", "sweep config with benchmarks = [\"../../etc\"]",
        config_file(GOOD_SWEEP.replace('"iconqa"', '"../../etc"')), ConfigError,
        r"sweep\.toml \[sweep\]: benchmarks must be a non-empty list from .*got \['\.\./\.\./etc'\]",
    ),
    BadInput(
        "config-placement-escapes", "sweep config with placement = \"../../../../tmp/elsewhere\"",
        config_file(GOOD_SWEEP.replace('"all_linear"', '"../../../../tmp/elsewhere"')), ConfigError,
        r"sweep\.toml \[\[methods\]\]\[0\]: unknown placement '\.\./\.\./\.\./\.\./tmp/elsewhere'; known placements",
    ),
    BadInput(
        "config-placement-absolute", "sweep config with placement = \"/etc\"",
        config_file(GOOD_SWEEP.replace('"all_linear"', '"/etc"')), ConfigError,
        r"sweep\.toml \[\[methods\]\]\[0\]: unknown placement '/etc'; known placements",
    ),
    BadInput(
        "scienceqa-missing-image", "ScienceQA problem whose image file is gone",
        damaged_benchmark("scienceqa", remove_scienceqa_image), BenchmarkDataError,
        r"problems\.json, pid \d+: image file not found: .*images/train/\d+/image\.png",
    ),
    BadInput(
        "scienceqa-missing-field", "ScienceQA problem without its question",
        damaged_benchmark("scienceqa", remove_scienceqa_question), BenchmarkDataError,
        r"problems\.json, pid \d+: missing field 'question'",
    ),
    BadInput(
        "iconqa-missing-image", "IconQA problem whose image file is gone",
        damaged_benchmark("iconqa", remove("iconqa/train/choose_txt/1/image.png")), BenchmarkDataError,
        r"problems\.json, pid 1: image file not found: .*iconqa/train/choose_txt/1/image\.png",
    ),
    BadInput(
        "iconqa-wrong-type", "IconQA problem whose answer is the string \"0\"",
        damaged_benchmark("iconqa", edit_json("problems.json", lambda problems: problems["1"].update(answer="0"))),
        BenchmarkDataError, r"problems\.json, pid 1: field 'answer' should be int, got str '0'",
    ),
    BadInput(
        "flickr30k-missing-image", "Flickr30k caption whose image file is gone",
        damaged_benchmark("flickr30k", remove("flickr30k-images/100000001.jpg")), BenchmarkDataError,
        r"flickr30k_train\.json, entry 0 \(image flickr30k-images/100000001\.jpg\): image file not found",
    ),
    BadInput(
        "flickr30k-bad-json", "Flickr30k annotation file cut off after 40 bytes",
        damaged_benchmark("flickr30k", truncate("annotations/flickr30k_train.json")), BenchmarkDataError,
        r"annotations/flickr30k_train\.json: not valid JSON",
    ),
    BadInput(
        "vizwiz-missing-image", "VizWiz question whose image file is gone",
        damaged_benchmark("vizwiz", remove("train/VizWiz_train_00000001.jpg")), BenchmarkDataError,
        r"annotations/train\.json, entry 1 \(image VizWiz_train_00000001\.jpg\): image file not found",
    ),
    BadInput(
        "vizwiz-wrong-type", "VizWiz question whose answers are one string instead of a list",
        damaged_benchmark("vizwiz", edit_json("annotations/train.json", lambda rows: rows[2].update(answers="red"))),
        BenchmarkDataError, r"annotations/train\.json, entry 2 \(image VizWiz_train_00000002\.jpg\): "
        r"field 'answers' should be list, got str 'red'",
    ),
    BadInput(
        "vizwiz-corrupt-image", "VizWiz image file holding random bytes", vizwiz_with_corrupt_image,
        BenchmarkDataError,
        r"vizwiz example VizWiz_train_00000000: cannot read image file .*train/VizWiz_train_00000000\.jpg",
    ),
)


# ---------------------------------------------------------------- checks


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder``, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_clearly_and_loses_nothing(case: BadInput, tmp_path: Path):
    action = case.arrange(tmp_path)
    before = file_hashes(tmp_path)
    records_before = load_runs(tmp_path / "run") if case.holds_records else None
    with pytest.raises(case.error, match=case.message):
        action()
    after = file_hashes(tmp_path)
    if case.closes_run:
        records_after = load_runs(tmp_path / "run")
        assert set(records_after["status"]) == {"failed"}
        pd.testing.assert_frame_equal(records_after.drop(columns="status"), records_before.drop(columns="status"))
        return
    assert {path: after.get(path) for path in before} == before
    if case.holds_records:
        assert len(records_before) > 0
        pd.testing.assert_frame_equal(load_runs(tmp_path / "run"), records_before)


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


def test_foreign_files_beside_records_are_left_alone(tmp_path: Path):
    """Files that are not record files by name (notes, plots) are not read, so they cannot break loading."""
    run_dir = finished_run(tmp_path / "run")
    (run_dir / "notes.csv").write_text("step,comment\n1,fine\n")
    (run_dir / "records").mkdir()
    (run_dir / "records" / "summary.csv").write_bytes(RANDOM_BYTES)
    assert load_runs(run_dir)["step"].tolist() == [1] * len(fake_modules()) + [10] * len(fake_modules())


# ---------------------------------------------------------------- output paths stay inside [sweep].out


def test_run_folders_outside_out_are_refused_even_past_the_field_checks(tmp_path: Path):
    """The last line of defence: a method whose tag escapes (here forced past the method settings' own check)."""
    config = config_file(GOOD_SWEEP)(tmp_path)()
    object.__setattr__(config.methods[0], "placement", "x/../../../elsewhere")
    message = r"sweep\.toml: the run folder of benchmark 'iconqa', .* outside \[sweep\]\.out"
    with pytest.raises(ConfigError, match=message):
        config.runs()


def test_input_paths_may_point_anywhere(tmp_path: Path):
    """Only output paths are confined: data and model folders are the user's to choose."""
    text = GOOD_SWEEP + '[data]\nroot = "../../../data"\n[model]\npreset = "tiny"\npath = "/models/tiny"\n'
    run = config_file(text)(tmp_path)().runs()[0]
    assert run.run_dir.is_relative_to(tmp_path / "runs")
    assert run.data.root == str(Path("../../../data").resolve()) and run.model.path == "/models/tiny"


# ---------------------------------------------------------------- records and configs are data, never code


CODE_LOADING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def unsafe_loads(source: str) -> list[str]:
    """What in ``source`` could run code while reading a file: pickle-like modules, eval/exec, unsafe loaders."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"import {m}" for m in modules if m.split(".")[0] in CODE_LOADING_MODULES]
        if not isinstance(node, ast.Call):
            continue
        is_true = {k.arg: isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords}
        function = ast.unparse(node.func)
        if function in ("eval", "exec"):
            found.append(f"{function}()")
        elif function == "torch.load" and not is_true.get("weights_only"):
            found.append("torch.load() without weights_only=True")
        elif function.startswith("yaml.") and function != "yaml.safe_load":
            found.append(f"{function}()")
        elif function.endswith(("read_pickle", "to_pickle")):
            found.append(f"{function}()")
        elif is_true.get("allow_pickle"):
            found.append(f"{function}(allow_pickle=True)")
    return found


def test_the_unsafe_load_check_finds_each_kind():
    source = (
        "import pickle\nfrom joblib import load\nimport torch, yaml, numpy as np, pandas as pd\n"
        "torch.load('a.pt')\ntorch.load('b.pt', weights_only=False)\ntorch.load('c.pt', weights_only=True)\n"
        "yaml.load(text)\nyaml.safe_load(text)\neval('1')\nexec('x = 1')\nmodel.eval()\n"
        "np.load('d.npy', allow_pickle=True)\npd.read_pickle('e.pkl')\n"
    )
    assert unsafe_loads(source) == [
        "import pickle", "import joblib", "torch.load() without weights_only=True",
        "torch.load() without weights_only=True", "yaml.load()", "eval()", "exec()",
        "np.load(allow_pickle=True)", "pd.read_pickle()",
    ]


def test_package_source_reads_data_never_code():
    offenders = {
        str(path.relative_to(REPO)): found
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if (found := unsafe_loads(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


# ---------------------------------------------------------------- the catalogue as markdown


def observed_rows(folder: Path, cases: tuple[BadInput, ...] = CASES) -> list[tuple[str, str, str, str]]:
    """(case id, bad input, error type, message) as each case actually fails, paths shown below ``folder``."""
    rows = []
    for case in cases:
        case_folder = folder / case.id
        case_folder.mkdir(parents=True)
        try:
            case.arrange(case_folder)()
        except Exception as error:
            message = str(error).replace(str(case_folder), "…")
            rows.append((case.id, case.bad_input, type(error).__name__, message))
        else:
            rows.append((case.id, case.bad_input, "no error", ""))
    return rows


def markdown_table(rows: list[tuple[str, str, str, str]]) -> str:
    """Rows as a markdown table: case id | bad input | error type | message."""

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    lines = ["| case id | bad input | error type | message |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(cell(text) for text in row)} |" for row in rows]
    return "\n".join(lines) + "\n"


def test_catalogue_renders(tmp_path: Path):
    """Every observed row comes back cell for cell from the written table, pipes and line breaks included.

    Only the cases that need no model and no benchmark data are run, so that it stays fast.
    """
    cases = tuple(case for case in CASES if case.id.startswith(("run-json-", "records-", "config-")))
    rows = observed_rows(tmp_path / "cases", cases) + [("awkward", "a | b", "ValueError", "line one\nline | two")]
    table = tmp_path / "bad_inputs.md"
    table.write_text(markdown_table(rows))
    header, rule, *lines = table.read_text().splitlines()
    assert header == "| case id | bad input | error type | message |" and rule == "| --- | --- | --- | --- |"
    read_back = [
        tuple(cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]) for line in lines
    ]
    assert read_back == [(case_id, bad, error, " ".join(message.split())) for case_id, bad, error, message in rows]
    assert [row[0] for row in rows[:-1]] == [case.id for case in cases]
    assert "…/runs/damaged/run.json" in dict((row[0], row[3]) for row in rows)["run-json-truncated"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the catalogue with the actual messages")
    if not parser.parse_args().markdown:
        parser.print_help()
        sys.exit(2)
    with tempfile.TemporaryDirectory() as folder:
        print(markdown_table(observed_rows(Path(folder))), end="")
