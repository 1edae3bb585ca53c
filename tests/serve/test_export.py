"""serve.export: ONNX (checked with onnxruntime), TorchScript and Core ML from a real checkpoint."""

import json
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from shared_paths import CONF_DIR

from serve.checkpoint import MissingCheckpointError, load_student
from serve.export import (
    ExportableStudent,
    ExportError,
    check_onnx,
    check_tolerance,
    export,
    export_onnx,
)
from stream_pose.skeleton import JOINT_NAMES
from train.student import PoseStudent


def _config(run_dir, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("export", overrides=[
            f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", *overrides])


def _crops(dtype, batch, seed=5, size=64):
    g = torch.Generator().manual_seed(seed)
    if dtype == "uint8":
        return torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    return torch.rand(batch, 3, size, size, generator=g)


def _torch_reference(run_dir, image):
    """The student as training runs it: uint8 crops / 255, float crops as they are."""
    net = load_student(run_dir / "checkpoints" / "last.ckpt").net
    x = image.float() / 255 if image.dtype == torch.uint8 else image
    with torch.no_grad():
        out = net(x)
    return out.kpts3d.numpy(), out.kpts2d.numpy()


@pytest.fixture(scope="module")
def onnx_export(trained_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    return export(_config(trained_run, "format=onnx", f"out={path}"))


@pytest.mark.slow
def test_onnx_matches_torch_with_any_batch_size(trained_run, onnx_export):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = onnx_export.path
    assert onnx_export.difference.kpts3d_m < 1e-4  # the command checked it too
    assert [p.name for p in path.parent.iterdir()] == ["student.onnx"]  # weights inside

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape[1:] == [3, 64, 64]
    for batch in (1, 5):  # the export traced batch 2: the batch axis is dynamic
        image = _crops("uint8", batch)
        kpts3d, kpts2d, conf = session.run(["kpts3d", "kpts2d", "confidence"],
                                           {"image": image.numpy()})
        ref3d, ref2d = _torch_reference(trained_run, image)
        assert kpts3d.shape == (batch, 27, 3) and kpts2d.shape == (batch, 27, 2)
        assert conf.shape == (batch, 27) and np.all((conf >= 0) & (conf <= 1))
        assert np.abs(kpts3d - ref3d).max() < 1e-4  # metres
        assert np.abs(kpts2d - ref2d).max() < 1e-2  # crop pixels
        assert np.all(kpts3d[:, 0] == 0)  # pelvis-relative
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["joint_names"]) == list(JOINT_NAMES)


@pytest.mark.slow
def test_the_check_refuses_an_export_outside_the_tolerance(trained_run, onnx_export):
    model = ExportableStudent(load_student(trained_run / "checkpoints" / "last.ckpt").net)
    diff = check_onnx(model, onnx_export.path)
    check_tolerance(diff, 1e-4, 1e-2, onnx_export.path)  # the defaults pass
    # onnxruntime and torch agree to ~1e-5 px, not to 1e-9 px: that must be refused.
    assert diff.kpts2d_px > 1e-9
    with pytest.raises(ExportError, match="differs from torch"):
        check_tolerance(diff, 1e-4, 1e-9, onnx_export.path)


@pytest.mark.slow
def test_torchscript_reloads_and_matches_torch_on_float_crops(trained_run, tmp_path):
    path = tmp_path / "student.pt"
    export(_config(trained_run, "format=torchscript", "dtype=float32", f"out={path}"))
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert "float32 in [0, 1]" in json.loads(extra["metadata.json"])["input"]
    image = _crops("float32", 4)
    with torch.no_grad():
        kpts3d, kpts2d, _ = scripted(image)
    ref3d, ref2d = _torch_reference(trained_run, image)
    np.testing.assert_allclose(kpts3d.numpy(), ref3d, atol=1e-6)
    np.testing.assert_allclose(kpts2d.numpy(), ref2d, atol=1e-4)


@pytest.mark.slow
def test_the_efficientnet_student_exports_to_onnx_within_tolerance(tmp_path):
    # The pretrained trunk's TF-style padding, ReLU6 and channels-last layout survive the export.
    torch.manual_seed(0)
    net = PoseStudent(128, backbone="efficientnet_lite0", head3d="lift").eval()
    model = ExportableStudent(net, "uint8")
    path = tmp_path / "effl0.onnx"
    export_onnx(model, path, opset=18, metadata={"crop_size": "128"})
    diff = check_onnx(model, path)
    assert diff.kpts3d_m < 1e-4 and diff.kpts2d_px < 1e-2 and diff.confidence < 1e-3, diff


def test_uint8_and_float_inputs_give_the_same_poses():
    net = PoseStudent(64, widths=(8, 16, 16, 32), neck_width=16, head_hidden=32)
    image = _crops("uint8", 2)
    with torch.no_grad():
        a = ExportableStudent(net, "uint8")(image)
        b = ExportableStudent(net, "float32")(image.float() / 255)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="dtype"):
        ExportableStudent(net, "float16")


@pytest.mark.slow
def test_coreml_converts_to_an_ml_program(trained_run, tmp_path):
    ct = pytest.importorskip("coremltools")
    path = tmp_path / "student.mlpackage"
    result = export(_config(trained_run, "format=coreml", f"out={path}"))
    assert path.is_dir() and result.path == path
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    (inp,) = spec.description.input
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"  # uint8 pixels
    assert [o.name for o in spec.description.output] == ["kpts3d", "kpts2d", "confidence"]
    assert json.loads(spec.description.metadata.userDefined["joint_names"]) == list(JOINT_NAMES)
    if sys.platform != "darwin":
        assert result.difference is None  # prediction needs Core ML, i.e. macOS
    else:
        assert result.difference.kpts3d_m < 1e-4


def test_export_without_checkpoint_or_with_an_unknown_format_says_so(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        missing = compose("export")
    with pytest.raises(MissingCheckpointError, match="checkpoint=PATH is required"):
        export(missing)
    with pytest.raises(ValueError, match="format must be one of"):
        export(_config(tmp_path, "format=tflite"))


@pytest.mark.slow
def test_default_output_keeps_a_dotted_checkpoint_name(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run / ".hydra", run / ".hydra")
    (run / "checkpoints").mkdir()
    ckpt = run / "checkpoints" / "step000006-mpjpe123.4.ckpt"  # ModelCheckpoint's naming
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", ckpt)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("export", overrides=[f"checkpoint={ckpt}", "format=torchscript"])
    assert export(cfg).path == run / "export" / "step000006-mpjpe123.4.pt"
