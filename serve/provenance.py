"""`stream-pose provenance MODEL [--json]`: which videos a model learnt from.

    stream-pose provenance runs/<run>/checkpoints/last.ckpt        # a readable table
    stream-pose provenance runs/<run>/export/last.onnx --json      # the raw manifest

MODEL is a training checkpoint (`.ckpt`) or an exported model (`.onnx`, `.mlpackage`, `.pt`).
The manifest and its schema are `stream_pose.provenance`'s. A file without a manifest (a model
written before stream-pose recorded one) or that is no model gets one line on stderr and exit
status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from stream_pose.provenance import ProvenanceError, read_manifest
from stream_pose.secrets import redact_text

EXIT_ERROR = 1
COLUMNS = ("split", "kind", "id", "frames", "samples", "licence", "credit", "source")


def build_parser() -> argparse.ArgumentParser:
    """`stream-pose provenance MODEL [--json]`."""
    p = argparse.ArgumentParser(
        prog="stream-pose provenance",
        description="Print the provenance manifest of a model: the videos it learnt from "
        "(source kind, id, address, licence, credit, frames labelled, samples), the teacher and "
        "its version, and the stream-pose version.")
    p.add_argument("model", help="a training .ckpt, or an exported .onnx, .mlpackage or .pt")
    p.add_argument("--json", action="store_true", help="print the raw manifest as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print the manifest of `argv`'s model; returns the exit status (errors: one line)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        manifest = read_manifest(args.model)
    except (ProvenanceError, FileNotFoundError) as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(format_manifest(manifest, title=args.model))
    return 0


def format_manifest(manifest: dict[str, Any], title: str = "") -> str:
    """The manifest as text: a header (model, versions, teacher, totals) and one table row per
    video (`COLUMNS`)."""
    sp, teacher, totals = manifest["stream_pose"], manifest["teacher"], manifest["totals"]
    versions = ", ".join(f"{k} {v}" for k, v in teacher.get("versions", {}).items())
    commit = f" (commit {sp['commit'][:12]})" if sp.get("commit") else ""
    step = manifest.get("train_step")
    videos = manifest["videos"]
    splits = {s: sum(v["split"] == s for v in videos) for s in ("train", "val")}
    lines = [
        *([f"model:       {title}"] if title else []),
        f"stream-pose: {sp.get('version') or '?'}{commit}; recorded {manifest.get('created', '?')}"
        + ("" if step is None else f" at step {step}"),
        f"teacher:     {teacher['name']}" + (f" ({versions})" if versions else ""),
        f"videos:      {totals.get('videos', len(videos))} ({splits['train']} train, "
        f"{splits['val']} val), {totals.get('frames', 0)} frames labelled, "
        f"{totals.get('samples', 0)} samples",
        "",
    ]
    rows = [[str(v["split"]), v["kind"] or "?", v["id"], str(v["frames"]), str(v["samples"]),
             v["licence"] or "-", v["attribution"] or "-", v["uri"] or "-"] for v in videos]
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *rows)]
    numeric = {COLUMNS.index("frames"), COLUMNS.index("samples")}
    for row in [list(COLUMNS), *rows]:
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(no video recorded)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
