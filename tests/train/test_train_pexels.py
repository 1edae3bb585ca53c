"""Training with `source=pexels` against the fake Pexels (tests/fakes/pexels.py), and the API key
kept out of the config, the command line and every file of the run folder."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from fakes.pexels import FakePexels
from hydra import compose, initialize_config_dir
from shared_paths import CONF_DIR, VIDEOS

from stream_pose.secrets import SecretInConfigError, refuse_overrides
from train.train import main, train
from video_sources.splits import is_val_id

KEY = "train-key-7c1d2e9f04ab"
VAL_FRACTION = 0.25
# Pexels ids chosen so the stable hash split puts 302 and 304 in val, the others in train.
CLIPS = {300: "running_athlete.mp4", 301: "basketball_multi.mp4", 302: "basketball_single.mp4",
         303: "street_short.mp4", 304: "posetrack_short.mp4", 306: "posetrack_short.mp4"}
VAL_IDS = {302, 304}
MANIFEST_FIELDS = {"id", "url", "file_link", "width", "height", "fps", "duration", "user_name",
                   "user_url", "query", "split", "used_at"}


def _compose(tmp_path, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def _manifest(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(not all((VIDEOS / c).is_file() for c in CLIPS.values()), reason="no footage")
def test_training_on_pexels_keeps_splits_apart_and_the_key_out(tmp_path, monkeypatch, capsys,
                                                               caplog):
    pytest.importorskip("mediapipe")
    assert {i for i in CLIPS if is_val_id(f"pexels-{i}", VAL_FRACTION)} == VAL_IDS
    monkeypatch.setenv("PEXELS_API_KEY", KEY)
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    with FakePexels(KEY, VIDEOS) as fake:
        fake.results["running"] = [fake.video(i, name) for i, name in CLIPS.items()]
        cfg = _compose(
            run_dir, "source=pexels", "labeler=mediapipe", "trainer=cpu", "logger=csv",
            f"source.api_base={fake.base}", "source.queries=[running]", "source.per_page=4",
            f"source.val_fraction={VAL_FRACTION}", "source.max_frames=12",
            "source.max_side=320", "source.rest_s=1.0",
            "trainer.max_steps=6", "trainer.val_check_interval=6",
            "trainer.log_every_n_steps=2", "trainer.enable_progress_bar=false",
            "buffer.crop_size=64", "buffer.min_samples=16", "buffer.batch_size=8",
            "buffer.val_max_samples=48", "buffer.capacity=256", "buffer.start_timeout_s=60",
        )
        summary = train(cfg)

    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["val_videos"] == len(VAL_IDS) and summary["train_videos"] >= 1
    train_entries = _manifest(run_dir / "pexels_manifest.train.jsonl")
    val_entries = _manifest(run_dir / "pexels_manifest.val.jsonl")
    train_ids, val_ids = {e["id"] for e in train_entries}, {e["id"] for e in val_entries}
    assert val_ids == VAL_IDS and train_ids and not train_ids & VAL_IDS
    assert len(val_entries) == len(val_ids) and len(train_entries) == len(train_ids)
    assert all(set(e) == MANIFEST_FIELDS for e in train_entries + val_entries)  # metadata only

    captured = capsys.readouterr()
    for text in (captured.out, captured.err, caplog.text):
        assert KEY not in text
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert files and not [p for p in files if KEY.encode() in p.read_bytes()]


def test_api_key_in_the_config_is_refused_before_anything_is_written(tmp_path):
    cfg = _compose(tmp_path / "run", "source=pexels", "+source.api_key=abc123")
    with pytest.raises(SecretInConfigError, match="never on the command line") as info:
        train(cfg)
    assert "abc123" not in str(info.value) and "source.api_key" in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["+source.api_key=abc123", "source.api_key=abc123",
                                      f"source.queries=[{KEY}]", f"+logger.note={KEY}x",
                                      f"+{KEY}=1"])
def test_command_line_with_the_key_exits_before_hydra_writes(tmp_path, monkeypatch, capsys,
                                                              override):
    monkeypatch.setenv("PEXELS_API_KEY", KEY)
    monkeypatch.setattr(sys, "argv", ["train", f"hydra.run.dir={tmp_path / 'run'}", override])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    message = capsys.readouterr().err
    assert "never on the command line" in message and KEY not in message
    assert "abc123" not in message
    assert not (tmp_path / "run").exists()


def test_overrides_without_the_key_pass(monkeypatch):
    monkeypatch.setenv("PEXELS_API_KEY", KEY)
    refuse_overrides(["source=pexels", "source.queries=[yoga]", "source.n=3"])
    with pytest.raises(SecretInConfigError):
        refuse_overrides(["source.n=3", "~source.api_key"])
