"""A teacher that fails on demand: one person per frame, or none, or an exception, as a test's
`behaviour(frame)` says (the failure paths of the producers, which no real teacher hits on cue)."""

from __future__ import annotations

import numpy as np

from stream_pose.camera import default_K
from stream_pose.codec import label_from_camera

PERSON = np.random.default_rng(0).normal(0, 0.15, (27, 3)) + [0.0, 0.0, 4.0]  # metres


class FakeTeacher:
    """One person per frame; `behaviour(frame)` may return "none" or raise instead."""

    name, device = "fake", "cpu"

    def __init__(self, behaviour=lambda frame: None):
        self.behaviour = behaviour

    def label(self, frame):
        if self.behaviour(frame) == "none":
            return []
        K = frame.K if frame.K is not None else default_K(*frame.hw)
        return [label_from_camera(PERSON, K, frame.hw, track_id=0, confidence=1.0,
                                  teacher=self.name)]

    def reset(self):
        pass

    def close(self):
        pass
