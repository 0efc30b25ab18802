"""Regenerate every figure of recorded runs: ``python figures/regenerate.py RUNS_DIR --out DIR``.

A thin wrapper of ``analysis.figures.regenerate_figures``, the same function as ``qformer-budget figures``
and the demo: PNG and PDF of every figure, byte for byte reproducible, and ``DIR/index.md`` describing them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from analysis.figures import regenerate_figures
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from analysis.figures import regenerate_figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", help="a run folder or a folder of runs (e.g. a sweep's out)")
    parser.add_argument("--out", default=None, help="write the figures here (default: RUNS_DIR/figures)")
    parser.add_argument(
        "--method", default=None, help="the configuration to draw when RUNS_DIR holds several"
    )
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out is not None else Path(args.runs_dir) / "figures"
    paths = regenerate_figures(args.runs_dir, out, method=args.method)
    print(f"{len(paths) - 1} figure files in {out}, listed in {paths[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
