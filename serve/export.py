"""Export a trained student to ONNX, TorchScript or Core ML, and check it against torch.

    python -m serve.export checkpoint=runs/<run>/checkpoints/last.ckpt format=onnx
    python -m serve.export checkpoint=... format=torchscript dtype=float32
    python -m serve.export checkpoint=... format=coreml out=student.mlpackage

Every exported model takes crops `[B, 3, S, S]`, RGB, S = the run's crop size, cut as training
cuts them (`stream_pose.codec.crop_sample`: a square of 1.25 x the person box, resized to S):
- `dtype=uint8`: values in [0, 255], divided by 255 inside the model;
- `dtype=float32`: values in [0, 1], which is what the training loop feeds the student.
The ImageNet mean/std normalisation is inside the student, so no other preprocessing is needed.
Outputs: `kpts3d` `[B, J, 3]` float32 metres, pelvis-relative (`kpts3d[:, 0] == 0`), camera axes
(X right, Y down, Z forward); `kpts2d` `[B, J, 2]` float32 crop pixels (x right, y down, pixel
centres at integers); `confidence` `[B, J]` float32 in [0, 1], the heatmap mass around each
joint's peak (`train.student.heatmap_confidence`: low where the crop shows no such joint). J = 27
joints in `stream_pose.skeleton.JOINT_NAMES` order (also stored in the model's metadata).

ONNX uses torch's default `torch.export`-based exporter (`dynamo=True`): the TorchScript-based
one is deprecated since torch 2.9, and both export this network with the same numbers here
(torch 2.13). The batch dimension is dynamic. The export command runs the model with onnxruntime
(or reloads the TorchScript) on random crops and fails unless the largest difference from torch
is below `atol_m` (kpts3d) and `atol_px` (kpts2d).

Provenance: the checkpoint's manifest of the videos the student learnt from
(`stream_pose.provenance`) goes into every export, through the secrets policy again: ONNX
`metadata_props["provenance"]`, Core ML user-defined metadata `provenance` (and a one-line
summary in its licence field), TorchScript extra files `provenance.json` (and `metadata.json`).
A checkpoint written before manifests still exports, without one (`stream-pose provenance`
then says "no provenance recorded").

Core ML: converted with coremltools from a `torch.jit.trace` (its `torch.export` frontend fails on
this graph with torch 2.13: "Unsupported fx node alias") to an ML program (`.mlpackage`).
Core ML has no uint8 tensor input, so `dtype=uint8` gives an RGB image input (batch 1, scaled by
1/255 by Core ML) and `dtype=float32` a float tensor with a flexible batch. Conversion runs on
Linux; running the model needs the Core ML framework, i.e. macOS, so the parity check runs only
there and is skipped with a log line elsewhere.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from serve.checkpoint import CheckpointError, load_student, required_checkpoint
from stream_pose.provenance import MANIFEST_FILE, MANIFEST_KEY, manifest_json, redact_manifest
from stream_pose.runtime import CONF_DIR
from stream_pose.skeleton import JOINT_NAMES
from train.module import image_to_float
from train.student import PoseStudent, heatmap_confidence

logger = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "coreml": ".mlpackage"}
DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
INPUT, OUTPUTS = "image", ("kpts3d", "kpts2d", "confidence")
CONFIDENCE_ATOL = 1e-3  # heatmap mass, in [0, 1]
EXAMPLE_BATCH, CHECK_BATCH = 2, 3  # different sizes, so the check exercises the dynamic batch


class ExportError(RuntimeError):
    """An export that failed or does not match torch; the message says which and by how much."""


class Difference(NamedTuple):
    """Largest absolute difference of an exported model from torch on the same crops."""

    kpts3d_m: float
    kpts2d_px: float
    confidence: float = 0.0


class ExportableStudent(nn.Module):
    """The student with a fixed input dtype and plain tensor outputs, ready to trace or export.

    Args:
        net: the trained student (eval mode).
        dtype: "uint8" (crops in [0, 255]) or "float32" (crops in [0, 1]).

    Raises:
        ValueError: on another dtype.
    """

    def __init__(self, net: PoseStudent, dtype: str = "uint8") -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.net, self.dtype = net, DTYPES[dtype]
        self.eval()  # BatchNorm uses its running statistics in every exported graph

    @property
    def crop_size(self) -> int:
        """S, the crop side in pixels."""
        return self.net.crop_size

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`[B, 3, S, S]` crops -> (`kpts3d` `[B, J, 3]` metres, `kpts2d` `[B, J, 2]` crop px,
        `confidence` `[B, J]` in [0, 1], `train.student.heatmap_confidence`)."""
        out, logits = self.net.forward_with_heatmaps(image_to_float(image))
        return out.kpts3d, out.kpts2d, heatmap_confidence(logits)

    def example_input(self, batch_size: int, seed: int = 0) -> Tensor:
        """Random crops `[batch_size, 3, S, S]` of this model's dtype and value range."""
        g = torch.Generator().manual_seed(seed)
        shape = (batch_size, 3, self.crop_size, self.crop_size)
        if self.dtype == torch.uint8:
            return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        return torch.rand(shape, generator=g)


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: the file, its format and input dtype, and the check's outcome."""

    path: Path
    format: str
    dtype: str
    crop_size: int
    difference: Difference | None  # None: not checked (Core ML off macOS)

    def summary(self) -> str:
        """One line for the terminal."""
        check = ("not run: Core ML prediction needs macOS" if self.difference is None else
                 f"max |diff| vs torch {self.difference.kpts3d_m:.1e} m (kpts3d), "
                 f"{self.difference.kpts2d_px:.1e} px (kpts2d)")
        s = self.crop_size
        shape = (f"RGB image [1, 3, {s}, {s}]" if (self.format, self.dtype) == ("coreml", "uint8")
                 else f"{self.dtype} [B, 3, {s}, {s}]")
        return f"wrote {self.path} ({self.format}, input {shape}); check {check}"


def export(cfg: DictConfig) -> ExportResult:
    """Export the student of `cfg.checkpoint` as `cfg.format` and check it (conf/export.yaml).

    Raises:
        serve.checkpoint.MissingCheckpointError: no `checkpoint=`.
        ValueError: an unknown format or dtype.
        FileNotFoundError, serve.checkpoint.CheckpointError: see `load_student`.
        ExportError: the exported model differs from torch by more than the tolerances, or
            the exporter failed (the cause is chained).
    """
    checkpoint = required_checkpoint(cfg)
    if cfg.format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {cfg.format!r}")
    loaded = load_student(checkpoint, cfg.get("run_config"))
    model = ExportableStudent(loaded.net, cfg.dtype)
    # stem + suffix, not with_suffix: "step006000-mpjpe91.9" would lose its ".9"
    path = Path(cfg.out) if cfg.get("out") else (
        Path(loaded.run_config.paths.output_dir) / "export"
        / f"{loaded.checkpoint.stem}{FORMATS[cfg.format]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if loaded.provenance is None:
        logger.warning("%s records no provenance: the export will not say which videos the "
                       "student learnt from", loaded.checkpoint)
    metadata = model_metadata(model, loaded.step, loaded.supervised,
                              loaded.run_config.get("source", {}).get("max_side"),
                              provenance=loaded.provenance)
    try:
        if cfg.format == "onnx":
            export_onnx(model, path, cfg.opset, metadata)
            diff = check_onnx(model, path)
        elif cfg.format == "torchscript":
            export_torchscript(model, path, metadata)
            diff = check_torchscript(model, path)
        else:
            export_coreml(model, path, metadata, cfg.coreml_precision, cfg.max_batch)
            diff = check_coreml(model, path)
    except ExportError:
        raise
    except Exception as exc:  # name the format and the versions: exporters break across them
        raise ExportError(
            f"{cfg.format} export failed with torch {torch.__version__}: "
            f"{type(exc).__name__}: {exc}") from exc
    check_tolerance(diff, cfg.atol_m, cfg.atol_px, path)
    return ExportResult(path, cfg.format, cfg.dtype, model.crop_size, diff)


def model_metadata(model: ExportableStudent, step: int, supervised: np.ndarray | None = None,
                   frame_max_side: int | None = None,
                   provenance: dict | None = None) -> dict[str, str]:
    """What a user of the exported file needs to know, as string pairs stored inside it.

    `supervised_joints` names the joints the training labels had (`LoadedStudent.supervised`);
    serving gives the others confidence 0. `frame_max_side` is the longer side training's
    frames were downscaled to (`source.max_side`); serving downscales frames the same way.
    `provenance` is the checkpoint's manifest (`LoadedStudent.provenance`), stored as JSON under
    `provenance` after the secrets policy (`stream_pose.provenance.redact_manifest`); None
    stores no such key."""
    supervised = np.ones(len(JOINT_NAMES), bool) if supervised is None else supervised
    low, high = ("0", "255") if model.dtype == torch.uint8 else ("0", "1")
    extra = {} if provenance is None else {MANIFEST_KEY: manifest_json(redact_manifest(provenance))}
    return {
        "producer": "stream-pose",
        "input": f"{INPUT}: [B, 3, {model.crop_size}, {model.crop_size}] RGB crop, "
                 f"{str(model.dtype).removeprefix('torch.')} in [{low}, {high}]",
        "kpts3d": "[B, 27, 3] metres, pelvis-relative, camera axes (X right, Y down, Z forward)",
        "kpts2d": "[B, 27, 2] crop pixels (x right, y down, pixel centres at integers)",
        "joint_names": json.dumps(JOINT_NAMES),
        "supervised_joints": json.dumps([n for n, m in zip(JOINT_NAMES, supervised) if m]),
        "confidence": "[B, 27] in [0, 1], heatmap mass around each joint's peak",
        "train_step": str(step),
        "frame_max_side": "" if frame_max_side is None else str(int(frame_max_side)),
        **extra,
    }


def export_onnx(model: ExportableStudent, path: Path, opset: int,
                metadata: dict[str, str]) -> None:
    """ONNX with a dynamic batch, weights inside the one file, metadata in `metadata_props`."""
    import onnx

    for name in ("onnxscript", "onnx_ir"):  # their graph optimiser logs every rewrite at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model, (model.example_input(EXAMPLE_BATCH),), str(path), dynamo=True,
        input_names=[INPUT], output_names=list(OUTPUTS), opset_version=opset,
        dynamic_shapes={"image": {0: batch}}, external_data=False, verbose=False,
    )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def check_onnx(model: ExportableStudent, path: Path) -> Difference:
    """Run the ONNX file with onnxruntime (CPU) and torch on the same crops; compare."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = model.example_input(CHECK_BATCH, seed=1)
    return _difference(model, x, *session.run(list(OUTPUTS), {INPUT: x.numpy()}))


def export_torchscript(model: ExportableStudent, path: Path, metadata: dict[str, str]) -> None:
    """A traced TorchScript module; metadata as `_extra_files` (`metadata.json`, and the
    provenance manifest alone as `provenance.json` when the metadata has one)."""
    traced = _trace(model)
    extra = {"metadata.json": json.dumps(metadata)}
    if MANIFEST_KEY in metadata:
        extra[MANIFEST_FILE] = metadata[MANIFEST_KEY]
    torch.jit.save(traced, str(path), _extra_files=extra)


def check_torchscript(model: ExportableStudent, path: Path) -> Difference:
    """Reload the saved TorchScript file and compare it with torch on the same crops."""
    loaded = torch.jit.load(str(path), map_location="cpu")
    x = model.example_input(CHECK_BATCH, seed=1)
    with torch.no_grad():
        outs = loaded(x)
    return _difference(model, x, *(o.numpy() for o in outs))


def export_coreml(model: ExportableStudent, path: Path, metadata: dict[str, str],
                  precision: str = "float32", max_batch: int = 64) -> None:
    """A Core ML ML program (`.mlpackage`) converted by coremltools from a trace of the float model.

    uint8: an RGB image input of batch 1 that Core ML scales by 1/255; float32: a `[B, 3, S, S]`
    tensor in [0, 1] with B in 1..max_batch. Conversion works on Linux; prediction needs macOS.
    """
    import coremltools as ct

    s = model.crop_size
    float_model = ExportableStudent(model.net, "float32")
    if model.dtype == torch.uint8:  # Core ML has no uint8 tensors; images are its 8-bit input
        inputs = [ct.ImageType(name=INPUT, shape=(1, 3, s, s), scale=1 / 255.0,
                               color_layout=ct.colorlayout.RGB)]
    else:
        inputs = [ct.TensorType(name=INPUT, shape=(ct.RangeDim(1, max_batch, 1), 3, s, s),
                                dtype=np.float32)]
    mlmodel = ct.convert(
        _trace(float_model), inputs=inputs, outputs=[ct.TensorType(name=n) for n in OUTPUTS],
        convert_to="mlprogram", compute_precision=getattr(ct.precision, precision.upper()),
    )
    mlmodel.user_defined_metadata.update(metadata)
    mlmodel.short_description = "stream-pose student: 3D and 2D human pose from a person crop"
    if MANIFEST_KEY in metadata:
        mlmodel.license = _licence_summary(json.loads(metadata[MANIFEST_KEY]))
    mlmodel.save(str(path))


def check_coreml(model: ExportableStudent, path: Path) -> Difference | None:
    """Compare Core ML's prediction with torch on macOS; elsewhere check the saved interface.

    Returns:
        The difference on macOS; None elsewhere (Core ML prediction needs the macOS framework),
        after checking that the package loads and has the expected input and outputs.

    Raises:
        ExportError: if the saved package lacks the input or outputs.
    """
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    names = ([i.name for i in spec.description.input], [o.name for o in spec.description.output])
    if names != ([INPUT], list(OUTPUTS)):
        raise ExportError(f"{path}: inputs/outputs {names}, expected {([INPUT], list(OUTPUTS))}")
    if sys.platform != "darwin":
        logger.warning("Core ML prediction needs macOS: the torch parity check of %s is "
                       "skipped on %s (conversion only)", path, sys.platform)
        return None
    mlmodel = ct.models.MLModel(str(path))
    x = model.example_input(1 if model.dtype == torch.uint8 else CHECK_BATCH, seed=1)
    feed: Any = x.numpy()
    if model.dtype == torch.uint8:
        from PIL import Image

        feed = Image.fromarray(x[0].permute(1, 2, 0).numpy(), mode="RGB")
    out = mlmodel.predict({INPUT: feed})
    return _difference(model, x, *(out[n] for n in OUTPUTS))


def _licence_summary(manifest: dict) -> str:
    """One line for Core ML's licence field: the training videos' licences, counted."""
    counts: dict[str, int] = {}
    for video in manifest.get("videos", []):
        if video.get("split") == "train":
            licence = video.get("licence") or "licence unknown"
            counts[licence] = counts.get(licence, 0) + 1
    listed = ", ".join(f"{n} x {licence}" for licence, n in counts.items()) or "none"
    return (f"trained on videos: {listed}; teacher {manifest['teacher'].get('name', '?')}. "
            f"Full manifest: user-defined metadata '{MANIFEST_KEY}' (stream-pose provenance)")


def _trace(model: nn.Module) -> torch.jit.ScriptModule:
    """`torch.jit.trace` on the model's example batch; the student's input shape checks become
    constants of the trace (that is what the TracerWarning says), which is what we want."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(model.eval(), model.example_input(EXAMPLE_BATCH))


@torch.no_grad()
def _difference(model: ExportableStudent, x: Tensor, *outputs: np.ndarray) -> Difference:
    """Largest |exported - torch| of each output (in `OUTPUTS` order) on the crops `x`."""
    refs = [r.numpy() for r in model(x)]
    got, want = [o.shape for o in outputs], [r.shape for r in refs]
    if got != want:
        raise ExportError(f"exported outputs have shapes {got}; torch gives {want}")
    return Difference(*(float(np.abs(o - r).max()) for o, r in zip(outputs, refs)))


def check_tolerance(diff: Difference | None, atol_m: float, atol_px: float, path: Path) -> None:
    """Refuse an export whose outputs differ from torch by more than the tolerances.

    Raises:
        ExportError: naming the file and both differences; None (not checked) passes.
    """
    if diff is not None and (diff.kpts3d_m > atol_m or diff.kpts2d_px > atol_px
                             or diff.confidence > CONFIDENCE_ATOL):
        raise ExportError(
            f"{path} differs from torch by {diff.kpts3d_m:.2e} m (kpts3d, allowed {atol_m:.0e}) "
            f"and {diff.kpts2d_px:.2e} px (kpts2d, allowed {atol_px:.0e})")


def main() -> None:
    """CLI: `python -m serve.export checkpoint=... format=onnx|torchscript|coreml`."""
    _hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        result = export(cfg)
    except (ValueError, FileNotFoundError, CheckpointError, ExportError) as exc:
        sys.exit(f"error: {exc}")
    print(result.summary())


if __name__ == "__main__":
    main()
