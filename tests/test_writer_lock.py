"""One writer per run folder, and a run whose writes fail closes as ``failed`` with nothing lost."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qformer_budget.analysis import load_runs
from qformer_budget.core.run_folder import RunFolderLocked
from qformer_budget.peft_hooks.sinks import ParquetSink

from fake_runs import fake_modules, fake_record

META = {"schema_version": 1, "benchmark": "bench", "seed": 0}
TESTS = Path(__file__).parent


def kept(n_modules: int) -> np.ndarray:
    return np.ones((n_modules, 4), dtype=bool)


def test_a_second_sink_on_a_live_run_folder_is_refused_naming_the_holder(tmp_path):
    """Before any part is flushed: the case where two writers' parts used to overwrite each other."""
    first, second = ParquetSink(tmp_path / "run"), ParquetSink(tmp_path / "run")
    first.start(META)
    with pytest.raises(RunFolderLocked, match=rf"run: another writer holds this run folder \(host .*, pid {os.getpid()}, since"):
        second.start(META)
    modules = fake_modules()
    for step in range(6):
        first.write(fake_record(step, kept(len(modules))))
    first.close()
    assert len(load_runs(tmp_path / "run")) == 6 * len(modules)  # every row of the one writer


def test_the_lock_names_another_process_and_dies_with_it(tmp_path):
    holder = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from qformer_budget.peft_hooks.sinks import ParquetSink
        sink = ParquetSink({str(tmp_path / 'run')!r})
        sink.start({META!r})
        print("holding", flush=True)
        sys.stdin.read()
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "holding"
        with pytest.raises(RunFolderLocked, match=rf"pid {process.pid}, since"):
            ParquetSink(tmp_path / "run").start(META)
    finally:
        process.kill()
        process.wait()
    resumed = ParquetSink(tmp_path / "run")  # the killed holder's lock went with it
    resumed.resume(META, global_step=0)
    resumed.write(fake_record(0, kept(len(fake_modules()))))
    resumed.close()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "finished"


def test_a_file_size_limit_marks_the_run_failed_and_keeps_what_was_written(tmp_path):
    """A real write failure (RLIMIT_FSIZE, as a quota would): run.json says failed and why, rows survive."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, time
        sys.path.insert(0, {str(TESTS)!r})
        import numpy as np
        from fake_runs import fake_modules, fake_record
        from qformer_budget.peft_hooks.sinks import ParquetSink
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        small, large = fake_modules(1), fake_modules(200)
        sink = ParquetSink({str(tmp_path / 'run')!r})
        sink.start({META!r})
        sink.write(fake_record(0, np.ones((len(small), 4), bool), modules=small))
        while sink._steps_written < 1:
            time.sleep(0.01)
        size = max(p.stat().st_size for p in sink.parts_dir.iterdir())
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * size, 2 * size))
        scores = np.random.default_rng(0).random((len(large), 4), dtype=np.float32)  # incompressible
        sink.write(fake_record(9, np.ones((len(large), 4), bool), modules=large, scores=scores))
        try:
            sink.close()
        except RuntimeError as exc:
            print("raised:", exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "raised: writing budget records under" in result.stdout, result.stderr
    assert "File too large" in result.stdout
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "failed" and "File too large" in meta["error"]
    records = load_runs(tmp_path / "run")
    assert records["step"].tolist() == [1] * len(fake_modules(1))  # the step written before the failure
