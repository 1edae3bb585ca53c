"""serve.evaluate and serve.checkpoint on a run folder of the real training CLI (conftest)."""

import csv
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from shared_paths import CONF_DIR, REPO, VIDEOS

from serve.checkpoint import CheckpointError, MissingCheckpointError, load_student
from serve.evaluate import evaluate, format_report
from stream_pose.skeleton import JOINT_NAMES


def _config(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("evaluate", overrides=list(overrides))


def _val_row(run_dir, mpjpe_mm):
    """The metrics.csv row of the validation that measured `mpjpe_mm`."""
    rows = list(csv.DictReader(next(run_dir.rglob("metrics.csv")).open()))
    (row,) = [r for r in rows if r.get("val/mpjpe_mm") and
              abs(float(r["val/mpjpe_mm"]) - mpjpe_mm) < 1e-3]
    return row


@pytest.mark.slow
def test_evaluate_reproduces_the_validation_of_the_best_checkpoint(trained_run, tmp_path):
    summary = json.loads((trained_run / "summary.json").read_text())
    ckpt = trained_run / summary["best_checkpoint"]
    report = evaluate(_config(f"checkpoint={ckpt}", f"out={tmp_path}"))

    assert json.loads((tmp_path / "eval.json").read_text()) == report
    assert report["teacher"] == "oracle" and report["source"] == "synthetic"
    assert report["split"] == "val" and report["samples"] > 0
    assert report["videos"] == summary["val_videos"]
    # Same split, same crops, same metric code: the very numbers training logged for it.
    assert report["val/mpjpe_mm"] == pytest.approx(summary["best_val_mpjpe_mm"], abs=1e-3)
    logged = _val_row(trained_run, summary["best_val_mpjpe_mm"])
    val_keys = [k for k in logged if k.startswith("val/") and logged[k]]
    assert {"val/pck3d_150", "val/mpjpe_mm/left_knee", "val/mpjpe_vs_mean_pose"} <= set(val_keys)
    for key in val_keys:
        assert report[key] == pytest.approx(float(logged[key]), rel=1e-4, abs=1e-3), key
    assert set(report["visible_samples"]) == set(JOINT_NAMES)  # the oracle sees every joint
    # Per clip (whole videos, in labelling order) and pooled, from the same people.
    clips, pooled = report["clips"], report["all"]
    assert [c["video_id"] for c in clips] == report["video_ids"]
    assert pooled["people"] == sum(c["people"] for c in clips) == report["samples"]
    assert pooled["mpjpe_mm"] == pytest.approx(report["val/mpjpe_mm"], rel=1e-5)
    assert pooled["pa_mpjpe_mm"] == pytest.approx(report["val/pa_mpjpe_mm"], rel=1e-5)
    assert pooled["mean_pose_mpjpe_mm"] == pytest.approx(report["val/mean_pose_mpjpe_mm"],
                                                         rel=1e-5)
    for row in [*clips, pooled]:
        assert 0 <= row["left_right_swapped_pct"] <= 100
        assert 0 <= row["pck2d_0.05"] <= row["pck2d_0.1"] <= 100
        assert row["mpjpe_vs_mean_pose"] == pytest.approx(
            row["mpjpe_mm"] / row["mean_pose_mpjpe_mm"])
        # Ground truth has no noise to measure: no mirror pass, no flip floor.
        assert row["flip_floor_mpjpe_mm"] is None
    assert report["mirror_pass"] is False


@pytest.mark.slow
def test_evaluate_against_mediapipe_reports_only_joints_it_labels(trained_run, tmp_path):
    pytest.importorskip("mediapipe")
    video = VIDEOS / "street_short.mp4"
    report = evaluate(_config(
        f"checkpoint={trained_run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path}",
        "source=local", "labeler=mediapipe", f"source.paths=[{video}]", "split=all",
    ))
    assert report["teacher"] == "mediapipe" and report["video_ids"] == ["street_short"]
    assert report["samples"] == 5  # one person in each of the 5 frames
    for missing in ("spine1", "spine2", "spine3", "neck", "left_collar", "head"):
        assert missing not in report["visible_samples"]
        assert f"all/mpjpe_mm/{missing}" not in report
    for name in report["visible_samples"]:
        assert math.isfinite(report[f"all/mpjpe_mm/{name}"])
    # The teacher's flip floor: its mirror pass vs itself, on the same people.
    (clip,) = report["clips"]
    assert report["mirror_pass"] is True and clip["video_id"] == "street_short"
    assert clip["people"] == report["all"]["people"] == 5 and clip["frames"] == 5
    for row in (clip, report["all"]):
        assert 0 < row["flip_floor_mpjpe_mm"] < row["mean_pose_mpjpe_mm"]
        assert row["flip_floor_pa_mpjpe_mm"] > 0 and row["teacher_ms_per_frame"] > 0
        assert 0 <= row["left_right_swapped_pct"] <= 100
    table = format_report(report)
    assert "PCK3D@150mm" in table and "left_wrist" in table and "spine1" not in table
    assert "| street_short | 5 |" in table and "| all | 5 |" in table

    # flip_floor=false: the plain teacher alone, the same labels and student errors.
    plain = evaluate(_config(
        f"checkpoint={trained_run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path}",
        "source=local", "labeler=mediapipe", f"source.paths=[{video}]", "split=all",
        "flip_floor=false",
    ))
    assert plain["mirror_pass"] is False and plain["all"]["flip_floor_mpjpe_mm"] is None
    assert plain["all/mpjpe_mm"] == pytest.approx(report["all/mpjpe_mm"], rel=1e-5)


@pytest.mark.slow
def test_evaluate_cli_prints_a_table_and_writes_eval_json(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "serve.evaluate", f"checkpoint={ckpt}", f"out={tmp_path}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert f"{report['val/mpjpe_mm']:.1f} mm" in proc.stdout
    assert f"{'left_knee':<16}{report['val/mpjpe_mm/left_knee']:>10.1f}" in proc.stdout
    for clip in report["clips"]:  # the per-clip table
        assert f"| {clip['video_id']} | {clip['people']} | {clip['mpjpe_mm']:.1f} |" in proc.stdout


def test_evaluate_without_checkpoint_says_so():
    with pytest.raises(MissingCheckpointError, match="checkpoint=PATH is required"):
        evaluate(_config())


@pytest.mark.slow
def test_checkpoint_outside_its_run_folder_needs_the_run_config(trained_run, tmp_path):
    moved = tmp_path / "moved.ckpt"
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", moved)
    with pytest.raises(CheckpointError, match="run_config="):
        load_student(moved)
    loaded = load_student(moved, run_config=trained_run / ".hydra" / "config.yaml")
    assert loaded.crop_size == 64 and not loaded.net.training
    assert str(loaded.run_config.paths.output_dir) == str(trained_run)  # not ${hydra:...}


@pytest.mark.slow
def test_a_run_config_of_another_architecture_is_refused(trained_run, tmp_path):
    cfg = OmegaConf.load(trained_run / ".hydra" / "config.yaml")
    cfg.model.net.widths = [8, 16, 16, 32]
    wrong = tmp_path / "config.yaml"
    OmegaConf.save(cfg, wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_student(trained_run / "checkpoints" / "last.ckpt", run_config=wrong)


@pytest.mark.slow
def test_loaded_student_matches_the_lightning_checkpoint(trained_run):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    loaded = load_student(ckpt)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    weights = loaded.net.state_dict()["heatmap.weight"]
    torch.testing.assert_close(weights, state["net.heatmap.weight"])
    torch.testing.assert_close(loaded.mean_pose.total, state["mean_pose.total"])
