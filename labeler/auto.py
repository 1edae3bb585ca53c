"""`labeler=auto`: CoMotion when it is ready here, MediaPipe otherwise, and a log line saying why."""

from __future__ import annotations

import logging
from typing import Any

from labeler.base import Teacher, TeacherUnavailableError

log = logging.getLogger(__name__)


def auto_teacher(comotion: dict[str, Any] | None = None,
                 mediapipe: dict[str, Any] | None = None) -> Teacher:
    """Build the best teacher that can run here.

    Tries `CoMotionTeacher(**comotion)`; if any piece is missing (submodule, package, weights,
    SMPL model, dependency, device) it logs that reason and returns
    `MediaPipeTeacher(**mediapipe)` instead.

    Args:
        comotion: keyword arguments of `labeler.comotion.CoMotionTeacher` (e.g. device).
        mediapipe: keyword arguments of `labeler.mediapipe_teacher.MediaPipeTeacher`.

    Raises:
        TeacherUnavailableError: neither teacher can run; the message gives both reasons.
    """
    from labeler.comotion import CoMotionTeacher

    try:
        teacher = CoMotionTeacher(**dict(comotion or {}))
    except TeacherUnavailableError as exc:
        why_not = str(exc)
    else:
        log.info("labeler=auto picked CoMotion on %s: every piece is installed", teacher.device)
        return teacher
    from labeler.mediapipe_teacher import MediaPipeTeacher

    try:
        teacher = MediaPipeTeacher(**dict(mediapipe or {}))
    except TeacherUnavailableError as exc:
        raise TeacherUnavailableError(
            f"no teacher can run here. CoMotion: {why_not} MediaPipe: {exc}") from exc
    log.warning("labeler=auto picked MediaPipe (single person, CPU) because CoMotion is not "
                "ready: %s", why_not)
    return teacher


auto_teacher.name = "auto"  # what summaries report before the choice is made
