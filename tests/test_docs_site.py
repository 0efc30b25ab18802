"""The documentation site builds with mkdocs in strict mode (a warning fails it), with the API reference from the
docstrings, every command's --help, the record schema from the code and the notebook executed with its figures."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_docs_site_builds_strict_with_every_generated_page(quick_demo, tmp_path):
    site = tmp_path / "site"
    shutil.rmtree(REPO / "build" / "api-src", ignore_errors=True)  # as on a fresh clone: the build lays it out
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mkdocs")), "build", "--strict", "-d", str(site)], cwd=REPO,
        env=dict(os.environ, QFORMER_BUDGET_RUNS=str(quick_demo)), capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    page = {name: (site / name / "index.html").read_text(encoding="utf-8")
            for name in ("api", "cli", "schema", "real-data", "explore_budget")}
    for name in ("BudgetRecorder", "load_runs", "estimate_peak_memory", "AdaLoraSchedule"):
        assert f'id="qformer_budget.' in page["api"] and name in page["api"], name
    for command in ("demo", "run", "rehearse", "status", "params", "figures", "report"):
        assert f"qformer-budget {command}" in page["cli"], command
    assert "--dry-run" in page["cli"] and "direction_kept" in page["schema"] and "Salesforce/" in page["real-data"]
    assert page["explore_budget"].count("data:image/png") >= 5  # the notebook's figures, executed at build time
    assert page["explore_budget"].count('class="qb-plot"') == 4 * 2 + 1  # and its explorer
    pages = [path.read_text(encoding="utf-8") for path in site.rglob("*.html")]
    remote = {m for text in pages for m in re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)}
    assert remote == set()  # the site works offline: no script or style sheet from elsewhere
    assert "Quick start" in (site / "index.html").read_text(encoding="utf-8")  # the README is the guide
