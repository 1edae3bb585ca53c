"""Benchmark 10: the labelling farm on Ray actors vs the producer processes, side by side.

    python -m bench.ray_farm [--video ../shared/videos] [--producers 2] [--window 15]
        [--settle 3] [--capacity 512] [--chunk-samples 64] [--repeats 2] [--warmup 0]
        [--train-steps 200] [--json]

Both sides label the same sharded stream: MediaPipe (conf/labeler/mediapipe.yaml) on every clip
of `--video` (a folder of clips, or one clip), looped, at the training max_side, into a ring
buffer of training crops; `--producers` shards, one per producer (`worker_shard`, as in
training):

- pool: `data.workers.ProducerPool`, spawned worker processes writing a shared-memory buffer
  (conf/producer/default.yaml, reporting every `HEARTBEAT_S`);
- ray: `data.workers.ray_farm.RayProducer`, Ray actors (`LabellingActor`) handing chunks of
  `--chunk-samples` samples through Ray's object store to this process, which pushes them into
  a process-local buffer (conf/producer/ray.yaml). The local Ray (`start_local_ray`: store in
  /dev/shm, spilling off) is started once, before the first round, and stays up for both sides.

1. Labelled frames/s, no pacing (no trainer): once every producer has labelled a frame, the side
   runs `--settle` seconds more, then `--window` seconds are counted. The counters arrive with
   the producers' reports (a pool worker's heartbeat, a Ray actor's chunk): a producer's rate
   is its frames between its first and its last report inside the window over the time between
   them (polled every `POLL_S`), and a side's rate is the sum over its producers. Rounds
   alternate pool, ray, pool, ray, ...; medians per side.
2. Trainer steps/s (`--train-steps` > 0): `train.train.train` on `experiment=mediapipe_local`
   (4 training clips, basketball_single held out for one validation at the end) fed by
   `producer.workers=N` or `producer=ray producer.actors=N`, paced as in training
   (`buffer.reads_per_overwrite`). Steps/s come from the run's own `student/samples_per_s`
   (train.throughput: every `trainer.log_every_n_steps` steps, after the buffer is primed,
   validation excluded) with its first window (Lightning's first steps) dropped, divided by the
   batch size. One fit per side (pool first), each writing to a temporary folder.
3. Memory, sampled every `MEMORY_PERIOD_S` during every window and fit (peaks): RSS and PSS
   (shared pages split among the processes that map them: PSS adds up, RSS does not) of the
   producing processes (pool workers; Ray actors), of Ray's own processes (gcs_server, raylet,
   agents, idle workers: every other descendant whose command line names Ray), of this process
   (the trainer, or the bare driver in part 1), and the object store's bytes in use
   (`ray.cluster_resources()` - `ray.available_resources()`, "object_store_memory").

How the 2 cores are shared: in part 1 the producers (2 processes, or 2 actors) take both; this
process only polls (pool), or also receives the chunks and copies them into the buffer (ray);
Ray's daemons run beside both sides, idle on the pool side. In part 2 the trainer (1 torch
thread, as training sets it beside 2 producers) joins them. The report counts the CPU of each
group (/proc, Linux). Ray starts its workers, hence the actors, at niceness 15 (Ray's
`worker_niceness`), the pool's workers run at 0 like the trainer: where the cores are
contested, the kernel favours the trainer over the actors, not over the pool's workers.
"""

from __future__ import annotations

import csv
import functools
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hydra.utils import instantiate

from bench import procfs
from bench.common import (
    CONF_DIR,
    VIDEOS_DIR,
    Report,
    Row,
    emit,
    int_or_none,
    load_conf,
    make_parser,
    non_negative_int,
    positive_int,
    training_crop_size,
    training_max_side,
)
from bench.producers import HEARTBEAT_S, _wait_until_all_label
from data.ring_buffer import RingBuffer
from data.workers.ray_farm import start_local_ray
from video_sources.decode import check_decode_options
from video_sources.local import LocalSource

SIDES = ("pool", "ray")
POLL_S = 0.02  # how often a window reads the producers' counters: the resolution of its ends
MEMORY_PERIOD_S = 0.5
MIB = 2**20
_NICE = 16  # nice in /proc/<pid>/stat, counted after the "(comm)" field
TRAIN_EXPERIMENT = "mediapipe_local"


# Processes


def descendants(root: int) -> list[int]:
    """Process ids of every descendant of `root` (children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def role(pid: int) -> str | None:
    """"producer" (a pool worker or a Ray labelling actor), "ray" (Ray's daemons and idle
    workers) or None, from the process's command line; None if it is gone."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if "spawn_main" in cmdline or cmdline.startswith("ray::LabellingActor"):
        return "producer"
    if cmdline.startswith("ray::") or "/ray/" in cmdline:
        return "ray"
    return None


def processes() -> dict[str, list[int]]:
    """This process's labelling descendants by `role`: {"producer": [...], "ray": [...]}."""
    out: dict[str, list[int]] = {"producer": [], "ray": []}
    for pid in descendants(os.getpid()):
        kind = role(pid)
        if kind is not None:
            out[kind].append(pid)
    return out


def nice(pid: int) -> int | None:
    """The scheduling niceness of `pid` (/proc/<pid>/stat), None if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[_NICE])
    except OSError:
        return None


def pss_kib(pid: int) -> int:
    """Proportional set size of `pid` in KiB (/proc/<pid>/smaps_rollup), 0 if unavailable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def object_store_used_mib() -> float:
    """Bytes in Ray's object store now, in MiB; 0 without Ray."""
    import ray

    if not ray.is_initialized():
        return 0.0
    total = ray.cluster_resources().get("object_store_memory", 0.0)
    return (total - ray.available_resources().get("object_store_memory", total)) / MIB


class MemorySampler:
    """Peak memory while it runs (a `with` block), sampled every `period_s` in a thread, MiB.

    Attributes:
        peak: "trainer_rss" (this process), "producers_rss", "producers_pss", "ray_rss",
            "ray_pss" (summed over the processes of each `role`), "object_store".
        ray_names: at the sample of peak Ray PSS, each Ray process's name and PSS.
    """

    KEYS = ("trainer_rss", "producers_rss", "producers_pss", "ray_rss", "ray_pss",
            "object_store")

    def __init__(self, period_s: float = MEMORY_PERIOD_S) -> None:
        self.period_s = period_s
        self.peak = dict.fromkeys(self.KEYS, 0.0)
        self.ray_names: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.period_s):
                return

    def sample(self) -> None:
        """Read every figure once and keep the peaks."""
        groups = processes()
        rss = {k: sum(procfs.status_kib(p).get("VmRSS", 0) for p in v) / 1024
               for k, v in groups.items()}
        pss = {p: pss_kib(p) / 1024 for v in groups.values() for p in v}
        now = {"trainer_rss": procfs.status_kib().get("VmRSS", 0) / 1024,
               "producers_rss": rss["producer"], "ray_rss": rss["ray"],
               "producers_pss": sum(pss[p] for p in groups["producer"]),
               "ray_pss": sum(pss[p] for p in groups["ray"]),
               "object_store": object_store_used_mib()}
        if now["ray_pss"] >= self.peak["ray_pss"]:
            self.ray_names = [(_name(p), pss[p]) for p in groups["ray"]]
        self.peak = {k: max(self.peak[k], now[k]) for k in self.KEYS}


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cpu_s(pids: list[int]) -> dict[int, float]:
    """CPU seconds each of `pids` has used (0 for one that is gone)."""
    return {p: procfs.process_cpu_s(p) or 0.0 for p in pids}


# Part 1: labelled frames/s


def clip_factories(videos: Path, max_side: int | None) -> tuple[Callable[..., Any],
                                                                Callable[[], Any]]:
    """Picklable (source, teacher) factories: every clip of `videos`, looped, sharded as in
    training; MediaPipe as conf/labeler/mediapipe.yaml configures it."""
    return (functools.partial(LocalSource, str(videos), loop=True, max_side=max_side),
            instantiate(load_conf("labeler", "mediapipe")))


def producer_settings(side: str, producers: int, chunk_samples: int) -> Any:
    """`ProducerSettings` (pool) or `RayFarmSettings` (ray) from conf/producer, with
    `producers` workers or actors."""
    if side == "pool":
        return instantiate(load_conf("producer", "default"), workers=producers,
                           heartbeat_s=HEARTBEAT_S)
    return instantiate(load_conf("producer", "ray"), actors=producers,
                       chunk_samples=chunk_samples)


@dataclass
class Window:
    """What one side did over one timed window.

    Attributes:
        side: "pool" or "ray".
        seconds: the window's length, measured.
        frames_per_s, samples_per_s: summed over the producers (module docstring).
        cpu_s: CPU seconds in the window of "producers", "this process" and "ray" (Ray's
            daemons and idle workers).
        memory: `MemorySampler.peak` over the window, MiB.
        ray_names: Ray's processes and their PSS (MiB) at the peak.
        nice: each producer process's niceness.
    """

    side: str
    seconds: float
    frames_per_s: float
    samples_per_s: float
    cpu_s: dict[str, float]
    memory: dict[str, float]
    ray_names: list[tuple[str, float]] = field(default_factory=list)
    nice: list[int | None] = field(default_factory=list)

    def cores(self, group: str) -> float:
        return self.cpu_s[group] / self.seconds

    @property
    def cores_all(self) -> float:
        return sum(self.cpu_s.values()) / self.seconds

    @property
    def cpu_ms_per_frame(self) -> float:
        """Producers' CPU milliseconds per labelled frame."""
        return 1e3 * self.cores("producers") / self.frames_per_s

    @property
    def labelling_pss(self) -> float:
        """Memory the labelling holds, MiB: the producers' PSS, plus Ray's processes' on the
        ray side (they idle beside the pool too, but a pool alone would not start them)."""
        return self.memory["producers_pss"] + (self.memory["ray_pss"] if self.side == "ray"
                                               else 0.0)


def measure(side: str, source: Callable[..., Any], teacher: Callable[[], Any], *,
            producers: int, chunk_samples: int, capacity: int, settle_s: float,
            window_s: float) -> Window:
    """Start `side`'s producer on a fresh buffer, wait until every producer labels, settle, and
    count one window.

    Raises:
        RuntimeError: the producer failed or did not start, a producer restarted, or one
            reported fewer than twice in the window.
    """
    settings = producer_settings(side, producers, chunk_samples)
    with RingBuffer(capacity, training_crop_size(), shared=settings.shared_buffer) as buffer:
        producer = settings.build(source, teacher, buffer, rank=0, world_size=1,
                                  reads_per_overwrite=None)
        producer.start()
        try:
            _wait_until_all_label(producer)
            time.sleep(settle_s)
            _check_roles(side, producer)
            return _count(side, producer, window_s)
        finally:
            producer.stop()


def _check_roles(side: str, producer: Any) -> None:
    """The processes `role` calls producers are exactly the producer's own (part 2 relies on
    `role` alone).

    Raises:
        RuntimeError: they differ.
    """
    if side == "pool":
        own = set(producer.pids)
    else:
        import ray

        own = {ray.get(slot.actor.pid.remote()) for slot in producer._slots}
    found = set(processes()["producer"])
    if own != found:
        raise RuntimeError(f"{side}: producer processes {sorted(own)}, found {sorted(found)}")


def _count(side: str, producer: Any, window_s: float) -> Window:
    """One window of `producer`: rates between each producer's first and last report, the CPU
    of each group and the memory peaks."""
    groups = processes()
    groups["this process"] = [os.getpid()]
    groups["producers"] = groups.pop("producer")
    cpu0 = {k: cpu_s(v) for k, v in groups.items()}
    first: dict[int, tuple[float, int, int]] = {}
    last: dict[int, tuple[float, int, int]] = {}
    seen = [s.total.frames for s in producer.worker_stats()]
    with MemorySampler() as memory:
        t0 = time.perf_counter()
        while (now := time.perf_counter()) < t0 + window_s:
            for i, stats in enumerate(producer.worker_stats()):
                if stats.total.frames != seen[i]:
                    seen[i] = stats.total.frames
                    last[i] = (now, stats.total.frames, stats.total.samples_pushed)
                    first.setdefault(i, last[i])
            time.sleep(POLL_S)
        seconds = time.perf_counter() - t0
    if producer.failure_reason() is not None or producer.restarts:
        raise RuntimeError(f"{side}: {producer.failure_reason() or 'a producer restarted'}")
    frames, samples = _rates(side, first, last, len(seen), window_s)
    cpu = {k: sum(cpu_s(v).values()) - sum(cpu0[k].values()) for k, v in groups.items()}
    return Window(side, seconds, frames, samples, cpu, memory.peak, memory.ray_names,
                  [nice(p) for p in groups["producers"]])


def _rates(side: str, first: dict, last: dict, producers: int,
           window_s: float) -> tuple[float, float]:
    """Frames/s and samples/s summed over producers, each between its first and last report.

    Raises:
        RuntimeError: a producer reported fewer than twice.
    """
    frames = samples = 0.0
    for i in range(producers):
        if i not in first or last[i][0] <= first[i][0]:
            raise RuntimeError(f"{side}: producer {i} reported fewer than twice in {window_s} s;"
                               " lengthen --window (or lower --chunk-samples)")
        span = last[i][0] - first[i][0]
        frames += (last[i][1] - first[i][1]) / span
        samples += (last[i][2] - first[i][2]) / span
    return frames, samples


# Part 2: trainer steps/s


@dataclass
class Fit:
    """One training run fed by one side.

    Attributes:
        side: "pool" or "ray".
        steps_per_s: optimizer steps per second after priming (module docstring).
        wait_frac: mean `buffer/wait_frac` over the windows counted (time spent waiting).
        teacher_fps: the summary's `teacher_fps`.
        memory: `MemorySampler.peak` over the whole fit, MiB.
    """

    side: str
    steps_per_s: float
    wait_frac: float
    teacher_fps: float | None
    memory: dict[str, float]


def train_overrides(side: str, producers: int, steps: int, run_dir: Path) -> list[str]:
    """The Hydra overrides of one training run of `side`."""
    feed = ([f"producer.workers={producers}"] if side == "pool"
            else ["producer=ray", f"producer.actors={producers}"])
    return [f"experiment={TRAIN_EXPERIMENT}", f"paths.output_dir={run_dir}",
            f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *feed]


def fit(side: str, producers: int, steps: int) -> Fit:
    """Train `steps` steps fed by `side` in a temporary run folder and read its throughput.

    Raises:
        RuntimeError: the run did not complete, or logged fewer than 2 throughput windows.
    """
    from hydra import compose, initialize_config_dir

    from train.train import train

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=train_overrides(side, producers, steps, run_dir))
        with MemorySampler() as memory:
            summary = train(cfg)
        if summary["status"] != "completed":
            raise RuntimeError(f"{side}: training {summary['status']}")
        rates, waits = logged_throughput(run_dir / "csv" / "metrics.csv")
    return Fit(side, statistics.harmonic_mean(rates) / summary["batch_size"],
               statistics.mean(waits) if waits else float("nan"), summary["teacher_fps"],
               memory.peak)


def logged_throughput(path: Path) -> tuple[list[float], list[float]]:
    """`student/samples_per_s` of every logged window but the first (each window holds the same
    number of steps, so their harmonic mean is the rate over them all), and `buffer/wait_frac`.

    Raises:
        RuntimeError: fewer than 2 windows were logged.
    """
    with path.open() as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["student/samples_per_s"]) for r in rows if r.get("student/samples_per_s")]
    waits = [float(r["buffer/wait_frac"]) for r in rows if r.get("buffer/wait_frac")]
    if len(rates) < 2:
        raise RuntimeError(f"{path}: {len(rates)} throughput windows logged; raise --train-steps")
    return rates[1:], waits[1:]


# The report


def run(videos: Path, *, producers: int, max_side: int | None, capacity: int, settle_s: float,
        window_s: float, chunk_samples: int, repeats: int = 2, warmup: int = 0,
        train_steps: int = 0) -> Report:
    """Part 1 (rounds alternating the sides) and, with `train_steps`, part 2; one report.

    Raises:
        RuntimeError: a side failed (see `measure`, `fit`).
        ProducerFailedError: Ray cannot start here.
    """
    import ray

    source, teacher = clip_factories(videos, max_side)
    ray_settings = producer_settings("ray", producers, chunk_samples)
    started = start_local_ray(ray_settings)
    try:
        windows: dict[str, list[Window]] = {s: [] for s in SIDES}
        for round_ in range(warmup + repeats):
            for side in SIDES:
                win = measure(side, source, teacher, producers=producers,
                              chunk_samples=chunk_samples, capacity=capacity, settle_s=settle_s,
                              window_s=window_s)
                if round_ >= warmup:
                    windows[side].append(win)
        fits = {side: fit(side, producers, train_steps) for side in SIDES} if train_steps else {}
    finally:
        if started:
            ray.shutdown()
    settings = {
        "videos": str(videos), "clips": len(LocalSource(str(videos)).video_ids()),
        "producers": producers, "max_side": max_side, "crop_size": training_crop_size(),
        "capacity": capacity, "settle_s": settle_s, "window_s": window_s, "poll_s": POLL_S,
        "heartbeat_s": HEARTBEAT_S, "chunk_samples": chunk_samples,
        "object_store_mb": ray_settings.object_store_mb, "repeats": repeats, "warmup": warmup,
        "train_steps": train_steps, "train_experiment": TRAIN_EXPERIMENT,
    }
    return Report("ray_farm", f"labelling farm: {producers} Ray actors vs {producers} producer "
                  "processes", settings, _frame_rows(windows) + _fit_rows(fits),
                  _notes(windows, fits))


def _frame_rows(windows: dict[str, list[Window]]) -> list[Row]:
    ray, pool = windows["ray"], windows["pool"]

    def row(case: str, value: Callable[[Window], float], unit: str) -> Row:
        return Row(case, "ray actors", [value(w) for w in ray], "pool processes",
                   [value(w) for w in pool], unit)

    return [
        row("labelled frames/s", lambda w: w.frames_per_s, "frames/s"),
        row("samples/s", lambda w: w.samples_per_s, "samples/s"),
        row("producers' CPU per frame", lambda w: w.cpu_ms_per_frame, "CPU ms/frame"),
        row("cores busy: producers", lambda w: w.cores("producers"), "cores"),
        row("cores busy: producers, this process, Ray's", lambda w: w.cores_all, "cores"),
        row("producers' peak RSS, summed", lambda w: w.memory["producers_rss"], "MiB"),
        row("labelling's peak PSS (producers; + Ray's processes)", lambda w: w.labelling_pss,
            "MiB"),
    ]


def _fit_rows(fits: dict[str, Fit]) -> list[Row]:
    if not fits:
        return []
    ray, pool = fits["ray"], fits["pool"]

    def row(case: str, value: Callable[[Fit], float], unit: str) -> Row:
        return Row(f"training: {case}", "fed by ray", [value(ray)], "fed by pool",
                   [value(pool)], unit)

    return [
        row("trainer steps/s", lambda f: f.steps_per_s, "steps/s"),
        row("trainer's peak RSS", lambda f: f.memory["trainer_rss"], "MiB"),
        row("producers' peak PSS", lambda f: f.memory["producers_pss"], "MiB"),
    ]


def _notes(windows: dict[str, list[Window]], fits: dict[str, Fit]) -> list[str]:
    return (list(_NOTES) + [_window_note(side, wins) for side, wins in windows.items()]
            + [_fit_note(f) for f in fits.values()])


def _window_note(side: str, wins: list[Window]) -> str:
    """Niceness, cores per group (medians) and the memory the rows leave out, of one side."""
    last = wins[-1]
    cores = ", ".join(f"{k} {statistics.median(w.cores(k) for w in wins):.2f}"
                      for k in last.cpu_s)
    names = ", ".join(f"{n} {m:.0f}" for n, m in sorted(last.ray_names))
    return (f"{side}: producers' nice {last.nice}; cores busy (median) {cores}; last window's "
            f"peaks, MiB: this process RSS {last.memory['trainer_rss']:.0f}; Ray's processes "
            f"RSS {last.memory['ray_rss']:.0f}, PSS {last.memory['ray_pss']:.0f} ({names}); "
            f"object store in use {last.memory['object_store']:.1f}")


def _fit_note(f: Fit) -> str:
    teacher = "-" if f.teacher_fps is None else f"{f.teacher_fps:.1f}"
    return (f"training fed by {f.side}: teacher_fps {teacher}, buffer wait fraction "
            f"{f.wait_frac:.2f}; peaks, MiB: producers RSS {f.memory['producers_rss']:.0f}, "
            f"Ray's processes PSS {f.memory['ray_pss']:.0f}, object store in use "
            f"{f.memory['object_store']:.1f}")


_NOTES = [
    "frames/s: summed over the producers, each between its first and last report in the window "
    "(pool workers report every heartbeat_s, Ray actors with every chunk); start-up and settle "
    "excluded; each round on a fresh buffer; medians over rounds",
    "cores busy: /proc CPU time over the window of the producers, this process (polling; on "
    "the ray side also receiving chunks and pushing them into the buffer) and Ray's processes "
    "(up, idle, during the pool's rounds too)",
    "memory: peaks of samples every 0.5 s; PSS splits shared pages (libraries, /dev/shm) among "
    "the processes mapping them, so it adds up where RSS double-counts",
    "training: steps/s = harmonic mean of the run's student/samples_per_s windows (first "
    "dropped; priming and validation excluded) / batch size; paced as in training",
]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the report and returns the exit status 0."""
    parser = make_parser(__doc__, video=VIDEOS_DIR, repeats=2, warmup=0)
    parser.add_argument("--producers", type=positive_int, default=2,
                        help="pool workers, and Ray actors (default: %(default)s)")
    parser.add_argument("--window", type=float, default=15.0,
                        help="seconds counted per round and side (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after start-up before counting (default: %(default)s)")
    parser.add_argument("--capacity", type=positive_int, default=512,
                        help="ring buffer slots in part 1 (default: %(default)s)")
    parser.add_argument("--chunk-samples", type=positive_int,
                        default=int(load_conf("producer", "ray").chunk_samples),
                        help="samples per object through Ray's store (default: %(default)s)")
    parser.add_argument("--max-side", type=int_or_none, default=training_max_side(),
                        help="decode at this longer side, pixels; 0: full size (default: "
                             "%(default)s)")
    parser.add_argument("--train-steps", type=non_negative_int, default=200,
                        help="steps of each training run (part 2); 0 skips training "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.video.exists():
        parser.error(f"no clip or folder of clips at {args.video}")
    if args.window <= 0 or args.settle < 0:
        parser.error("--window must be > 0 and --settle >= 0 seconds")
    try:
        check_decode_options(1, None, args.max_side)
    except ValueError as exc:
        parser.error(str(exc))
    report = run(args.video, producers=args.producers, max_side=args.max_side,
                 capacity=args.capacity, settle_s=args.settle, window_s=args.window,
                 chunk_samples=args.chunk_samples, repeats=args.repeats, warmup=args.warmup,
                 train_steps=args.train_steps)
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
