"""Every Hydra config group option composes and instantiates (STYLE.md, item 11)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, Timer
from omegaconf import OmegaConf
from shared_paths import (
    CONF_DIR,
    VIDEOS,
)
from shared_paths import REPO as REPO_ROOT

from train.callbacks import (
    BufferTelemetry,
    CheckpointOnException,
    ReclaimProducerCores,
    SaveLastCheckpoint,
    ScheduleOnResume,
)
from train.panels import SkeletonPanels
from train.throughput import StudentThroughput
from train.train import make_callbacks, make_loggers


def _compose(tmp_path, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def _options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert _options("source") == ["local", "pexels", "real", "synthetic"]
    assert _options("labeler") == ["auto", "comotion", "mediapipe", "mediapipe_flip", "oracle"]
    assert _options("model") == ["student", "student_effl0", "student_l", "student_m", "student_s"]
    assert _options("logger") == ["csv", "none", "wandb"]
    assert _options("trainer") == ["cpu", "ddp", "default"]
    assert _options("callbacks") == _options("paths") == _options("hydra") == ["default"]
    assert {"demo", "mediapipe_local", "real_cpu", "real_long", "real_gpu"} <= set(
        _options("experiment"))


def test_real_experiments_hold_out_whole_clips_and_validate_their_last_step(tmp_path):
    for name in ("real_cpu", "real_long", "real_gpu"):
        cfg = _compose(tmp_path, f"experiment={name}")
        assert len(cfg.source.val_videos) >= 4 and cfg.source.loop is False
        assert cfg.model.net.head3d == "lift" and cfg.model.loss_lift_weight > 0
        assert cfg.buffer.val_max_samples >= 1500  # every held-out person
        assert cfg.trainer.max_steps % cfg.trainer.val_check_interval == 0
        # The pretrained student on real footage (issue 18), the small one for the demo.
        assert cfg.model.net.backbone == "efficientnet_lite0" and cfg.model.net.pretrained
    sizes = [_compose(tmp_path, f"model=student_{s}").model.net.widths for s in "sml"]
    assert sizes[0] == _compose(tmp_path).model.net.widths  # the demo's student is the small one
    assert sizes[0][-1] < sizes[1][-1] < sizes[2][-1]


def test_plain_config_is_the_demo(tmp_path):
    plain, demo = _compose(tmp_path), _compose(tmp_path, "experiment=demo")
    assert OmegaConf.to_container(plain) == OmegaConf.to_container(demo)
    assert plain.source._target_.endswith("SyntheticSource")
    assert plain.labeler._target_.endswith("OracleTeacher")
    assert plain.model.net.crop_size == plain.buffer.crop_size == 128


def test_training_is_counted_in_steps(tmp_path):
    for option in _options("trainer"):
        t = _compose(tmp_path, f"trainer={option}").trainer
        assert isinstance(t.val_check_interval, int) and t.check_val_every_n_epoch is None
        assert t.max_steps % t.val_check_interval == 0  # the last step is validated
        assert t.num_sanity_val_steps == 0


def test_synthetic_source_gives_split_videos(tmp_path):
    factory = instantiate(_compose(tmp_path).source)
    frame = next(iter(factory(split="val", loop=False)))
    assert frame.video.id.startswith("synth-val-") and frame.truth


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="../shared/videos is not beside the repo")
def test_local_source_paths_resolve_from_the_repo_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    cfg = _compose(tmp_path, "experiment=mediapipe_local")
    assert Path(cfg.source.paths[0]).resolve() == (REPO_ROOT.parent / "shared" / "videos").resolve()
    factory = instantiate(cfg.source)
    val, train = factory(split="val", loop=False), factory(split="train")
    assert val.video_ids() == ["basketball_single"]
    assert "basketball_single" not in train.video_ids() and len(train.video_ids()) >= 3


def test_oracle_labeler(tmp_path):
    teacher = instantiate(_compose(tmp_path).labeler)()
    assert teacher.name == "oracle"


def test_mediapipe_labeler(tmp_path):
    pytest.importorskip("mediapipe")
    teacher = instantiate(_compose(tmp_path, "labeler=mediapipe").labeler)()
    try:
        assert teacher.name == "mediapipe"
    finally:
        teacher.close()


def test_buffer_builds_the_datamodule_without_starting_it(tmp_path):
    cfg = _compose(tmp_path, "buffer.capacity=64", "buffer.min_samples=8")
    dm = instantiate(cfg.buffer, source=instantiate(cfg.source), teacher=instantiate(cfg.labeler))
    assert isinstance(dm, L.LightningDataModule)
    assert (dm.crop_size, dm.batch_size, dm.capacity) == (128, cfg.buffer.batch_size, 64)
    assert dm.buffer is None  # no producer until train_dataloader()


def test_model_builds_and_predicts(tmp_path):
    cfg = _compose(tmp_path, "buffer.crop_size=64")
    module = instantiate(cfg.model)
    assert module.net.crop_size == 64 and module.augment is not None
    out = module(module.net.example_input(2))
    assert out.kpts3d.shape == (2, 27, 3)
    optim = module.configure_optimizers()
    assert isinstance(optim["optimizer"], torch.optim.AdamW)
    assert optim["lr_scheduler"]["scheduler"].total_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("option", ["default", "cpu", "ddp"])
def test_trainer(tmp_path, option):
    cfg = _compose(tmp_path, f"trainer={option}")
    trainer = instantiate(cfg.trainer, default_root_dir=str(tmp_path), logger=False)
    assert isinstance(trainer, L.Trainer) and trainer.max_steps == cfg.trainer.max_steps
    assert trainer.world_size == (2 if option == "ddp" else 1)


def test_csv_logger_writes_into_the_run_folder(tmp_path):
    (lg,) = make_loggers(_compose(tmp_path, "logger=csv").logger)
    assert Path(lg.log_dir).resolve().is_relative_to(tmp_path.resolve())


def test_no_logger(tmp_path):
    assert make_loggers(_compose(tmp_path, "logger=none").logger) == []


@pytest.mark.parametrize("key, offline", [(None, True), ("not-a-real-key", False)])
def test_wandb_is_offline_without_an_api_key(tmp_path, monkeypatch, key, offline):
    from fakes.trickle import FakeWandb

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the logger starts no run until used
    monkeypatch.setattr("train.loggers.load_dotenv", lambda **kw: False)  # ignore a local .env
    if key is None:
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    else:
        monkeypatch.setenv("WANDB_API_KEY", key)
    cfg = _compose(tmp_path, "logger=wandb")
    with FakeWandb(200) as server:  # a W&B server that accepts the key (see test_faults.py)
        monkeypatch.setenv("WANDB_BASE_URL", server.url)
        (lg,) = make_loggers(cfg.logger)
    assert lg._wandb_init["mode"] == ("offline" if offline else "online")
    text = OmegaConf.to_yaml(cfg)
    assert "WANDB_API_KEY" not in text and "not-a-real-key" not in text


@pytest.mark.parametrize("steps", [1, 3, 20, 1500])
def test_lr_schedule_builds_and_steps_for_any_run_length(tmp_path, steps):
    # OneCycleLR divides by zero when its warm-up is under 2 steps; the config guards it.
    cfg = _compose(tmp_path, "buffer.crop_size=64", f"trainer.max_steps={steps}")
    module = instantiate(cfg.model)
    opt_cfg = module.configure_optimizers()
    scheduler = opt_cfg["lr_scheduler"]["scheduler"]
    for _ in range(steps):
        opt_cfg["optimizer"].step()
        scheduler.step()
    assert all(g["lr"] >= 0 for g in opt_cfg["optimizer"].param_groups)


# The callbacks train.train built in code before they became the `callbacks` group, in order.
BEFORE = [ModelCheckpoint, SaveLastCheckpoint, BufferTelemetry, CheckpointOnException,
          ScheduleOnResume, ReclaimProducerCores]
WITH_LOGGER = [LearningRateMonitor, StudentThroughput]


def _callbacks(tmp_path, *overrides, loggers=None, **kwargs):
    cfg = _compose(tmp_path, *overrides)
    loggers = make_loggers(cfg.logger) if loggers is None else loggers
    return make_callbacks(cfg.callbacks, loggers=loggers, **kwargs)


def test_default_callbacks_are_the_ones_train_used_to_build(tmp_path):
    callbacks = _callbacks(tmp_path)  # logger=csv
    assert [type(c) for c in callbacks] == BEFORE + WITH_LOGGER
    checkpoint, last, _, saver, *_ = callbacks
    folder = tmp_path.resolve() / "checkpoints"
    assert Path(checkpoint.dirpath) == folder
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.filename) == (
        "val/mpjpe_mm", "min", "step{step:06d}-mpjpe{val/mpjpe_mm:.1f}")
    assert not checkpoint.auto_insert_metric_name and not checkpoint.save_last
    assert (last.path, saver.path) == (folder / "last.ckpt", folder / "interrupted.ckpt")
    assert callbacks[-2].logging_interval == "step"
    assert callbacks[-1].log_every_n_steps is None and callbacks[5].every_n_steps == 50


def test_callbacks_that_could_not_act_are_left_out(tmp_path):
    assert [type(c) for c in _callbacks(tmp_path, "logger=none")] == BEFORE
    fixed = _callbacks(tmp_path, "torch_threads=2", fixed_threads=True)
    assert [type(c) for c in fixed] == [c for c in BEFORE if c is not ReclaimProducerCores
                                        ] + WITH_LOGGER
    panels = _callbacks(tmp_path, log_images=True)
    assert [type(c) for c in panels] == BEFORE + WITH_LOGGER + [SkeletonPanels]
    assert [type(c) for c in _callbacks(tmp_path, loggers=[], log_images=True)] == BEFORE


@pytest.mark.parametrize("override", ["~callbacks.buffer_telemetry",
                                      "callbacks.buffer_telemetry=null"])
def test_a_callback_is_switched_off_by_override(tmp_path, override):
    kinds = [type(c) for c in _callbacks(tmp_path, override)]
    assert kinds == [c for c in BEFORE if c is not BufferTelemetry] + WITH_LOGGER


def test_a_callback_is_added_and_changed_by_override(tmp_path):
    callbacks = _callbacks(tmp_path, "+callbacks.timer._target_=lightning.pytorch.callbacks.Timer",
                           "callbacks.reclaim_producer_cores.every_n_steps=10")
    assert isinstance(callbacks[-1], Timer) and callbacks[5].every_n_steps == 10


def _hydra(config, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config, overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("config, runs", [("config", "runs"), ("evaluate", "runs/evaluate")])
def test_run_folders_are_under_the_repository(config, runs):
    cfg = _hydra(config)
    assert cfg.paths.root_dir == str(REPO_ROOT)
    run, sweep = Path(cfg.hydra.run.dir), Path(cfg.hydra.sweep.dir)
    assert run.parent == REPO_ROOT / runs and sweep.parent == REPO_ROOT / runs / "multirun"
    assert cfg.hydra.job.chdir is False
