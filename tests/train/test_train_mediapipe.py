"""Real footage end to end: ../shared/videos decoded in memory, labelled by MediaPipe, a student
trained on four videos and validated on the held-out fifth (split by video id)."""

import csv
import math

import pytest
from hydra import compose, initialize_config_dir
from shared_paths import CONF_DIR

from train.train import train

STEPS = 60


@pytest.mark.slow
def test_mediapipe_training_on_real_video(tmp_path):
    pytest.importorskip("mediapipe")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[
            "experiment=mediapipe_local",
            f"paths.output_dir={tmp_path}",
            f"trainer.max_steps={STEPS}", "trainer.val_check_interval=30",
            "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false",
            "buffer.crop_size=96", "buffer.min_samples=96", "buffer.val_max_samples=24",
            "buffer.batch_size=16",
        ])
    summary = train(cfg)

    assert summary["status"] == "completed" and summary["teacher"] == "mediapipe"
    assert summary["val_videos"] == 1 and summary["train_videos"] >= 1
    for key in ("val/mpjpe_mm", "val/pa_mpjpe_mm", "val/mean_pose_mpjpe_mm", "teacher_fps"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert (tmp_path / summary["best_checkpoint"]).is_file()
    losses = [float(r["train/loss"]) for r in csv.DictReader(
        next(tmp_path.rglob("metrics.csv")).open()) if r.get("train/loss")]
    assert len(losses) >= 6
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, f"training loss did not fall: {losses}"
