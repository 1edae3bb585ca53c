"""Two nodes x one process (issue 20), simulated on 127.0.0.1 with gloo: each "node" is a real
`python -m train.train trainer=ddp trainer.num_nodes=2 trainer.devices=1` with the standard
launch environment set by hand (MASTER_ADDR, MASTER_PORT, NODE_RANK), in its own run folder as
on separate machines (the checkpoint path is then passed to both, as on a shared file system).
The nodes' producers label disjoint shards that cover the stream, each rank trains on its own
samples, only node 0 writes checkpoints, and a run stopped on both nodes (Ctrl-C) resumes from
its checkpoint with its stream cursors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from shared_paths import REPO

from bench.server import free_port

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="no gloo")]
STEPS, VAL_EVERY = 6, 3
TINY = [
    f"trainer.val_check_interval={VAL_EVERY}", "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "buffer.crop_size=64", "buffer.capacity=256", "buffer.min_samples=32", "buffer.batch_size=8",
    "buffer.val_max_samples=16", "source.frames_per_video=4", "source.num_videos=200",
    "model.net.widths=[16,32,32,64]", "model.net.head_hidden=128",
]


def _start_nodes(tmp: Path, tag: str, *overrides: str) -> list[tuple[subprocess.Popen, Path]]:
    """Node 0 and node 1 of one run, each in its own session and run folder."""
    port, nodes = free_port(), []
    for node in (0, 1):
        run_dir = tmp / f"{tag}_node{node}"
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "NODE_RANK": str(node)}
        env.pop("LOCAL_RANK", None)
        log = open(tmp / f"{tag}_node{node}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "train.train", "trainer=ddp", "trainer.num_nodes=2",
             "trainer.devices=1", f"hydra.run.dir={run_dir}", *TINY, *overrides],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        nodes.append((proc, run_dir))
    return nodes


def _wait(nodes, timeout_s: float = 300) -> list[int]:
    deadline = time.monotonic() + timeout_s
    try:
        return [proc.wait(max(1.0, deadline - time.monotonic())) for proc, _ in nodes]
    finally:
        for proc, _ in nodes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def _log(tmp: Path, tag: str) -> str:
    return "\n".join((tmp / f"{tag}_node{n}.log").read_text()[-3000:] for n in (0, 1))


def _rank_record(run_dir: Path, rank: int) -> dict:
    return json.loads((run_dir / f"train_videos_rank{rank}.json").read_text())


def _indices(videos: list[str]) -> list[int]:
    return [int(re.fullmatch(r"synth-train-(\d+)", v).group(1)) for v in videos]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-node run stopped by Ctrl-C on both nodes a few steps in, then resumed on both from
    its checkpoint for 3 more steps: (node 0, node 1) folders of each, the checkpoint's state."""
    tmp = tmp_path_factory.mktemp("multinode")
    nodes = _start_nodes(tmp, "long", "trainer.max_steps=100000")
    node0 = nodes[0][1]
    deadline = time.monotonic() + 300
    while not (node0 / "checkpoints" / "last.ckpt").exists():  # a validation, a few steps in
        assert time.monotonic() < deadline and all(p.poll() is None for p, _ in nodes), \
            _log(tmp, "long")
        time.sleep(0.5)
    for proc, _ in nodes:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C on both nodes
    # rank 0 reports the interruption (130); other ranks end quietly (train.train)
    assert _wait(nodes) == [130, 0], _log(tmp, "long")
    assert f"saved {node0}" in (tmp / "long_node1.log").read_text()  # rank 0's checkpoint
    interrupted = node0 / "checkpoints" / "interrupted.ckpt"
    state = torch.load(interrupted, weights_only=False)
    resumed = _start_nodes(tmp, "resumed", f"ckpt_path={interrupted}",
                           f"trainer.max_steps={state['global_step'] + 3}")
    assert _wait(resumed) == [0, 0], _log(tmp, "resumed")
    return SimpleNamespace(stopped=[d for _, d in nodes], resumed=[d for _, d in resumed],
                           state=state)


def test_two_nodes_label_disjoint_shards_that_cover_the_stream(runs):
    node0, node1 = runs.stopped
    records = [_rank_record(node0, 0), _rank_record(node1, 1)]
    assert [(r["rank"], r["node_rank"], r["world_size"]) for r in records] == [(0, 0, 2), (1, 1, 2)]
    for rank, record in enumerate(records):
        k = _indices(record["videos"])
        # shard r of 2 is every second video from r, in order and without a gap: with the other
        # rank's, they cover the stream's videos up to the slower rank's last
        assert k == list(range(rank, rank + 2 * len(k), 2)), k
        # each rank trained on samples of its own shard
        steps = runs.state["global_step"]
        assert record["samples_pushed"] > 0 and record["samples_read"] >= steps * 8
    assert not set(records[0]["videos"]) & set(records[1]["videos"])


def test_only_node_zero_writes_checkpoints_and_the_summary(runs):
    (node0, node1), (again0, again1) = runs.stopped, runs.resumed
    assert (node0 / "checkpoints" / "last.ckpt").is_file()
    assert (node0 / "checkpoints" / "interrupted.ckpt").is_file()
    for run_dir in (node1, again1):
        assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "summary.json").exists()
    summary = json.loads((again0 / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == runs.state["global_step"] + 3
    used = runs.state["StreamDataModule"]["train_videos_used"]
    assert set(used) == {"0/2", "1/2"}  # both nodes' cursors, gathered into one checkpoint
    assert set(used["1/2"]) <= set(_rank_record(node1, 1)["videos"])


def test_a_resumed_run_continues_each_shard_after_its_cursor(runs):
    used = runs.state["StreamDataModule"]["train_videos_used"]
    assert all(used.values())
    for rank, run_dir in enumerate(runs.resumed):
        before, after = used[f"{rank}/2"], _rank_record(run_dir, rank)["videos"]
        assert after and not set(before) & set(after), "a video was streamed twice"
        assert min(_indices(after)) > max(_indices(before))  # the shard's cursor moved on
