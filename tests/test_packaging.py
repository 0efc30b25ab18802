"""One import name, and layers whose imports point one way.

The repository's top-level folders install as ``qformer_budget.<folder>``; nothing else reaches
site-packages, so a lab's own ``analysis.py`` or ``runner/`` shadows nothing of ours and ours nothing of theirs.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from package_graph import edges, packages

REPO = Path(__file__).resolve().parents[1]
FOLDERS = [name for name in packages(REPO) if name != "qformer_budget"]

# What each package may import (module level); the core imports none of them.
ALLOWED = {
    "core": set(),
    "analysis": {"core"},
    "benchmarks": {"core"},
    "peft_hooks": {"core"},
    "vl_methods": {"core", "peft_hooks"},
    "runner": {"core", "peft_hooks", "benchmarks", "vl_methods"},
    "plotting": {"core", "analysis"},
}
# Deferred imports allowed on top: the live-view sinks load the plotting leaf when they draw.
ALLOWED_DEFERRED = {"peft_hooks": {"plotting"}}


def test_every_folder_installs_under_the_one_name():
    assert set(FOLDERS) == set(ALLOWED)
    for folder in FOLDERS:
        spec = importlib.util.find_spec(f"qformer_budget.{folder}")
        assert spec is not None and Path(spec.origin).parent == REPO / folder


@pytest.mark.parametrize("folder", [*FOLDERS, "figures"])
def test_folder_names_are_not_importable_on_their_own(folder):
    """The tests run on the installed names only: a bare ``import analysis`` cannot find the repository's."""
    spec = importlib.util.find_spec(folder)
    assert spec is None or not Path(spec.origin or "").is_relative_to(REPO), spec


def test_no_source_imports_a_bare_folder_name():
    """Python files, the notebook, code in strings and the docs' examples alike."""
    folders = "|".join(FOLDERS)
    bare = re.compile(
        rf"""(?:^|["';])\s*(?:from\s+(?:{folders})\b[\w.]*\s+import|import\s+(?:[\w.]+\s*,\s*)*(?:{folders})\b)""",
        re.MULTILINE,
    )
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.ipynb"], cwd=REPO, capture_output=True, text=True, check=True
    )
    sources = [REPO / name for name in tracked.stdout.split() if name != "tests/test_packaging.py"]  # its lab script
    offenders = [f"{p.relative_to(REPO)}: {m.group(0).strip()}" for p in sources for m in bare.finditer(p.read_text())]
    assert not offenders
    assert bare.search('code = "import sys, analysis.replay"') and not bare.search("from qformer_budget.analysis import x")


def test_imports_between_packages_point_one_way():
    graph = edges(REPO)
    wrong = []
    for (importer, imported), kinds in graph.items():
        if importer == "qformer_budget":  # the command line and the demo sit on top of everything
            continue
        allowed = ALLOWED[importer] | (ALLOWED_DEFERRED.get(importer, set()) if not kinds["module level"] else set())
        if imported not in allowed:
            wrong.append(f"{importer} -> {imported} {dict(kinds)}")
    assert not wrong
    assert not [e for e, kinds in graph.items() if e[1] == "plotting" and kinds["module level"]]  # a leaf


def _modules_added(imports: str, then: str) -> set[str]:
    code = textwrap.dedent(f"""
        import sys
        {imports}
        before = set(sys.modules)
        import {then}
        print(" ".join(sorted(set(sys.modules) - before)))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def _tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules} | {".".join(m.split(".")[:2]) for m in modules if m.startswith("qformer_budget.")}


def test_the_training_side_loads_no_plotting_statistics_or_read_side():
    """Nothing of matplotlib at all; of scipy only what peft's own import of transformers loads (transformers
    imports scipy.optimize for its object-detection losses whenever scipy is installed)."""
    alone = _tops(_modules_added("", "qformer_budget.peft_hooks"))
    assert not alone & {"matplotlib", "seaborn", "qformer_budget.analysis", "qformer_budget.plotting"}
    added = _tops(_modules_added("import torch, peft, transformers, transformers.trainer_callback", "qformer_budget.peft_hooks"))
    assert not added & {"matplotlib", "scipy", "seaborn", "qformer_budget.analysis", "qformer_budget.plotting"}
    assert "qformer_budget.peft_hooks" in added


def test_the_read_side_and_the_core_load_no_training_stack():
    for module in ("qformer_budget.analysis", "qformer_budget.core.run_folder", "qformer_budget.core.adalora_rules"):
        added = _tops(_modules_added("", module))
        assert not added & {"torch", "peft", "transformers", "matplotlib", "qformer_budget.peft_hooks"}, module


def test_the_wheel_holds_the_single_top_level_name(tmp_path):
    """Built from the tracked files alone (a copy, so that the build leaves nothing in the repository)."""
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"qformer_budget", "qformer_budget-0.1.0.dist-info"}
    for folder in FOLDERS:
        assert f"qformer_budget/{folder}/__init__.py" in names
    assert "qformer_budget/runner/configs/demo.toml" in names
    assert "qformer_budget/runner/assets/tiny-instructblip/model.safetensors" in names
    assert "qformer_budget/py.typed" in names and "qformer_budget-0.1.0.dist-info/licenses/LICENSE" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "qformer_budget"]
    code = (
        "import qformer_budget.analysis, qformer_budget.runner.config as c, qformer_budget.plotting;"
        "print(qformer_budget.analysis.__file__); print(c.load_config(c.Path(qformer_budget.__file__).parent"
        " / 'runner' / 'configs' / 'demo.toml').methods[0].tag)"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(target)},
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(target / "qformer_budget" / "analysis" / "__init__.py"), "adalora-all_linear-r12to4"]


def test_a_labs_own_analysis_and_runner_shadow_nothing(tmp_path):
    (tmp_path / "analysis.py").write_text("LAB = 'the lab analysis'\n")
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "__init__.py").write_text("LAB = 'the lab runner'\n")
    script = tmp_path / "study.py"
    script.write_text(textwrap.dedent("""
        import analysis, runner
        from qformer_budget.analysis import load_runs
        from qformer_budget.peft_hooks import BudgetRecorder
        from qformer_budget.runner.config import load_config
        import qformer_budget.analysis, qformer_budget.runner
        assert analysis.LAB == "the lab analysis" and runner.LAB == "the lab runner"
        assert load_runs.__module__ == "qformer_budget.analysis.load"
        assert BudgetRecorder.__module__ == "qformer_budget.peft_hooks.recorder"
        assert load_config.__module__ == "qformer_budget.runner.config"
        assert qformer_budget.analysis is not analysis and qformer_budget.runner is not runner
        print("nothing shadowed")
    """))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "nothing shadowed"


def test_the_citation_file_names_the_toolkit_and_the_study():
    import yaml

    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["license"] == "Apache-2.0" and "license = Apache-2.0" in (REPO / "setup.cfg").read_text()
    (study,) = citation["references"]
    assert study["url"] == "https://arxiv.org/abs/2410.09489" and study["authors"][0]["family-names"] == "Kim"
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
