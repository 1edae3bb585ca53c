"""Invariants of the SMPL-27 skeleton."""

import numpy as np

from stream_pose.skeleton import (
    BONES,
    FLIP_PAIRS,
    FLIP_PERM,
    JOINT_NAMES,
    NUM_JOINTS,
    PARENTS,
    SIDE,
)


def test_joint_count_and_design_order():
    assert NUM_JOINTS == 27
    # Spot-check the docs/architecture.md joint table.
    assert JOINT_NAMES[0] == "pelvis"
    assert JOINT_NAMES[15] == "head"
    assert JOINT_NAMES[21] == "right_wrist"
    assert JOINT_NAMES[22:] == ("nose", "right_eye", "left_eye", "right_ear", "left_ear")


def test_flip_permutation_is_an_involution_that_swaps_sides():
    assert np.array_equal(FLIP_PERM[FLIP_PERM], np.arange(NUM_JOINTS))
    for i, j in enumerate(FLIP_PERM):
        assert SIDE[i] == -SIDE[j]
        assert JOINT_NAMES[i].split("_", 1)[-1] == JOINT_NAMES[j].split("_", 1)[-1]
    assert len(FLIP_PAIRS) == 10


def test_parents_form_a_tree_rooted_at_the_pelvis():
    assert PARENTS[0] == -1
    for j in range(1, NUM_JOINTS):
        seen, k = set(), j
        while k != 0:
            assert k not in seen, f"cycle through joint {k}"
            seen.add(k)
            k = int(PARENTS[k])
    assert len(BONES) == NUM_JOINTS - 1


def test_flip_respects_the_kinematic_tree():
    # Mirroring maps each bone onto a bone.
    bones = set(BONES)
    for p, c in BONES:
        assert (int(FLIP_PERM[p]), int(FLIP_PERM[c])) in bones
