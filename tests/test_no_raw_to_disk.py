"""Nothing raw reaches disk: no file is opened for writing outside the run's output directory
during a dry run and a short training run, and nothing in that directory holds image or video
bytes.

A Python audit hook (PEP 578, `sys.addaudithook`) sees every `open()`/`os.open()` made from
Python. Native code that writes with its own syscalls (FFmpeg, MediaPipe's C++) is outside its
view; neither is asked to write anything by this project.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_paths import CONF_DIR, VIDEOS

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_MEDIA_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\x1a\x45\xdf\xa3": "Matroska/WebM",
    b"RIFF": "AVI/WebP",
    b"GIF8": "GIF",
}


class WriteAudit:
    """Audit hook recording paths opened for writing while `active` (hooks cannot be removed)."""

    def __init__(self) -> None:
        self.active = False
        self.writes: list[str] = []
        self.moves: list[tuple[str, str]] = []  # (source, destination) of renames and copies

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                self.writes.append(os.path.abspath(os.fsdecode(path)))
        elif event in ("os.rename", "os.replace", "shutil.copyfile"):
            src, dst = (os.path.abspath(os.fsdecode(a)) for a in args[:2])
            self.moves.append((src, dst))
            self.writes.append(dst)


AUDIT = WriteAudit()
sys.addaudithook(AUDIT)


def _outside(writes: list[str], moves: list[tuple[str, str]], allowed: Path) -> list[str]:
    """Writes outside `allowed`, except temporary files that were then moved into it.

    Lightning saves a checkpoint through fsspec, which writes a temporary file in the system's
    temp dir and then moves it to its destination: that file is the checkpoint, and the test
    still checks where it ended up.
    """
    allowed = str(allowed.resolve())

    def inside(path: str) -> bool:
        return path == allowed or path.startswith(allowed + os.sep)

    staged = {src for src, dst in moves if inside(dst)}
    return [w for w in writes if not inside(w) and w not in staged and not w.startswith("/dev/")]


def _audited(fn, allowed: Path):
    AUDIT.writes.clear()
    AUDIT.moves.clear()
    AUDIT.active = True
    try:
        result = fn()
    finally:
        AUDIT.active = False
    return result, list(AUDIT.writes), _outside(AUDIT.writes, AUDIT.moves, allowed)


def _assert_no_media(run_dir: Path, crop_size: int) -> None:
    for path in run_dir.rglob("*"):
        if not path.is_file():
            continue
        head = path.read_bytes()[:16]
        assert head[4:8] != b"ftyp", f"{path} looks like an MP4/MOV file"
        for magic, kind in _MEDIA_MAGIC.items():
            assert not head.startswith(magic), f"{path} looks like a {kind} file"
        if path.suffix == ".ckpt":
            ckpt = torch.load(path, weights_only=True, map_location="cpu")
            for name, t in _tensors(ckpt):
                too_big = t.dtype == torch.uint8 and t.numel() >= crop_size * crop_size
                assert not too_big, f"{path}: uint8 tensor {name} {tuple(t.shape)} holds pixels?"


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def test_audit_hook_sees_writes(tmp_path):
    target = tmp_path / "x.bin"
    _, writes, outside = _audited(lambda: target.write_bytes(b"x"), tmp_path / "elsewhere")
    assert str(target) in writes and str(target) in outside


@pytest.mark.slow
def test_dry_run_writes_nothing(tmp_path, capsys):
    pytest.importorskip("mediapipe")
    import pipeline

    video = str(VIDEOS / "basketball_single.mp4")
    rc, writes, outside = _audited(
        lambda: pipeline.main(["--dry-run", "--video", video, "--max-frames", "8", "--json"]),
        tmp_path,
    )
    assert rc == 0
    assert writes == [], f"dry run opened files for writing: {writes}"
    assert outside == []


@pytest.mark.slow
def test_training_writes_only_metadata_into_its_run_dir(tmp_path):
    from hydra import compose, initialize_config_dir

    from train.train import train

    run_dir = tmp_path / "run"
    crop = 64
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                f"paths.output_dir={run_dir}",
                "trainer.max_steps=12",
                "trainer.val_check_interval=6",
                "trainer.log_every_n_steps=2",
                f"buffer.crop_size={crop}",
                "buffer.capacity=256",
                "buffer.min_samples=64",
                "buffer.batch_size=16",
                "buffer.val_max_samples=32",
            ],
        )
    summary, writes, outside = _audited(lambda: train(cfg), run_dir)
    assert writes, "the run wrote nothing at all: the audit hook is not seeing writes"
    assert outside == [], f"files written outside the run dir: {sorted(set(outside))}"
    assert (run_dir / "summary.json").is_file()
    assert np.isfinite(summary["val/mpjpe_mm"])
    _assert_no_media(run_dir, crop)


@pytest.mark.slow
def test_training_fed_by_the_ray_farm_writes_only_metadata(tmp_path):
    """producer=ray: real MediaPipe actors on real clips feed the trainer through Ray's object
    store. The trainer's process writes only into its run dir (and Ray's session logs); Ray
    spills no object and its session holds no image; actor processes are audited byte by byte
    in tests/data/test_ray_farm.py."""
    pytest.importorskip("ray")
    pytest.importorskip("mediapipe")
    from hydra import compose, initialize_config_dir

    from train.train import train

    run_dir, crop = tmp_path / "run", 64
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "experiment=mediapipe_local", "producer=ray", "producer.actors=2",
            "producer.object_store_mb=128", f"paths.output_dir={run_dir}",
            "trainer.max_steps=8", "trainer.val_check_interval=4",
            "trainer.enable_progress_bar=false", f"buffer.crop_size={crop}",
            "buffer.capacity=512", "buffer.min_samples=48", "buffer.batch_size=16",
            "buffer.val_max_samples=16", "source.frameskip=4",
        ])
    summary, writes, outside = _audited(lambda: train(cfg), run_dir)
    ray_logs = [w for w in outside if w.startswith("/tmp/ray/")]
    assert [w for w in outside if w not in ray_logs] == [], sorted(set(outside))
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert summary["train_videos"] >= 2  # both actors' shards reached the trainer
    _assert_no_media(run_dir, crop)
    sessions = list(Path("/tmp/ray").glob("session_*"))
    assert not list(Path("/tmp/ray").glob("session_*/ray_spilled_objects/*"))
    for session in sessions:
        for path in session.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size >= 16:
                head = path.open("rb").read(16)
                assert not any(head.startswith(m) for m in _MEDIA_MAGIC), path
