"""The provenance manifest: built from real refs and counters, cleaned of secrets, stored in and
read back from every model format, and carried by the producers (thread, processes, Ray).

Producer processes are spawned and re-import this module: keep its imports light (no torch or
Lightning at module level).
"""

import functools
import importlib.metadata
import json
import multiprocessing
import time

import pytest

from data.producer import ProducerStats, combine_stats, label_stream
from data.ring_buffer import RingBuffer
from data.workers import ProducerPool, ProducerSettings
from data.workers.ray_farm import _delivered_only, _Slot
from labeler.flip_tta import FlipTTATeacher
from labeler.mediapipe_teacher import MediaPipeTeacher
from labeler.oracle import OracleTeacher
from stream_pose.provenance import (
    MANIFEST_FILE,
    MANIFEST_KEY,
    MANIFEST_SCHEMA,
    NoProvenanceError,
    NotAModelError,
    ProvenanceError,
    build_manifest,
    clean_uri,
    manifest_json,
    merge_videos,
    parse_manifest,
    read_manifest,
    redact_manifest,
    teacher_info,
    validate_manifest,
    video_entry,
)
from stream_pose.secrets import MASK, secret_values
from stream_pose.types import VideoRef
from video_sources.synthetic import SyntheticSource

PEXELS_REF = VideoRef(id="pexels-857251", kind="pexels",
                      uri="https://www.pexels.com/video/a-man-running-857251/",
                      licence="Pexels License",
                      attribution="Jane Doe (https://www.pexels.com/@jane-doe)")
FAKE_ENV = {"PEXELS_API_KEY": "pexels-fake-key-0123456789abcdef",
            "WANDB_API_KEY": "wandbfake0123456789abcdef0123456789abcd",
            "HF_TOKEN": "hf_fakeTokenValue0123456789"}
SYNTH = functools.partial(SyntheticSource, num_videos=6, frames_per_video=3, seed=0,
                          image_size=(96, 128))


def _manifest(*entries, secrets=()):
    return build_manifest(entries, teacher_info(["mediapipe"]), train_step=5,
                          secrets=list(secrets))


# --- building ----------------------------------------------------------------------------------


def test_pexels_ref_gives_id_author_url_and_licence():
    entry = video_entry(PEXELS_REF, video_id=PEXELS_REF.id, split="train", frames=12, samples=9)
    assert entry["id"] == "pexels-857251" and entry["pexels_id"] == "857251"
    assert entry["kind"] == "pexels" and entry["uri"] == PEXELS_REF.uri
    assert entry["licence"] == "Pexels License"
    assert entry["attribution"].startswith("Jane Doe (https://www.pexels.com/@jane-doe")
    assert (entry["split"], entry["frames"], entry["samples"]) == ("train", 12, 9)


def test_entry_without_ref_keeps_id_and_counters():
    entry = video_entry(None, video_id="clip", split="val", frames=3, samples=2)
    assert entry["id"] == "clip" and entry["kind"] == "" and "pexels_id" not in entry
    with pytest.raises(ValueError):
        video_entry(None, video_id="clip", split="test", frames=1, samples=1)


def test_clean_uri_drops_query_fragment_and_credentials():
    assert clean_uri("https://user:pw@cdn.example.com:8443/v/a.mp4?token=abc&x=1#t=3") == \
        "https://cdn.example.com:8443/v/a.mp4"
    assert clean_uri("/data/videos/clip.mp4") == "/data/videos/clip.mp4"
    assert clean_uri("") == ""


def test_no_secret_in_manifest_even_in_urls_and_credits():
    secrets = secret_values(FAKE_ENV)
    key, token = FAKE_ENV["PEXELS_API_KEY"], FAKE_ENV["HF_TOKEN"]
    url_ref = VideoRef(id="clip", kind="url",
                       uri=f"https://user:{token}@host.example/clip.mp4?api_key={key}&sig=zz")
    leaky = VideoRef(id="pexels-1", kind="pexels", uri="https://www.pexels.com/video/1/",
                     licence="Pexels License", attribution=f"Someone {FAKE_ENV['WANDB_API_KEY']}")
    manifest = _manifest(
        video_entry(url_ref, video_id="clip", split="train", frames=4, samples=4),
        video_entry(leaky, video_id="pexels-1", split="train", frames=2, samples=1),
        secrets=secrets)
    text = manifest_json(manifest)
    for value in FAKE_ENV.values():
        assert value not in text
    assert "?" not in manifest["videos"][0]["uri"] and "sig=zz" not in text
    assert manifest["videos"][0]["uri"] == "https://host.example/clip.mp4"
    assert MASK in manifest["videos"][1]["attribution"]
    # secret-named keys are masked too, wherever they sit
    assert redact_manifest({"teacher": {"api_key": "x"}}, [])["teacher"]["api_key"] == MASK


def test_manifest_schema_totals_teacher_and_versions():
    manifest = _manifest(
        video_entry(PEXELS_REF, video_id=PEXELS_REF.id, split="train", frames=10, samples=8),
        video_entry(None, video_id="held_out", split="val", frames=3, samples=3))
    assert validate_manifest(manifest) is manifest
    assert manifest["schema"] == MANIFEST_SCHEMA and manifest["train_step"] == 5
    assert manifest["totals"] == {"videos": 2, "frames": 13, "samples": 11}
    assert manifest["stream_pose"]["version"] == importlib.metadata.version("stream-pose")
    teacher = manifest["teacher"]
    assert teacher["name"] == "mediapipe"
    assert teacher["versions"]["mediapipe"] == importlib.metadata.version("mediapipe")
    assert parse_manifest(manifest_json(manifest)) == manifest


def test_a_video_only_opened_when_the_checkpoint_was_written_is_not_named():
    manifest = _manifest(
        video_entry(PEXELS_REF, video_id=PEXELS_REF.id, split="train", frames=10, samples=8),
        video_entry(None, video_id="just_opened", split="train", frames=0, samples=0),
        video_entry(None, video_id="just_opened", split="train", frames=0, samples=0))
    assert [v["id"] for v in manifest["videos"]] == [PEXELS_REF.id]
    assert manifest["totals"] == {"videos": 1, "frames": 10, "samples": 8}


def test_teacher_from_factories():
    plain = teacher_info([], functools.partial(MediaPipeTeacher, model_complexity=1))
    assert plain["name"] == "mediapipe"
    assert plain["factory"] == "labeler.mediapipe_teacher.MediaPipeTeacher"
    flip = teacher_info([], functools.partial(FlipTTATeacher,
                                              teacher=functools.partial(MediaPipeTeacher)))
    assert flip["name"] == "mediapipe" and flip["factory"].endswith("FlipTTATeacher")
    assert teacher_info(["mediapipe+flip"])["versions"]["mediapipe"]
    assert teacher_info(["oracle"], OracleTeacher) == {
        "name": "oracle", "factory": "labeler.oracle.OracleTeacher", "versions": {}}


def test_merge_sums_training_and_keeps_last_validation():
    a = video_entry(PEXELS_REF, video_id=PEXELS_REF.id, split="train", frames=5, samples=4)
    b = video_entry(None, video_id=PEXELS_REF.id, split="train", frames=2, samples=1)
    v1 = video_entry(None, video_id="val", split="val", frames=3, samples=3)
    v2 = video_entry(None, video_id="val", split="val", frames=4, samples=2)
    merged = merge_videos([b, a, v1, v2])
    assert [(e["split"], e["id"]) for e in merged] == [("train", PEXELS_REF.id), ("val", "val")]
    assert (merged[0]["frames"], merged[0]["samples"]) == (7, 5)
    assert merged[0]["kind"] == "pexels"  # the ref reported later fills the gap
    assert (merged[1]["frames"], merged[1]["samples"]) == (4, 2)


@pytest.mark.parametrize("broken", [
    [], {"schema": "other@1"}, {"schema": MANIFEST_SCHEMA},
    {"schema": MANIFEST_SCHEMA, "stream_pose": {}, "teacher": {"name": "x"}, "totals": {},
     "videos": [{"id": "a"}]},
])
def test_malformed_manifests_are_refused(broken):
    with pytest.raises(ProvenanceError, match="malformed provenance"):
        validate_manifest(broken)
    with pytest.raises(ProvenanceError):
        parse_manifest("{not json")


# --- the producers carry refs ------------------------------------------------------------------


def test_label_stream_reports_refs_and_teacher():
    buffer = RingBuffer(64, 32)
    stats = label_stream(SYNTH(split="train", loop=False), OracleTeacher(), buffer)
    assert stats.teacher == "oracle" and len(stats.per_video) == 6
    assert set(stats.refs) == set(stats.per_video)
    assert all(ref.kind == "synthetic" and ref.id == vid for vid, ref in stats.refs.items())
    copy = stats.copy()
    assert copy.refs == stats.refs and copy.refs is not stats.refs
    combined = combine_stats([ProducerStats(), stats])
    assert combined.refs == stats.refs and combined.teacher == "oracle"


def test_ray_farm_keeps_refs_of_delivered_videos_only():
    stats = label_stream(SYNTH(split="train", loop=False), OracleTeacher(), RingBuffer(64, 32))
    slot = _Slot(0, 0, 1, delivered=list(stats.per_video)[:2])
    kept = _delivered_only(stats, slot)
    assert list(kept.refs) == list(kept.per_video) == slot.delivered


@pytest.mark.slow
def test_producer_processes_report_refs():
    buffer = RingBuffer(128, 32, shared=True)
    pool = ProducerPool(SYNTH, OracleTeacher, buffer,
                        settings=ProducerSettings(workers=2, heartbeat_s=0.2))
    try:
        pool.start()
        buffer.wait_for(32, 120)
        end = time.monotonic() + 30
        while len(pool.stats.per_video) < 2 and time.monotonic() < end:
            time.sleep(0.1)
        assert pool.refresh_stats()
        stats = pool.stats
        assert stats.teacher == "oracle" and len(stats.per_video) >= 2
        assert set(stats.per_video) <= set(stats.refs)
        assert all(stats.refs[v].kind == "synthetic" for v in stats.per_video)
    finally:
        pool.stop()
        buffer.close()
    assert not multiprocessing.active_children()


# --- stored in models, read back ---------------------------------------------------------------


def test_checkpoint_with_and_without_manifest(tmp_path):
    import torch

    manifest = _manifest(video_entry(PEXELS_REF, video_id=PEXELS_REF.id, split="train",
                                     frames=3, samples=2))
    with_it, without = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, MANIFEST_KEY: manifest}, with_it)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": 3}, without)
    assert read_manifest(with_it) == manifest
    with pytest.raises(NoProvenanceError, match="no provenance recorded"):
        read_manifest(without)
    torch.save({"weights": 1}, tmp_path / "c.ckpt")
    with pytest.raises(NotAModelError, match="not a training checkpoint"):
        read_manifest(tmp_path / "c.ckpt")


def test_onnx_with_and_without_manifest(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    onnx.save(model, tmp_path / "bare.onnx")
    with pytest.raises(NoProvenanceError, match="no provenance recorded"):
        read_manifest(tmp_path / "bare.onnx")
    manifest = _manifest()
    helper.set_model_props(model, {MANIFEST_KEY: manifest_json(manifest)})
    onnx.save(model, tmp_path / "with.onnx")
    assert read_manifest(tmp_path / "with.onnx") == manifest
    (tmp_path / "notes.onnx").write_text("this is not a model\n")
    with pytest.raises(NotAModelError):
        read_manifest(tmp_path / "notes.onnx")


def test_torchscript_with_and_without_manifest(tmp_path):
    import torch

    module = torch.jit.script(torch.nn.Identity())
    manifest = _manifest()
    torch.jit.save(module, str(tmp_path / "with.pt"),
                   _extra_files={MANIFEST_FILE: manifest_json(manifest)})
    torch.jit.save(module, str(tmp_path / "bare.pt"))
    assert read_manifest(tmp_path / "with.pt") == manifest
    with pytest.raises(NoProvenanceError):
        read_manifest(tmp_path / "bare.pt")


def test_coreml_spec_with_manifest(tmp_path):
    pytest.importorskip("coremltools")
    from stream_pose.provenance import _coreml_proto

    spec = _coreml_proto().Model()
    spec.specificationVersion = 7
    manifest = _manifest()
    spec.description.metadata.userDefined[MANIFEST_KEY] = manifest_json(manifest)
    (tmp_path / "m.mlmodel").write_bytes(spec.SerializeToString())
    assert read_manifest(tmp_path / "m.mlmodel") == manifest


def test_files_that_are_not_models(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAModelError, match="not a model file"):
        read_manifest(tmp_path / "notes.txt")
    (tmp_path / "x.pt").write_text("hello")
    with pytest.raises(NotAModelError):
        read_manifest(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.onnx")
    assert json.loads(manifest_json(_manifest()))["schema"] == MANIFEST_SCHEMA


# --- a resumed run keeps the videos it resumed from ---------------------------------------------


@pytest.mark.slow
def test_resumed_run_adds_its_videos_to_the_restored_ones(tmp_path):
    from hydra import compose, initialize_config_dir
    from shared_paths import CONF_DIR

    from train.train import train

    tiny = ["trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "buffer.crop_size=64", "buffer.capacity=256",
            "buffer.min_samples=32", "buffer.batch_size=8", "buffer.val_max_samples=32",
            "source.frames_per_video=4", "source.num_videos=4", "logger=none",
            "model.net.widths=[16,32,32,64]", "model.net.head_hidden=128"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        first = compose("config", overrides=[*tiny, f"paths.output_dir={tmp_path / 'a'}",
                                             "trainer.max_steps=3"])
        resumed = compose("config", overrides=[
            *tiny, f"paths.output_dir={tmp_path / 'b'}", "trainer.max_steps=6",
            f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}"])
    train(first)
    train(resumed)
    before = read_manifest(tmp_path / "a" / "checkpoints" / "last.ckpt")
    after = read_manifest(tmp_path / "b" / "checkpoints" / "last.ckpt")
    assert before["teacher"]["name"] == after["teacher"]["name"] == "oracle"
    assert after["train_step"] == 6

    def split(manifest, name):
        return {v["id"]: v for v in manifest["videos"] if v["split"] == name}

    train_before, train_after = split(before, "train"), split(after, "train")
    assert train_before and set(train_before) < set(train_after)  # new videos added
    for vid, video in train_before.items():
        assert video["kind"] == "synthetic" and train_after[vid]["frames"] >= video["frames"]
    # the validation set is labelled again by the resumed run: listed once, not summed
    assert split(after, "val") == split(before, "val") and split(after, "val")


# --- Pexels end to end: id, author, page URL and licence of every video --------------------------


@pytest.mark.slow
def test_training_on_pexels_records_id_author_url_and_licence(tmp_path, monkeypatch):
    pytest.importorskip("mediapipe")
    from fakes.pexels import FakePexels
    from hydra import compose, initialize_config_dir
    from shared_paths import CONF_DIR, VIDEOS

    from train.train import train

    clips = {300: "running_athlete.mp4", 302: "basketball_single.mp4", 303: "street_short.mp4"}
    if not all((VIDEOS / c).is_file() for c in clips.values()):
        pytest.skip("no footage")
    key = FAKE_ENV["PEXELS_API_KEY"]
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    with FakePexels(key, VIDEOS) as fake:
        fake.results["running"] = [fake.video(i, name) for i, name in clips.items()]
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=[
                f"paths.output_dir={tmp_path}", "source=pexels", "labeler=mediapipe",
                "trainer=cpu", "logger=none", f"source.api_base={fake.base}",
                "source.queries=[running]", "source.val_fraction=0.25",  # 302 in val
                "source.max_frames=8", "source.max_side=320", "source.rest_s=1.0",
                "trainer.max_steps=3", "trainer.val_check_interval=3",
                "trainer.enable_progress_bar=false", "buffer.crop_size=64",
                "buffer.min_samples=8", "buffer.batch_size=8", "buffer.val_max_samples=8",
                "buffer.capacity=128", "buffer.start_timeout_s=60",
                "model.net.widths=[16,32,32,64]", "model.net.head_hidden=128"])
        train(cfg)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    manifest = read_manifest(ckpt)
    assert manifest["videos"] and {v["kind"] for v in manifest["videos"]} == {"pexels"}
    for video in manifest["videos"]:
        number = int(video["pexels_id"])
        assert video["id"] == f"pexels-{number}" and number in clips
        assert video["uri"] == f"https://www.pexels.com/video/clip-{number}/"
        assert video["attribution"] == f"Maker {number} (https://www.pexels.com/@maker{number})"
        assert video["licence"] == "Pexels License" and video["frames"] > 0
    assert any(v["split"] == "val" for v in manifest["videos"])
    assert any(v["split"] == "train" for v in manifest["videos"])
    data = ckpt.read_bytes()
    for value in FAKE_ENV.values():
        assert value.encode() not in data and value not in manifest_json(manifest)
