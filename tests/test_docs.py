import re
from pathlib import Path

from qformer_budget.core.schema import COLUMNS

README = Path(__file__).parents[1] / "README.md"
REPO = README.parent


def test_readme_schema_table_matches_the_schema():
    table = README.read_text().split("| column | type | meaning |")[1].split("\n\n")[0]
    rows = re.findall(r"^\| `(\w+)` \| [^|]+ \| (.+) \|$", table, flags=re.MULTILINE)
    documented = {name: meaning for name, meaning in rows}
    assert list(documented) == [name for name, _, _ in COLUMNS]
    for name, _, meaning in COLUMNS:
        plain = documented[name].replace("`", "").replace("\\<", "<").replace("\\>", ">")
        assert plain.startswith(meaning.replace("`", "")[:30]), name


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = README.read_text().split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


def test_every_benchmark_script_is_documented_and_every_documented_one_exists():
    root = README.parent
    helpers = {"models.py", "common.py"}  # what the benchmarks share, not benchmarks
    scripts = {p.name for p in (root / "perf").glob("*.py")} - helpers
    for doc in (README, root / "docs" / "performance.md"):
        mentioned = set(re.findall(r"perf/(\w+\.py)", doc.read_text())) - helpers
        assert mentioned <= scripts, (doc.name, mentioned - scripts)
        assert scripts <= mentioned, (doc.name, scripts - mentioned)


def test_every_code_block_is_run_or_says_why_not():
    marker = re.compile(r"<!-- (quick start: runs as written in tests/test_quickstart\.py|run by .+|not run.*:.+) -->")
    unmarked = []
    for document in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines = document.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if re.match(r"```[a-z]+$", line) and not (number and marker.fullmatch(lines[number - 1])):
                unmarked.append(f"{document.name}:{number + 1}")
    assert not unmarked
