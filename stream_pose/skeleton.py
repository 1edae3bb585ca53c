"""The SMPL-27 skeleton ("joints_face"), the joint format CoMotion emits.

Indices 0-21 are the first 22 SMPL body joints; 22-26 are five SMPL mesh vertices on the face
(vertex ids in brackets), as selected by CoMotion (apple/ml-comotion, ``smpl_kinematics``).
Left and right are the person's own. Parents follow the SMPL kinematic tree (Loper et al., 2015);
the face points hang off ``head``.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "pelvis",  # 0
    "left_hip",  # 1
    "right_hip",  # 2
    "spine1",  # 3
    "left_knee",  # 4
    "right_knee",  # 5
    "spine2",  # 6
    "left_ankle",  # 7
    "right_ankle",  # 8
    "spine3",  # 9
    "left_foot",  # 10
    "right_foot",  # 11
    "neck",  # 12
    "left_collar",  # 13
    "right_collar",  # 14
    "head",  # 15
    "left_shoulder",  # 16
    "right_shoulder",  # 17
    "left_elbow",  # 18
    "right_elbow",  # 19
    "left_wrist",  # 20
    "right_wrist",  # 21
    "nose",  # 22 (SMPL vertex 332)
    "right_eye",  # 23 (vertex 6260)
    "left_eye",  # 24 (vertex 2800)
    "right_ear",  # 25 (vertex 4071)
    "left_ear",  # 26 (vertex 583)
)
NUM_JOINTS: int = len(JOINT_NAMES)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINT_NAMES)}
PELVIS: int = 0

# SMPL kinematic tree for joints 0-21; the face vertices (22-26) are children of head (15).
PARENTS: np.ndarray = np.array(
    [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15, 15, 15],
    dtype=np.int64,
)


def _flip_permutation() -> np.ndarray:
    """Index map that swaps every left_* joint with its right_* partner, `[27]` int64."""
    perm = np.arange(NUM_JOINTS)
    for i, name in enumerate(JOINT_NAMES):
        for a, b in (("left_", "right_"), ("right_", "left_")):
            if name.startswith(a):
                perm[i] = JOINT_INDEX[b + name[len(a) :]]
    return perm


# FLIP_PERM[i] is the joint that joint i becomes in a mirrored image. It is an involution.
FLIP_PERM: np.ndarray = _flip_permutation()
FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple(
    (i, int(j)) for i, j in enumerate(FLIP_PERM) if i < j
)

# Bones for drawing: (parent, child) for every non-root joint.
BONES: tuple[tuple[int, int], ...] = tuple(
    (int(p), c) for c, p in enumerate(PARENTS) if p >= 0
)

# Which side a joint is on: -1 right, +1 left, 0 centre. Used to colour drawings.
SIDE: np.ndarray = np.array(
    [1 if n.startswith("left_") else -1 if n.startswith("right_") else 0 for n in JOINT_NAMES],
    dtype=np.int64,
)
