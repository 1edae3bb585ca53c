"""The DataModule: frozen val split, primed training buffer, loaders, teardown, clear failures."""

import functools
import importlib.util
import itertools
import multiprocessing
import os
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from fakes.teachers import FakeTeacher
from shared_paths import VIDEOS

from data.datamodule import EmptyValidationSetError, StreamDataModule
from data.ring_buffer import BufferStarvedError
from data.shared import SEGMENT_PREFIX, SHM_DIR
from data.workers import ProducerSettings
from labeler.base import TeacherUnavailableError
from stream_pose.camera import default_K
from stream_pose.types import Frame, VideoRef
from video_sources.base import SourceStats
from video_sources.synthetic import SyntheticSource

HW = (48, 64)
S = 32



class FakeSource:
    """`videos` [(id, n_frames)] of noise frames, once or (loop) forever."""

    kind = "fake"

    def __init__(self, videos, loop):
        self.videos, self.loop, self.stats = videos, loop, SourceStats()

    def __iter__(self):
        rng = np.random.default_rng(0)
        while True:
            for vid, n in self.videos:
                for i in range(n):
                    self.stats.frames += 1
                    image = rng.integers(0, 256, (*HW, 3), dtype=np.uint8)
                    yield Frame(image, i, i / 30, VideoRef(vid, "fake"), K=default_K(*HW))
            if not self.loop or not self.videos:
                return

    def close(self):
        pass


def _source_factory(calls, n_train=3, n_val=3, frames=4, empty=()):
    def make(split="train", loop=True):
        calls.append((split, loop))
        n = 0 if split in empty else (n_train if split == "train" else n_val)
        return FakeSource([(f"{split}-{i}", frames) for i in range(n)], loop)

    return make


def _module(source, teacher=FakeTeacher, **kw) -> StreamDataModule:
    settings = dict(capacity=64, crop_size=S, batch_size=8, min_samples=32, start_timeout_s=5.0,
                    val_max_samples=10)
    return StreamDataModule(source, teacher, **{**settings, **kw})


def _producer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "stream-pose-producer" and t.is_alive()]


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    yield
    assert not _producer_threads(), "a test left a producer thread running"


def test_setup_freezes_val_and_the_train_loader_primes_the_buffer():
    calls = []
    dm = _module(_source_factory(calls))
    try:
        dm.setup("fit")
        assert calls == [("val", False)]  # the stream starts after a checkpoint's restore
        dm.train_dataloader()
        assert calls == [("val", False), ("train", True)]
        assert dm.val_video_ids == ["val-0", "val-1", "val-2"]  # 4 + 4 + 2 = val_max_samples
        assert len(dm.val_dataloader().dataset) == 10
        assert len(dm.buffer) >= 32
        assert dm.train_video_ids_seen and not set(dm.train_video_ids_seen) & set(dm.val_video_ids)
        assert dm.producer_stats.total.samples_pushed >= 32 and dm.producer_failure is None
        dm.setup("fit")  # Lightning may call them again: nothing is rebuilt
        dm.train_dataloader()
        assert len(calls) == 2
    finally:
        dm.teardown("fit")


def test_a_finite_stream_finishes_labelling_and_training_goes_on_with_all_cores():
    from train.callbacks import ReclaimProducerCores

    def once(split="train", loop=True):  # source.loop=false: one pass over 3 x 16 frames
        return FakeSource([(f"{split}-{i}", 16) for i in range(3)], loop=False)

    dm = _module(once, capacity=64, min_samples=32)
    threads = torch.get_num_threads()
    try:
        dm.setup("fit")
        loader = iter(dm.train_dataloader())
        deadline = time.monotonic() + 10
        while not dm.labelling_finished and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dm.labelling_finished and dm.producer_stats.total.samples_pushed == 48
        dm.check_producers()  # a clean end is no failure: batches keep coming from the buffer
        assert next(loader).image.shape[0] == 8
        torch.set_num_threads(1)
        trainer = type("Trainer", (), {"datamodule": dm, "global_step": 100, "world_size": 1})
        callback = ReclaimProducerCores(threads=2, every_n_steps=50)
        callback.on_train_batch_end(trainer, None)
        assert callback.reclaimed_at_step == 100 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
        dm.teardown("fit")


def test_a_looping_stream_never_counts_as_finished():
    dm = _module(_source_factory([]))
    try:
        dm.setup("fit")
        dm.train_dataloader()
        assert not dm.labelling_finished
    finally:
        dm.teardown("fit")


def test_loaders_give_batches_of_the_right_shapes_and_dtypes():
    dm = _module(_source_factory([]))
    try:
        dm.setup("fit")
        train = next(iter(dm.train_dataloader()))
        val = list(dm.val_dataloader())
    finally:
        dm.close()
    for batch, n in ((train, 8), (val[0], 8)):
        assert batch.image.shape == (n, 3, S, S) and batch.image.dtype == torch.uint8
        assert batch.kpts2d.shape == (n, 27, 2) and batch.kpts2d.dtype == torch.float32
        assert batch.kpts3d.shape == (n, 27, 3) and batch.visibility.shape == (n, 27)
        assert batch.K_crop.shape == (n, 3, 3) and batch.video_key.dtype == torch.int64
    assert [len(b.image) for b in val] == [8, 2]
    assert torch.all(train.kpts3d[:, 0] == 0)  # pelvis-relative targets
    assert dm.train_dataset.batches == 1 and dm.buffer.stats().samples_read == 8


def test_teardown_stops_the_producer_thread():
    dm = _module(_source_factory([]))
    dm.setup("fit")
    dm.train_dataloader()
    assert len(_producer_threads()) == 1
    dm.teardown("fit")
    assert not _producer_threads()
    dm.close()  # idempotent


def test_an_empty_val_split_is_a_clear_error():
    dm = _module(_source_factory([], empty=("val",)))
    with pytest.raises(EmptyValidationSetError, match="no labelled person: 0 frames"):
        dm.setup("fit")


def test_a_train_source_that_yields_nothing_fails_fast():
    dm = _module(_source_factory([], empty=("train",)), start_timeout_s=30.0)
    dm.setup("fit")
    t0 = time.monotonic()
    with pytest.raises(BufferStarvedError, match="source ran out after 0 frames"):
        dm.train_dataloader()
    assert time.monotonic() - t0 < 5.0


def test_a_teacher_that_finds_nobody_times_out():
    teacher = functools.partial(FakeTeacher, lambda f: "none" if f.video.id.startswith("train")
                                else None)
    dm = _module(_source_factory([]), teacher, start_timeout_s=0.5)
    dm.setup("fit")
    t0 = time.monotonic()
    with pytest.raises(BufferStarvedError, match=r"0/32 samples: timeout.*0 persons") as err:
        dm.train_dataloader()
    assert 0.5 <= time.monotonic() - t0 < 4.0 and err.value.reason is None


def test_an_unavailable_teacher_fails_the_stream_at_once():
    def behaviour(frame):
        if frame.video.id.startswith("train"):
            raise TeacherUnavailableError("CoMotion weights missing: run setup")

    dm = _module(_source_factory([]), functools.partial(FakeTeacher, behaviour),
                 start_timeout_s=60.0)
    dm.setup("fit")
    t0 = time.monotonic()
    with pytest.raises(BufferStarvedError, match="CoMotion weights missing") as err:
        dm.train_dataloader()
    assert time.monotonic() - t0 < 5.0
    assert isinstance(err.value.__cause__, TeacherUnavailableError)


class _TinyModule(L.LightningModule):
    """Just enough of a model to drive the loaders through a Lightning fit."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 27 * 3)
        self.val_rows = 0

    def _loss(self, batch):
        feats = batch.image.float().mean(dim=(-2, -1)) / 255  # [B, 3]
        return torch.nn.functional.mse_loss(self.net(feats).view(-1, 27, 3), batch.kpts3d)

    def training_step(self, batch, _):
        return self._loss(batch)

    def validation_step(self, batch, _):
        self.val_rows += len(batch.image)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_lightning_fit_runs_from_the_stream_and_tears_down():
    dm, model = _module(_source_factory([])), _TinyModule()
    trainer = L.Trainer(max_steps=3, val_check_interval=3, limit_val_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3 and model.val_rows == 10
    assert not _producer_threads()  # Lightning's teardown stopped the producer


@pytest.mark.skipif(
    importlib.util.find_spec("video_sources.synthetic") is None
    or importlib.util.find_spec("labeler.oracle") is None,
    reason="needs SyntheticSource and OracleTeacher",
)
def test_synthetic_source_and_oracle_teacher():
    from labeler.oracle import OracleTeacher
    from video_sources.synthetic import SyntheticSource

    source = functools.partial(SyntheticSource, num_videos=2, frames_per_video=4, seed=0,
                               image_size=(96, 128))
    dm = StreamDataModule(source, OracleTeacher, capacity=64, crop_size=S, batch_size=4,
                          min_samples=8, start_timeout_s=30.0, val_max_samples=6)
    try:
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
    finally:
        dm.close()
    assert dm.val_video_ids and not set(dm.val_video_ids) & set(dm.train_video_ids_seen)
    assert batch.image.shape == (4, 3, S, S) and torch.all(batch.kpts3d[:, 0] == 0)


@pytest.mark.skipif(
    importlib.util.find_spec("video_sources.local") is None or not VIDEOS.is_dir(),
    reason="needs LocalSource and ../shared/videos",
)
def test_real_footage_is_split_by_video():
    from video_sources.local import LocalSource

    paths = [VIDEOS / "posetrack_short.mp4", VIDEOS / "street_short.mp4"]
    source = functools.partial(LocalSource, paths, val_videos=["street_short"], max_side=160,
                               loop=True)
    dm = _module(source, min_samples=12, val_max_samples=8)
    try:
        dm.setup("fit")
        dm.train_dataloader()
        batch = next(iter(dm.val_dataloader()))
    finally:
        dm.close()
    assert dm.val_video_ids == ["street_short"]
    assert dm.train_video_ids_seen == ["posetrack_short"]
    assert len(batch.image) == 5 and batch.image.float().std() > 0  # real pixels


# --- producer processes and the shared buffer ---------------------------------------------------

SYNTH = functools.partial(SyntheticSource, num_videos=4, frames_per_video=4, seed=0,
                          image_size=(96, 128))


def _our_segments() -> list[Path]:
    return list(Path(SHM_DIR).glob(f"{SEGMENT_PREFIX}{os.getpid()}_*"))


@pytest.fixture(autouse=True)
def _no_leftover_segments():
    yield
    assert not _our_segments(), "a test left a shared-memory segment behind"
    assert not multiprocessing.active_children(), "a test left producer processes running"


def test_producer_processes_fill_a_shared_jpeg_buffer_and_close_it():
    from labeler.oracle import OracleTeacher

    dm = StreamDataModule(SYNTH, OracleTeacher, capacity=64, crop_size=S, batch_size=4,
                          min_samples=16, val_max_samples=8, start_timeout_s=60.0,
                          storage="jpeg", producer=ProducerSettings(workers=2, heartbeat_s=0.2))
    try:
        dm.setup("fit")
        loader = dm.train_dataloader()
        assert dm.buffer.shared and len(_our_segments()) == 1
        batch = next(iter(loader))
        dm.check_producers()  # healthy: no error
    finally:
        dm.close()
    stats = dm.buffer.stats()  # final counters survive the close
    assert stats.storage == "jpeg" and stats.pushed >= 16 and stats.samples_read == 4
    assert batch.image.shape == (4, 3, S, S) and batch.image.dtype == torch.uint8
    assert torch.all(batch.kpts3d[:, 0] == 0) and dm.producer_restarts == 0
    assert dm.train_video_ids_seen and not set(dm.train_video_ids_seen) & set(dm.val_video_ids)


@pytest.mark.slow
def test_dataloader_worker_processes_sample_the_shared_buffer():
    from labeler.oracle import OracleTeacher

    dm = StreamDataModule(SYNTH, OracleTeacher, capacity=64, crop_size=S, batch_size=4,
                          min_samples=16, val_max_samples=8, start_timeout_s=60.0,
                          loader_workers=2)  # producer thread, buffer shared for the loaders
    try:
        dm.setup("fit")
        batches = list(itertools.islice(iter(dm.train_dataloader()), 6))
        stats = dm.buffer.stats()
    finally:
        dm.close()
    assert dm.buffer.shared and all(b.image.shape == (4, 3, S, S) for b in batches)
    assert stats.samples_read >= 24  # counted in the buffer's shared counters
    rows = [tuple(b.frame_index.tolist()) + tuple(b.video_key.tolist()) for b in batches]
    assert len(set(rows)) == len(rows)  # each worker draws its own random stream


def test_a_batch_moves_as_one_typed_object():
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from stream_pose.batch import Batch

    rows = {"image": np.zeros((2, 3, 4, 4), np.uint8), "kpts2d": np.zeros((2, 27, 2), np.float32),
            "kpts3d": np.zeros((2, 27, 3), np.float32), "visibility": np.ones((2, 27), np.float32),
            "K_crop": np.zeros((2, 3, 3), np.float32), "video_key": np.arange(2)}
    batch = Batch.from_arrays(rows)
    assert len(batch) == 2 and batch.writer is None and batch.image.dtype == torch.uint8
    moved = move_data_to_device(batch, torch.device("cpu"))  # what Lightning's transfer does
    assert isinstance(moved, Batch) and torch.equal(moved.video_key, batch.video_key)
    items = [{k: torch.as_tensor(v[i]) for k, v in rows.items()} for i in range(2)]
    assert torch.equal(Batch.collate(items).kpts3d, batch.kpts3d)
    with pytest.raises(ValueError, match="missing"):
        Batch.from_arrays({"image": rows["image"]})
