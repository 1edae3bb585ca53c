"""The CoMotion teacher without CoMotion: track-state conversion, device choice, missing pieces,
the chumpy shim, and the teacher loop on a model that speaks CoMotion's interface."""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fakes.smpl import fake_smpl_dict, write_fake_extra_reference, write_fake_smpl
from shared_paths import REPO, VIDEOS

import labeler.comotion as cm
from labeler import TEACHERS, TeacherUnavailableError, teacher_class
from labeler.chumpy_compat import ensure_chumpy
from stream_pose.camera import default_K, project
from stream_pose.codec import in_frame
from stream_pose.skeleton import NUM_JOINTS, PELVIS
from stream_pose.types import Frame, VideoRef

H, W = 480, 640
SLOTS = 48  # CoMotion's TrackHandler.max_output_tracks


def _person(rng, root, scale=1.0):
    """`[27, 3]` camera-frame joints: a 1.7 m-ish random body around `root`."""
    return root + scale * rng.normal(0.0, [0.2, 0.45, 0.1], (NUM_JOINTS, 3))


def _track_state(people: dict[int, np.ndarray], K: np.ndarray):
    """CoMotion-shaped track state: `[1, 48, 27, 3]`, `[1, 48, 27, 2]`, `[1, 48, 1]` tensors.

    `people` maps slot -> (track id, joints); the other slots hold garbage with id 0, as
    CoMotion's padding is not guaranteed to be zeros after truncation/padding.
    """
    pred_3d = torch.randn(1, SLOTS, NUM_JOINTS, 3)
    ids = torch.zeros(1, SLOTS, 1)
    for slot, (track_id, joints) in people.items():
        pred_3d[0, slot] = torch.as_tensor(joints, dtype=torch.float32)
        ids[0, slot, 0] = float(track_id)
    pred_2d = torch.as_tensor(project(pred_3d[0].numpy().reshape(-1, 3), K)).reshape(
        1, SLOTS, NUM_JOINTS, 2)
    return SimpleNamespace(pred_3d=pred_3d, pred_2d=pred_2d, id=ids)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_live_slots_become_labels_with_ids_pelvis_origin_and_visibility(rng):
    K = default_K(H, W)
    inside = _person(rng, np.array([0.0, 0.0, 4.0]))
    edge = _person(rng, np.array([1.4, 0.0, 4.0]))  # partly right of the frame
    state = _track_state({3: (7, inside), 10: (12, edge)}, K)

    labels = cm.labels_from_tracks(state.pred_3d, state.pred_2d, state.id, K, (H, W),
                                   confidence={7: 0.8, 12: 1.7})

    assert [lab.track_id for lab in labels] == [7, 12]
    for lab, joints in zip(labels, (inside, edge)):
        assert np.all(lab.kpts3d[PELVIS] == 0)
        expected_vis = in_frame(project(joints, K), (H, W))
        np.testing.assert_array_equal(lab.visibility > 0, expected_vis)
        vis = lab.visibility > 0
        np.testing.assert_allclose(lab.kpts3d[vis], (joints - joints[PELVIS])[vis], atol=1e-5)
        assert np.all(lab.kpts3d[~vis] == 0)
        np.testing.assert_allclose(lab.root_cam, joints[PELVIS], atol=1e-5)
        x0, y0, x1, y1 = lab.bbox_xyxy
        pts = lab.kpts2d[vis]
        assert x0 == pts[:, 0].min() and x1 == pts[:, 0].max() and y1 == pts[:, 1].max()
        assert lab.teacher == "comotion"
    assert 0 < labels[1].visibility.sum() < NUM_JOINTS  # the edge person is cut
    assert labels[0].confidence == pytest.approx(0.8) and labels[1].confidence == 1.0  # clipped


def test_empty_slots_behind_camera_and_offscreen_tracks_give_no_label(rng):
    K = default_K(H, W)
    behind = _person(rng, np.array([0.0, 0.0, -3.0]))
    offscreen = _person(rng, np.array([30.0, 0.0, 4.0]))
    state = _track_state({0: (1, behind), 1: (2, offscreen)}, K)
    assert cm.labels_from_tracks(state.pred_3d, state.pred_2d, state.id, K, (H, W)) == []
    no_tracks = _track_state({}, K)
    assert cm.labels_from_tracks(no_tracks.pred_3d, no_tracks.pred_2d, no_tracks.id, K,
                                 (H, W)) == []


def test_comotion_2x3_intrinsics_and_numpy_inputs_give_the_same_labels(rng):
    K = default_K(H, W)
    state = _track_state({5: (4, _person(rng, np.array([0.2, 0.1, 5.0])))}, K)
    a = cm.labels_from_tracks(state.pred_3d, state.pred_2d, state.id, K, (H, W))
    b = cm.labels_from_tracks(state.pred_3d.numpy(), state.pred_2d.numpy(),
                              state.id.numpy(), K[:2], (H, W))
    assert len(a) == len(b) == 1
    np.testing.assert_array_equal(a[0].kpts3d, b[0].kpts3d)
    np.testing.assert_array_equal(a[0].visibility, b[0].visibility)


@pytest.mark.parametrize("shapes", [
    ((1, 48, 24, 3), (1, 48, 27, 2), (1, 48, 1)),  # 24 SMPL joints, not joints_face
    ((1, 48, 27, 3), (1, 47, 27, 2), (1, 48, 1)),
    ((1, 48, 27, 3), (1, 48, 27, 2), (1, 40, 1)),
    ((27, 3), (27, 2), (1,)),
])
def test_shapes_that_are_not_comotion_track_state_are_refused(shapes):
    s3, s2, sid = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match="must be"):
        cm.labels_from_tracks(s3, s2, sid, default_K(H, W), (H, W))


# --- device choice -------------------------------------------------------------------------


def test_auto_on_a_mac_with_coreml_uses_coreml_detection_and_mps_refinement():
    plan = cm.plan_device("auto", system="Darwin", coreml_ready=True, mps=True, cuda=False)
    assert (plan.name, plan.use_coreml, plan.use_mps, plan.torch_device) == (
        "coreml+mps", True, True, "cpu")


@pytest.mark.parametrize("system,coreml,mps,cuda,expected", [
    ("Darwin", False, True, False, "mps"),  # no .mlpackage: PyTorch on MPS
    ("Linux", True, False, True, "cuda"),  # CoreML never off macOS
    ("Linux", False, False, False, "cpu"),
])
def test_auto_falls_back_in_order(system, coreml, mps, cuda, expected):
    plan = cm.plan_device("auto", system=system, coreml_ready=coreml, mps=mps, cuda=cuda)
    assert plan.name == expected and not plan.use_coreml


def test_coreml_requested_off_macos_says_so():
    with pytest.raises(TeacherUnavailableError, match="only on macOS"):
        cm.plan_device("coreml", system="Linux", coreml_ready=True, mps=False, cuda=True)


def test_coreml_requested_without_the_package_says_how_to_get_it():
    with pytest.raises(TeacherUnavailableError, match="get_pretrained_models.sh"):
        cm.plan_device("coreml", system="Darwin", coreml_ready=False, mps=True, cuda=False)


def test_unavailable_or_unknown_device_is_refused():
    with pytest.raises(TeacherUnavailableError, match="'cuda'"):
        cm.plan_device("cuda", system="Linux", coreml_ready=False, mps=False, cuda=False)
    with pytest.raises(ValueError, match="one of"):
        cm.plan_device("tpu", system="Linux", coreml_ready=False, mps=False, cuda=False)


# --- missing pieces --------------------------------------------------------------------------


@pytest.fixture
def clean_chumpy():
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "chumpy"}
    for k in saved:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k.split(".")[0] == "chumpy"]:
        del sys.modules[k]
    sys.modules.update(saved)


@pytest.fixture
def no_comotion_package(monkeypatch):
    monkeypatch.setattr(cm.importlib.util, "find_spec", lambda name: None)


def test_submodule_not_checked_out(no_comotion_package, tmp_path):
    with pytest.raises(TeacherUnavailableError, match="git submodule update --init ml-comotion"):
        cm.locate_package(tmp_path / "ml-comotion")


def test_submodule_checked_out_but_not_installed(no_comotion_package, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'comotion_demo'\n")
    with pytest.raises(TeacherUnavailableError, match=r"make comotion-env"):
        cm.locate_package(tmp_path)


def _package(tmp_path: Path) -> cm.CoMotionFiles:
    root = tmp_path / "comotion_demo"
    (root / "models").mkdir(parents=True)
    (root / "models" / "comotion.py").write_text("")
    return cm.CoMotionFiles(root)


def test_installed_package_is_found_through_its_namespace_path(tmp_path, monkeypatch):
    files = _package(tmp_path)
    spec = SimpleNamespace(submodule_search_locations=[str(tmp_path / "elsewhere"),
                                                       str(files.package_dir)])
    monkeypatch.setattr(cm.importlib.util, "find_spec", lambda name: spec)
    assert cm.locate_package(tmp_path / "unused") == files


def test_missing_smpl_model_names_the_path_and_the_site(tmp_path):
    files = _package(tmp_path)
    with pytest.raises(TeacherUnavailableError) as err:
        cm.check_files(files, pretrained=False, use_coreml=False)
    assert str(files.smpl_model) in str(err.value) and cm.SMPL_URL in str(err.value)
    assert cm.SMPL_SOURCE_FILE in str(err.value)


def test_missing_checkpoints_say_how_to_download_them(tmp_path):
    files = _package(tmp_path)
    write_fake_smpl(files.smpl_model)
    # CoMotion loads its SMPL reference file on import, so even random weights need it.
    with pytest.raises(TeacherUnavailableError, match="get_pretrained_models.sh") as err:
        cm.check_files(files, pretrained=False, use_coreml=False)
    assert "extra_smpl_reference.pt" in str(err.value)
    write_fake_extra_reference(files.extra_reference)
    cm.check_files(files, pretrained=False, use_coreml=False)  # random weights need no more
    with pytest.raises(TeacherUnavailableError, match="get_pretrained_models.sh") as err:
        cm.check_files(files, pretrained=True, use_coreml=False)
    assert "comotion_detection_checkpoint.pt" in str(err.value)
    for path in files.checkpoints:
        path.write_bytes(b"")
    cm.check_files(files, pretrained=True, use_coreml=False)
    with pytest.raises(TeacherUnavailableError, match="comotion_detection.mlpackage"):
        cm.check_files(files, pretrained=True, use_coreml=True)


def test_dependencies_that_do_not_import_are_named(tmp_path, monkeypatch, clean_chumpy):
    files = _package(tmp_path)
    write_fake_smpl(files.smpl_model)
    write_fake_extra_reference(files.extra_reference)
    monkeypatch.setattr(cm, "locate_package", lambda: files)
    monkeypatch.setitem(sys.modules, "comotion_demo", None)  # import fails, as when absent
    with pytest.raises(TeacherUnavailableError, match="make comotion-env.*pip install torchvision timm"):
        cm.CoMotionTeacher(device="cpu", pretrained=False)


# --- chumpy shim -----------------------------------------------------------------------------


def test_smpl_pickle_with_chumpy_objects_loads_as_comotion_reads_it(clean_chumpy, tmp_path):
    path = write_fake_smpl(tmp_path / "SMPL_NEUTRAL.pkl", seed=3)
    with pytest.raises(ModuleNotFoundError, match="chumpy"):
        pickle.loads(path.read_bytes(), encoding="latin1")  # what CoMotion hits without chumpy
    assert ensure_chumpy() in ("shim", "chumpy")
    import chumpy  # what smpl_kinematics does at import

    with open(path, "rb") as f:
        model = pickle.load(f, encoding="latin1")
    expected = fake_smpl_dict(seed=3)
    for key in ("v_template", "shapedirs", "posedirs", "weights", "J"):
        assert isinstance(model[key], chumpy.ch.Ch)
        np.testing.assert_array_equal(np.array(model[key]), expected[key].x)
    assert model["shapedirs"].r.shape == (6890, 3, 10)
    np.testing.assert_array_equal(model["J_regressor"].toarray(),
                                  expected["J_regressor"].toarray())


def test_shim_refuses_what_it_cannot_evaluate(clean_chumpy):
    from labeler import chumpy_compat

    chumpy_compat.install_shim()
    assert ensure_chumpy() == "shim"
    import inspect

    inspect.stack()  # inspect reads modules' __file__: the shim must not answer dunders with Ch
    derived = sys.modules["chumpy"].reordering.Select()  # any chumpy class name resolves
    derived.__setstate__({"a": 1})
    with pytest.raises(TypeError, match="derived chumpy expression"):
        np.array(derived)


# --- the teacher loop on CoMotion's interface ------------------------------------------------


class _ShotDetector:
    def __init__(self):
        self.frames = 0


class _CoMotionLike:
    """CoMotion's call interface (init_tracks, forward(image, K, use_mps)), scripted tracks."""

    def __init__(self, people):
        self.people, self.calls, self.inits = people, [], []
        self.shot_detector, self.frame_count = _ShotDetector(), 0
        self.handler = SimpleNamespace(health_monitors={})

    def init_tracks(self, image_res):
        self.inits.append(tuple(image_res))
        self.handler = SimpleNamespace(health_monitors={
            7: SimpleNamespace(get=lambda key, use_ema=False: torch.tensor(0.6))})

    def __call__(self, image, K, use_mps=False):
        self.calls.append((image, K, use_mps))
        self.shot_detector.frames += 1
        self.frame_count += 1
        hw = tuple(image.shape[-2:])
        return {}, _track_state(self.people, default_K(*hw))


def _frame(video: str, index: int, hw=(H, W)) -> Frame:
    image = np.random.default_rng(index).integers(0, 255, (*hw, 3), dtype=np.uint8)
    return Frame(image=image, index=index, time_s=index / 30, video=VideoRef(video, "local", video))


def test_teacher_feeds_frames_from_memory_and_restarts_tracks_per_video(rng):
    model = _CoMotionLike({2: (7, _person(rng, np.array([0.0, 0.0, 4.0])))})
    teacher = cm.CoMotionTeacher.from_model(model, cm.DevicePlan("cpu"))
    teacher.reset()
    first = _frame("a", 0)
    labels = teacher.label(first)
    teacher.label(_frame("a", 1))
    image, K, use_mps = model.calls[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, H, W)
    assert np.shares_memory(image.numpy(), first.image)  # no copy of the frame
    np.testing.assert_allclose(K.numpy(), default_K(H, W)[:2])
    assert not use_mps and model.inits == [(H, W)]
    assert [lab.track_id for lab in labels] == [7] and labels[0].confidence == pytest.approx(0.6)

    teacher.reset()
    teacher.label(_frame("b", 0, hw=(360, 200)))
    assert model.inits == [(H, W), (360, 200)]
    assert model.shot_detector.frames == 1 and model.frame_count == 1  # fresh per video
    teacher.close()
    assert teacher.model is None


def test_registry_and_configs_name_comotion_and_auto():
    assert {"comotion", "auto"} <= set(TEACHERS)
    assert teacher_class("comotion") is cm.CoMotionTeacher
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from shared_paths import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for name in ("comotion", "auto"):
            cfg = compose("config", overrides=[f"labeler={name}", "source=local"])
            factory = instantiate(cfg.labeler)  # a partial: nothing is built yet
            assert callable(factory) and factory.func is teacher_class(name)


def test_auto_picks_mediapipe_and_says_why_when_comotion_is_not_ready(monkeypatch, caplog):
    pytest.importorskip("mediapipe", reason="the fallback teacher needs mediapipe")
    def unavailable(**kwargs):
        raise TeacherUnavailableError("SMPL body model missing: /x/SMPL_NEUTRAL.pkl")

    monkeypatch.setattr(cm, "CoMotionTeacher", unavailable)
    with caplog.at_level(logging.INFO, logger="labeler.auto"):
        teacher = teacher_class("auto")(comotion={"device": "cpu"}, mediapipe={})
    try:
        assert teacher.name == "mediapipe"
        assert "picked MediaPipe" in caplog.text and "SMPL_NEUTRAL.pkl" in caplog.text
    finally:
        teacher.close()


def test_auto_picks_comotion_when_it_is_ready(monkeypatch, caplog, rng):
    ready = cm.CoMotionTeacher.from_model(_CoMotionLike({}), cm.DevicePlan("cuda"))
    monkeypatch.setattr(cm, "CoMotionTeacher", lambda **kwargs: ready)
    with caplog.at_level(logging.INFO, logger="labeler.auto"):
        assert teacher_class("auto")(comotion={"device": "auto"}) is ready
    assert "picked CoMotion on cuda" in caplog.text


# --- the commands, where CoMotion is not installed -------------------------------------------

needs_no_comotion = pytest.mark.skipif(
    cm.importlib.util.find_spec("comotion_demo") is not None,
    reason="comotion_demo is installed here: the missing-piece path cannot be shown")


@needs_no_comotion
def test_pipeline_with_comotion_missing_fails_with_the_fix(capsys):
    import pipeline

    rc = pipeline.main(["--dry-run", "--video", str(VIDEOS / "street_short.mp4"),
                        "--labeler", "comotion", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc != 0 and "ml-comotion" in err and "Traceback" not in err


@needs_no_comotion
@pytest.mark.slow
def test_training_with_comotion_missing_exits_with_the_fix_not_a_traceback(tmp_path):
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "train.train", "labeler=comotion", "source=local",
         "trainer.max_steps=3", f"hydra.run.dir={tmp_path}", "logger=none"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "the teacher cannot run here" in out.stderr and "ml-comotion" in out.stderr
    assert "Traceback" not in out.stderr


def test_core_ml_conversion_without_comotion_is_one_line(tmp_path, capsys):
    from labeler import comotion_coreml

    rc = comotion_coreml.main(["--random-weights", "--out", str(tmp_path / "d.mlpackage")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: CoMotion") and "ml-comotion" in err
    assert not (tmp_path / "d.mlpackage").exists()
