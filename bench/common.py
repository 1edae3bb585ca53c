"""What every benchmark shares: the machine, interleaved timing, the report and its table.

Shared machines are noisy, so both sides of a comparison are timed in the same run, round-robin
(A, B, A, B, ...), after untimed warm-up rounds, and each side is summarised by its median over
the timed rounds. A `Report` prints as a Markdown table (pasteable into BENCHMARKS.md) or, with
`--json`, as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import av
import cv2
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from labeler.base import Teacher
from stream_pose.types import Frame
from train.callbacks import usable_cores
from video_sources.decode import check_decode_options

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
VIDEOS_DIR = REPO_ROOT.parent / "shared" / "videos"  # ../shared/videos, beside the repository
DEFAULT_VIDEO = VIDEOS_DIR / "running_athlete.mp4"
TARGET_OPS = {">=": lambda ratio, x: ratio >= x, "<": lambda ratio, x: ratio < x}


def load_conf(group: str, name: str) -> DictConfig:
    """`conf/<group>/<name>.yaml`, unresolved (interpolations resolve when a key is read)."""
    return OmegaConf.load(CONF_DIR / group / f"{name}.yaml")


def model_preset(name: str) -> DictConfig:
    """`conf/model/<name>.yaml` with the presets it builds on (its `defaults`) merged in."""
    node = load_conf("model", name)
    for parent in [d for d in node.get("defaults", []) if d != "_self_"]:
        node = OmegaConf.merge(model_preset(parent), node)
    node.pop("defaults", None)
    return node


def preset_student(preset: str, crop_size: int | None = None, head3d: str | None = None):
    """The student of conf/model/<preset>.yaml in eval mode, at `crop_size` (default: training's)
    with `head3d` if given. A pretrained trunk is built with random weights: speed and size do
    not depend on them, and the benchmark then needs no weights package."""
    net_cfg = OmegaConf.to_container(model_preset(preset).net, resolve=False)
    net_cfg["crop_size"] = crop_size or training_crop_size()
    if head3d is not None:
        net_cfg["head3d"] = head3d
    if "pretrained" in net_cfg:
        net_cfg["pretrained"] = False
    return instantiate(net_cfg).eval()


def training_crop_size() -> int:
    """Crop side S in pixels that training uses (`buffer.crop_size`, conf/buffer/default.yaml)."""
    return int(load_conf("buffer", "default").crop_size)


def training_max_side() -> int | None:
    """Longest frame side in pixels the teacher sees in training (conf/source/local.yaml)."""
    max_side = load_conf("source", "local").max_side
    return None if max_side is None else int(max_side)


def mediapipe_teacher() -> Teacher:
    """The MediaPipe teacher exactly as conf/labeler/mediapipe.yaml configures it.

    Raises:
        TeacherUnavailableError: if mediapipe 0.10.21 (with `mp.solutions`) is not installed.
    """
    return instantiate(load_conf("labeler", "mediapipe"))()


def teacher_pass(teacher: Teacher, frames: list[Frame]) -> int:
    """Label `frames` (one video, in order, decoded beforehand) after a reset, as the producer
    does at each new video; returns the frame count."""
    teacher.reset()
    for frame in frames:
        teacher.label(frame)
    return len(frames)


def machine_info() -> dict[str, Any]:
    """Where the numbers come from: CPU, cores, torch threads, library versions, load.

    `load_avg_1m` is the 1-minute load average when the report is made: well above the cores
    the benchmark itself keeps busy (see `cores_note`), other jobs shared the CPU.
    """
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "av": av.__version__,
        "mediapipe": _dist_version("mediapipe"),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo, macOS sysctl), else `platform.processor()`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                 capture_output=True, text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _dist_version(dist: str) -> str | None:
    """Installed version of a distribution without importing it (mediapipe imports slowly)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Timing:
    """Timed repeats of one side.

    Attributes:
        name: the side, e.g. "OpenCV from disk".
        items: items (frames) one repeat handles; the same in every repeat.
        seconds: wall-clock seconds of each timed repeat (warm-up excluded).
        cpu_seconds: CPU seconds of the whole process (all threads) in each timed repeat.
    """

    name: str
    items: int
    seconds: list[float]
    cpu_seconds: list[float] = field(default_factory=list)

    @property
    def cores_busy(self) -> float | None:
        """Median over repeats of process CPU time / wall time: the cores this side kept busy
        (all threads of the process, so it shows a side's hidden thread pools); None if unknown."""
        if not self.cpu_seconds:
            return None
        return statistics.median(c / s for c, s in zip(self.cpu_seconds, self.seconds))

    @property
    def items_per_s(self) -> list[float]:
        """Throughput of each repeat, items per second."""
        return [self.items / s for s in self.seconds]

    @property
    def ms_per_item(self) -> list[float]:
        """Latency of each repeat, milliseconds per item."""
        return [1e3 * s / self.items for s in self.seconds]

    @property
    def items_per_cpu_s(self) -> list[float]:
        """Items per CPU second of the process, each repeat: unlike wall time, barely changed by
        other jobs on a shared machine, but it counts every thread's work."""
        return [self.items / c for c in self.cpu_seconds]

    @property
    def cpu_ms_per_item(self) -> list[float]:
        """CPU milliseconds of the process per item, each repeat (see `items_per_cpu_s`)."""
        return [1e3 * c / self.items for c in self.cpu_seconds]


def time_interleaved(
    sides: dict[Any, Callable[[], int]],
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = time.process_time,
) -> dict[Any, Timing]:
    """Time every side `repeats` times, round-robin, after `warmup` untimed rounds.

    Round-robin keeps a slow spell of a shared machine from landing on one side only.

    Args:
        sides: name -> a callable that runs one full pass and returns how many items (frames)
            it handled.
        repeats: timed rounds (>= 1).
        warmup: untimed rounds first (>= 0): model graphs, caches and allocators settle there.
        clock: wall-clock seconds (monotonic); injectable for tests.
        cpu_clock: CPU seconds of the whole process (all threads); injectable for tests.

    Returns:
        name -> `Timing`, in the order of `sides`.

    Raises:
        ValueError: if repeats < 1, warmup < 0 or `sides` is empty.
        RuntimeError: if a pass handles no item, or a different number than its first pass
            (the comparison would not be over the same frames).
    """
    if repeats < 1 or warmup < 0 or not sides:
        raise ValueError(f"need repeats >= 1, warmup >= 0 and a side, got {repeats}, {warmup}")
    timings = {name: Timing(str(name), 0, []) for name in sides}
    for round_ in range(warmup + repeats):
        for name, run in sides.items():
            t0, c0 = clock(), cpu_clock()
            n = run()
            wall, cpu = clock() - t0, cpu_clock() - c0
            timing = timings[name]
            if n <= 0 or (timing.items and n != timing.items):
                raise RuntimeError(f"{name}: a pass handled {n} items, the first {timing.items}")
            timing.items = n
            if round_ >= warmup:
                timing.seconds.append(wall)
                timing.cpu_seconds.append(cpu)
    return timings


def cores_note(timings: dict[Any, Timing]) -> str:
    """One line for a report's notes: the cores each side kept busy (`Timing.cores_busy`)."""
    busy = ", ".join(f"{t.name} {t.cores_busy:.2f}" for t in timings.values()
                     if t.cores_busy is not None)
    return f"cores busy (process CPU time / wall time, median): {busy}"


@dataclass
class Row:
    """One comparison: our side against a baseline, in one unit, with the ratio ours/baseline.

    Attributes:
        case: what this row compares, e.g. "max_side=640".
        ours_name, baseline_name: the two sides.
        ours, baseline: per-repeat values of each side in `unit` (their medians are compared).
        unit: e.g. "frames/s", "ms/frame".
        target: optional (op, value) on the ratio, op ">=" or "<", e.g. (">=", 1.0).

    Raises:
        ValueError: on an empty side, a baseline median <= 0 (no ratio) or an unknown op.
    """

    case: str
    ours_name: str
    ours: list[float]
    baseline_name: str
    baseline: list[float]
    unit: str
    target: tuple[str, float] | None = None

    def __post_init__(self) -> None:
        if not self.ours or not self.baseline:
            raise ValueError(f"{self.case}: both sides need at least one value")
        if statistics.median(self.baseline) <= 0:
            raise ValueError(f"{self.case}: baseline median must be > 0 for a ratio")
        if self.target is not None and self.target[0] not in TARGET_OPS:
            raise ValueError(f"{self.case}: target op must be one of {list(TARGET_OPS)}")

    @property
    def ratio(self) -> float:
        """median(ours) / median(baseline)."""
        return statistics.median(self.ours) / statistics.median(self.baseline)

    @property
    def meets_target(self) -> bool | None:
        """Whether the ratio meets `target`; None without one."""
        if self.target is None:
            return None
        op, value = self.target
        return TARGET_OPS[op](self.ratio, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: both sides (name, median, repeats), unit, ratio, target, meets_target."""
        return {
            "case": self.case,
            "unit": self.unit,
            "ours": _side(self.ours_name, self.ours),
            "baseline": _side(self.baseline_name, self.baseline),
            "ratio": self.ratio,
            "target": None if self.target is None else f"{self.target[0]} {self.target[1]:g}",
            "meets_target": self.meets_target,
        }


def _side(name: str, values: list[float]) -> dict[str, Any]:
    return {"name": name, "median": statistics.median(values), "repeats": list(values)}


@dataclass
class Report:
    """A benchmark's result.

    Attributes:
        benchmark: the script's name, e.g. "decode".
        title: what is compared, one line.
        settings: the options it ran with (video, repeats, sizes, ...).
        rows: the comparisons.
        notes: what a reader needs to judge the numbers (what each side includes).
        machine: `machine_info()` taken when the report was made.
    """

    benchmark: str
    title: str
    settings: dict[str, Any]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with keys benchmark, title, settings, rows, notes, machine."""
        return {
            "benchmark": self.benchmark,
            "title": self.title,
            "settings": self.settings,
            "rows": [row.to_dict() for row in self.rows],
            "notes": self.notes,
            "machine": self.machine,
        }

    def to_markdown(self) -> str:
        """The report as Markdown: title, settings, a table of both sides and the ratio, notes,
        machine. Values are medians, with the range over repeats in brackets."""
        lines = [f"### {self.benchmark}: {self.title}", "", _kv_line(self.settings), "",
                 "| case | ours | baseline | ours/baseline | target |", "|---|---|---|---|---|"]
        lines += [_table_row(row) for row in self.rows]
        lines += [""] + [f"- {note}" for note in self.notes]
        lines += ["", f"Machine: {_kv_line(self.machine)}"]
        return "\n".join(lines)


def _table_row(row: Row) -> str:
    if row.target is None:
        target = ""
    else:
        target = f"{row.target[0]} {row.target[1]:g}: {'met' if row.meets_target else 'NOT met'}"
    return (f"| {row.case} | {_cell(row.ours_name, row.ours, row.unit)} | "
            f"{_cell(row.baseline_name, row.baseline, row.unit)} | {row.ratio:.3g} | {target} |")


def _cell(name: str, values: list[float], unit: str) -> str:
    spread = f" ({min(values):.4g} to {max(values):.4g})" if len(values) > 1 else ""
    return f"{name}: {statistics.median(values):.4g} {unit}{spread}"


def _kv_line(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def int_or_none(text: str) -> int | None:
    """argparse type: an integer >= 0, where 0 means None (no frame limit, full size)."""
    return _int_at_least(text, 0) or None


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def make_parser(description: str, *, video: Path = DEFAULT_VIDEO, repeats: int = 3,
                warmup: int = 1, timed: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: --video, --repeats, --warmup
    (timed benchmarks only), --json."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--video", type=Path, default=video,
                        help="video file to benchmark on (default: %(default)s)")
    if timed:
        parser.add_argument("--repeats", type=positive_int, default=repeats,
                            help="timed rounds; each side's median is reported "
                                 "(default: %(default)s)")
        parser.add_argument("--warmup", type=non_negative_int, default=warmup,
                            help="untimed rounds before timing (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the Markdown table")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv` (None: sys.argv); exit with a usage error (status 2) if the video is missing
    or `--max-side`/`--max-frames`, where the parser has them, are invalid for the decoder."""
    args = parser.parse_args(argv)
    if not args.video.is_file():
        parser.error(f"video not found: {args.video}")
    try:
        check_decode_options(1, getattr(args, "max_frames", None), getattr(args, "max_side", None))
    except ValueError as exc:
        parser.error(str(exc))
    return args


def emit(report: Report, as_json: bool) -> None:
    """Print the report to stdout: one JSON object, or the Markdown table."""
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.to_markdown())
