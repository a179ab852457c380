"""Command line: python -m backend {prelabel,depth,train,train-generator,evaluate,export} ... (each has --help)."""

from __future__ import annotations

import sys

COMMANDS = {
    "prelabel": "backend.prelabel.run",
    "depth": "backend.depth.estimate",
    "train": "backend.learning.training",
    "train-generator": "backend.synthesis.lora",
    "evaluate": "backend.evaluation.evaluate",
    "export": "backend.export.run",
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m backend {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    import importlib

    return importlib.import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:])


if __name__ == "__main__":
    sys.path.insert(0, ".")
    raise SystemExit(main())
