"""Producer processes: sharding, supervision (restart, give up, hang), and a short training run.

Workers are spawned and re-import this module to unpickle its fakes: keep its imports light
(no torch or Lightning at module level).
"""

import csv
import functools
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from shared_paths import REPO

from data.producer import ProducerFailedError
from data.ring_buffer import BufferStarvedError, RingBuffer, video_key
from data.shared import SEGMENT_PREFIX, SHM_DIR
from data.workers import ProducerPool, ProducerSettings
from labeler.base import TeacherUnavailableError
from labeler.oracle import OracleTeacher
from video_sources.local import LocalSource
from video_sources.synthetic import SyntheticSource

VIDEOS = REPO.parent / "shared" / "videos"
S = 32
SYNTH = functools.partial(SyntheticSource, num_videos=8, frames_per_video=4, seed=0,
                          image_size=(96, 128))


class FlakySource:
    """Synthetic frames, then `RuntimeError("disk on fire")` after `frames` frames."""

    kind = "synthetic"

    def __init__(self, frames: int = 3, split: str = "train", **kwargs):
        self.inner, self.frames = SYNTH(split=split, **kwargs), frames

    @property
    def stats(self):
        return self.inner.stats

    def __iter__(self):
        for i, frame in enumerate(self.inner):
            if i == self.frames:
                raise RuntimeError("disk on fire")
            yield frame

    def close(self):
        self.inner.close()


def unavailable_teacher():
    raise TeacherUnavailableError("no GPU here: install the CUDA build")


def _segments() -> list[Path]:
    return list(Path(SHM_DIR).glob(f"{SEGMENT_PREFIX}{os.getpid()}_*"))


@pytest.fixture(autouse=True)
def _nothing_left_behind():
    yield
    assert not multiprocessing.active_children(), "a test left producer processes running"
    assert not _segments(), "a test left a shared-memory segment behind"


def _pool(buffer, source=SYNTH, teacher=OracleTeacher, **settings) -> ProducerPool:
    options = {"workers": 2, "max_restarts": 3, "heartbeat_s": 0.2, "stop_timeout_s": 5.0}
    rank = {k: settings.pop(k) for k in ("rank", "world_size") if k in settings}
    return ProducerPool(source, teacher, buffer,
                        settings=ProducerSettings(**{**options, **settings}), **rank)


def _wait_until(condition, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


# --- sharding ----------------------------------------------------------------------------------


def _local_shard(k: int, n: int) -> set[str] | None:
    """Ids of local shard k of n, or None when the shard is empty (a clear error)."""
    try:
        return set(LocalSource(VIDEOS, split="all", shard=k, num_shards=n).video_ids())
    except ValueError as exc:
        assert f"shard {k} of {n}" in str(exc) and "fewer producer workers" in str(exc)
        return None


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="needs ../shared/videos")
@pytest.mark.parametrize("n", [2, 3])
def test_local_shards_are_disjoint_and_cover_the_split(n):
    everything = set(LocalSource(VIDEOS, split="all").video_ids())
    shards = [s for s in (_local_shard(k, n) for k in range(n)) if s is not None]
    assert set().union(*shards) == everything
    assert sum(map(len, shards)) == len(everything)  # disjoint


def test_synthetic_shards_are_disjoint_and_cover_the_split():
    def ids(**shard):
        source = SyntheticSource(split="train", loop=False, num_videos=9, frames_per_video=1,
                                 image_size=(64, 64), **shard)
        return [frame.video.id for frame in source]

    everything = ids()
    shards = [ids(shard=k, num_shards=3) for k in range(3)]
    assert all(shards) and sorted(sum(shards, [])) == sorted(everything)


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="needs ../shared/videos")
def test_pexels_shards_are_disjoint_and_cover_the_results(tmp_path):
    from fakes.pexels import FakePexels

    from video_sources.pexels import PexelsClient, PexelsSource

    with FakePexels("k", VIDEOS) as fake:
        fake.results["yoga"] = [fake.video(i, "street_short.mp4") for i in range(300, 310)]

        def ids(**shard):
            client = PexelsClient("k", api_base=fake.base, sleep=lambda s: None)
            source = PexelsSource(["yoga"], n=20, client=client, per_page=10, max_frames=1,
                                  split="all", **shard)
            return [frame.video.id for frame in source]

        everything, shards = ids(), [ids(shard=k, num_shards=2) for k in range(2)]
    assert len(everything) == 10 and all(shards)
    assert sorted(shards[0] + shards[1]) == sorted(everything)


def test_workers_of_a_rank_label_their_own_shards():
    with RingBuffer(256, S, shared=True) as buffer:
        with _pool(buffer, rank=1, world_size=2) as pool:
            _wait_until(lambda: set(buffer.stats().slots_by_writer) == {0, 1})  # both started
            snap = buffer.snapshot()
            pids = pool.pids
        assert not pool.is_alive and all(not _running(pid) for pid in pids)
    # ids through the workers' reports: by now they may have overwritten the snapshot's slots,
    # so `buffer.video_id` could no longer find them
    ids = {video_key(v): v for v in pool.stats.per_video}
    k = np.array([_video_index(ids[key]) for key in snap["video_key"].tolist()])
    # shard = rank * workers + worker = 2 + writer, of world_size * workers = 4
    assert set(snap["writer"]) == {0, 1} and np.all(k % 4 == 2 + snap["writer"])
    reported = {_video_index(v) % 4 for v in pool.stats.per_video}  # counters of both workers
    assert reported == {2, 3} and pool.restarts == 0
    # the workers' last reports arrived before they exited: every push is counted
    assert pool.stats.total.samples_pushed == buffer.stats().pushed


def _video_index(video_id: str) -> int:
    return int(video_id.rsplit("-", 1)[1])  # synth-train-0007 -> 7


# --- supervision -------------------------------------------------------------------------------


def _running(pid: int | None) -> bool:
    """Whether process `pid` exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, TypeError):
        return False
    return state != "Z"


def test_a_sigkilled_worker_is_logged_and_restarted(caplog):
    with RingBuffer(128, S, shared=True) as buffer, _pool(buffer) as pool:
        buffer.wait_for(128, 60.0, abort=pool.failure_reason)
        victim = pool.pids[0]
        with caplog.at_level(logging.ERROR, logger="data.workers"):
            os.kill(victim, signal.SIGKILL)
            _wait_until(lambda: pool.restarts == 1 and pool.pids[0] not in (None, victim))
        before = pool.worker_stats()[0].total.frames
        _wait_until(lambda: pool.worker_stats()[0].total.frames > before)  # labelling again
        assert pool.error is None and pool.failure_reason() is None
    assert any(f"producer 0 (pid {victim}) died: killed by signal SIGKILL; restarting it (1/3)"
               in r.getMessage() for r in caplog.records)


def test_a_worker_that_keeps_dying_fails_the_pool_with_its_error(caplog):
    with RingBuffer(256, S, shared=True) as buffer:
        with caplog.at_level(logging.ERROR, logger="data.workers"):
            with _pool(buffer, source=FlakySource, workers=1, max_restarts=2) as pool:
                t0 = time.monotonic()
                with pytest.raises(BufferStarvedError, match="RuntimeError: disk on fire"):
                    buffer.wait_for(256, 60.0, abort=pool.failure_reason)
                assert time.monotonic() - t0 < 45.0
    assert pool.restarts == 2 and "2 restarts used" in pool.failure_reason()
    assert isinstance(pool.error, RuntimeError) and "disk on fire" in str(pool.error)
    assert "raise RuntimeError(\"disk on fire\")" in str(pool.error.__cause__)  # its traceback
    restarted = [r for r in caplog.records if "restarting it" in r.getMessage()]
    assert len(restarted) == 2 and "disk on fire" in restarted[0].getMessage()


def test_an_unavailable_teacher_fails_at_once_without_restarts():
    with RingBuffer(16, S, shared=True) as buffer, _pool(buffer, teacher=unavailable_teacher,
                                                         workers=1) as pool:
        with pytest.raises(BufferStarvedError, match="no GPU here"):
            buffer.wait_for(16, 60.0, abort=pool.failure_reason)
    assert pool.restarts == 0 and isinstance(pool.error, TeacherUnavailableError)
    assert "would fail again" in pool.failure_reason()


def test_a_hung_worker_is_killed_and_restarted(caplog):
    with RingBuffer(64, S, shared=True) as buffer, _pool(buffer, workers=1,
                                                         heartbeat_timeout_s=1.5) as pool:
        buffer.wait_for(64, 60.0, abort=pool.failure_reason)
        victim = pool.pids[0]
        with caplog.at_level(logging.WARNING, logger="data.workers"):
            os.kill(victim, signal.SIGSTOP)  # alive, but silent
            _wait_until(lambda: pool.restarts == 1 and pool.pids[0] not in (None, victim))
    assert any("no heartbeat" in r.getMessage() for r in caplog.records)


_ORPHAN_SCRIPT = textwrap.dedent("""
    import functools, time
    from data.ring_buffer import RingBuffer
    from data.workers import ProducerPool, ProducerSettings
    from labeler.oracle import OracleTeacher
    from video_sources.synthetic import SyntheticSource

    if __name__ == "__main__":
        buffer = RingBuffer(64, 32, shared=True)
        source = functools.partial(SyntheticSource, num_videos=4, frames_per_video=4)
        pool = ProducerPool(source, OracleTeacher, buffer,
                            settings=ProducerSettings(workers=2, heartbeat_s=0.2))
        pool.start()
        buffer.wait_for(64, 60)
        print(buffer.handle.segment.name, *pool.pids, flush=True)
        time.sleep(60)
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path(SHM_DIR).is_dir(), reason="needs /dev/shm")
def test_workers_exit_and_memory_is_freed_when_the_trainer_is_killed(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(_ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    name, *pids = proc.stdout.readline().split()
    proc.kill()
    proc.wait(10)
    _wait_until(lambda: not any(_running(int(p)) for p in pids), 20.0)
    _wait_until(lambda: not (Path(SHM_DIR) / name).exists(), 20.0)


# --- with the trainer --------------------------------------------------------------------------


def test_a_failed_pool_fails_the_training_step():
    import lightning as L
    import torch

    from data.datamodule import StreamDataModule

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(3, 81)

        def training_step(self, batch, _):
            time.sleep(0.01)
            x = batch.image.float().mean(dim=(-2, -1)) / 255
            return (self.net(x).view(-1, 27, 3) - batch.kpts3d).abs().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    source = functools.partial(FlakySource, frames=12)
    dm = StreamDataModule(source, OracleTeacher, capacity=64, crop_size=S, batch_size=4,
                          min_samples=8, val_max_samples=4, start_timeout_s=60.0,
                          producer=ProducerSettings(workers=1, max_restarts=0, heartbeat_s=0.2))
    trainer = L.Trainer(max_steps=100_000, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", limit_val_batches=0)
    try:
        with pytest.raises(ProducerFailedError, match="disk on fire") as err:
            trainer.fit(Tiny(), datamodule=dm)
    finally:
        dm.close()
    assert isinstance(err.value.__cause__, RuntimeError) and 0 < trainer.global_step < 100_000


@pytest.mark.slow
def test_a_short_training_run_with_two_producer_processes(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from shared_paths import CONF_DIR

    from data.datamodule import StreamDataModule
    from train.train import train

    modules, close = [], StreamDataModule.close
    monkeypatch.setattr(StreamDataModule, "close", lambda self: (modules.append(self),
                                                                 close(self))[1])
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[
            f"paths.output_dir={tmp_path}", "producer.workers=2", "producer.heartbeat_s=0.2",
            "trainer.max_steps=10", "trainer.val_check_interval=10",
            "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "buffer.crop_size=64", "buffer.capacity=256",
            "buffer.min_samples=64", "buffer.batch_size=8", "buffer.val_max_samples=16",
            "source.frames_per_video=4", "model.net.widths=[8,16,16,32]",
        ])
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 10
    stats = modules[0].buffer.stats()  # the final counters, kept after close
    assert set(stats.slots_by_writer) == {0, 1} and min(stats.slots_by_writer.values()) > 0
    assert modules[0].producer_restarts == 0 and summary["samples_pushed"] >= 64
    (metrics,) = tmp_path.rglob("metrics.csv")  # telemetry, rates included, was logged
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("buffer/pushed_per_s")]
    assert rows and float(rows[-1]["buffer/consumed_per_s"]) > 0
    assert float(rows[-1]["producer/fps"]) >= 0 and 0 <= float(rows[-1]["buffer/wait_frac"]) < 1


def test_unpicklable_factories_are_a_clear_error():
    local_factory = functools.partial(lambda **kw: SYNTH(**kw))  # a lambda cannot be pickled
    with RingBuffer(16, S, shared=True) as buffer:
        pool = _pool(buffer, source=local_factory)
        with pytest.raises(TypeError, match="picklable source and teacher factories"):
            pool.start()
        assert not pool.is_alive


def test_the_thread_and_the_pool_are_both_stream_producers():
    from data.producer import Producer, StreamProducer

    members = {name for name in vars(StreamProducer) if not name.startswith("_")}
    assert {"start", "stop", "stats", "failure_reason", "worker_stats", "restarts"} <= members
    for cls in (Producer, ProducerPool):
        assert members <= set(dir(cls)), (cls, members - set(dir(cls)))
