"""The scene of one synthetic video: a pinhole camera and the people in front of it, each
posed over the video (keyframes, orientation, drift) and given a palette.

Legend: T frames, J = 27 joints. 3D in metres, camera frame: X right, Y down, Z forward.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from video_sources.synthetic.body import (
    euler_matrices,
    forward_kinematics,
    interpolate,
    sample_angles,
    sample_offsets,
)

# Global orientation per person: yaw (about the body's up axis) over the full circle at the first
# keyframe, then drifting; pitch (lean) and roll stay small, so everyone stands roughly upright.
YAW_STEP_DEG = 60.0  # max yaw change between keyframes
PITCH_RANGE_DEG = (-12.0, 12.0)
ROLL_RANGE_DEG = (-8.0, 8.0)
CAMERA_TILT_RANGE_DEG = (-5.0, 20.0)  # camera pitched down (positive) onto the scene
# Body frame -> camera frame for an upright person facing the camera: left -> +X, up -> -Y,
# front -> -Z (a 180 degree turn about X).
_BODY_TO_CAMERA = np.diag([1.0, -1.0, -1.0])

FRAMES_PER_KEYFRAME = 12  # keyframe spacing: about 0.4 s of motion between random poses

DEPTH_RANGE_M = (3.0, 8.0)  # pelvis Z at the first keyframe
HEIGHT_FRACTION_RANGE = (0.4, 0.85)  # intended person height / image height, sets the focal
FOCAL_FACTOR_RANGE = (0.7, 2.5)  # f / max(H, W) is clipped to this (CoMotion's default is 2)
OTHER_DEPTH_RATIO = (0.8, 1.5)  # depth of further people / depth of the first
DRIFT_STD_M = 0.15  # pelvis wander between keyframes, X and Z


@dataclass
class Person:
    """One person of a video: camera-frame joints `[T, J, 3]`, RGB `[3]` colour per role."""

    kpts_cam: np.ndarray
    colours: dict[str, np.ndarray]
    build: float  # limb thickness scale


def sample_focal(rng: np.random.Generator, h: int, w: int, depth: float, height_m: float) -> float:
    """Focal length in pixels that makes a person `height_m` tall at `depth` fill a random
    fraction of the image height, clipped to `FOCAL_FACTOR_RANGE` x max(H, W)."""
    f = rng.uniform(*HEIGHT_FRACTION_RANGE) * h * depth / height_m
    return float(np.clip(f, *(np.array(FOCAL_FACTOR_RANGE) * max(h, w))))


def _hsv(rng: np.random.Generator, hue_deg: tuple, sat: tuple, val: tuple) -> np.ndarray:
    """One RGB colour `[3]` float in [0, 255] drawn uniformly in an HSV box (degrees, [0, 1])."""
    h = (rng.uniform(*hue_deg) % 360.0) / 360.0
    return 255.0 * np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)))


def _sample_colours(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-person palette: warm left, cool right, green torso, neutral head, dark eyes."""
    return {
        "left": _hsv(rng, (-10, 35), (0.65, 1.0), (0.6, 1.0)),
        "right": _hsv(rng, (195, 240), (0.65, 1.0), (0.6, 1.0)),
        "torso": _hsv(rng, (85, 155), (0.35, 0.85), (0.4, 0.9)),
        "head": _hsv(rng, (0, 360), (0.0, 0.15), (0.65, 0.95)),
        "eye": _hsv(rng, (0, 360), (0.0, 0.2), (0.0, 0.15)),
        "nose": _hsv(rng, (0, 360), (0.0, 0.1), (0.9, 1.0)),
    }


def sample_person(
    rng: np.random.Generator, num_frames: int, root0: np.ndarray, cam_tilt: float
) -> Person:
    """Pose one person over a video: keyframe poses and orientation, interpolated, then FK.

    Args:
        root0: `[3]` pelvis position at the first keyframe, metres, camera frame.
        cam_tilt: camera pitch in radians (positive looks down), applied to the whole body.
    """
    n_keys = 2 + (num_frames - 1) // FRAMES_PER_KEYFRAME
    local = euler_matrices(interpolate(sample_angles(rng, n_keys), num_frames))
    yaw = rng.uniform(0, 2 * np.pi) + np.cumsum(
        np.radians(rng.uniform(-YAW_STEP_DEG, YAW_STEP_DEG, n_keys)) * (np.arange(n_keys) > 0)
    )
    pitch = np.radians(rng.uniform(*PITCH_RANGE_DEG, n_keys))
    roll = np.radians(rng.uniform(*ROLL_RANGE_DEG, n_keys))
    body = euler_matrices(interpolate(np.stack([pitch, yaw, roll], -1), num_frames))
    root_rot = _rot_x(np.array(cam_tilt)) @ _BODY_TO_CAMERA @ body  # [T, 3, 3]
    drift = rng.normal(0.0, DRIFT_STD_M, (n_keys, 3)) * [1.0, 0.0, 1.0]
    drift[0] = 0.0
    root_pos = interpolate(root0 + np.cumsum(drift, 0), num_frames)
    kpts = forward_kinematics(sample_offsets(rng), local, root_rot, root_pos)
    return Person(kpts, _sample_colours(rng), build=rng.uniform(0.85, 1.2))


def place_roots(
    rng: np.random.Generator, n: int, h: int, w: int, f: float, depth0: float
) -> np.ndarray:
    """Pelvis positions `[n, 3]` (camera frame, metres) for n people side by side.

    Person i gets the i-th of n equal vertical strips of the image and a pelvis pixel in it; the
    first stands at `depth0`, the others within a factor `OTHER_DEPTH_RATIO` of it (so that the
    focal length chosen for the first person frames them too).
    """
    roots = np.empty((n, 3))
    for i in range(n):
        z = depth0 if i == 0 else np.clip(depth0 * rng.uniform(*OTHER_DEPTH_RATIO), *DEPTH_RANGE_M)
        u = w * (i + rng.uniform(0.3, 0.7)) / n
        v = h * rng.uniform(0.45, 0.6)  # pelvis a little below the centre: a head is above it
        roots[i] = ((u - w / 2) * z / f, (v - h / 2) * z / f, z)
    return roots


def _rot_x(angle: np.ndarray) -> np.ndarray:
    """`[..., 3, 3]` rotations about X by `angle` `[...]` radians."""
    return euler_matrices(np.stack([angle, 0 * angle, 0 * angle], -1))
