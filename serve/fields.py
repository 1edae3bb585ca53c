"""The derived fields the pose services return, computed from a `serve.session.TrackedPose`.

- Named keypoints: `{name, x, y, z, confidence}` per SMPL-27 joint; x, y image pixels, z metres
  (the joint's depth relative to the pelvis, camera Z forward), as seed 000 shows them.
- `joint_angles`: included angles in degrees at knees, hips, elbows, shoulders and the spine,
  from the 3D joints (`ANGLES` names the three joints of each); None where the model does not
  give one of the three joints (a teacher alone lacks the spine and neck).
- `camera_translation`: the camera-frame position of the pelvis, in metres, that best
  reprojects the pelvis-relative 3D joints onto the 2D joints through the intrinsics `K`: the
  linear least-squares solution of `K (X_j + t) ~ x_j`, each joint weighted by its confidence
  (the same linearisation as the weak-perspective-to-full-perspective step of SPIN/HMR:
  `(u - cx) (Z_j + tz) = fx (X_j + tx)`, and the same in y).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stream_pose.skeleton import JOINT_INDEX, JOINT_NAMES

# angle name -> (a, vertex, b): the included angle at `vertex` between the rays to a and b.
ANGLES: dict[str, tuple[str, str, str]] = {
    "left_knee": ("left_hip", "left_knee", "left_ankle"),
    "right_knee": ("right_hip", "right_knee", "right_ankle"),
    "left_hip": ("left_shoulder", "left_hip", "left_knee"),
    "right_hip": ("right_shoulder", "right_hip", "right_knee"),
    "left_elbow": ("left_shoulder", "left_elbow", "left_wrist"),
    "right_elbow": ("right_shoulder", "right_elbow", "right_wrist"),
    "left_shoulder": ("left_hip", "left_shoulder", "left_elbow"),
    "right_shoulder": ("right_hip", "right_shoulder", "right_elbow"),
    "spine": ("pelvis", "spine2", "neck"),
}
_ANGLE_INDEX = np.array([[JOINT_INDEX[j] for j in joints] for joints in ANGLES.values()])
MIN_JOINTS_FOR_TRANSLATION = 4  # 8 equations for 3 unknowns, and some robustness to one outlier


def round_or_none(value: float, digits: int) -> float | None:
    """A rounded float, or None (JSON null) for NaN or infinity."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def rounded_list(values: np.ndarray, digits: int) -> list:
    """`values` rounded, as nested Python lists, NaN and infinities as None (JSON null).

    Vectorised: the per-frame answers hold ~200 numbers per person."""
    values = np.asarray(values, np.float64)
    out = np.round(values, digits).tolist()
    if np.isfinite(values).all():
        return out
    flat_ok = np.isfinite(values)
    return _nulls(out, flat_ok.tolist())


def _nulls(values: list | float, ok: list | bool) -> list | float | None:
    if isinstance(values, list):
        return [_nulls(v, o) for v, o in zip(values, ok)]
    return values if ok else None


def named_keypoints(kpts2d: np.ndarray, kpts3d: np.ndarray,
                    confidence: np.ndarray) -> list[dict[str, Any]]:
    """`[{name, x, y, z, confidence}]` for the 27 joints (x, y pixels; z metres)."""
    xy, z, c = rounded_list(kpts2d, 2), rounded_list(kpts3d[:, 2], 4), rounded_list(confidence, 3)
    return [{"name": name, "x": p[0], "y": p[1], "z": zz, "confidence": cc}
            for name, p, zz, cc in zip(JOINT_NAMES, xy, z, c)]


def joint_angles(kpts3d: np.ndarray, defined: np.ndarray | None = None) -> dict[str, float | None]:
    """Included angles (degrees, 0-180) of `ANGLES` from `[J, 3]` joints.

    Args:
        kpts3d: `[J, 3]` metres (any frame: angles do not depend on it).
        defined: `[J]` bool, the joints the model gives; None: all.

    Returns:
        Angle name -> degrees (0.1 precision), None where a joint is undefined or a ray is zero.
    """
    defined = np.ones(len(kpts3d), bool) if defined is None else np.asarray(defined, bool)
    ia, iv, ib = _ANGLE_INDEX.T
    X = np.asarray(kpts3d, np.float64)
    r1, r2 = X[ia] - X[iv], X[ib] - X[iv]  # [A, 3]: one pass for every angle (live answers)
    n1, n2 = np.linalg.norm(r1, axis=1), np.linalg.norm(r2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cos = np.clip((r1 * r2).sum(1) / (n1 * n2), -1.0, 1.0)
        degrees = np.degrees(np.arccos(cos))
    ok = (defined[ia] & defined[iv] & defined[ib] & (n1 >= 1e-9) & (n2 >= 1e-9)
          & np.isfinite(n1 * n2) & np.isfinite(degrees))
    return {name: round(float(d), 1) if good else None
            for name, d, good in zip(ANGLES, degrees.tolist(), ok.tolist())}


def camera_translation(kpts3d: np.ndarray, kpts2d: np.ndarray, K: np.ndarray,
                       weights: np.ndarray | None = None) -> list[float] | None:
    """The pelvis's camera-frame position `t` (metres) with `project(kpts3d + t, K) ~ kpts2d`.

    Args:
        kpts3d: `[J, 3]` metres, pelvis-relative, camera axes.
        kpts2d: `[J, 2]` image pixels.
        K: `[3, 3]` intrinsics (pixels).
        weights: `[J]` >= 0 per joint (e.g. confidence); None: all 1.

    Returns:
        `[tx, ty, tz]` (0.001 m precision), or None with fewer than
        `MIN_JOINTS_FOR_TRANSLATION` usable joints or a solution behind the camera.
    """
    w = np.ones(len(kpts3d)) if weights is None else np.asarray(weights, np.float64)
    ok = (w > 0) & np.isfinite(kpts3d).all(1) & np.isfinite(kpts2d).all(1)
    if ok.sum() < MIN_JOINTS_FOR_TRANSLATION:
        return None
    X, x, sw = kpts3d[ok].astype(np.float64), kpts2d[ok].astype(np.float64), np.sqrt(w[ok])
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    du, dv = x[:, 0] - cx, x[:, 1] - cy
    zeros, ones = np.zeros_like(du), np.ones_like(du)
    # fx tx - du tz = du Z - fx X ;  fy ty - dv tz = dv Z - fy Y
    A = np.concatenate([np.stack([fx * ones, zeros, -du], 1), np.stack([zeros, fy * ones, -dv], 1)])
    rhs = np.concatenate([du * X[:, 2] - fx * X[:, 0], dv * X[:, 2] - fy * X[:, 1]])
    weight = np.concatenate([sw, sw])
    Aw, bw = A * weight[:, None], rhs * weight
    try:  # the 3x3 normal equations: a fraction of lstsq's SVD cost, per person per frame
        t = np.linalg.solve(Aw.T @ Aw, Aw.T @ bw)
    except np.linalg.LinAlgError:  # degenerate (all joints on one ray)
        return None
    if not np.all(np.isfinite(t)) or t[2] <= 0:
        return None
    return [round(float(v), 3) for v in t]
