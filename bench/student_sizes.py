"""The student presets side by side: parameters, MFLOPs and CPU ms/frame.

    python -m bench.student_sizes [--crop-size 128] [--presets student_s student_m student_l]
        [--head3d lift] [--repeats 5] [--json]

Each preset (conf/model/<preset>.yaml) is built at the crop size; FLOPs of one batch-1 forward
pass are counted by `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts 2); the
forward pass is timed at batch 1 under `torch.inference_mode()` with the torch threads training
uses, the presets interleaved round-robin (`bench.common.time_interleaved`) so that machine load
hits them alike. ms/frame is the median over repeats of the mean over `--frames` frames.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import (
    Report,
    Row,
    emit,
    make_parser,
    parse_args,
    positive_int,
    preset_student,
    time_interleaved,
)
from train.module import image_to_float
from train.student import PoseStudent

PRESETS = ("student_s", "student_m", "student_l", "student_effl0")


def mflops(net: PoseStudent) -> float:
    """Millions of FLOPs of one batch-1 forward pass."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(net.example_input(1))
    return counter.get_total_flops() / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--crop-size", type=positive_int, default=128)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--head3d", choices=("free", "anchored", "lift"), default="lift")
    parser.add_argument("--frames", type=positive_int, default=50)
    args = parse_args(parser, argv)
    nets = {p: preset_student(p, args.crop_size, args.head3d) for p in args.presets}
    crop = torch.randint(0, 256, (1, 3, args.crop_size, args.crop_size), dtype=torch.uint8)

    def run(preset: str) -> int:
        with torch.inference_mode():
            for _ in range(args.frames):
                nets[preset](image_to_float(crop))
        return args.frames

    timings = time_interleaved({p: (lambda p=p: run(p)) for p in nets}, repeats=args.repeats,
                               warmup=args.warmup)
    base = args.presets[0]
    rows = [Row(f"{p} vs {base}", p, timings[p].ms_per_item, base, timings[base].ms_per_item,
                "ms/frame") for p in args.presets]
    notes = [f"{p}: {sum(x.numel() for x in n.parameters()) / 1e6:.2f} M parameters, "
             f"{mflops(n):.0f} MFLOPs per crop" for p, n in nets.items()]
    emit(Report("student_sizes", "student presets: CPU ms/frame at batch 1",
                {"crop_size": args.crop_size, "head3d": args.head3d, "frames": args.frames,
                 "repeats": args.repeats, "torch_threads": torch.get_num_threads()},
                rows, notes), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
