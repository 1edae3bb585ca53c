"""Convert CoMotion's detection stage to a Core ML ML program (`.mlpackage`), as CoMotion's macOS
path loads it (`comotion_demo.models.detect.CoMotionDetectCoreML`).

CoMotion runs its detection stage (ConvNeXtV2-L backbone + detection head, ~365 M parameters of
the whole model) through Core ML on a Mac and its refinement in PyTorch. Apple ships that stage
converted (`comotion_detection.mlpackage`, in the checkpoint tarball); this module rebuilds it
from the PyTorch weights, for a checkpoint of one's own, a newer coremltools or a machine that has
the `.pt` files only.

The converted program takes what `CoMotionDetectCoreML.__call__` passes: `image` `[1, 3, 512,
512]` float32, ImageNet-normalised, CoMotion's letterboxed crop (`dataloading.prepare_network_inputs`)
and `K` `[1, 2, 3]` float32, that crop's intrinsics in pixels; and returns one tensor per field of
CoMotion's `DetectionOutput`, under the field's name (`image_features`, `betas`,
`delta_root_orient`, `delta_body_pose`, `trans`, `conf`), so that `DetectionOutput(**outputs)`
rebuilds it. Conversion runs anywhere coremltools installs (Linux included); only running the
program needs macOS.

    python -m labeler.comotion_coreml                 # into the installed package's data/
    python -m labeler.comotion_coreml --out my.mlpackage --random-weights
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labeler.base import TeacherUnavailableError

log = logging.getLogger(__name__)

INPUT_SIZE = 512  # CoMotion crops and pads every frame to 512 x 512 (dataloading.py)
INPUTS = ("image", "K")  # the names CoMotionDetectCoreML.__call__ feeds
# comotion_demo.models.detect.DetectionOutput's fields, in order.
OUTPUTS = ("image_features", "betas", "delta_root_orient", "delta_body_pose", "trans", "conf")


def _coremltools() -> Any:
    try:
        import coremltools as ct
    except ImportError as exc:
        raise TeacherUnavailableError(
            "coremltools is not installed: `pip install coremltools` (CoMotion's environment, "
            "`make comotion-env`, has it)") from exc
    _register_addcmul()
    return ct


def _register_addcmul() -> None:
    """Teach coremltools `torch.addcmul` (x + value * t1 * t2), which timm's ConvNeXtV2
    GlobalResponseNorm calls and coremltools 9.0 cannot convert ("op 'addcmul' not implemented")."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops, torch_op_registry

    if "addcmul" in torch_op_registry._TORCH_OPS_REGISTRY:
        return  # a coremltools that knows it, or registered before

    def addcmul(context: Any, node: Any) -> None:
        inputs = ops._get_inputs(context, node, min_expected=3)
        x, t1, t2 = ops.promote_input_dtypes(inputs[:3])
        value = inputs[3].val if len(inputs) > 3 and inputs[3] is not None else 1
        product = mb.mul(x=t1, y=t2)
        if value != 1:
            product = mb.mul(x=product, y=np.array(value, dtype=np.float32))
        context.add(mb.add(x=x, y=product, name=node.name))

    torch_op_registry.register_torch_op(addcmul)


class _Traceable(torch.nn.Module):
    """The detection module with a plain tuple out (in `OUTPUTS` order), which a trace needs."""

    def __init__(self, detect: Any) -> None:
        super().__init__()
        self.detect = detect

    def forward(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.detect(image, K)
        return tuple(getattr(out, name) for name in OUTPUTS)


def convert_detection(detect: Any, out: Path, *, precision: str = "float16",
                      minimum_target: str = "macOS13") -> Path:
    """Trace CoMotion's detection module and convert it to a Core ML ML program at `out`.

    Args:
        detect: a `comotion_demo.models.detect.CoMotionDetect` (or a module with its
            `forward(image [1, 3, 512, 512], K [1, 2, 3]) -> DetectionOutput`), on the CPU.
        out: path of the `.mlpackage` to write (a directory; replaced if it exists).
        precision: "float16" (what runs on the Neural Engine) or "float32".
        minimum_target: coremltools deployment target name (`ct.target.<name>`); ML programs
            need macOS 12 or later.

    Returns:
        `out`.

    Raises:
        TeacherUnavailableError: coremltools missing.
        ValueError: an unknown `precision` or `minimum_target`.
    """
    ct = _coremltools()
    if precision not in ("float16", "float32"):
        raise ValueError(f"precision must be float16 or float32, got {precision!r}")
    target = getattr(ct.target, minimum_target, None)
    if target is None:
        raise ValueError(f"unknown Core ML deployment target {minimum_target!r} "
                         f"(coremltools {ct.__version__}; e.g. macOS13)")
    example = (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE), _example_K())
    # torch.export, not torch.jit.trace: a trace keeps CoMotion's shape arithmetic (feature map
    # sizes turned into int tensors), which coremltools cannot fold; an exported program has
    # the 512 x 512 shapes as constants.
    program = torch.export.export(_Traceable(detect).eval(), example).run_decompositions({})
    mlmodel = ct.convert(
        program,
        inputs=[ct.TensorType(name=name, shape=tuple(x.shape)) for name, x in zip(INPUTS, example)],
        outputs=[ct.TensorType(name=name) for name in OUTPUTS],
        convert_to="mlprogram", minimum_deployment_target=target,
        compute_precision=getattr(ct.precision, precision.upper()))
    mlmodel.short_description = "CoMotion detection stage (apple/ml-comotion), converted by stream-pose"
    out = Path(out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    mlmodel.save(str(out))
    return out


def _example_K() -> Any:
    """`[1, 2, 3]` intrinsics of a 512 px crop with CoMotion's default focal length (2 x size)."""
    f, c = 2.0 * INPUT_SIZE, INPUT_SIZE / 2
    return torch.tensor([[[f, 0.0, c], [0.0, f, c]]])


def describe(path: Path) -> dict[str, dict[str, list[int] | None]]:
    """Inputs and outputs of a `.mlpackage` (name -> shape, None where the spec gives none),
    read from its spec without loading it (works off macOS).

    Raises:
        TeacherUnavailableError: coremltools missing.
    """
    ct = _coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()

    def shape(feature: Any) -> list[int] | None:
        dims = list(feature.type.multiArrayType.shape)
        return dims or None

    return {"inputs": {f.name: shape(f) for f in spec.description.input},
            "outputs": {f.name: shape(f) for f in spec.description.output}}


def main(argv: list[str] | None = None) -> int:
    """CLI: convert the installed CoMotion's detection stage; exit 0, or 2 with one line."""
    parser = argparse.ArgumentParser(
        prog="python -m labeler.comotion_coreml",
        description="Convert CoMotion's detection stage (PyTorch weights) to Core ML, for "
                    "labeler.device=coreml on a Mac.")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the .mlpackage (default: the installed "
                             "comotion_demo's data/comotion_detection.mlpackage, where CoMotion "
                             "looks for it)")
    parser.add_argument("--random-weights", action="store_true",
                        help="convert an untrained model (no checkpoint needed; for testing)")
    parser.add_argument("--precision", choices=("float16", "float32"), default="float16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = args.out or _default_out()
        detect = _build_detection(pretrained=not args.random_weights)
        start = time.perf_counter()
        convert_detection(detect, out, precision=args.precision)
    except TeacherUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return 0


def _default_out() -> Path:
    from labeler.comotion import locate_package

    return locate_package().coreml_package


def _build_detection(*, pretrained: bool) -> Any:
    """CoMotion's PyTorch detection module from the installed package (weights checked first)."""
    from labeler.comotion import _import_comotion, check_files, locate_package

    check_files(locate_package(), pretrained=pretrained, use_coreml=False)
    _import_comotion()
    from comotion_demo.models import detect

    return detect.CoMotionDetect(pretrained=pretrained).eval()


if __name__ == "__main__":
    raise SystemExit(main())
