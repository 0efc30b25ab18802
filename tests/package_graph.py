"""The import graph between the repository's top-level packages, read from the source (nothing is imported).

    python tests/package_graph.py [REPO]

prints one line per edge, ``importer -> imported``, with how many imports make it and whether any of them
runs when the module loads (``module level``) or only inside a function (``deferred``). Imports under
``if TYPE_CHECKING:`` are left out. Both layouts are understood: the installed names
(``qformer_budget.analysis``) and the bare folder names of older checkouts (``analysis``).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT_PACKAGE = "qformer_budget"


def packages(repo: Path) -> list[str]:
    """The top-level folders that are Python packages."""
    return sorted(p.parent.name for p in repo.glob("*/__init__.py"))


def _imported(node: ast.AST, module_parts: list[str]) -> list[str]:
    """Absolute dotted names an import statement names (relative ones resolved against ``module_parts``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level == 0:
        return [node.module or ""]
    base = module_parts[: len(module_parts) - node.level]
    return [".".join(base + ([node.module] if node.module else []))]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module):
    """``(import node, at module level)`` for every import outside ``if TYPE_CHECKING:`` blocks."""

    def visit(node: ast.AST, module_level: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, module_level
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from visit(child, inner)

    yield from visit(tree, True)


def package_of(name: str, known: list[str]) -> str | None:
    parts = name.split(".")
    if parts[0] == ROOT_PACKAGE:
        return parts[1] if len(parts) > 1 and parts[1] in known else ROOT_PACKAGE
    return parts[0] if parts[0] in known else None


def edges(repo: Path) -> dict[tuple[str, str], Counter]:
    """``(importer, imported) -> Counter({"module level": n, "deferred": m})`` between top-level packages."""
    known = packages(repo)
    found: dict[tuple[str, str], Counter] = {}
    for package in known:
        for path in sorted((repo / package).rglob("*.py")):
            relative = path.relative_to(repo).with_suffix("").parts
            parts = [ROOT_PACKAGE, *relative] if package != ROOT_PACKAGE else list(relative)
            if parts[-1] == "__init__":
                parts = parts[:-1]
                parts.append("__init__")  # relative imports resolve against the package itself
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node, module_level in _imports(tree):
                for name in _imported(node, parts):
                    target = package_of(name, known)
                    if target is None or target == package:
                        continue
                    found.setdefault((package, target), Counter())["module level" if module_level else "deferred"] += 1
    return found


def main(argv: list[str]) -> int:
    repo = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    for (importer, imported), kinds in sorted(edges(repo).items()):
        how = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        print(f"{importer} -> {imported}  ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
