"""Shared helpers of the serving tests: the fields each seed names, frames of the real clips, and
the real server subprocess (`bench.server.Server`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from video_sources.decode import decode_video_bytes

# Seed 000 (stdio), 001 (/pose/hybrid), 002 (jobs, health) and 003 (tasks): the fields each names.
SEED_STDIO = {"frameNumber": int, "keypoints": list, "has3d": bool, "jointAngles3d": dict,
              "mesh_vertices_data": list, "mesh_faces_data": list, "processingTimeMs": float}
SEED_HYBRID = {"frame_number": int, "frame_width": int, "frame_height": int, "keypoints": list,
               "keypoint_count": int, "has_3d": bool, "joints_3d_raw": list,
               "joint_angles_3d": dict, "mesh_vertices": int, "mesh_vertices_data": list,
               "mesh_faces_data": list, "tracking_confidence": float,
               "processing_time_ms": float, "model_version": str,
               "track_id": int, "predicted": bool}
SEED_HEALTH_HYBRID = {"status": str, "models": dict, "ready": bool}
SEED_JOB_STATUS = {"job_id": str, "status": str, "result": dict, "output_path": str,
                   "processing_time": float}
SEED_PROCESS = {"task_id": str, "status": str, "message": str}
SEED_TASK_STATUS = {"task_id": str, "status": str, "video_path": str, "model": str,
                    "created_at": str, "started_at": str, "completed_at": str, "result": dict}
SEED_TASK_RESULT = {"visualization_dir": str, "predictions_dir": str, "predictions_file": str}
SEED_HEALTH_TASKS = {"status": str, "timestamp": str, "active_tasks": int, "queued_tasks": int,
                     "total_tasks": int}
KEYPOINT = {"name": str, "x": float, "y": float, "z": float, "confidence": float}


def assert_fields(body: dict, fields: dict[str, type], where: str = "") -> None:
    """Every field is present with its type (ints count as floats, as JSON has one number)."""
    for name, kind in fields.items():
        assert name in body, f"{where}: missing {name!r} in {sorted(body)}"
        ok = (int, float) if kind is float else kind
        assert isinstance(body[name], ok) and not (kind is int and isinstance(body[name], bool)), \
            f"{where}: {name!r} is {type(body[name]).__name__}, expected {kind.__name__}"


def clip_frames(path: Path, n: int | None = None) -> list[np.ndarray]:
    """The first `n` frames of a clip, `[H, W, 3]` uint8 RGB, decoded in memory."""
    frames = [image for _, _, image in decode_video_bytes(path.read_bytes(), max_frames=n)]
    assert frames, path
    return frames


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` RGB pixels followed by a few zero rows:
    what a decompression bomb looks like to a header reader (a real 20000x20000 PNG of zeros is
    1.2 MB and 1.2 GB decoded) without building one. Chunk layout per the PNG spec (RFC 2083)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    rows = zlib.compress(b"\0" * (3 * width + 1) * 4)  # filter byte + RGB per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
