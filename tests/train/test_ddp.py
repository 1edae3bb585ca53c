"""Lightning DDP (issue 5): one buffer and its producers per rank on disjoint shards of the
stream, validation sharded so that its metrics equal the single-process ones, one summary, no
leftover processes or shared memory."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from proctools import session_pids
from shared_paths import CONF_DIR, REPO

from data.shared import SEGMENT_PREFIX, SHM_DIR
from stream_pose.runtime import set_torch_threads
from train.metrics import PoseErrorMetric
from train.train import train

STEPS, VAL_EVERY = 4, 2
VAL_SAMPLES = 23  # odd: the two ranks' val shards need padding
TINY = [
    f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={VAL_EVERY}",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "buffer.crop_size=64", "buffer.capacity=256",
    "buffer.min_samples=32", "buffer.batch_size=8", f"buffer.val_max_samples={VAL_SAMPLES}",
    "source.frames_per_video=4", "source.num_videos=8", "model.net.widths=[16,32,32,64]",
    "model.net.head_hidden=128",
]


def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> SimpleNamespace:
    """A 2-rank CPU (gloo) run of the real CLI in its own session: its folder, exit status,
    output, and every pid the session had (ranks, producers, resource trackers)."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train.train", "trainer=ddp", f"hydra.run.dir={run_dir}", *TINY],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    pids: set[int] = set()
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            pids.update(session_pids(proc.pid))
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    while session_pids(proc.pid) and time.monotonic() < deadline:  # rank 1 ends on its own
        time.sleep(0.2)
    return SimpleNamespace(run_dir=run_dir, returncode=proc.returncode, out=out, err=err,
                           pids=pids, sid=proc.pid)


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


@pytest.mark.slow
def test_two_ranks_train_on_disjoint_videos_and_leave_nothing_behind(ddp_run):
    run_dir = ddp_run.run_dir
    assert ddp_run.returncode == 0, ddp_run.err[-3000:]
    assert ddp_run.out.count("done:") == 1  # rank 0 reports
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    ranks = [json.loads((run_dir / f"train_videos_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    videos = [set(r["videos"]) for r in ranks]
    assert all(videos) and not videos[0] & videos[1]
    (used,) = [torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
               ["StreamDataModule"]["train_videos_used"]]
    assert set(used) == {"0/2", "1/2"}  # rank 0's checkpoint holds both ranks' shards
    assert set(used["1/2"]) <= videos[1] and used["1/2"]
    assert len(ddp_run.pids) >= 4  # 2 ranks and their producers: the census saw them
    assert not session_pids(ddp_run.sid), "processes left behind"
    leftovers = [p.name for p in Path(SHM_DIR).glob(f"{SEGMENT_PREFIX}*")
                 if int(p.name[len(SEGMENT_PREFIX):].split("_")[0]) in ddp_run.pids]
    assert not leftovers


@pytest.mark.slow
def test_val_metric_is_logged_once_and_equals_the_single_process_one(ddp_run):
    run_dir = ddp_run.run_dir
    assert ddp_run.returncode == 0, ddp_run.err[-3000:]
    (metrics,) = run_dir.rglob("metrics.csv")
    logged = [(int(r["step"]), float(r["val/mpjpe_mm"]))
              for r in csv.DictReader(metrics.open()) if r["val/mpjpe_mm"]]
    assert [s for s, _ in logged] == [VAL_EVERY - 1, STEPS - 1]  # once per validation
    cfg = _compose(f"paths.output_dir={run_dir}")
    datamodule = instantiate(cfg.buffer, source=instantiate(cfg.source),
                             teacher=instantiate(cfg.labeler))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(instantiate(cfg.model), datamodule=datamodule, verbose=False,
                     ckpt_path=run_dir / "checkpoints" / "last.ckpt")
    single = trainer.callback_metrics["val/mpjpe_mm"].item()
    assert logged[-1][1] == pytest.approx(single, rel=1e-5)


def _val_set_ranks(world_size: int):
    """The same frozen val set as each rank of `world_size` sees it (no processes needed)."""
    cfg = _compose("paths.output_dir=unused")
    dm = instantiate(cfg.buffer, source=instantiate(cfg.source), teacher=instantiate(cfg.labeler))
    dm.setup("validate")
    shards = []
    for rank in range(world_size):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
        shards.append(list(dm.val_dataloader()))
    return shards


def _pooled(batches, metric=None) -> PoseErrorMetric:
    metric = metric or PoseErrorMetric()
    for b in batches:
        pred = b.kpts3d + 0.05 * torch.sin(7.0 * b.kpts3d)  # per sample, not a similarity
        metric.update(pred, b.kpts3d, b.visibility)
    return metric


def test_val_shards_are_padded_invisibly_and_sum_to_the_whole_set():
    (whole,), (rank0, rank1) = _val_set_ranks(1), _val_set_ranks(2)
    n = sum(len(b.image) for b in whole)
    assert n == VAL_SAMPLES
    sizes = [sum(len(b.image) for b in shard) for shard in (rank0, rank1)]
    assert sizes == [(n + 1) // 2] * 2 and len(rank0) == len(rank1)  # same batches per rank
    pad = rank1[-1].visibility[-1]
    assert pad.sum() == 0  # the one padding sample counts nowhere
    summed = _pooled(rank0)
    _pooled(rank1, summed)  # states add up, as torchmetrics sums them across ranks
    reference = _pooled(whole).compute()
    for got, want in zip(summed.compute(), reference):
        torch.testing.assert_close(got, want)


def test_train_from_python_refuses_the_relaunching_ddp_strategy(tmp_path):
    with pytest.raises(ValueError, match="re-running the command line"):
        train(_compose("trainer=ddp", f"paths.output_dir={tmp_path}"))


def test_torch_threads_split_the_cores_among_ranks_and_producers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert set_torch_threads(None, ranks=2, producers=1) == 7  # 16 / 2 - 1
        assert os.environ["OMP_NUM_THREADS"] == "7"  # kept by Lightning's DDP launcher
        assert set_torch_threads(None, ranks=4, producers=4) == 1  # never below one
    finally:
        torch.set_num_threads(before)
