"""What Linux's /proc says about a process: CPU seconds (whole process and per thread), thread
names and memory counters. Benchmarks 4 and 6 use it on their own children; no psutil needed.

Everything here is Linux only (proc(5)); on other systems the functions return None or empty.
"""

from __future__ import annotations

import os
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # ticks per second
_UTIME, _STIME = 11, 12  # utime, stime in /proc/<pid>/stat, counted after the "(comm)" field


def _stat_cpu_s(path: Path) -> float | None:
    """User + system CPU seconds from a /proc `stat` file, None if it is gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # comm may contain spaces and parentheses
    return (int(fields[_UTIME]) + int(fields[_STIME])) / _CLK_TCK


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) process `pid` has used; None if it is gone."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat"))


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid`, keyed "name/tid" (the kernel's thread name, e.g.
    "python" for Python threads, "mediapipe/1234" for MediaPipe's executor); {} if gone."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        task = Path(f"/proc/{pid}/task/{tid}")
        cpu = _stat_cpu_s(task / "stat")
        try:
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        if cpu is not None:
            out[f"{name}/{tid}"] = cpu
    return out


def status_kib(pid: int | str = "self") -> dict[str, int]:
    """The memory lines of /proc/<pid>/status in KiB: VmHWM (peak resident set), VmRSS,
    RssAnon, RssFile, RssShmem (shared memory pages this process has touched), Threads (a
    count); {} if unavailable."""
    keys = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


def busy_threads(before: dict[str, float], after: dict[str, float], seconds: float,
                 threshold: float = 0.02) -> dict[str, float]:
    """Cores each thread kept busy between two `thread_cpu_s` readings `seconds` apart, busiest
    first, without the threads under `threshold` cores."""
    busy = {k: (after[k] - before.get(k, 0.0)) / seconds for k in after}
    return {k: round(v, 2) for k, v in sorted(busy.items(), key=lambda kv: -kv[1])
            if v >= threshold}
