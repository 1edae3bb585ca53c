"""The body model of the synthetic source: an SMPL-27 skeleton with per-person proportions,
keyframe joint angles within adult ranges of motion, and forward kinematics.

Legend: T frames, K keyframes, J = 27 joints. 3D in metres. Body frame (rest pose and local
joint rotations): SMPL's, X = the person's left, Y up, Z to the person's front. Angles in the
tables are degrees, in arrays radians.
"""

from __future__ import annotations

import numpy as np

from stream_pose.skeleton import FLIP_PERM, JOINT_INDEX, NUM_JOINTS, PARENTS, SIDE

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
    # The free leg moves widely; the support leg keeps the person standing (see sample_angles).
    "left_hip": ((-100, 25), (-25, 25), (-10, 45)),
    "left_knee": (KNEE_FLEXION_RANGE_DEG, _ZERO, _ZERO),
}
SUPPORT_LEG_RANGES_DEG: dict[str, _Range] = {
    "left_hip": ((-30, 15), (-20, 20), (-8, 20)),
    "left_knee": ((0, 45), _ZERO, _ZERO),
}
# Mirroring across the body's X = 0 plane keeps rotations about X and negates those about Y, Z.
_MIRROR = np.array([1.0, -1.0, -1.0])


def euler_matrices(angles: np.ndarray) -> np.ndarray:
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


def sample_offsets(rng: np.random.Generator) -> np.ndarray:
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


def sample_angles(rng: np.random.Generator, n_keys: int) -> np.ndarray:
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


def interpolate(keys: np.ndarray, num_frames: int) -> np.ndarray:
    """Smooth per-frame values `[T, ...]` from keyframes `[K, ...]` spread evenly over T frames.

    Cosine easing between neighbouring keyframes: continuous, zero velocity at each keyframe, and
    each frame is a convex blend of two keyframes (so it stays inside any box both lie in).
    """
    pos = np.linspace(0.0, len(keys) - 1, num_frames)
    i0 = np.minimum(pos.astype(int), len(keys) - 2)
    w = 0.5 - 0.5 * np.cos(np.pi * (pos - i0))
    w = w.reshape((-1,) + (1,) * (keys.ndim - 1))
    return (1.0 - w) * keys[i0] + w * keys[i0 + 1]
