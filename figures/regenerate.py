"""Regenerate every figure of recorded runs: ``python figures/regenerate.py RUNS_DIR --out DIR``.

The same command as ``qformer-budget figures`` (same arguments, same function as the demo): PNG and PDF
of every figure, byte for byte reproducible, and ``DIR/index.md`` describing them. Needs the installed
package (``make install``, or ``pip install -e .``).
"""

from __future__ import annotations

import sys

from qformer_budget.cli import main

if __name__ == "__main__":
    sys.exit(main(["figures", *sys.argv[1:]]))
