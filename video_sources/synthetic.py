"""Procedural synthetic video with exact 3D ground truth: the download-free default source.

Each video is a fixed pinhole camera looking at one or more capsule-figure people who move
smoothly between a few random keyframe poses in front of a random cluttered background. The
people are posed by forward kinematics on the SMPL-27 skeleton, so every frame carries exact
camera-frame joints; `Frame.truth` holds them as `PersonLabel`s made by the shared codec.

What the renderer encodes, so that a student can recover 3D pose from pixels alone:
- side: the person's left limbs are warm (red-orange), right limbs cool (blue), torso a third hue
  (green), head neutral; shades vary per person. Upper limb segments are darker than lower ones.
- depth: parts are drawn far to near (painter's algorithm on each part's mean Z) and shaded
  brighter the nearer they are relative to the pelvis; perspective through K sets their size.
- facing: eyes and nose are drawn on the head, hidden by it when the person faces away.

Legend: T frames per video, J = 27 joints, P drawn parts. 3D in metres. Camera frame: X right,
Y down, Z forward. Body frame (rest pose and local joint rotations): SMPL's, X = the person's
left, Y up, Z to the person's front. Angles in the tables are degrees.
"""

from __future__ import annotations

import colorsys
import itertools
import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from stream_pose.codec import label_from_camera
from stream_pose.skeleton import FLIP_PERM, JOINT_INDEX, NUM_JOINTS, PARENTS, SIDE
from stream_pose.types import Frame, PersonLabel, VideoRef
from video_sources.base import SourceStats
from video_sources.splits import GENERATED_SPLITS, check_shard, check_split, in_position_shard

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Body model
# ---------------------------------------------------------------------------------------------

# Rest pose: a T-pose, each joint's offset from its parent in the body frame, metres, for a
# 1.69 m adult. Hand-set, rounded values close to SMPL's neutral template; legs and arms are
# straight lines (thigh and shin collinear), so a knee's bend angle equals its flexion angle.
_J = JOINT_INDEX
_LEFT_AND_MIDLINE_OFFSETS: dict[str, tuple[float, float, float]] = {
    "left_hip": (0.08, -0.07, 0.0),
    "spine1": (0.0, 0.11, -0.02),
    "left_knee": (0.0, -0.40, 0.0),
    "spine2": (0.0, 0.13, 0.0),
    "left_ankle": (0.0, -0.40, 0.0),
    "spine3": (0.0, 0.06, 0.01),
    "left_foot": (0.0, -0.06, 0.12),
    "neck": (0.0, 0.22, -0.02),
    "left_collar": (0.07, 0.12, -0.01),
    "head": (0.0, 0.10, 0.03),  # centre of the drawn head
    "left_shoulder": (0.10, 0.03, -0.01),
    "left_elbow": (0.26, 0.0, 0.0),
    "left_wrist": (0.25, 0.0, 0.0),
    "nose": (0.0, 0.0, 0.11),
    "left_eye": (0.033, 0.035, 0.09),
    "left_ear": (0.075, 0.01, 0.0),
}


def _rest_offsets() -> np.ndarray:
    """`[J, 3]` rest offsets; each right joint mirrors its left partner across the body's X = 0."""
    offsets = np.zeros((NUM_JOINTS, 3))
    for name, (x, y, z) in _LEFT_AND_MIDLINE_OFFSETS.items():
        offsets[_J[name]] = (x, y, z)
        offsets[FLIP_PERM[_J[name]]] = (-x if name.startswith("left_") else x, y, z)
    return offsets


REST_OFFSETS: np.ndarray = _rest_offsets()
HEAD_RADIUS_M = 0.105
REST_HEIGHT_M = 1.69  # head top (head + HEAD_RADIUS_M) to sole (ankle - 0.09), rounded

# Per-person proportions: overall height scale, and one scale per bone group (both sides alike,
# so the skeleton stays symmetric).
HEIGHT_SCALE_RANGE = (0.85, 1.15)
BONE_SCALE_RANGE = (0.9, 1.1)
_BONE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("left_knee",),  # thigh
    ("left_ankle",),  # shin
    ("left_elbow",),  # upper arm
    ("left_wrist",),  # forearm
    ("left_hip",),  # hip width
    ("left_collar", "left_shoulder"),  # shoulder width
    ("spine1", "spine2", "spine3", "neck"),  # trunk
)

# Local joint rotations: (min, max) in degrees about the body-frame X, Y, Z axes, for the left
# side and the midline (composed as Rz @ Ry @ Rx); the right side samples the same range and is
# mirrored. They stay inside typical adult active ranges of motion (knee and elbow flexion about
# 140-150, hip flexion about 120, hip abduction about 45), narrowed for standing and gesturing.
# Sign conventions for the left side: hip X < 0 swings the thigh forward, knee X > 0 bends the
# shin back, shoulder Z > 0 raises the arm, shoulder Y < 0 swings it forward, elbow Y < 0 bends
# the forearm forward (palm-forward T-pose).
KNEE_FLEXION_RANGE_DEG = (0.0, 140.0)
ELBOW_FLEXION_RANGE_DEG = (0.0, 140.0)
_Range = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
_ZERO = (0.0, 0.0)
JOINT_RANGES_DEG: dict[str, _Range] = {
    "spine1": ((-8, 20), (-12, 12), (-8, 8)),
    "spine2": ((-8, 20), (-12, 12), (-8, 8)),
    "spine3": ((-8, 15), (-12, 12), (-8, 8)),
    "neck": ((-15, 20), (-25, 25), (-10, 10)),
    "head": ((-15, 20), (-30, 30), (-10, 10)),
    "left_collar": (_ZERO, (-10, 10), (-10, 15)),
    "left_shoulder": ((-60, 60), (-100, 40), (-80, 85)),
    "left_elbow": (_ZERO, (-ELBOW_FLEXION_RANGE_DEG[1], -ELBOW_FLEXION_RANGE_DEG[0]), _ZERO),
    "left_ankle": ((-20, 30), _ZERO, (-10, 10)),
    # The free leg moves widely; the support leg keeps the person standing (see _sample_angles).
    "left_hip": ((-100, 25), (-25, 25), (-10, 45)),
    "left_knee": (KNEE_FLEXION_RANGE_DEG, _ZERO, _ZERO),
}
SUPPORT_LEG_RANGES_DEG: dict[str, _Range] = {
    "left_hip": ((-30, 15), (-20, 20), (-8, 20)),
    "left_knee": ((0, 45), _ZERO, _ZERO),
}
# Mirroring across the body's X = 0 plane keeps rotations about X and negates those about Y, Z.
_MIRROR = np.array([1.0, -1.0, -1.0])

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


def _euler_matrices(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices `R = Rz(c) @ Ry(b) @ Rx(a)` for angles `[..., 3]` (a, b, c) in radians.

    Returns:
        `[..., 3, 3]` float64.
    """
    ca, cb, cc = np.cos(angles[..., 0]), np.cos(angles[..., 1]), np.cos(angles[..., 2])
    sa, sb, sc = np.sin(angles[..., 0]), np.sin(angles[..., 1]), np.sin(angles[..., 2])
    R = np.empty(angles.shape[:-1] + (3, 3))
    R[..., 0, 0] = cc * cb
    R[..., 0, 1] = cc * sb * sa - sc * ca
    R[..., 0, 2] = cc * sb * ca + sc * sa
    R[..., 1, 0] = sc * cb
    R[..., 1, 1] = sc * sb * sa + cc * ca
    R[..., 1, 2] = sc * sb * ca - cc * sa
    R[..., 2, 0] = -sb
    R[..., 2, 1] = cb * sa
    R[..., 2, 2] = cb * ca
    return R


def forward_kinematics(
    offsets: np.ndarray, local_rot: np.ndarray, root_rot: np.ndarray, root_pos: np.ndarray
) -> np.ndarray:
    """Joint positions of the SMPL-27 tree (`stream_pose.skeleton.PARENTS`).

    Each joint sits at its parent's position plus the parent's global rotation applied to its
    rest offset; its own global rotation is the parent's times its local rotation.

    Args:
        offsets: `[J, 3]` rest offsets from each joint's parent, metres, body frame (row 0 unused).
        local_rot: `[T, J, 3, 3]` local rotations (row 0 unused: the root uses `root_rot`).
        root_rot: `[T, 3, 3]` body frame -> camera frame rotation of the pelvis.
        root_pos: `[T, 3]` pelvis position, metres, camera frame.

    Returns:
        `[T, J, 3]` float64 joint positions, metres, camera frame.

    Raises:
        ValueError: on mismatched shapes.
    """
    T = root_pos.shape[0]
    if offsets.shape != (NUM_JOINTS, 3) or local_rot.shape != (T, NUM_JOINTS, 3, 3):
        raise ValueError(
            f"expected offsets [{NUM_JOINTS}, 3] and local_rot [T, {NUM_JOINTS}, 3, 3], "
            f"got {offsets.shape} and {local_rot.shape}"
        )
    glob = np.empty((T, NUM_JOINTS, 3, 3))
    pos = np.empty((T, NUM_JOINTS, 3))
    glob[:, 0], pos[:, 0] = root_rot, root_pos
    for j in range(1, NUM_JOINTS):  # parents precede children in PARENTS
        p = PARENTS[j]
        pos[:, j] = pos[:, p] + glob[:, p] @ offsets[j]
        glob[:, j] = glob[:, p] @ local_rot[:, j]
    return pos


def _sample_offsets(rng: np.random.Generator) -> np.ndarray:
    """One person's rest offsets `[J, 3]`: `REST_OFFSETS` with random height and bone scales."""
    offsets = REST_OFFSETS * rng.uniform(*HEIGHT_SCALE_RANGE)
    for group in _BONE_GROUPS:
        joints = {j for name in group for j in (_J[name], int(FLIP_PERM[_J[name]]))}
        offsets[sorted(joints)] *= rng.uniform(*BONE_SCALE_RANGE)  # both sides alike
    return offsets


def _range_table(ranges: dict[str, _Range]) -> tuple[np.ndarray, np.ndarray]:
    """`[J, 3]` low and high angle bounds in radians; unlisted joints stay at zero."""
    lo, hi = np.zeros((NUM_JOINTS, 3)), np.zeros((NUM_JOINTS, 3))
    for name, axes in ranges.items():
        for j in {_J[name], int(FLIP_PERM[_J[name]])}:
            lo[j] = np.radians([a[0] for a in axes])
            hi[j] = np.radians([a[1] for a in axes])
    return lo, hi


_FREE_LO, _FREE_HI = _range_table(JOINT_RANGES_DEG)
_SUPPORT_LO, _SUPPORT_HI = _range_table(SUPPORT_LEG_RANGES_DEG)
_LEGS = {side: [_J[f"{side}_hip"], _J[f"{side}_knee"]] for side in ("left", "right")}


def _sample_angles(rng: np.random.Generator, n_keys: int) -> np.ndarray:
    """Keyframe local joint angles `[n_keys, J, 3]`, radians, within the joint range tables.

    At each keyframe one leg (random side) is the support leg with the narrower standing ranges.
    Right-side joints are sampled in the left ranges and mirrored.
    """
    lo = np.broadcast_to(_FREE_LO, (n_keys, NUM_JOINTS, 3)).copy()
    hi = np.broadcast_to(_FREE_HI, (n_keys, NUM_JOINTS, 3)).copy()
    for k, side in enumerate(rng.choice(["left", "right"], size=n_keys)):
        lo[k, _LEGS[side]] = _SUPPORT_LO[_LEGS[side]]
        hi[k, _LEGS[side]] = _SUPPORT_HI[_LEGS[side]]
    angles = rng.uniform(lo, hi)
    angles[:, SIDE < 0] *= _MIRROR
    return angles


def _interpolate(keys: np.ndarray, num_frames: int) -> np.ndarray:
    """Smooth per-frame values `[T, ...]` from keyframes `[K, ...]` spread evenly over T frames.

    Cosine easing between neighbouring keyframes: continuous, zero velocity at each keyframe, and
    each frame is a convex blend of two keyframes (so it stays inside any box both lie in).
    """
    pos = np.linspace(0.0, len(keys) - 1, num_frames)
    i0 = np.minimum(pos.astype(int), len(keys) - 2)
    w = 0.5 - 0.5 * np.cos(np.pi * (pos - i0))
    w = w.reshape((-1,) + (1,) * (keys.ndim - 1))
    return (1.0 - w) * keys[i0] + w * keys[i0 + 1]


def _rot_x(angle: np.ndarray) -> np.ndarray:
    """`[..., 3, 3]` rotations about X by `angle` `[...]` radians."""
    return _euler_matrices(np.stack([angle, 0 * angle, 0 * angle], -1))


# ---------------------------------------------------------------------------------------------
# Scene: camera and people
# ---------------------------------------------------------------------------------------------

DEPTH_RANGE_M = (3.0, 8.0)  # pelvis Z at the first keyframe
HEIGHT_FRACTION_RANGE = (0.4, 0.85)  # intended person height / image height, sets the focal
FOCAL_FACTOR_RANGE = (0.7, 2.5)  # f / max(H, W) is clipped to this (CoMotion's default is 2)
OTHER_DEPTH_RATIO = (0.8, 1.5)  # depth of further people / depth of the first
DRIFT_STD_M = 0.15  # pelvis wander between keyframes, X and Z


@dataclass
class _Person:
    """One person of a video: camera-frame joints `[T, J, 3]`, RGB `[3]` colour per role."""

    kpts_cam: np.ndarray
    colours: dict[str, np.ndarray]
    build: float  # limb thickness scale


def _sample_focal(rng: np.random.Generator, h: int, w: int, depth: float, height_m: float) -> float:
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


def _sample_person(
    rng: np.random.Generator, num_frames: int, root0: np.ndarray, cam_tilt: float
) -> _Person:
    """Pose one person over a video: keyframe poses and orientation, interpolated, then FK.

    Args:
        root0: `[3]` pelvis position at the first keyframe, metres, camera frame.
        cam_tilt: camera pitch in radians (positive looks down), applied to the whole body.
    """
    n_keys = 2 + (num_frames - 1) // FRAMES_PER_KEYFRAME
    local = _euler_matrices(_interpolate(_sample_angles(rng, n_keys), num_frames))
    yaw = rng.uniform(0, 2 * np.pi) + np.cumsum(
        np.radians(rng.uniform(-YAW_STEP_DEG, YAW_STEP_DEG, n_keys)) * (np.arange(n_keys) > 0)
    )
    pitch = np.radians(rng.uniform(*PITCH_RANGE_DEG, n_keys))
    roll = np.radians(rng.uniform(*ROLL_RANGE_DEG, n_keys))
    body = _euler_matrices(_interpolate(np.stack([pitch, yaw, roll], -1), num_frames))
    root_rot = _rot_x(np.array(cam_tilt)) @ _BODY_TO_CAMERA @ body  # [T, 3, 3]
    drift = rng.normal(0.0, DRIFT_STD_M, (n_keys, 3)) * [1.0, 0.0, 1.0]
    drift[0] = 0.0
    root_pos = _interpolate(root0 + np.cumsum(drift, 0), num_frames)
    kpts = forward_kinematics(_sample_offsets(rng), local, root_rot, root_pos)
    return _Person(kpts, _sample_colours(rng), build=rng.uniform(0.85, 1.2))


def _place_roots(
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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

# Parts: (kind, joints, radius in metres, colour role, brightness). Upper limb segments are
# darker than lower ones so the network can tell them apart.
_PARTS: tuple[tuple[str, tuple[int, ...], float, str, float], ...] = (
    *(
        part
        for side in ("left", "right")
        for part in (
            ("capsule", (_J[f"{side}_hip"], _J[f"{side}_knee"]), 0.075, side, 0.75),
            ("capsule", (_J[f"{side}_knee"], _J[f"{side}_ankle"]), 0.055, side, 1.0),
            ("capsule", (_J[f"{side}_ankle"], _J[f"{side}_foot"]), 0.045, side, 0.6),
            ("capsule", (_J[f"{side}_shoulder"], _J[f"{side}_elbow"]), 0.05, side, 0.75),
            ("capsule", (_J[f"{side}_elbow"], _J[f"{side}_wrist"]), 0.04, side, 1.0),
            ("circle", (_J[f"{side}_wrist"],), 0.045, side, 1.15),
        )
    ),
    ("poly", tuple(_J[n] for n in ("left_shoulder", "right_shoulder", "right_hip", "left_hip")),
     0.0, "torso", 1.0),
    ("capsule", (_J["pelvis"], _J["spine2"]), 0.11, "torso", 0.9),
    ("capsule", (_J["spine2"], _J["neck"]), 0.10, "torso", 0.95),
    ("capsule", (_J["left_hip"], _J["right_hip"]), 0.08, "torso", 0.8),
    ("capsule", (_J["left_shoulder"], _J["right_shoulder"]), 0.06, "torso", 1.0),
    ("capsule", (_J["neck"], _J["head"]), 0.05, "head", 0.8),
    ("circle", (_J["head"],), HEAD_RADIUS_M, "head", 1.0),
    ("circle", (_J["left_eye"],), 0.018, "eye", 1.0),
    ("circle", (_J["right_eye"],), 0.018, "eye", 1.0),
    ("circle", (_J["nose"],), 0.022, "nose", 1.0),
)
# [P, J] weights: a part's depth is the mean Z of its joints.
_PART_WEIGHTS = np.stack(
    [np.bincount(part[1], minlength=NUM_JOINTS) / len(part[1]) for part in _PARTS]
)
_PART_RADII = np.array([p[2] for p in _PARTS])
_PART_BRIGHTNESS = np.array([p[4] for p in _PARTS])
# Face dots get neither the build scale nor depth shading.
_BODY_PARTS = np.array([p[3] not in ("eye", "nose") for p in _PARTS])
DEPTH_SHADE_PER_M = 0.6  # brightness gain per metre nearer than the pelvis
SHADE_RANGE = (0.5, 1.3)
_SHIFT = 4  # OpenCV drawing with 4 fractional bits: sub-pixel accurate joints
_ONE = 1 << _SHIFT


@dataclass
class _DrawList:
    """Everything needed to draw each frame of a video, precomputed for all T frames.

    Attributes:
        kinds, joints: per part (all people), from `_PARTS`; joints index `pixels`' second axis.
        pixels: `[T, N*J, 2]` int32 fixed-point pixels (`_SHIFT` fractional bits).
        depth: `[T, N*P]` part depth, metres (draw order: far first).
        radius: `[T, N*P]` int32 fixed-point projected radius.
        colour: `[T, N*P, 3]` uint8 shaded RGB.
    """

    kinds: list[str]
    joints: list[np.ndarray]
    pixels: np.ndarray
    depth: np.ndarray
    radius: np.ndarray
    colour: np.ndarray


def _draw_list(people: Sequence[_Person], K: np.ndarray) -> _DrawList:
    """Project every person's parts over all frames (vectorised over T)."""
    kinds, joints, pix, depth, radius, colour = [], [], [], [], [], []
    f = float(K[0, 0])
    for n, person in enumerate(people):
        cam = person.kpts_cam  # [T, J, 3]
        uv = (cam @ K.T)[..., :2] / cam[..., 2:3]
        pix.append(np.round(uv * _ONE).astype(np.int32))
        z = cam[..., 2] @ _PART_WEIGHTS.T  # [T, P]
        depth.append(z)
        r = np.where(_BODY_PARTS, _PART_RADII * person.build, _PART_RADII)
        radius.append(np.maximum(np.round(f * r / z * _ONE), _ONE).astype(np.int32))
        shade = _PART_BRIGHTNESS * (1.0 + DEPTH_SHADE_PER_M * (cam[:, :1, 2] - z))
        base = np.stack([person.colours[p[3]] for p in _PARTS])  # [P, 3]
        shade = np.where(_BODY_PARTS, np.clip(shade, *SHADE_RANGE), 1.0)
        colour.append(np.clip(base * shade[..., None], 0, 255).astype(np.uint8))
        kinds += [p[0] for p in _PARTS]
        joints += [np.array(p[1]) + n * NUM_JOINTS for p in _PARTS]
    return _DrawList(
        kinds, joints, np.concatenate(pix, 1), np.concatenate(depth, 1),
        np.concatenate(radius, 1), np.concatenate(colour, 1),
    )


def _draw_people(image: np.ndarray, dl: _DrawList, t: int) -> None:
    """Draw frame t's parts onto `image` `[H, W, 3]` uint8 in place, far to near."""
    pix, radius, colour = dl.pixels[t], dl.radius[t], dl.colour[t]
    for p in np.argsort(-dl.depth[t], kind="stable"):
        c = colour[p].tolist()
        pts = pix[dl.joints[p]]
        if dl.kinds[p] == "capsule":  # OpenCV's thick lines have round caps
            thick = max(1, int(2 * radius[p]) >> _SHIFT)
            cv2.line(image, tuple(pts[0]), tuple(pts[1]), c, thick, cv2.LINE_AA, _SHIFT)
        elif dl.kinds[p] == "circle":
            cv2.circle(image, tuple(pts[0]), int(radius[p]), c, -1, cv2.LINE_AA, _SHIFT)
        else:
            cv2.fillPoly(image, [pts], c, cv2.LINE_AA, _SHIFT)


def _render_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """`[H, W, 3]` uint8: a smooth colour field with random ellipses, boxes and lines on it.

    The field is a random 3x3 colour grid upsampled bilinearly: cheap, and never one flat colour
    that a network could threshold away.
    """
    grid = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    image = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
    side = max(h, w)
    for _ in range(rng.integers(6, 16)):
        colour = rng.uniform(0, 255, 3).tolist()
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        size = rng.uniform(0.02, 0.25, 2) * side
        thick = -1 if rng.random() < 0.5 else int(rng.integers(1, 6))
        shape = rng.integers(3)
        if shape == 0:
            axes = (int(size[0]), int(size[1]))
            angle = rng.uniform(0, 180)
            cv2.ellipse(image, (x, y), axes, angle, 0, 360, colour, thick, cv2.LINE_AA)
        elif shape == 1:
            cv2.rectangle(image, (x, y), (int(x + size[0]), int(y + size[1])), colour, thick)
        else:
            end = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.line(image, (x, y), end, colour, max(thick, 1), cv2.LINE_AA)
    return image


NOISE_AMPLITUDE_RANGE = (2, 9)  # per-pixel uniform noise, +/- this many grey levels
_NOISE_MARGIN = 16  # the noise field is this much larger; each frame takes a shifted window


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------


@dataclass
class _Video:
    """One generated video: camera, background, people and their per-frame draw list."""

    ref: VideoRef
    K: np.ndarray  # [3, 3] float32
    background: np.ndarray  # [H, W, 3] uint8
    noise: np.ndarray  # [H + margin, W + margin, 3] uint8 in [0, 2 * amplitude]
    amplitude: int
    noise_shifts: np.ndarray  # [T, 2] int window offsets
    people: list[_Person]
    draw: _DrawList


class SyntheticSource:
    """Endless or fixed-length stream of rendered people with exact 3D ground truth.

    Video k of a split is a pure function of (seed, split, k): the random stream is seeded with
    `SeedSequence([seed, split code, k])`, so train, val and test never share a video and any
    video can be regenerated alone. Each `Frame` has `K` and `truth` (one `PersonLabel` per
    person with at least two joints in frame, `teacher="ground_truth"`, `track_id` = the person's
    index in the video, `root_cam` the pelvis in the camera frame).

    Args:
        split: "train", "val" or "test".
        num_videos: videos per pass. Val and test (and train with `loop=False`) yield exactly
            videos 0 .. num_videos-1 once.
        frames_per_video: frames T in every video.
        seed: non-negative base seed.
        image_size: fixed (H, W) in pixels; None draws H and W per video, each uniformly in
            `size_range` (so both portrait and landscape occur).
        size_range: inclusive (min, max) pixels for H and W when `image_size` is None.
        max_people: each video has 1 .. max_people people (uniformly).
        fps: frame rate; `time_s = index / fps` (exact here: generated video is constant rate).
        loop: for train, True streams new videos forever (k = 0, 1, 2, ... never repeats, so the
            student never sees the same clip twice); ignored for val and test.
        shard, num_shards: yield only videos with `k % num_shards == shard`
            (`video_sources.splits.in_position_shard`), so that several producers can split
            one stream without overlap.
        skip_ids: video ids (`synth-<split>-<k>`) not to yield, e.g. those a resumed run used
            before (`StreamDataModule.load_state_dict`); they are skipped without rendering.

    Raises:
        ValueError: on an unknown split or out-of-range argument.
    """

    kind = "synthetic"

    def __init__(
        self,
        *,
        split: str = "train",
        num_videos: int = 64,
        frames_per_video: int = 32,
        seed: int = 0,
        image_size: Sequence[int] | None = None,
        size_range: Sequence[int] = (192, 384),
        max_people: int = 2,
        fps: float = 30.0,
        loop: bool = True,
        shard: int = 0,
        num_shards: int = 1,
        skip_ids: Iterable[str] = (),
    ) -> None:
        check_split(split, choices=sorted(GENERATED_SPLITS))
        check_shard(shard, num_shards)
        if min(num_videos, frames_per_video, max_people) < 1:
            raise ValueError("num_videos, frames_per_video, max_people must be >= 1")
        if seed < 0 or fps <= 0:
            raise ValueError("need seed >= 0 and fps > 0")
        self.image_size = None if image_size is None else _size_pair(image_size, "image_size")
        self.size_range = _size_pair(size_range, "size_range")
        if self.size_range[0] > self.size_range[1]:
            raise ValueError(f"size_range must be (min, max), got {self.size_range}")
        self.split, self.num_videos, self.frames_per_video = split, num_videos, frames_per_video
        self.seed, self.max_people, self.fps, self.loop = seed, max_people, float(fps), loop
        self.shard, self.num_shards = shard, num_shards
        self.skip_ids = frozenset(skip_ids)
        self.stats = SourceStats()
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        """Frames of each video in order, video after video (see the class docstring)."""
        endless = self.loop and self.split == "train"
        indices = itertools.count() if endless else range(self.num_videos)
        for k in indices:
            if self._closed:
                return
            mine = in_position_shard(k, self.shard, self.num_shards)
            if not mine or video_id(self.split, k) in self.skip_ids:
                continue
            self.stats.videos_ok += 1
            for frame in self.video(k):
                self.stats.frames += 1
                yield frame

    def video(self, k: int) -> Iterator[Frame]:
        """Frames of video k >= 0 of this split, deterministic and independent of other videos.

        Calling it directly (random access, tests) does not touch `stats`.

        Raises:
            ValueError: if k < 0.
        """
        if k < 0:
            raise ValueError(f"video index must be >= 0, got {k}")
        video = self._make_video(k)
        for t in range(self.frames_per_video):
            yield self._frame(video, t)

    def close(self) -> None:
        """Stop iteration after the current video; there is nothing to release."""
        self._closed = True

    def _make_video(self, k: int) -> _Video:
        """Sample the camera, background and people of video k and precompute their drawing."""
        code = GENERATED_SPLITS[self.split]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, code, k]))
        h, w = self.image_size or rng.integers(*self.size_range, 2, endpoint=True).tolist()
        depth0 = rng.uniform(*DEPTH_RANGE_M)
        f = _sample_focal(rng, h, w, depth0, REST_HEIGHT_M)
        K = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1]])
        n_people = int(rng.integers(1, self.max_people + 1))
        tilt = np.radians(rng.uniform(*CAMERA_TILT_RANGE_DEG))
        roots = _place_roots(rng, n_people, h, w, f, depth0)
        people = [_sample_person(rng, self.frames_per_video, r, tilt) for r in roots]
        amplitude = int(rng.integers(*NOISE_AMPLITUDE_RANGE, endpoint=True))
        m = _NOISE_MARGIN
        log.debug("%s-%04d: %dx%d, f=%.0f px, %d people", self.split, k, h, w, f, n_people)
        return _Video(
            ref=VideoRef(id=video_id(self.split, k), kind=self.kind),
            K=K.astype(np.float32),
            background=_render_background(rng, h, w),
            noise=rng.integers(0, 2 * amplitude + 1, (h + m, w + m, 3), dtype=np.uint8),
            amplitude=amplitude,
            noise_shifts=rng.integers(0, m + 1, (self.frames_per_video, 2)),
            people=people,
            draw=_draw_list(people, K),
        )

    def _frame(self, video: _Video, t: int) -> Frame:
        """Render frame t of `video` and attach its ground truth."""
        h, w = video.background.shape[:2]
        image = video.background.copy()
        _draw_people(image, video.draw, t)
        dy, dx = video.noise_shifts[t]
        cv2.add(image, video.noise[dy : dy + h, dx : dx + w], dst=image)  # saturating, uint8
        cv2.subtract(image, (video.amplitude,) * 3, dst=image)  # centre the noise on zero
        truth = tuple(
            label
            for i, person in enumerate(video.people)
            if (label := _truth(person.kpts_cam[t], video.K, (h, w), i)) is not None
        )
        return Frame(
            image=image, index=t, time_s=t / self.fps, video=video.ref, K=video.K.copy(),
            truth=truth,
        )


def video_id(split: str, k: int) -> str:
    """Id of video k of a split, e.g. `synth-train-0007` (`VideoRef.id`)."""
    return f"synth-{split}-{k:04d}"


def _truth(
    kpts_cam: np.ndarray, K: np.ndarray, hw: tuple[int, int], track_id: int
) -> PersonLabel | None:
    """Ground-truth label of one person in one frame via the shared codec (None if off-frame)."""
    return label_from_camera(
        kpts_cam, K, hw, track_id=track_id, confidence=1.0, teacher="ground_truth"
    )


def _size_pair(value: Sequence[int], name: str) -> tuple[int, int]:
    """Two positive ints from a tuple, list or Hydra ListConfig."""
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 16:
        raise ValueError(f"{name} must be two integers >= 16, got {value!r}")
    return pair
