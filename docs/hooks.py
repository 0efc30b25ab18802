"""mkdocs hooks: pages whose content comes from the code, so that they cannot drift from it.

At startup, before mkdocstrings looks for it, ``build/api-src/qformer_budget`` is laid out as the installed
package is, from the ``package_dir`` of ``setup.cfg`` (symlinks to the repository's folders), for the API
reference to read: griffe cannot follow the editable install's mapped folders, and drops a search path that
does not exist yet when it starts.

- ``index.md``: the README (the user guide), with its links into ``docs/`` made site-relative;
- ``cli.md``: the ``--help`` of ``qformer-budget`` and of every subcommand;
- ``schema.md``: the record columns, types and meanings of ``qformer_budget.core.schema.COLUMNS``.
"""

from __future__ import annotations

import argparse
import configparser
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
API_SOURCE = REPO / "build" / "api-src"  # mkdocs.yml's mkdocstrings paths


def on_startup(command: str, dirty: bool) -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lines = [line.split("=") for line in setup["options"]["package_dir"].strip().splitlines()]
    mapping = {package.strip(): REPO / folder.strip() for package, folder in lines}
    shutil.rmtree(API_SOURCE, ignore_errors=True)
    top = API_SOURCE / "qformer_budget"
    top.mkdir(parents=True)
    for source in mapping.pop("qformer_budget").glob("*.py"):
        (top / source.name).symlink_to(source)
    for package, folder in mapping.items():
        (top / package.removeprefix("qformer_budget.")).symlink_to(folder, target_is_directory=True)


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    generated = {"<!-- readme -->": _readme, "<!-- cli help -->": _cli_help, "<!-- record schema -->": _schema}
    for placeholder, make in generated.items():
        if placeholder in markdown:
            markdown = markdown.replace(placeholder, make())
    return markdown


def _readme() -> str:
    text = README.read_text(encoding="utf-8").split("\n", 1)[1]  # its title is the page's
    return text.replace("(docs/performance.md)", "(performance.md)")


def _cli_help() -> str:
    from qformer_budget.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sections = [f"## qformer-budget\n\n```text\n{parser.format_help()}```\n"]
    for name, command in commands.choices.items():
        sections.append(f"## qformer-budget {name}\n\n```text\n{command.format_help()}```\n")
    return "\n".join(sections)


def _schema() -> str:
    from qformer_budget.core.schema import COLUMNS

    rows = [f"| `{name}` | {dtype} | {meaning} |" for name, dtype, meaning in COLUMNS]
    return "\n".join(["| column | type | meaning |", "|---|---|---|", *rows])
