"""The JSON shapes of the pose services (`../shared/seeds/`), built from a `SessionFrame`.

- `hybrid_response`: seed 001's `/pose/hybrid` body (snake_case), plus `track_id`, `predicted`
  and `people` (every tracked person; the top-level fields describe the first, the lowest
  `track_id`). Also one line of a video job's `frames.jsonl`.
- `stdio_record`: seed 000's per-frame object (camelCase), plus `trackId`, `predicted`,
  `trackingConfidence` and `people`.
- `mmpose_predictions`: a whole video in the layout MMPose's demos save with
  `--save-predictions` (`meta_info` + `instance_info[{frame_id, instances}]`).
No mesh is predicted: `mesh_vertices` is 0 and the mesh arrays are empty; `has_3d` is true.
A frame with nobody in it has empty keypoints, `track_id` null and `tracking_confidence` 0.
"""

from __future__ import annotations

from typing import Any

from serve.fields import camera_translation, joint_angles, named_keypoints, rounded_list
from serve.session import SessionFrame, TrackedPose
from stream_pose.skeleton import JOINT_NAMES, NUM_JOINTS


def person_fields(person: TrackedPose, frame: SessionFrame) -> dict[str, Any]:
    """The derived fields of one person (snake_case names)."""
    return {
        "track_id": person.track_id,
        "predicted": person.predicted,
        "tracking_confidence": round(person.tracking_confidence, 3),
        "bbox": rounded_list(person.box_xyxy, 2),
        "keypoints": named_keypoints(person.kpts2d, person.kpts3d, person.confidence),
        "joints_3d_raw": rounded_list(person.kpts3d, 4),
        "joint_angles_3d": joint_angles(person.kpts3d, person.defined),
        "camera_translation": camera_translation(person.kpts3d, person.kpts2d, frame.K,
                                                 person.confidence),
    }


def _empty_person() -> dict[str, Any]:
    return {"track_id": None, "predicted": False, "tracking_confidence": 0.0, "bbox": None,
            "keypoints": [], "joints_3d_raw": [], "joint_angles_3d": {},
            "camera_translation": None}


def hybrid_response(frame: SessionFrame, model_version: str,
                    processing_ms: float | None = None,
                    timings_ms: dict[str, float] | None = None) -> dict[str, Any]:
    """Seed 001's response for one frame (see the module docstring).

    Args:
        frame: the session's answer.
        model_version: e.g. `Engine.name`.
        processing_ms: the time to report (default: the session step's own).
        timings_ms: optional parts of that time (e.g. decode, pose), reported as `timings_ms`.
    """
    people = [person_fields(p, frame) for p in frame.people]
    first = people[0] if people else _empty_person()
    return {
        "frame_number": frame.frame_number,
        "frame_width": frame.width,
        "frame_height": frame.height,
        "keypoints": first["keypoints"],
        "keypoint_count": len(first["keypoints"]),
        "has_3d": True,
        "joints_3d_raw": first["joints_3d_raw"],
        "joint_angles_3d": first["joint_angles_3d"],
        "mesh_vertices": 0,
        "mesh_vertices_data": [],
        "mesh_faces_data": [],
        "camera_translation": first["camera_translation"],
        "tracking_confidence": first["tracking_confidence"],
        "track_id": first["track_id"],
        "predicted": first["predicted"],
        "processing_time_ms": round(frame.processing_ms if processing_ms is None
                                    else processing_ms, 2),
        "model_version": model_version,
        "timings_ms": {k: round(v, 2) for k, v in (timings_ms or {}).items()},
        "people": people,
    }


def stdio_record(frame: SessionFrame, processing_ms: float | None = None) -> dict[str, Any]:
    """Seed 000's output object for one frame (see the module docstring)."""
    people = [person_fields(p, frame) for p in frame.people]
    first = people[0] if people else _empty_person()
    return {
        "frameNumber": frame.frame_number,
        "keypoints": first["keypoints"],
        "has3d": True,
        "jointAngles3d": first["joint_angles_3d"],
        "mesh_vertices_data": [],
        "mesh_faces_data": [],
        "cameraTranslation": first["camera_translation"],
        "processingTimeMs": round(frame.processing_ms if processing_ms is None
                                  else processing_ms, 2),
        "trackId": first["track_id"],
        "predicted": first["predicted"],
        "trackingConfidence": first["tracking_confidence"],
        "people": people,
    }


def mmpose_instance(person: TrackedPose) -> dict[str, Any]:
    """One person as an MMPose instance: 2D keypoints + scores, box, and our 3D and track."""
    return {
        "keypoints": rounded_list(person.kpts2d, 2),
        "keypoint_scores": rounded_list(person.confidence, 3),
        "keypoints_3d": rounded_list(person.kpts3d, 4),
        "bbox": [rounded_list(person.box_xyxy, 2)],
        "bbox_score": round(person.tracking_confidence, 3),
        "track_id": person.track_id,
        "predicted": person.predicted,
    }


def mmpose_predictions(frames: list[dict[str, Any]], model_version: str) -> dict[str, Any]:
    """The whole-video predictions file from `[{frame_id, instances}]` (`mmpose_instance`)."""
    return {
        "meta_info": {
            "dataset_name": "smpl27",
            "num_keypoints": NUM_JOINTS,
            "keypoint_id2name": dict(enumerate(JOINT_NAMES)),
            "keypoints_3d_units": "metres, pelvis-relative, camera axes (X right, Y down, Z fwd)",
            "model": model_version,
        },
        "instance_info": frames,
    }
