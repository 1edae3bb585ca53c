"""`pipeline.py`, the labelling tool, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from shared_paths import REPO, VIDEOS

import pipeline


@pytest.mark.slow
def test_dry_run_json_on_the_running_athlete():
    pytest.importorskip("mediapipe")
    out = subprocess.run(
        [sys.executable, "pipeline.py", "--dry-run", "--video",
         str(VIDEOS / "running_athlete.mp4"), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    total = report["total"]
    assert total["frames"] == 180
    assert total["frames_with_person"] >= 170
    assert report["sample"]["pelvis"] == [0.0, 0.0, 0.0]
    assert report["sample"]["shapes"]["kpts3d"] == [27, 3]
    assert report["buffer"]["size"] == total["persons"]
    assert "running_athlete" in out.stdout.splitlines()[2]  # the human-readable table first


@pytest.mark.slow
def test_bad_video_is_skipped_and_reported(tmp_path, capsys):
    pytest.importorskip("mediapipe")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    rc = pipeline.main(["--dry-run", "--video", str(bad), str(VIDEOS / "street_short.mp4"),
                        "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["total"]["frames"] == 5
    assert [uri for uri, _ in report["videos_skipped"]] == [str(bad)]


def test_missing_video_is_a_clear_error(tmp_path, capsys):
    rc = pipeline.main(["--dry-run", "--video", str(tmp_path / "nope.mp4")])
    assert rc == 1
    assert "nope.mp4" in capsys.readouterr().err


def test_fetch_without_a_key_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PEXELS_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    assert pipeline.main(["--fetch", "--queries", "running", "--run-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "PEXELS_API_KEY" in err and "pexels.com/api" in err


def test_dry_run_needs_a_video():
    with pytest.raises(SystemExit) as exc:
        pipeline.main(["--dry-run"])
    assert exc.value.code == 2


@pytest.mark.parametrize("extra", [["--api-key", "KEYVALUE"], ["--queries", "KEYVALUE"]])
def test_the_key_on_the_command_line_is_refused_without_echo(monkeypatch, capsys, extra):
    monkeypatch.setenv("PEXELS_API_KEY", "KEYVALUE")
    assert pipeline.main(["--fetch", *extra]) == 2
    captured = capsys.readouterr()
    assert "PEXELS_API_KEY" in captured.err
    assert "KEYVALUE" not in captured.err + captured.out
