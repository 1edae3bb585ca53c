"""Provenance: the manifest of the videos a model learned from, built, checked, stored and read.

Every checkpoint `train.train` writes carries one (`train.callbacks.ProvenanceRecorder`), and
every model `serve.export` writes copies it (ONNX `metadata_props`, Core ML user-defined
metadata, TorchScript extra files); `stream-pose provenance <model>` prints it
(`serve.provenance`). It is metadata only: ids, addresses, licences, credits and counters, never
a frame or a crop.

The manifest (`MANIFEST_SCHEMA`, version 1) is a JSON object::

    {
      "schema": "stream-pose/provenance@1",
      "created": "2026-12-05T06:40:00Z",         # UTC, when it was built
      "train_step": 600,                          # optimizer steps of the checkpoint
      "stream_pose": {"version": "0.1.0", "commit": "1a10a19..."},   # commit "" if unknown
      "teacher": {                                # who labelled the videos
        "name": "mediapipe",                      # as the teachers report it (`Teacher.name`)
        "factory": "labeler.mediapipe_teacher.MediaPipeTeacher",
        "versions": {"mediapipe": "0.10.21"}      # packages (and commits) of the teacher
      },
      "videos": [                                 # one entry per (split, video id)
        {"id": "pexels-857251", "kind": "pexels", # VideoRef.id, VideoRef.kind
         "uri": "https://www.pexels.com/video/...",  # path or URL, no query, no credentials
         "licence": "Pexels License",             # "" when unknown
         "attribution": "Jane Doe (https://www.pexels.com/@jane)",   # "" when unknown
         "pexels_id": "857251",                   # Pexels videos only
         "split": "train",                        # train: learnt from; val: chose the checkpoint
         "frames": 120,                           # frames the teacher labelled
         "samples": 96}                           # crops pushed (train) / kept (val)
      ],
      "totals": {"videos": 1, "frames": 120, "samples": 96}
    }

`kind` is one of `KINDS` (local, url, pexels, synthetic). Addresses are cleaned
(`clean_uri`: a URL loses its query string, fragment and user:password) and the whole manifest
goes through the secrets policy (`redact_manifest`, `stream_pose.secrets`) before it is
written anywhere, so no API key or token can ride along.

Storage: checkpoints hold the manifest as a dict under `MANIFEST_KEY` (plain types: it loads with
`torch.load(weights_only=True)`); exported models hold its JSON under `MANIFEST_KEY` in their
metadata, and TorchScript also as the extra file `MANIFEST_FILE`. `read_manifest` reads any of
them; a model without one raises `NoProvenanceError`, a file that is no model `NotAModelError`.

Lowest layer: imports only `stream_pose.secrets` (torch, onnx and coremltools lazily, to read).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from stream_pose.secrets import MASK, is_secret_name, secret_values
from stream_pose.types import VideoRef

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA = "stream-pose/provenance@1"
MANIFEST_KEY = "provenance"  # checkpoint key; metadata key of exported models
MANIFEST_FILE = "provenance.json"  # TorchScript extra file
KINDS = ("local", "url", "pexels", "synthetic")
SPLITS = ("train", "val")
MODEL_SUFFIXES = (".ckpt", ".onnx", ".mlpackage", ".mlmodel", ".pt")
COUNTERS = ("frames", "samples")
VIDEO_FIELDS = ("id", "kind", "uri", "licence", "attribution", "split", *COUNTERS)
REPO_ROOT = Path(__file__).resolve().parents[1]
# Python packages whose versions describe a teacher, by teacher name (`Teacher.name`, without a
# "+flip" suffix); CoMotion also records the commit of its submodule (`COMOTION_DIR`).
TEACHER_PACKAGES = {"mediapipe": ("mediapipe",), "comotion": ("comotion_demo", "torch"),
                    "oracle": ()}
COMOTION_DIR = REPO_ROOT / "ml-comotion"
PEXELS_PREFIX = "pexels-"


class ProvenanceError(ValueError):
    """A manifest that cannot be read or is malformed; the message names the file and why."""


class NotAModelError(ProvenanceError):
    """The file is not a model stream-pose writes (checkpoint, ONNX, Core ML, TorchScript)."""


class NoProvenanceError(ProvenanceError):
    """A model without a manifest: written before stream-pose recorded provenance."""


# --- building ------------------------------------------------------------------------------------


def clean_uri(uri: str) -> str:
    """`uri` without what may carry a secret: a URL keeps scheme, host, port and path only
    (no user:password, query string or fragment); a local path is returned unchanged."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def video_entry(ref: VideoRef | None, *, video_id: str, split: str, frames: int,
                samples: int) -> dict[str, Any]:
    """One manifest entry (see the module docstring) for the video `video_id`.

    Args:
        ref: the video's `VideoRef` (kind, uri, licence, attribution); None when the producer
            did not report one: kind and the rest are then "".
        video_id: its id (`VideoRef.id`).
        split: "train" (learnt from) or "val" (chose the checkpoint).
        frames: frames the teacher labelled. samples: crops pushed (train) or kept (val).

    Raises:
        ValueError: an unknown split, or negative counters.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if frames < 0 or samples < 0:
        raise ValueError(f"counters must be >= 0, got frames={frames}, samples={samples}")
    entry: dict[str, Any] = {
        "id": str(video_id), "kind": ref.kind if ref else "",
        "uri": clean_uri(ref.uri) if ref else "",
        "licence": ref.licence if ref else "", "attribution": ref.attribution if ref else "",
    }
    if entry["kind"] == "pexels" and entry["id"].startswith(PEXELS_PREFIX):
        entry["pexels_id"] = entry["id"][len(PEXELS_PREFIX):]
    entry.update(split=split, frames=int(frames), samples=int(samples))
    return entry


def merge_videos(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Entries merged by (split, id), in first-seen order: a training video labelled in several
    places (producers, ranks, a resumed run) sums its counters; a validation video labelled again
    (every rank, every resumed run labels the same validation set) keeps the last entry."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in entries:
        key = (entry["split"], entry["id"])
        if key in merged and entry["split"] == "train":
            old = merged[key]
            for name in COUNTERS:
                old[name] += int(entry[name])
            for name, value in entry.items():  # a ref reported late fills the gaps
                if name not in COUNTERS and not old.get(name):
                    old[name] = value
        else:
            merged.pop(key, None)
            merged[key] = dict(entry)
    return list(merged.values())


def teacher_info(names: Iterable[str], factory: Any = None) -> dict[str, Any]:
    """What labelled the videos: the teachers' names, the factory and the package versions.

    Args:
        names: `Teacher.name` of the teachers that ran (several when, say, `labeler=auto`
            picked differently on two machines); empty: the factory's class `name`.
        factory: the teacher factory (a Hydra `_partial_`, a class, a function), for its dotted
            name; nested partials (`FlipTTATeacher(teacher=...)`) are looked into for names.

    Returns:
        `{"name": "mediapipe", "factory": "labeler...MediaPipeTeacher", "versions": {...}}`:
        versions of the packages in `TEACHER_PACKAGES` for every name (a "+flip" suffix
        ignored), and the CoMotion submodule's commit (`comotion_commit`) when known; a package
        that is not installed here is left out.
    """
    names = [n for n in dict.fromkeys(names) if n]
    targets = list(_factory_targets(factory))
    if not names:
        names = [t.name for t in targets if isinstance(getattr(t, "name", None), str)][:1]
    versions: dict[str, str] = {}
    for name in names:
        base = name.split("+", 1)[0]
        for package in TEACHER_PACKAGES.get(base, ()):
            version = package_version(package)
            if version:
                versions[package] = version
        if base == "comotion":
            commit = git_commit(COMOTION_DIR)
            if commit:
                versions["comotion_commit"] = commit
    return {"name": ", ".join(names) or "unknown",
            "factory": _dotted(targets[0]) if targets else "",
            "versions": versions}


def build_manifest(videos: Iterable[Mapping[str, Any]], teacher: Mapping[str, Any], *,
                   train_step: int | None = None,
                   secrets: list[str] | None = None) -> dict[str, Any]:
    """The manifest (module docstring) of these video entries and this teacher, ready to write:
    videos merged (`merge_videos`), those with no frame labelled left out (a producer had only
    opened them when the checkpoint was written: the model saw nothing of them), totals counted,
    then redacted (`redact_manifest`) and checked (`validate_manifest`).

    Args:
        videos: entries from `video_entry` (or a restored manifest's `videos`).
        teacher: `teacher_info(...)`.
        train_step: optimizer steps of the model; None: unknown.
        secrets: secret values to mask; None: `stream_pose.secrets.secret_values()`.
    """
    entries = [e for e in merge_videos(videos) if e["frames"] > 0]
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "train_step": None if train_step is None else int(train_step),
        "stream_pose": {"version": package_version("stream-pose") or "",
                        "commit": git_commit(REPO_ROOT)},
        "teacher": dict(teacher),
        "videos": entries,
        "totals": {"videos": len({e["id"] for e in entries}),
                   "frames": sum(e["frames"] for e in entries),
                   "samples": sum(e["samples"] for e in entries)},
    }
    return validate_manifest(redact_manifest(manifest, secrets))


def redact_manifest(manifest: Any, secrets: list[str] | None = None) -> Any:
    """`manifest` with the secrets policy applied (a new object): every occurrence of a secret
    value (`stream_pose.secrets.secret_values`) in a string becomes `MASK`, and so does the value
    of a secret-named key (`is_secret_name`); every URL-looking value is also `clean_uri`d."""
    secrets = secret_values() if secrets is None else secrets
    return _redact(manifest, secrets)


def _redact(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, Mapping):
        return {str(k): MASK if is_secret_name(k) and v is not None else _redact(v, secrets)
                for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_redact(v, secrets) for v in node]
    if isinstance(node, str):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", node):
            node = clean_uri(node)
        for secret in secrets:
            node = node.replace(secret, MASK)
    return node


def validate_manifest(manifest: Any, where: str = "manifest") -> dict[str, Any]:
    """Check `manifest` against the schema (module docstring) and return it.

    Raises:
        ProvenanceError: naming `where` and the first problem found.
    """
    def bad(why: str) -> ProvenanceError:
        return ProvenanceError(f"{where}: malformed provenance manifest: {why}")

    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise bad(f"schema {manifest.get('schema')!r}, expected {MANIFEST_SCHEMA!r}")
    for key in ("stream_pose", "teacher", "totals"):
        if not isinstance(manifest.get(key), dict):
            raise bad(f"{key!r} must be an object")
    if not isinstance(manifest["teacher"].get("name"), str):
        raise bad("teacher.name must be a string")
    videos = manifest.get("videos")
    if not isinstance(videos, list):
        raise bad("'videos' must be a list")
    for i, video in enumerate(videos):
        if not isinstance(video, dict):
            raise bad(f"videos[{i}] must be an object")
        missing = [k for k in VIDEO_FIELDS if k not in video]
        if missing:
            raise bad(f"videos[{i}] lacks {missing}")
        if video["split"] not in SPLITS:
            raise bad(f"videos[{i}].split {video['split']!r} not in {SPLITS}")
        if any(not isinstance(video[k], int) or video[k] < 0 for k in COUNTERS):
            raise bad(f"videos[{i}]: frames and samples must be integers >= 0")
    return manifest


def manifest_json(manifest: Mapping[str, Any]) -> str:
    """The manifest as compact JSON (what exported models store)."""
    return json.dumps(manifest, separators=(",", ":"), sort_keys=False)


def parse_manifest(text: str | bytes, where: str = "manifest") -> dict[str, Any]:
    """A manifest from its JSON, validated.

    Raises:
        ProvenanceError: not JSON, or not a valid manifest.
    """
    try:
        manifest = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProvenanceError(f"{where}: provenance is not valid JSON: {exc}") from exc
    return validate_manifest(manifest, where)


def package_version(name: str) -> str | None:
    """The installed version of distribution (or import package) `name`; None if absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    for dist in importlib.metadata.packages_distributions().get(name, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_commit(repo: Path) -> str:
    """The commit checked out in `repo` (a repository or a submodule), read from its files
    without running git; "" when it is not a git checkout or the ref cannot be resolved."""
    try:
        git = repo / ".git"
        if git.is_file():  # a submodule: "gitdir: ../.git/modules/<name>"
            text = git.read_text().strip()
            git = (repo / text.split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40}", head) else ""
        ref = head.split(":", 1)[1].strip()
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        packed = git / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else ():
            sha, _, name = line.partition(" ")
            if name.strip() == ref:
                return sha
    except (OSError, IndexError):
        pass
    return ""


def _factory_targets(factory: Any) -> Iterable[Any]:
    """The class or function a (nested) partial builds, then those of partial arguments."""
    if factory is None:
        return
    func = getattr(factory, "func", None)
    if func is None:
        yield factory
        return
    yield from _factory_targets(func)
    for value in (getattr(factory, "keywords", None) or {}).values():
        if callable(value):
            yield from _factory_targets(value)


def _dotted(obj: Any) -> str:
    module, name = getattr(obj, "__module__", ""), getattr(obj, "__qualname__", "")
    return f"{module}.{name}" if module and name else type(obj).__name__


# --- reading -------------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest stored in a model file, validated.

    Args:
        path: a training checkpoint (`.ckpt`), an exported ONNX model (`.onnx`), Core ML
            package or model (`.mlpackage`, `.mlmodel`), or TorchScript module (`.pt`).

    Raises:
        FileNotFoundError: nothing at `path`.
        NotAModelError: not one of those (by name, or by content).
        NoProvenanceError: a model without a manifest.
        ProvenanceError: a manifest that is not valid.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[Path], Any]] = {
        ".ckpt": _from_checkpoint, ".onnx": _from_onnx, ".mlpackage": _from_coreml,
        ".mlmodel": _from_coreml, ".pt": _from_torchscript}
    if suffix not in readers:
        raise NotAModelError(f"{path}: not a model file (expected one of "
                             f"{', '.join(MODEL_SUFFIXES)})")
    found = readers[suffix](path)
    if found is None:
        raise NoProvenanceError(f"{path}: no provenance recorded (the model was written before "
                                "stream-pose recorded its training videos)")
    if isinstance(found, (str, bytes)):
        return parse_manifest(found, str(path))
    return validate_manifest(found, str(path))


def _from_checkpoint(path: Path) -> Any:
    import pickle

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        raise NotAModelError(f"{path}: not a training checkpoint "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise NotAModelError(f"{path}: not a training checkpoint (no state_dict)")
    return ckpt.get(MANIFEST_KEY)


def _from_onnx(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if path.is_dir():
        raise NotAModelError(f"{path}: not an ONNX model (a directory)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise NotAModelError(f"{path}: not an ONNX model ({type(exc).__name__})") from exc
    if proto.ir_version <= 0 or not proto.graph.node:
        raise NotAModelError(f"{path}: not an ONNX model (no graph)")
    props = {p.key: p.value for p in proto.metadata_props}
    return props.get(MANIFEST_KEY)


def _from_coreml(path: Path) -> Any:
    from google.protobuf.message import DecodeError

    spec_path = path
    if path.is_dir():  # .mlpackage: Manifest.json names the model spec inside it
        try:
            info = json.loads((path / "Manifest.json").read_text())
            items = info["itemInfoEntries"]
            root = items.get(info.get("rootModelIdentifier", ""))
            if root is None:
                root = next(i for i in items.values() if i["path"].endswith(".mlmodel"))
            spec_path = path / "Data" / root["path"]
        except (OSError, ValueError, KeyError, StopIteration, AttributeError,
                TypeError) as exc:
            raise NotAModelError(f"{path}: not a Core ML package ({type(exc).__name__})") from exc
    model_pb2 = _coreml_proto()
    spec = model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except (DecodeError, OSError) as exc:
        raise NotAModelError(f"{path}: not a Core ML model ({type(exc).__name__})") from exc
    if spec.specificationVersion <= 0:
        raise NotAModelError(f"{path}: not a Core ML model (no specification version)")
    return dict(spec.description.metadata.userDefined).get(MANIFEST_KEY)


def _coreml_proto() -> Any:
    """coremltools' `Model_pb2`, imported without its import-time chatter."""
    import warnings

    quiet = [logging.getLogger(n) for n in ("coremltools", "root")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from coremltools.proto import Model_pb2
    except ImportError as exc:
        raise ProvenanceError(f"reading Core ML models needs coremltools: {exc}") from exc
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    return Model_pb2


def _from_torchscript(path: Path) -> Any:
    if not zipfile.is_zipfile(path):
        raise NotAModelError(f"{path}: not a TorchScript module (not a torch zip archive)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if not any("/code/" in n or n.endswith("constants.pkl") for n in names):
            raise NotAModelError(f"{path}: not a TorchScript module (no code in the archive)")
        found = [n for n in names if n.endswith(f"/extra/{MANIFEST_FILE}")]
        return archive.read(found[0]) if found else None
