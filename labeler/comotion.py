"""CoMotion (apple/ml-comotion, ICLR 2025) as a teacher: multi-person, tracked, 27 SMPL joints.

CoMotion detects people in each frame and refines every live track with the new image, so its
output per frame is a track state: `pred_3d [1, T, 27, 3]` camera-frame metres, `pred_2d
[1, T, 27, 2]` pixels, `id [1, T, 1]` (0 = empty slot), T = 48 slots. Its 27 joints are SMPL's
"joints_face" (22 body joints + 5 face vertices), the skeleton of docs/architecture.md, and its camera frame
is ours (X right, Y down, Z forward; `pred_2d = project(K, pred_3d)`), so the conversion is
`stream_pose.codec.label_from_camera` per live slot and nothing else.

The code comes from the `comotion_demo` package of the `ml-comotion/` submodule, importable in
CoMotion's own environment (`make comotion-env`, .venv-comotion); nothing of it is vendored here. Its files live inside that
package: `data/comotion_detection_checkpoint.pt`, `data/comotion_refine_checkpoint.pt`,
`data/comotion_detection.mlpackage`, `data/smpl/extra_smpl_reference.pt` (from
`get_pretrained_models.sh`) and
`data/smpl/SMPL_NEUTRAL.pkl` (from the SMPL site). Every missing piece raises one
`TeacherUnavailableError` that names it and the command or URL that fixes it, before any import
of CoMotion's heavy dependencies.

Devices (`device=`): "coreml" = CoreML detection (Apple Neural Engine/GPU) with the refinement
on MPS when available, CoMotion's own macOS path; "mps" = the whole PyTorch model on MPS;
"cuda"; "cpu"; "auto" = the first of those four that is ready here. Only "cpu" has been run on
this project's machines (no Mac, no GPU); the others follow CoMotion's demo code.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeler.base import TeacherUnavailableError
from stream_pose.camera import default_K
from stream_pose.codec import label_from_camera
from stream_pose.skeleton import NUM_JOINTS
from stream_pose.types import Frame, PersonLabel

log = logging.getLogger(__name__)

SUBMODULE_DIR = Path(__file__).resolve().parents[1] / "ml-comotion"
SMPL_URL = "https://smpl.is.tue.mpg.de/"
SMPL_SOURCE_FILE = "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"  # in "SMPL for Python" v1.1.0
CHECKPOINTS_URL = "https://ml-site.cdn-apple.com/models/comotion/demo_checkpoints.tar.gz"
DEVICES = ("auto", "coreml", "mps", "cuda", "cpu")
# Modules CoMotion imports beyond torch/numpy/cv2: its pyproject.toml pins timm 1.0.13 and torch
# 2.5.1; scenedetect 0.7 changed `process_frame` to take a timecode, which CoMotion does not pass.
DEPENDENCIES = (
    "torchvision timm==1.0.13 transformers==4.48.0 einops pypose tensordict \"scenedetect<0.7\"")


@dataclass(frozen=True)
class CoMotionFiles:
    """Where the installed `comotion_demo` package keeps its model files."""

    package_dir: Path

    @property
    def data_dir(self) -> Path:
        return self.package_dir / "data"

    @property
    def smpl_model(self) -> Path:
        return self.data_dir / "smpl" / "SMPL_NEUTRAL.pkl"

    @property
    def extra_reference(self) -> Path:
        """SMPL mean pose and COCO regressor, which CoMotion loads on import (checkpoint tarball)."""
        return self.data_dir / "smpl" / "extra_smpl_reference.pt"

    @property
    def checkpoints(self) -> tuple[Path, Path]:
        """PyTorch weights of the detection and the refinement (update) stages."""
        return (self.data_dir / "comotion_detection_checkpoint.pt",
                self.data_dir / "comotion_refine_checkpoint.pt")

    @property
    def coreml_package(self) -> Path:
        return self.data_dir / "comotion_detection.mlpackage"


@dataclass(frozen=True)
class DevicePlan:
    """Where each CoMotion stage runs.

    Attributes:
        torch_device: device of the PyTorch modules ("cpu" under CoreML: only the refinement
            moves, to MPS, inside CoMotion's `forward(use_mps=True)`).
        use_coreml: detection by the CoreML `.mlpackage` instead of PyTorch.
        use_mps: CoMotion's `use_mps` flag (refinement on MPS, CoreML path only).
        reason: why this plan, for the log.
    """

    torch_device: str
    use_coreml: bool = False
    use_mps: bool = False
    reason: str = ""

    @property
    def name(self) -> str:
        """"coreml+mps", "coreml", "mps", "cuda" or "cpu" (the teacher's `device`)."""
        if self.use_coreml:
            return "coreml+mps" if self.use_mps else "coreml"
        return self.torch_device


def locate_package(submodule_dir: Path = SUBMODULE_DIR) -> CoMotionFiles:
    """Find the installed `comotion_demo` package without importing it.

    Raises:
        TeacherUnavailableError: the submodule is not checked out, or its package is not installed.
    """
    spec = importlib.util.find_spec("comotion_demo")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:  # a namespace package (no __init__.py): take the real source tree
        if (root / "models" / "comotion.py").is_file():
            return CoMotionFiles(root)
    if not (submodule_dir / "pyproject.toml").is_file():
        raise TeacherUnavailableError(
            f"CoMotion is not checked out: {submodule_dir} is empty. Run "
            f"`git submodule update --init ml-comotion`, then `make comotion-env` and use "
            f".venv-comotion/bin/python (README, 'CoMotion teacher')")
    raise TeacherUnavailableError(
        "CoMotion's package `comotion_demo` is not importable in this environment. Run "
        "`make comotion-env` and use .venv-comotion/bin/python (or, in your own environment, "
        f"`pip install --no-deps -e ml-comotion` and `pip install {DEPENDENCIES}`)")


def check_files(files: CoMotionFiles, *, pretrained: bool, use_coreml: bool) -> None:
    """Raise one clear error for the first missing model file.

    Raises:
        TeacherUnavailableError: SMPL model, CoMotion's SMPL reference file (needed even with
            random weights: CoMotion loads it on import), PyTorch checkpoints (when `pretrained`)
            or the CoreML package (when `use_coreml`) absent; the message says how to get it.
    """
    if not files.smpl_model.is_file():
        raise TeacherUnavailableError(
            f"SMPL body model missing: {files.smpl_model}. Register at {SMPL_URL}, download "
            f"'SMPL for Python' v1.1.0 (non-commercial licence), and copy its {SMPL_SOURCE_FILE} "
            f"to that path")
    wanted = [files.extra_reference] + (list(files.checkpoints) if pretrained else [])
    wanted += [files.coreml_package] if use_coreml else []
    missing = [p for p in wanted if not p.exists()]
    if missing:
        raise TeacherUnavailableError(
            f"CoMotion weights missing: {', '.join(p.name for p in missing)} in {files.data_dir}. "
            f"Run `cd {SUBMODULE_DIR} && bash get_pretrained_models.sh` (downloads "
            f"{CHECKPOINTS_URL}; research-use licence, see ml-comotion/LICENSE_MODEL.md)")


def plan_device(requested: str, *, system: str, coreml_ready: bool, mps: bool,
                cuda: bool) -> DevicePlan:
    """Choose where CoMotion runs: CoreML+MPS, MPS, CUDA, CPU (in that order for "auto").

    Args:
        requested: one of `DEVICES`.
        system: `platform.system()` ("Darwin" on macOS).
        coreml_ready: coremltools imports and the `.mlpackage` exists.
        mps, cuda: whether torch sees those backends.

    Raises:
        ValueError: `requested` is not one of `DEVICES`.
        TeacherUnavailableError: the requested device cannot run here (the message says why).
    """
    if requested not in DEVICES:
        raise ValueError(f"CoMotion device must be one of {DEVICES}, got {requested!r}")
    if requested == "coreml" or (requested == "auto" and system == "Darwin" and coreml_ready):
        return _coreml_plan(system, coreml_ready, mps)
    available = {"mps": mps, "cuda": cuda, "cpu": True}
    if requested == "auto":
        first = next(d for d in ("mps", "cuda", "cpu") if available[d])
        return DevicePlan(first, reason=f"auto: {first} is the best device available")
    if not available[requested]:
        raise TeacherUnavailableError(f"CoMotion device {requested!r} requested but torch "
                                      f"reports it unavailable here; use device=auto or cpu")
    return DevicePlan(requested, reason=f"requested {requested}")


def _coreml_plan(system: str, coreml_ready: bool, mps: bool) -> DevicePlan:
    if system != "Darwin":
        raise TeacherUnavailableError(
            f"CoMotion's CoreML detection runs only on macOS (this is {system}); "
            f"use device=cuda, cpu or auto")
    if not coreml_ready:
        raise TeacherUnavailableError(
            "CoreML requested but not ready: `pip install coremltools` and run "
            f"`cd {SUBMODULE_DIR} && bash get_pretrained_models.sh` for comotion_detection.mlpackage")
    return DevicePlan("cpu", use_coreml=True, use_mps=mps,
                      reason="CoreML detection" + (" + MPS refinement" if mps else ""))


def labels_from_tracks(
    pred_3d: Any, pred_2d: Any, track_ids: Any, K: np.ndarray, image_hw: tuple[int, int], *,
    confidence: dict[int, float] | None = None, teacher: str = "comotion",
) -> list[PersonLabel]:
    """CoMotion's track state for one frame -> one `PersonLabel` per live track.

    Args:
        pred_3d: `[1, T, 27, 3]` (or `[T, 27, 3]`) camera-frame metres, torch or numpy.
        pred_2d: `[1, T, 27, 2]` pixels of the same frame (CoMotion's projection of `pred_3d`).
        track_ids: `[1, T, 1]` (or `[T]`) track ids as floats; 0 marks an empty slot.
        K: `[3, 3]` (or CoMotion's `[2, 3]`) intrinsics of the frame, pixels.
        image_hw: (H, W) of the frame.
        confidence: track id -> confidence in [0, 1]; missing ids get 1.0.

    Returns:
        Labels in slot order: pelvis-relative 3D, CoMotion's 2D, visibility = in front of the
        camera and inside the frame, box from the visible 2D joints, `track_id` = CoMotion's id.
        Slots whose person shows fewer than two joints are dropped (see `codec.make_label`).

    Raises:
        ValueError: shapes that do not match CoMotion's track state.
    """
    p3, p2, ids = _as_slots(pred_3d, pred_2d, track_ids)
    K3 = np.vstack([np.asarray(K, np.float32)[:2], [0.0, 0.0, 1.0]]).astype(np.float32)
    confidence = confidence or {}
    labels = []
    for slot in np.flatnonzero(ids > 0):
        track_id = int(round(float(ids[slot])))
        label = label_from_camera(
            p3[slot], K3, image_hw, track_id=track_id, teacher=teacher, kpts2d=p2[slot],
            confidence=float(np.clip(confidence.get(track_id, 1.0), 0.0, 1.0)))
        if label is not None:
            labels.append(label)
    return labels


def _as_slots(pred_3d: Any, pred_2d: Any, track_ids: Any) -> tuple[np.ndarray, ...]:
    """Numpy `[T, J, 3]`, `[T, J, 2]`, `[T]` from CoMotion's batch-of-one tensors."""
    p3, p2, ids = _numpy(pred_3d), _numpy(pred_2d), _numpy(track_ids)
    if p3.ndim < 3 or p3.shape[-2:] != (NUM_JOINTS, 3):
        raise ValueError(f"pred_3d must be [1, T, {NUM_JOINTS}, 3], got {list(p3.shape)}")
    p3 = p3.reshape(-1, NUM_JOINTS, 3)
    slots = len(p3)
    if p2.ndim < 3 or p2.shape[-2:] != (NUM_JOINTS, 2) or p2.size != slots * NUM_JOINTS * 2:
        raise ValueError(f"pred_2d must be [1, {slots}, {NUM_JOINTS}, 2], got {list(p2.shape)}")
    if ids.size != slots:
        raise ValueError(f"id must be [1, {slots}, 1], got {list(ids.shape)}")
    return p3, p2.reshape(slots, NUM_JOINTS, 2), ids.reshape(slots)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class CoMotionTeacher:
    """The CoMotion teacher: one model per producer, tracks kept per video.

    Frames go to the model as they are in memory: a `[3, H, W]` uint8 tensor sharing the frame's
    pixels and the `[2, 3]` intrinsics (`frame.K`, else CoMotion's default f = 2·max(H, W), the
    same as `stream_pose.camera.default_K`). Before each video's first frame (`reset()`) the
    tracks are re-initialised at that video's size and the shot detector starts afresh.

    Args:
        device: one of `DEVICES` (see the module docstring).
        pretrained: load CoMotion's weights (False: random weights, for tests of the code path).

    Raises:
        TeacherUnavailableError: a missing piece (submodule, package, SMPL file, weights,
            dependency, device); the message says how to fix it.
    """

    name = "comotion"

    def __init__(self, device: str = "auto", pretrained: bool = True) -> None:
        model, plan = load_comotion(device, pretrained)
        self._wrap(model, plan)

    @classmethod
    def from_model(cls, model: Any, plan: DevicePlan) -> CoMotionTeacher:
        """Wrap an already built CoMotion module (or anything with its interface:
        `init_tracks((H, W))` and `model(image, K, use_mps=...) -> (detections, tracks)`)."""
        teacher = cls.__new__(cls)
        teacher._wrap(model, plan)
        return teacher

    def _wrap(self, model: Any, plan: DevicePlan) -> None:
        self.model, self.plan, self.device = model, plan, plan.name
        # CoMotion keeps its scene-cut detector (and its last frame) across calls: a fresh copy
        # per video stops a new video's first frame being compared with the last one's.
        self._fresh_shot_detector = copy.deepcopy(getattr(model, "shot_detector", None))
        self._new_video = True

    def label(self, frame: Frame) -> list[PersonLabel]:
        """People tracked in `frame` (see `labels_from_tracks`); [] when none."""
        import torch

        if self._new_video:
            self._start_video(frame.hw)
        K = frame.K if frame.K is not None else default_K(*frame.hw)
        image = torch.from_numpy(frame.image).permute(2, 0, 1)  # [3, H, W] uint8, no copy
        _, tracks = self.model(image, torch.as_tensor(K[:2], dtype=torch.float32),
                               use_mps=self.plan.use_mps)
        return labels_from_tracks(tracks.pred_3d, tracks.pred_2d, tracks.id, K, frame.hw,
                                  confidence=self._track_confidence())

    def reset(self) -> None:
        """Start new tracks at the next frame (called before every video)."""
        self._new_video = True

    def close(self) -> None:
        """Drop the model (and free the CUDA cache when it was on a GPU)."""
        self.model = None
        if self.plan.torch_device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _start_video(self, image_hw: tuple[int, int]) -> None:
        self.model.init_tracks(image_hw)
        if self._fresh_shot_detector is not None:
            self.model.shot_detector = copy.deepcopy(self._fresh_shot_detector)
            self.model.frame_count = 0
        self._new_video = False

    def _track_confidence(self) -> dict[int, float]:
        """Track id -> CoMotion's smoothed match score of that track (its keypoint similarity
        with the frame's detections, OKS-like, in [0, 1]); {} when the model keeps none."""
        monitors = getattr(getattr(self.model, "handler", None), "health_monitors", {})
        scores = {}
        for track_id, monitor in monitors.items():
            try:
                scores[int(track_id)] = float(monitor.get("match", use_ema=True))
            except (IndexError, KeyError, TypeError, ValueError):
                continue  # a track without a match score yet
        return scores


def load_comotion(device: str = "auto", pretrained: bool = True) -> tuple[Any, DevicePlan]:
    """Build CoMotion on the chosen device, checking every piece first.

    Returns:
        (model in eval mode, its `DevicePlan`).

    Raises:
        TeacherUnavailableError: see `CoMotionTeacher`.
    """
    files = locate_package()
    plan = _plan_here(device, files)
    check_files(files, pretrained=pretrained, use_coreml=plan.use_coreml)
    comotion = _import_comotion()
    model = comotion.CoMotion(use_coreml=plan.use_coreml, pretrained=pretrained)
    model = model.to(plan.torch_device).eval()
    log.info("CoMotion on %s (%s), %s weights", plan.name, plan.reason,
             "pretrained" if pretrained else "random")
    return model, plan


def _plan_here(device: str, files: CoMotionFiles) -> DevicePlan:
    import torch

    coreml_ready = (importlib.util.find_spec("coremltools") is not None
                    and files.coreml_package.exists())
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return plan_device(device, system=platform.system(), coreml_ready=coreml_ready, mps=mps,
                       cuda=torch.cuda.is_available())


def _import_comotion() -> Any:
    """`comotion_demo.models.comotion`, with chumpy made importable first."""
    from labeler.chumpy_compat import ensure_chumpy

    ensure_chumpy()
    try:
        from comotion_demo.models import comotion
    except Exception as exc:  # ImportError, or a broken torchvision raising RuntimeError
        missing = getattr(exc, "name", None) or type(exc).__name__
        raise TeacherUnavailableError(
            f"CoMotion's dependencies do not import ({missing}: {exc}). Use CoMotion's own "
            f"environment (`make comotion-env`, then .venv-comotion/bin/python) or install its "
            f"pins here: `pip install {DEPENDENCIES}` (torchvision must match your torch)") from exc
    return comotion
