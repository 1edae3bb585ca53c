"""`stream-pose provenance`: a real tiny MediaPipe training on two real clips records them in its
checkpoint, the ONNX and TorchScript exports carry the same manifest, no secret of the
environment reaches any of them, and a model without a manifest gets a clear one-line error."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from shared_paths import CONF_DIR, REPO, VIDEOS

from serve.checkpoint import load_student
from serve.cli import main as cli_main
from serve.export import export
from serve.provenance import format_manifest
from stream_pose.provenance import (
    MANIFEST_KEY,
    NoProvenanceError,
    build_manifest,
    read_manifest,
    teacher_info,
    video_entry,
)
from stream_pose.types import VideoRef

TRAIN_CLIP, VAL_CLIP = "basketball_single", "street_short"
FAKE_SECRETS = {"PEXELS_API_KEY": "pexels-fake-key-0123456789abcdef",
                "WANDB_API_KEY": "wandbfake0123456789abcdef0123456789abcd",
                "HF_TOKEN": "hf_fakeTokenValue0123456789"}
# experiment=mediapipe_local on exactly two clips, shrunk to a few steps of a tiny student.
RUN = [
    "experiment=mediapipe_local",
    f"source.paths=['{VIDEOS / (TRAIN_CLIP + '.mp4')}','{VIDEOS / (VAL_CLIP + '.mp4')}']",
    f"source.val_videos=[{VAL_CLIP}]",
    "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    "buffer.crop_size=64", "buffer.capacity=128", "buffer.min_samples=16",
    "buffer.batch_size=8", "buffer.val_max_samples=8",
    "model.net.widths=[16,32,32,64]", "model.net.head_hidden=128",
]


def _env() -> dict[str, str]:
    return {**os.environ, **FAKE_SECRETS}


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _no_secret_in(data: bytes | str, what: str) -> None:
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    for name, value in FAKE_SECRETS.items():
        assert value not in text, f"{name} leaked into {what}"


@pytest.fixture(scope="module")
def mediapipe_run(tmp_path_factory):
    """A run folder of the real `python -m train.train` (MediaPipe, two clips, pool producer),
    with fake secrets in its environment."""
    pytest.importorskip("mediapipe")
    for clip in (TRAIN_CLIP, VAL_CLIP):
        if not (VIDEOS / f"{clip}.mp4").is_file():
            pytest.skip(f"no {clip}.mp4 in {VIDEOS}")
    run_dir = tmp_path_factory.mktemp("provenance_run")
    _run("-m", "train.train", f"hydra.run.dir={run_dir}", *RUN)
    return run_dir


def _check_two_videos(manifest: dict) -> None:
    videos = {v["id"]: v for v in manifest["videos"]}
    assert set(videos) == {TRAIN_CLIP, VAL_CLIP}
    assert videos[TRAIN_CLIP]["split"] == "train" and videos[VAL_CLIP]["split"] == "val"
    for clip, video in videos.items():
        assert video["kind"] == "local" and video["uri"] == str(VIDEOS / f"{clip}.mp4")
        assert video["frames"] > 0 and video["samples"] > 0
    assert manifest["teacher"]["name"] == "mediapipe"
    assert manifest["teacher"]["versions"]["mediapipe"] == importlib.metadata.version("mediapipe")
    assert manifest["stream_pose"]["version"] == importlib.metadata.version("stream-pose")
    assert manifest["train_step"] == 4


def _shows_two_videos(text: str) -> None:
    lines = text.splitlines()
    rows = [ln for ln in lines if ln.startswith(("train ", "val "))]
    assert len(rows) == 2, text
    assert any(TRAIN_CLIP in r for r in rows if r.startswith("train"))
    assert any(VAL_CLIP in r for r in rows if r.startswith("val"))
    assert any(ln.startswith("teacher:") and "mediapipe" in ln for ln in lines)


@pytest.mark.slow
def test_checkpoint_and_onnx_name_the_two_videos_and_no_secret(mediapipe_run, tmp_path):
    pytest.importorskip("onnx")
    ckpt = mediapipe_run / "checkpoints" / "last.ckpt"
    manifest = read_manifest(ckpt)
    _check_two_videos(manifest)
    _no_secret_in(json.dumps(manifest), "the manifest")
    _no_secret_in(ckpt.read_bytes(), "the checkpoint")
    best = [p for p in (mediapipe_run / "checkpoints").glob("step*.ckpt")]
    assert best and all(read_manifest(p)["videos"] for p in best)  # every checkpoint has one

    onnx_path = tmp_path / "student.onnx"
    _run("-m", "serve.export", f"checkpoint={ckpt}", "format=onnx", f"out={onnx_path}")
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    _check_two_videos(json.loads(meta[MANIFEST_KEY]))
    _no_secret_in(onnx_path.read_bytes(), "the ONNX model")

    for model in (ckpt, onnx_path):
        table = _run("-m", "serve.cli", "provenance", str(model))
        _shows_two_videos(table.stdout)
        _no_secret_in(table.stdout, "the table")
        raw = _run("-m", "serve.cli", "provenance", str(model), "--json")
        parsed = json.loads(raw.stdout)
        _check_two_videos(parsed)
        assert parsed["videos"] == manifest["videos"]


@pytest.mark.slow
def test_torchscript_export_carries_it_and_old_checkpoints_still_export(mediapipe_run, tmp_path,
                                                                        capsys):
    ckpt = mediapipe_run / "checkpoints" / "last.ckpt"
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("export", overrides=[f"checkpoint={ckpt}", "format=torchscript",
                                           f"out={tmp_path / 'student.pt'}"])
    _check_two_videos(read_manifest(export(cfg).path))

    # A checkpoint written before manifests: loads, exports, and has "no provenance recorded".
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state[MANIFEST_KEY]
    old = mediapipe_run / "checkpoints" / "old.ckpt"  # beside the run's config
    torch.save(state, old)
    assert load_student(old).provenance is None
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("export", overrides=[f"checkpoint={old}", "format=torchscript",
                                           f"out={tmp_path / 'old.pt'}"])
    exported = export(cfg).path
    for model in (old, exported):
        with pytest.raises(NoProvenanceError):
            read_manifest(model)
        assert cli_main(["provenance", str(model)]) == 1
        err = capsys.readouterr().err.strip()
        assert "no provenance recorded" in err and "\n" not in err


def test_clear_one_line_errors(tmp_path, capsys):
    (tmp_path / "notes.onnx").write_text("not a model\n")
    (tmp_path / "notes.txt").write_text("not a model\n")
    for path, why in ((tmp_path / "notes.onnx", "not an ONNX model"),
                      (tmp_path / "notes.txt", "not a model file"),
                      (tmp_path / "missing.ckpt", "no such file")):
        assert cli_main(["provenance", str(path)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and why in err and "\n" not in err, err


def test_table_of_a_pexels_manifest(tmp_path):
    ref = VideoRef(id="pexels-857251", kind="pexels",
                   uri="https://www.pexels.com/video/a-man-running-857251/",
                   licence="Pexels License", attribution="Jane Doe (https://www.pexels.com/@jd)")
    manifest = build_manifest(
        [video_entry(ref, video_id=ref.id, split="train", frames=12, samples=9)],
        teacher_info(["mediapipe"]), train_step=7, secrets=[])
    text = format_manifest(manifest, title="student.onnx")
    row = next(ln for ln in text.splitlines() if ln.startswith("train"))
    for value in ("pexels", "pexels-857251", "12", "9", "Pexels License", "Jane Doe",
                  "https://www.pexels.com/video/a-man-running-857251/"):
        assert value in row
    assert "at step 7" in text and "mediapipe" in text
