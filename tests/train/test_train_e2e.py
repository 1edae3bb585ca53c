"""A short demo run end to end: stream, train, validate, checkpoint, summary."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from shared_paths import CONF_DIR

from train.module import PoseDistillModule
from train.train import train

SUMMARY_KEYS = {
    "status", "steps", "batch_size", "samples_pushed", "samples_consumed", "reads_per_sample",
    "teacher", "teacher_fps", "train_videos", "val_videos", "val/mpjpe_mm", "best_val_mpjpe_mm",
    "val/pa_mpjpe_mm", "val/mean_pose_mpjpe_mm", "mpjpe_vs_mean_pose", "wall_time_s",
    "best_checkpoint", "last_checkpoint", "producer_restarts", "producer_stalls", "skipped_videos",
}
STEPS, BATCH = 40, 16


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[
            f"paths.output_dir={run_dir}",
            f"trainer.max_steps={STEPS}", "trainer.val_check_interval=20",
            "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "buffer.crop_size=64", "buffer.capacity=512", "buffer.min_samples=64",
            f"buffer.batch_size={BATCH}", "buffer.val_max_samples=48",
            "source.frames_per_video=8", "source.num_videos=8",
            "model.net.widths=[16,32,32,64]",
        ])
    return run_dir, cfg, train(cfg)


@pytest.mark.slow
def test_summary_reports_a_finished_run(demo_run):
    run_dir, cfg, summary = demo_run
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert set(summary) == SUMMARY_KEYS
    assert summary["status"] == "completed" and summary["teacher"] == "oracle"
    assert summary["steps"] == STEPS and summary["samples_consumed"] == STEPS * BATCH
    assert summary["samples_pushed"] >= cfg.buffer.min_samples
    assert summary["val_videos"] >= 1 and summary["train_videos"] >= 1
    for key in ("val/mpjpe_mm", "best_val_mpjpe_mm", "val/pa_mpjpe_mm", "val/mean_pose_mpjpe_mm",
                "mpjpe_vs_mean_pose", "reads_per_sample", "teacher_fps"):
        value = summary[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, key
    assert summary["best_val_mpjpe_mm"] <= summary["val/mpjpe_mm"]
    assert summary["val/pa_mpjpe_mm"] <= summary["val/mpjpe_mm"]


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(demo_run):
    run_dir, cfg, summary = demo_run
    best = run_dir / summary["best_checkpoint"]
    assert best.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "/" not in best.relative_to(run_dir / "checkpoints").as_posix()  # no metric-name folders
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["global_step"] in (20, 40)
    # last.ckpt is the latest state, whichever validation was best (Lightning's own save_last
    # would leave the state of the last improving validation there).
    assert summary["last_checkpoint"] == "checkpoints/last.ckpt"
    last = torch.load(run_dir / summary["last_checkpoint"], weights_only=True)
    assert last["global_step"] == STEPS
    net = instantiate(cfg.model.net)  # the architecture lives in the run's config, not in hparams
    module = PoseDistillModule.load_from_checkpoint(best, net=net)
    out = module.eval()(net.example_input(1))
    assert torch.isfinite(out.kpts3d).all()


@pytest.mark.slow
def test_training_and_stream_metrics_are_logged(demo_run):
    run_dir, _, _ = demo_run
    (metrics_csv,) = Path(run_dir).rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    columns = set(rows[0])
    for key in ("train/loss", "train/loss_3d", "train/loss_2d", "train/mpjpe_mm", "val/mpjpe_mm",
                "buffer/fill", "buffer/reads_per_sample", "buffer/pushed", "producer/teacher_fps"):
        assert key in columns, key
    fills = [float(r["buffer/fill"]) for r in rows if r["buffer/fill"]]
    assert fills and all(0 < f <= 1 for f in fills)
