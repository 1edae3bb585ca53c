"""Resume and interrupt (issue 6): `ckpt_path=...` continues the step count, the optimizer, the LR
schedule and the stream's cursor (used videos are skipped, the buffer refills); Ctrl-C saves a
checkpoint and exits with status 130."""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakes.pexels import FakePexels
from hydra import compose, initialize_config_dir
from proctools import session_pids
from shared_paths import CONF_DIR, REPO, VIDEOS

from data.datamodule import StreamDataModule
from data.ring_buffer import RingBuffer
from data.shared import SEGMENT_PREFIX, SHM_DIR
from data.workers import ProducerPool, ProducerSettings
from labeler.oracle import OracleTeacher
from train.train import CheckpointNotFoundError, train
from video_sources.local import LocalSource
from video_sources.pexels import PexelsClient, PexelsSource
from video_sources.synthetic import SyntheticSource

STEPS, VAL_EVERY, MIN_SAMPLES = 6, 3, 32
TINY = [
    f"trainer.val_check_interval={VAL_EVERY}", "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "buffer.crop_size=64", "buffer.capacity=256", f"buffer.min_samples={MIN_SAMPLES}",
    "buffer.batch_size=8", "buffer.val_max_samples=32", "source.frames_per_video=4",
    "source.num_videos=4", "model.net.widths=[16,32,32,64]", "model.net.head_hidden=128",
]
DM_KEY = StreamDataModule.__qualname__  # where Lightning keeps the datamodule's state_dict


def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[*TINY, *overrides])


def _ckpt(run_dir: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)


def _adamw_steps(ckpt: dict) -> set[float]:
    return {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}


def _used(ckpt: dict) -> set[str]:
    return {v for ids in ckpt[DM_KEY]["train_videos_used"].values() for v in ids}


def _train_videos(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "train_videos_rank0.json").read_text())["videos"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A STEPS-step run, then a run resumed from its last.ckpt to 2 x STEPS steps."""
    first = tmp_path_factory.mktemp("first")
    train(_compose(f"paths.output_dir={first}", f"trainer.max_steps={STEPS}"))
    resumed = tmp_path_factory.mktemp("resumed")
    summary = train(_compose(f"paths.output_dir={resumed}", f"trainer.max_steps={2 * STEPS}",
                             f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"))
    return first, resumed, summary


@pytest.mark.slow
def test_resume_continues_the_step_count_optimizer_and_schedule(runs):
    first, resumed, summary = runs
    before, after = _ckpt(first), _ckpt(resumed)
    assert before["global_step"] == STEPS and _adamw_steps(before) == {STEPS}
    # A fresh optimizer would count STEPS steps, not 2 x STEPS.
    assert after["global_step"] == 2 * STEPS and _adamw_steps(after) == {2 * STEPS}
    assert summary["status"] == "completed" and summary["steps"] == 2 * STEPS
    (schedule,) = after["lr_schedulers"]  # the resumed run's own length (ScheduleOnResume)
    assert schedule["total_steps"] == 2 * STEPS and schedule["last_epoch"] == 2 * STEPS
    (metrics,) = resumed.rglob("metrics.csv")
    steps = [int(r["step"]) for r in csv.DictReader(metrics.open()) if r["train/loss"]]
    assert steps and min(steps) >= STEPS  # the step count went on from STEPS, not from 0


@pytest.mark.slow
def test_resume_skips_the_videos_the_checkpoint_lists_and_refills_the_buffer(runs):
    first, resumed, summary = runs
    used = _used(_ckpt(first))
    assert used and used <= set(_train_videos(first))
    again = _train_videos(resumed)
    assert again and not used & set(again)
    assert summary["samples_pushed"] >= MIN_SAMPLES  # crops are never saved: they came anew
    assert _used(_ckpt(resumed)) >= used | set(again[:1])  # the cursor carries over


def test_a_missing_checkpoint_is_refused_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    cfg = _compose(f"paths.output_dir={run_dir}", f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at .*nope.ckpt"):
        train(cfg)
    assert not run_dir.exists()


# --- Ctrl-C -----------------------------------------------------------------------------------


def _session_ended(sid: int, timeout_s: float = 20.0) -> bool:
    """Wait until session `sid` has no process left (helpers exit just after their parent)."""
    deadline = time.monotonic() + timeout_s
    while session_pids(sid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train.train", f"hydra.run.dir={run_dir}",
         "trainer.max_steps=100000", *TINY],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, like a job in a terminal
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.ckpt").exists():  # the first steps are done
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        pids = session_pids(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    ckpt = _ckpt(run_dir, "interrupted.ckpt")
    assert ckpt["global_step"] >= VAL_EVERY and _adamw_steps(ckpt) == {ckpt["global_step"]}
    assert "interrupted at step" in err and "ckpt_path=" in err and "done:" not in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == ckpt["global_step"]
    assert _session_ended(proc.pid), "the run left processes behind"
    leftovers = [p for p in Path(SHM_DIR).glob(f"{SEGMENT_PREFIX}*")
                 if int(p.name[len(SEGMENT_PREFIX):].split("_")[0]) in pids]
    assert not leftovers


# --- the pieces: the datamodule's cursor and the sources' skip_ids -----------------------------

SYNTH = functools.partial(SyntheticSource, num_videos=2, frames_per_video=2, image_size=(96, 128))


def _datamodule() -> StreamDataModule:
    return StreamDataModule(SYNTH, OracleTeacher, capacity=32, crop_size=32, batch_size=4,
                            min_samples=8, val_max_samples=4, start_timeout_s=30.0,
                            producer=ProducerSettings(workers=0))


def _started(state: dict | None = None) -> StreamDataModule:
    """A datamodule whose stream runs, restored from `state` first, as Lightning orders it."""
    dm = _datamodule()
    dm.setup("fit")
    if state is not None:
        dm.load_state_dict(state)
    dm.train_dataloader()
    return dm


def test_datamodule_state_lists_used_videos_and_a_restored_one_skips_them():
    first = _started()
    try:
        state = first.state_dict()
    finally:
        first.close()
    (used,) = state["train_videos_used"].values()  # one shard: the producer thread
    assert used and set(used) <= set(first.train_video_ids_seen)
    second = _started(state)
    try:
        again = second.train_video_ids_seen
        assert again and not set(used) & set(again)
        merged = second.state_dict()["train_videos_used"]["0/1"]
        assert set(used) | {again[0]} <= set(merged)  # a later checkpoint keeps both runs'
    finally:
        second.close()


def test_producer_processes_report_their_videos_when_asked():
    buffer = RingBuffer(64, 32, shared=True)
    slow = ProducerSettings(workers=1, heartbeat_s=60.0)  # the periodic report comes too late
    pool = ProducerPool(SYNTH, OracleTeacher, buffer, settings=slow)
    try:
        pool.start()
        buffer.wait_for(16, 60.0)
        pushed = {buffer.video_id(k) for k in set(buffer.snapshot()["video_key"].tolist())}
        assert pool.refresh_stats(timeout_s=10.0)
        listed = set(pool.stats.per_video)
    finally:
        pool.stop()
        buffer.close()
    assert pushed and pushed <= listed  # what a checkpoint taken now must list


def test_datamodule_refuses_a_bad_state_or_a_late_restore():
    dm = _datamodule()
    with pytest.raises(ValueError, match="train_videos_used"):
        dm.load_state_dict({"videos": ["synth-train-0000"]})
    started = _started()
    try:
        with pytest.raises(RuntimeError, match="stream started"):
            started.load_state_dict({"train_videos_used": {}})
    finally:
        started.close()


def _video_ids(frames) -> list[str]:
    return list(dict.fromkeys(f.video.id for f in frames))


def test_synthetic_source_skips_ids_without_changing_the_others():
    skip = {"synth-train-0001", "synth-train-0003"}
    kw = dict(split="train", loop=False, num_videos=5, frames_per_video=1, image_size=(48, 64))
    plain, skipping = SyntheticSource(**kw), SyntheticSource(**kw, skip_ids=skip)
    assert _video_ids(skipping) == ["synth-train-0000", "synth-train-0002", "synth-train-0004"]
    by_id = {f.video.id: f.image for f in plain}
    assert all((f.image == by_id[f.video.id]).all() for f in SyntheticSource(**kw, skip_ids=skip))


LOCAL = [VIDEOS / "posetrack_short.mp4", VIDEOS / "street_short.mp4"]
needs_footage = pytest.mark.skipif(not all(p.is_file() for p in LOCAL), reason="no footage")


@needs_footage
def test_local_source_skips_used_videos_in_its_first_pass_only():
    looped = iter(LocalSource(LOCAL, split="all", loop=True, max_side=64,
                              skip_ids=["posetrack_short"]))
    ids = [next(looped).video.id for _ in range(15)]  # 5 + 5 + 5 frames
    assert ids == ["street_short"] * 5 + ["posetrack_short"] * 5 + ["street_short"] * 5


@needs_footage
def test_local_source_with_every_video_used():
    every = ["posetrack_short", "street_short"]
    looped = iter(LocalSource(LOCAL, split="all", loop=True, max_side=64, skip_ids=every))
    assert next(looped).video.id == "posetrack_short"  # a new pass at once, no "no readable"
    once = LocalSource(LOCAL, split="all", loop=False, max_side=64, skip_ids=every)
    assert list(once) == []


@needs_footage
def test_pexels_source_never_fetches_skipped_videos(tmp_path):
    with FakePexels("test-key", VIDEOS) as fake:
        fake.results["yoga"] = [fake.video(107, "posetrack_short.mp4"),
                                fake.video(108, "street_short.mp4")]
        client = PexelsClient("test-key", api_base=fake.base, timeout_s=5, sleep=lambda s: None)
        source = PexelsSource(["yoga"], client=client, n=5, max_frames=1, max_side=64,
                              skip_ids=["pexels-107", "synth-train-0000"])
        assert _video_ids(source) == ["pexels-108"]
        assert not fake.file_requests(107)
