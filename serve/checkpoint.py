"""Load a trained student from a Lightning checkpoint of `train.train`, for inference.

The checkpoint holds weights and plain hyperparameters only (it loads with
`torch.load(weights_only=True)`); the architecture (crop size, widths, ...) lives in the run's
Hydra config, `<run>/.hydra/config.yaml`, beside `<run>/checkpoints/<name>.ckpt`. The student is
rebuilt from that config's `model.net` and its weights loaded strictly, so a config that does not
match the weights is an error, never a silently different network.

Checkpoints written since provenance was recorded also hold the manifest of their videos
(`stream_pose.provenance`, `LoadedStudent.provenance`); older ones load the same, without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import stream_pose.runtime  # noqa: F401  registers the ${repo_root:} and ${warmup_pct:} resolvers
from stream_pose.provenance import MANIFEST_KEY, ProvenanceError, validate_manifest
from train.metrics import MeanPoseBaseline
from train.student import PoseStudent

logger = logging.getLogger(__name__)

RUN_CONFIG = Path(".hydra") / "config.yaml"


class CheckpointError(ValueError):
    """A checkpoint that cannot be turned into a student: no run config, or weights that do not
    fit the architecture the config describes. The message says which file and why."""


class MissingCheckpointError(ValueError):
    """A command was run without `checkpoint=`."""


def required_checkpoint(cfg: DictConfig) -> str:
    """`cfg.checkpoint`, for the Hydra commands whose config marks it `???`.

    Raises:
        MissingCheckpointError: if it was not given.
    """
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.get("checkpoint"):
        raise MissingCheckpointError(
            "checkpoint=PATH is required, e.g. checkpoint=runs/<run>/checkpoints/last.ckpt")
    return str(cfg.checkpoint)


@dataclass(frozen=True)
class LoadedStudent:
    """A student restored from a checkpoint.

    Attributes:
        net: the student in eval mode on the CPU; input `[B, 3, S, S]` float RGB in [0, 1].
        mean_pose: the running mean of the training targets (the mean-pose baseline).
        run_config: the training run's config; `paths.output_dir` is the run folder.
        checkpoint: path of the checkpoint file.
        step: optimizer steps the checkpoint had trained.
        provenance: the checkpoint's provenance manifest (`stream_pose.provenance`), or None
            for a checkpoint written before manifests (or with a malformed one, logged).
    """

    net: PoseStudent
    mean_pose: MeanPoseBaseline
    run_config: DictConfig
    checkpoint: Path
    step: int
    provenance: dict | None = None

    @property
    def crop_size(self) -> int:
        """S, the crop side in pixels the student takes."""
        return self.net.crop_size

    @property
    def supervised(self) -> np.ndarray:
        """`[J]` bool: the joints its training labels ever had visible (the pelvis always).

        A student trained on MediaPipe never saw a spine, neck, collar or head label: its
        outputs there are unconstrained, so serving reports them with confidence 0.
        """
        mask = self.mean_pose.count.cpu().numpy() > 0
        mask[0] = True
        return mask


def find_run_config(checkpoint: Path) -> Path:
    """`<run>/.hydra/config.yaml` for a checkpoint in `<run>/checkpoints/` (or in `<run>/`).

    Raises:
        CheckpointError: if neither place has one.
    """
    candidates = [parent / RUN_CONFIG for parent in checkpoint.resolve().parents[:2]]
    for path in candidates:
        if path.is_file():
            return path
    raise CheckpointError(
        f"no training config for {checkpoint}: looked for {' and '.join(map(str, candidates))}. "
        "A checkpoint from `python -m train.train` has one in its run folder; otherwise pass "
        "run_config=<path to the run's .hydra/config.yaml>"
    )


def load_run_config(path: Path) -> DictConfig:
    """The saved config of a training run, with `paths.output_dir` set to that run's folder.

    Hydra saves `paths.output_dir` as `${hydra:runtime.output_dir}`, which only resolves inside
    the Hydra app that wrote it; the run folder is the one that holds `.hydra/`.
    """
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "model" not in cfg or "net" not in cfg.model:
        raise CheckpointError(f"{path} is not a stream-pose training config (no model.net)")
    run_dir = path.parent.parent if path.parent.name == ".hydra" else path.parent
    OmegaConf.update(cfg, "paths.output_dir", str(run_dir), force_add=True)
    return cfg


def load_student(checkpoint: str | Path, run_config: str | Path | None = None) -> LoadedStudent:
    """Rebuild the student of `checkpoint` and load its weights and mean-pose baseline.

    Args:
        checkpoint: a `.ckpt` written by `train.train` (best, last or interrupted).
        run_config: the run's `.hydra/config.yaml`; None finds it beside the checkpoint.

    Raises:
        FileNotFoundError: if `checkpoint` (or a given `run_config`) does not exist.
        CheckpointError: no run config found, not a training checkpoint, or weights that do not
            fit the configured architecture.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    config_path = find_run_config(checkpoint) if run_config is None else Path(run_config)
    if not config_path.is_file():
        raise FileNotFoundError(f"run config not found: {config_path}")
    cfg = load_run_config(config_path)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{checkpoint} is not a Lightning checkpoint (no state_dict)")
    # The checkpoint holds every weight: no need for (or dependence on) the ImageNet package.
    net: PoseStudent = instantiate(cfg.model.net, **({"pretrained": False}
                                                     if "pretrained" in cfg.model.net else {}))
    mean_pose = MeanPoseBaseline()
    _load_part(net, ckpt["state_dict"], "net.", checkpoint, config_path)
    _load_part(mean_pose, ckpt["state_dict"], "mean_pose.", checkpoint, config_path)
    logger.info("loaded %s (step %d, crop %d px) with %s", checkpoint, ckpt.get("global_step", -1),
                net.crop_size, config_path)
    return LoadedStudent(net=net.eval(), mean_pose=mean_pose, run_config=cfg,
                         checkpoint=checkpoint, step=int(ckpt.get("global_step", -1)),
                         provenance=_provenance(ckpt, checkpoint))


def _provenance(ckpt: dict, checkpoint: Path) -> dict | None:
    """The checkpoint's manifest, None when it has none or a malformed one (logged)."""
    manifest = ckpt.get(MANIFEST_KEY)
    if manifest is None:
        logger.info("%s records no provenance (written before manifests)", checkpoint)
        return None
    try:
        return validate_manifest(manifest, str(checkpoint))
    except ProvenanceError as exc:
        logger.warning("%s; ignored", exc)
        return None


def _load_part(module: torch.nn.Module, state: dict, prefix: str, checkpoint: Path,
               config_path: Path) -> None:
    """Load the `prefix`ed entries of a LightningModule state dict into `module`, strictly."""
    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(part, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"the weights in {checkpoint} do not fit the {type(module).__name__} that "
            f"{config_path} describes (wrong run config?): {exc}"
        ) from exc
