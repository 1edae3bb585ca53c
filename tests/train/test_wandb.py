"""W&B: offline without a key, a redacted config, losses, metrics, stream and student telemetry in
the run, skeleton panels only when asked for. Real wandb, offline, everything under tmp_path."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from shared_paths import CONF_DIR, REPO

from stream_pose.batch import Batch
from stream_pose.secrets import MASK, is_secret_name, redacted_config, secret_values
from stream_pose.skeleton import NUM_JOINTS
from train import throughput
from train.loggers import wandb_logger, wandb_mode
from train.panels import KEY as PANELS_KEY
from train.panels import SkeletonPanels, skeleton_panels
from train.throughput import StudentThroughput
from train.train import train

SECRET = "sk-test-4f9c2a7e1b3d5f60"  # a fake Pexels key, in the environment only
TOKEN = "tok-test-8e1d2c3b4a79"  # a literal under a secret-looking config key
STEPS, VAL_EVERY, CROP, BATCH = 6, 3, 64, 8
TINY = [
    "logger=wandb", f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={VAL_EVERY}",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", f"buffer.crop_size={CROP}", "buffer.capacity=256",
    "buffer.min_samples=32", f"buffer.batch_size={BATCH}", "buffer.val_max_samples=32",
    "source.frames_per_video=4", "source.num_videos=4", "model.net.widths=[16,32,32,64]",
    "model.net.head_hidden=128",
]
WANDB_DIRS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
              "WANDB_ARTIFACT_DIR")


# --- redaction ----------------------------------------------------------------------------------


def test_redaction_masks_secret_names_and_env_secret_values_and_nothing_else():
    env = {"PEXELS_API_KEY": SECRET, "HF_TOKEN": "hf-0123456789", "DEBUG_KEY": "1",
           "HOME": "/home/someone-with-a-long-name"}
    cfg = OmegaConf.create({
        "source": {"api_key": "abc", "queries": ["yoga", SECRET], "n": 5, "api_base": None},
        "logger": {"project": "stream-pose", "note": f"https://x.test/?key={SECRET}&q=1"},
        "extra": {"WANDB_API_KEY": "w", "hub_token": "hf-0123456789", "flag": "1",
                  "home": "/home/someone-with-a-long-name", "password": None},
        "trainer": {"max_steps": 6, "lr": 1e-3, "tags": [1, True]},
    })
    out = redacted_config(cfg, environ=env)
    expected = OmegaConf.to_container(cfg)
    expected["source"]["api_key"] = MASK
    expected["source"]["queries"] = ["yoga", MASK]
    expected["logger"]["note"] = f"https://x.test/?key={MASK}&q=1"
    expected["extra"].update(WANDB_API_KEY=MASK, hub_token=MASK)
    assert out == expected  # password None stays None; "1" (DEBUG_KEY) and HOME are not secrets
    assert SECRET not in repr(out) and "hf-0123456789" not in repr(out)
    assert cfg.source.api_key == "abc"  # the input is not modified


def test_redaction_resolves_interpolations_before_masking(monkeypatch):
    monkeypatch.setenv("PEXELS_API_KEY", SECRET)
    cfg = OmegaConf.create({"paths": {"root": "/r", "out": "${paths.root}/run"},
                            "leak": "${oc.env:PEXELS_API_KEY}", "steps": 6})
    assert redacted_config(cfg) == {"paths": {"root": "/r", "out": "/r/run"}, "leak": MASK,
                                    "steps": 6}


def test_an_unresolvable_config_is_redacted_unresolved(caplog):
    cfg = OmegaConf.create({"out": "${hydra:runtime.output_dir}", "note": f"key {SECRET}",
                            "leak": "${oc.env:PEXELS_API_KEY}"})
    out = redacted_config(cfg, environ={"PEXELS_API_KEY": SECRET})
    assert out == {"out": "${hydra:runtime.output_dir}", "note": f"key {MASK}",
                   "leak": "${oc.env:PEXELS_API_KEY}"}
    assert "unresolved" in caplog.text


@pytest.mark.parametrize("name, secret", [
    ("api_key", True), ("API_KEY", True), ("token", True), ("access_token", True),
    ("client_secret", True), ("password", True), ("wandb_api_key", True),
    ("monkey", False), ("keys", False), ("tokens_per_s", False), ("max_steps", False),
])
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_secret_values_come_from_secret_env_names_longest_first():
    env = {"A_API_KEY": "abcdefgh", "B_TOKEN": "abcdefgh-longer", "C_SECRET": "short",
           "PATH": "/usr/bin:/bin:/usr/local/bin"}
    assert secret_values(env) == ["abcdefgh-longer", "abcdefgh"]


# --- mode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, mode", [
    ({}, "offline"),
    ({"WANDB_API_KEY": "k"}, "online"),
    ({"WANDB_MODE": "online"}, "offline"),  # online needs a key
    ({"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),
    ({"WANDB_MODE": "disabled"}, "disabled"),
    ({"WANDB_API_KEY": "k", "WANDB_MODE": "Disabled"}, "disabled"),
])
def test_wandb_mode(env, mode):
    assert wandb_mode(env) == mode


def test_wandb_disabled_by_the_user_stays_disabled(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr("train.loggers.load_dotenv", lambda **kw: False)  # ignore a local .env
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for var in WANDB_DIRS:
        monkeypatch.setenv(var, str(tmp_path / "home"))
    try:
        run = wandb_logger(tmp_path).experiment
        assert run.settings.mode == "disabled"
        assert os.environ["WANDB_MODE"] == "disabled"  # Lightning's offline=True would set dryrun
    finally:
        wandb.finish()
    assert not (tmp_path / "wandb").exists()


# --- student throughput ------------------------------------------------------------------------


def test_student_throughput_counts_samples_over_training_time_only(monkeypatch):
    clock = SimpleNamespace(t=100.0)
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: clock.t))
    logged = []
    lg = SimpleNamespace(log_metrics=lambda m, step: logged.append((step, m)))
    trainer = SimpleNamespace(global_step=0, log_every_n_steps=2, loggers=[lg],
                              is_global_zero=True, world_size=1)
    module = SimpleNamespace(device=torch.device("cpu"))
    cb = StudentThroughput()
    cb.on_train_start(trainer, module)
    batch = Batch(image=torch.zeros(BATCH, 3, 4, 4, dtype=torch.uint8),
                  kpts2d=torch.zeros(BATCH, 27, 2), kpts3d=torch.zeros(BATCH, 27, 3),
                  visibility=torch.ones(BATCH, 27), K_crop=torch.eye(3).expand(BATCH, 3, 3))
    for step, dt in ((1, 0.5), (2, 1.5), (3, 1.0), (4, 1.0)):
        clock.t += dt
        trainer.global_step = step
        if step == 3:  # a 30 s validation before step 3's batch ends: not training time
            cb.on_validation_start(trainer, module)
            clock.t += 30.0
            cb.on_validation_end(trainer, module)
        cb.on_train_batch_end(trainer, module, None, batch, step - 1)
    rate = 2 * BATCH / 2.0  # two batches in 2 s of training, both times
    assert logged == [(2, {throughput.KEY: rate}), (4, {throughput.KEY: rate})]


# --- panels -------------------------------------------------------------------------------------


def _panel_inputs(n=2, s=48):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 40, (n, 3, s, s), dtype=torch.uint8, generator=g)  # dark crops
    teacher = torch.rand(n, NUM_JOINTS, 2, generator=g) * (s - 8) + 4
    student = torch.rand(n, NUM_JOINTS, 2, generator=g) * (s - 8) + 4
    vis = torch.ones(n, NUM_JOINTS)
    return images, teacher, vis, student


def test_panels_show_teacher_left_and_student_right():
    images, teacher, vis, student = _panel_inputs()
    vis[1] = 0  # the teacher sees nobody in crop 1: nothing is drawn on its left half
    panels = skeleton_panels(images, teacher, vis, student)
    crops = images.permute(0, 2, 3, 1).numpy()
    s = images.shape[-1]
    assert len(panels) == 2
    for i, panel in enumerate(panels):
        assert panel.shape == (s, 2 * s, 3) and panel.dtype == np.uint8
        assert not np.array_equal(panel[:, s:], crops[i])  # the student always drawn
    assert not np.array_equal(panels[0][:, :s], crops[0])
    assert np.array_equal(panels[1][:, :s], crops[1])
    # float crops in [0, 1] (as in validation, after on_after_batch_transfer) draw the same
    again = skeleton_panels(images.float() / 255, teacher, vis, student)
    assert all(np.array_equal(a, b) for a, b in zip(panels, again))


def test_panels_refuse_mismatched_shapes():
    images, teacher, vis, student = _panel_inputs()
    with pytest.raises(ValueError, match="expected"):
        skeleton_panels(images, teacher, vis, student[:, :5])
    with pytest.raises(ValueError, match="num_crops"):
        SkeletonPanels(num_crops=0)


# --- end to end: train() with logger=wandb ------------------------------------------------------


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """No API key (a developer's .env ignored), a fake Pexels key, wandb's own folders in tmp."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("train.loggers.load_dotenv", lambda **kw: False)
        for var in ("WANDB_API_KEY", "WANDB_MODE"):
            mp.delenv(var, raising=False)
        mp.setenv("PEXELS_API_KEY", SECRET)
        for var in WANDB_DIRS:
            mp.setenv(var, str(home))
        yield home


def _train(run_dir: Path, *overrides: str) -> Path:
    """Run `train()` with the wandb logger; returns the offline run's folder."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"paths.output_dir={run_dir}", *TINY, *overrides])
    assert train(cfg)["status"] == "completed"
    (run,) = (run_dir / "wandb").glob("offline-run-*")
    return run


def _records(run: Path, timeout_s: float = 30.0) -> tuple[dict, dict[str, set[int]]]:
    """The config and the history (key -> steps) as wandb stored them in the run's `.wandb` file.

    wandb's service process may still be writing the file when `wandb.finish()` has returned:
    read it again until it ends with the run's exit record.
    """
    deadline = time.monotonic() + timeout_s
    while not (parsed := _parse_run_file(run))[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    complete, config, history = parsed
    assert complete, f"{run}: no exit record after {timeout_s} s"
    return config, history


def _parse_run_file(run: Path) -> tuple[bool, dict, dict[str, set[int]]]:
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    (path,) = run.glob("run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    complete, config, history = False, {}, {}
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        complete |= kind == "exit"
        if kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            # an image is a nested item (["val/skeletons", "_type"], ...): keep its top key
            items = {i.key or i.nested_key[0]: i.value_json for i in record.history.item}
            step = int(float(items.get("trainer/global_step", "-1")))
            for key in items:
                history.setdefault(key, set()).add(step)
    return complete, config, history


@pytest.fixture(scope="module")
def default_run(wandb_env, tmp_path_factory):
    repo_wandb = set((REPO / "wandb").rglob("*"))
    run_dir = tmp_path_factory.mktemp("run")
    # The config reaches the key through an interpolation, as a careless override could (a
    # literal secret, `+notes.token=...`, is refused before anything is written: test_faults.py).
    run = _train(run_dir, "+notes.pexels=${oc.env:PEXELS_API_KEY}")
    return run_dir, run, repo_wandb


@pytest.mark.slow
def test_wandb_run_is_offline_and_its_config_holds_no_secret(default_run, wandb_env):
    run_dir, run, repo_wandb = default_run
    assert run.parent == run_dir / "wandb"
    assert set((REPO / "wandb").rglob("*")) == repo_wandb  # nothing written into the repo
    config, _ = _records(run)
    assert config["trainer"]["max_steps"] == STEPS and config["buffer"]["crop_size"] == CROP
    assert config["logger"]["log_images"] is False
    assert config["notes"] == {"pexels": MASK}
    leaks = [p for p in (*run_dir.rglob("*"), *wandb_env.rglob("*"))
             if p.is_file() and (SECRET.encode() in (b := p.read_bytes()) or TOKEN.encode() in b)]
    assert not leaks


@pytest.mark.slow
def test_wandb_gets_losses_metrics_stream_and_student_telemetry(default_run):
    _, run, _ = default_run
    _, history = _records(run)
    for key in ("train/loss", "train/mpjpe_mm", "val/mpjpe_mm", "val/pa_mpjpe_mm", "buffer/fill",
                "buffer/reads_per_sample", "producer/teacher_fps", throughput.KEY):
        assert key in history, key
    assert len(history["val/mpjpe_mm"]) == STEPS // VAL_EVERY  # Lightning logs it at step - 1
    assert history[throughput.KEY] == set(range(1, STEPS + 1))


@pytest.mark.slow
def test_no_skeleton_panels_by_default(default_run):
    run_dir, run, _ = default_run
    assert not (run / "files" / "media").exists()
    assert not list(run_dir.rglob("*.png"))
    assert PANELS_KEY not in _records(run)[1]


@pytest.mark.slow
def test_skeleton_panels_when_asked_for(wandb_env, tmp_path):
    import cv2

    run = _train(tmp_path, "logger.log_images=true", f"trainer.max_steps={VAL_EVERY}")
    pngs = sorted((run / "files" / "media" / "images").rglob("*.png"))
    assert len(pngs) == 4  # SkeletonPanels' default num_crops, one validation
    for png in pngs:
        assert cv2.imread(str(png)).shape == (CROP, 2 * CROP, 3)
    assert _records(run)[1][PANELS_KEY] == {VAL_EVERY}
