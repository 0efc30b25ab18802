"""The ``qformer-budget`` command."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings(seeds=tuple(args.seeds), num_examples=args.examples, epochs=args.epochs)
    started = time.perf_counter()
    outputs = run_demo(args.out, settings)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    for path in outputs:
        print(f"  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qformer-budget", description="Record where AdaLoRA puts its rank budget in the Q-Former."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a tiny InstructBLIP offline with AdaLoRA, record, draw")
    demo.add_argument("--out", required=True, help="output folder (runs in OUT/<benchmark>/seed<k>/)")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to train (default: 0)")
    demo.add_argument("--examples", type=int, default=1200, help="synthetic training examples (default: 1200)")
    demo.add_argument("--epochs", type=float, default=2.0, help="training epochs (default: 2)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
