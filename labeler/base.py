"""The teacher protocol: label one `Frame`, return the people in it.

Every teacher (CoMotion, MediaPipe, the synthetic oracle) implements it, keeps its per-video state
(tracks) until `reset()`, and turns its raw output into `PersonLabel`s through
`stream_pose.codec` only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from stream_pose.types import Frame, PersonLabel


class TeacherUnavailableError(RuntimeError):
    """A teacher cannot run here (missing package, weights or device); the message says how to fix it."""


@runtime_checkable
class Teacher(Protocol):
    """Attributes: `name` (e.g. "mediapipe"), `device` (e.g. "cpu", "cuda:0", "coreml+mps")."""

    name: str
    device: str

    def label(self, frame: Frame) -> list[PersonLabel]:
        """People in `frame`; an empty list when there is none."""
        ...

    def reset(self) -> None:
        """Forget per-video state; called before the first frame of every video."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...
