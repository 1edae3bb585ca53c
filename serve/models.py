"""Crop models: the student as the tracker and the sessions see it, below both in the imports.

    model = load_crop_model("runs/<run>/export/last.onnx")    # or a .ckpt
    poses = model(crops)            # [B, 3, S, S] uint8 RGB -> CropPoses (3D, 2D, confidence)

`serve.tracker` and `serve.session` depend on the `CropModel` protocol only; `serve.engine`
loads one and makes sessions with it. Keeping the protocol and its adapters here (not in the
engine) keeps the imports one-way: engine -> session -> tracker -> models.

Thread safety: an ONNX Runtime `InferenceSession` may be called from several threads at once;
`intra_op_num_threads` is set (default 1) so that concurrent sessions do not oversubscribe the
cores. Torch modules are run under a lock.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from stream_pose.skeleton import JOINT_NAMES, NUM_JOINTS
from train.student import heatmap_confidence

TEACHER_MODELS = ("mediapipe", "comotion")  # `model` values that serve a teacher alone
# Frames are downscaled to this longer side unless the model says otherwise: the size training
# decodes real video at (conf/source/local.yaml `max_side`); MediaPipe works at 256 px inside.
DEFAULT_MAX_SIDE = 640
ONNX_OUTPUTS = ("kpts3d", "kpts2d", "confidence")  # serve.export.OUTPUTS


class ModelLoadError(ValueError):
    """A `model` that cannot be served: the message names it and what to pass instead."""


@dataclass
class CropPoses:
    """A student's predictions for a batch of crops.

    Attributes:
        kpts3d: `[B, J, 3]` float32 metres, pelvis-relative, camera axes (X right, Y down, Z fwd).
        kpts2d: `[B, J, 2]` float32 crop pixels.
        confidence: `[B, J]` float32 in [0, 1] (`train.student.heatmap_confidence`; 1 for a
            model without heatmaps).
    """

    kpts3d: np.ndarray
    kpts2d: np.ndarray
    confidence: np.ndarray


class CropModel(Protocol):
    """A top-down pose model: `[B, 3, S, S]` uint8 RGB crops -> `CropPoses`.

    `defined` (`[J]` bool) marks the joints its training supervised; the others are reported
    with confidence 0."""

    name: str
    crop_size: int
    defined: np.ndarray
    max_side: int | None

    def __call__(self, crops: np.ndarray) -> CropPoses: ...


class TorchCropModel:
    """A torch student (or any module returning `train.student.StudentOutput`) as a `CropModel`.

    Args:
        net: the network; crops are fed as float in [0, 1]. A `PoseStudent` also gives heatmap
            confidence; other modules give confidence 1.
        device: torch device.
        name: shown in `/health` and `model_version`.
        defined: `[J]` bool, the supervised joints (`LoadedStudent.supervised`); None: all.
    """

    def __init__(self, net: nn.Module, device: str | torch.device = "cpu",
                 name: str = "student", defined: np.ndarray | None = None) -> None:
        self.net, self.device, self.name = net.eval().to(device), torch.device(device), name
        self.crop_size = int(net.crop_size)
        self.defined = np.ones(NUM_JOINTS, bool) if defined is None else np.asarray(defined, bool)
        self.max_side: int | None = None  # the frame size it was trained at, where known
        self._lock = threading.Lock()

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> CropPoses:
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).float() / 255.0
        with self._lock:
            if hasattr(self.net, "forward_with_heatmaps"):
                out, logits = self.net.forward_with_heatmaps(x)
                conf = heatmap_confidence(logits).cpu().numpy()
            else:
                out = self.net(x)
                conf = np.ones(out.kpts2d.shape[:2], np.float32)
        return CropPoses(out.kpts3d.cpu().numpy().astype(np.float32),
                         out.kpts2d.cpu().numpy().astype(np.float32), conf.astype(np.float32))


class OnnxCropModel:
    """An exported student (`serve.export`, uint8 input) on ONNX Runtime's CPU provider.

    Args:
        path: the `.onnx` file.
        threads: `intra_op_num_threads` of the session.

    Raises:
        ModelLoadError: onnxruntime missing, an unreadable file, or a model whose input is not
            `image` `[B, 3, S, S]` uint8.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError("serving an .onnx model needs onnxruntime: "
                                 "pip install 'stream-pose[export]'") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"cannot load {path} with onnxruntime: {exc}") from exc
        (inp,) = self.session.get_inputs()
        if inp.name != "image" or inp.type != "tensor(uint8)" or len(inp.shape) != 4:
            raise ModelLoadError(f"{path}: expected input 'image' uint8 [B, 3, S, S], got "
                                 f"{inp.name!r} {inp.type} {inp.shape}; export with dtype=uint8")
        self.crop_size, self.name = int(inp.shape[2]), Path(path).name
        self.outputs = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        names = set(json.loads(meta.get("supervised_joints", json.dumps(JOINT_NAMES))))
        self.defined = np.array([n in names for n in JOINT_NAMES])
        side = meta.get("frame_max_side", "")
        self.max_side = int(side) if side.isdigit() else None

    def __call__(self, crops: np.ndarray) -> CropPoses:
        outs = dict(zip(self.outputs, self.session.run(None, {"image": crops})))
        conf = outs.get("confidence")  # exports before the confidence output had two outputs
        if conf is None:
            conf = np.ones(outs["kpts2d"].shape[:2], np.float32)
        return CropPoses(outs["kpts3d"], outs["kpts2d"], conf)


def load_crop_model(model: str, *, threads: int = 1, device: str = "cpu") -> CropModel:
    """The student named by `model`: a `.onnx` file or a `.ckpt` training checkpoint.

    Raises:
        ModelLoadError: a missing file, another suffix, or a file that does not load.
    """
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"model {model!r}: no such file; pass an exported .onnx, a .ckpt, "
                             f"or one of {', '.join(TEACHER_MODELS)}")
    if path.suffix == ".onnx":
        return OnnxCropModel(path, threads=threads)
    if path.suffix == ".ckpt":
        from serve.checkpoint import CheckpointError, load_student

        try:
            loaded = load_student(path)
        except (CheckpointError, FileNotFoundError) as exc:
            raise ModelLoadError(f"model {model!r}: {exc}") from exc
        torch.set_num_threads(int(threads))
        model = TorchCropModel(loaded.net, device=device, name=path.name,
                               defined=loaded.supervised)
        model.max_side = loaded.run_config.get("source", {}).get("max_side")
        return model
    raise ModelLoadError(f"model {model!r}: expected a .onnx or .ckpt file, or one of "
                         f"{', '.join(TEACHER_MODELS)}")
