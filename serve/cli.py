"""The `stream-pose` command: one entry point for the inference-side tools.

    stream-pose predict --checkpoint X --video Y [--out preds.jsonl] [--overlay out.mp4]
    stream-pose evaluate checkpoint=X [Hydra overrides]   (= python -m serve.evaluate)
    stream-pose export checkpoint=X format=onnx           (= python -m serve.export)

`predict` takes argparse options; `evaluate` and `export` are Hydra apps and take overrides.
"""

from __future__ import annotations

import sys
from typing import Sequence

USAGE = __doc__.split("\n\n")[1] + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to the subcommand; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else ""
    if command == "predict":
        from serve.predict import main as predict

        return predict(args)
    if command in ("evaluate", "export"):
        from train import evaluate, export

        sys.argv = [f"stream-pose {command}", *args]  # Hydra reads its overrides from argv
        (evaluate if command == "evaluate" else export).main()
        return 0
    print(f"usage:\n{USAGE}", file=sys.stderr if command not in ("-h", "--help") else sys.stdout)
    return 0 if command in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
