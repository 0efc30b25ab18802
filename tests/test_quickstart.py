"""The README's quick start, run as written in a fresh folder outside the repository through the installed
package only."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from qformer_budget.analysis import load_runs

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- quick start: runs as written in tests/test_quickstart.py -->"


def quick_start_code() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(re.escape(MARKER) + r"\n```python\n(.*?)```", text, re.DOTALL)
    assert match, f"{README} has no python block after {MARKER}"
    return match.group(1)


def test_the_quick_start_runs_as_written_outside_the_repository(tmp_path):
    code = quick_start_code()
    assert len(code.splitlines()) <= 30  # fits one screen
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    records = load_runs(tmp_path / "runs" / "iconqa" / "seed0")
    assert records["status"].unique().tolist() == ["finished"]
    final = records[records["step"] == records["step"].max()]
    assert len(final) == 120 and final["rank"].sum() == 4 * 120  # the budget reached target_r x modules
    pixels = np.asarray(Image.open(tmp_path / "rank_heatmap.png").convert("L"))
    assert pixels.std() > 20  # a drawn heatmap, not a blank canvas
