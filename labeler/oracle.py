"""The oracle teacher: passes a synthetic frame's ground truth through as its labels.

It stands in for a real teacher wherever the question is "does the rest of the pipeline learn
what it is told?": with exact labels, any error left in the student is the student's (or the
pipeline's), not the teacher's.
"""

from __future__ import annotations

import dataclasses

from labeler.base import TeacherUnavailableError
from stream_pose.types import Frame, PersonLabel


class OracleTeacher:
    """Teacher that returns `frame.truth` (see `video_sources.synthetic.SyntheticSource`).

    Labels are copies (arrays included), so a consumer that edits them never alters the truth
    that evaluation reads; only `teacher` changes, to "oracle".
    """

    name = "oracle"
    device = "cpu"

    def label(self, frame: Frame) -> list[PersonLabel]:
        """People in `frame`: `[J, 2]` pixels, `[J, 3]` pelvis-relative metres, as in the truth.

        Returns:
            One label per ground-truth person; [] for a synthetic frame where nobody is in view.

        Raises:
            TeacherUnavailableError: if the frame has no ground truth and is not synthetic.
        """
        if not frame.truth and frame.video.kind != "synthetic":
            raise TeacherUnavailableError(
                f"the oracle teacher needs frames with ground truth: use source=synthetic "
                f"(got a {frame.video.kind!r} frame from video {frame.video.id!r})"
            )
        return [_copy(person) for person in frame.truth]

    def reset(self) -> None:
        """No-op: the oracle keeps no per-video state (track ids come with the truth)."""

    def close(self) -> None:
        """No-op: there is no model to release."""


def _copy(person: PersonLabel) -> PersonLabel:
    """Deep copy of a label's arrays, relabelled as coming from the oracle."""
    return dataclasses.replace(
        person,
        kpts2d=person.kpts2d.copy(),
        kpts3d=person.kpts3d.copy(),
        visibility=person.visibility.copy(),
        bbox_xyxy=person.bbox_xyxy.copy(),
        root_cam=None if person.root_cam is None else person.root_cam.copy(),
        teacher=OracleTeacher.name,
    )
