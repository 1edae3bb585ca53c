"""Teachers: models that label frames with people (``Teacher`` protocol in ``labeler.base``).

Importing this package imports no model library: teachers pull in optional, slow-to-import
extras (mediapipe, CoMotion's torch stack), so each one is imported only when it is first used, through
`teacher_class(name)` or attribute access (``labeler.MediaPipeTeacher``).
"""

from __future__ import annotations

import importlib

from labeler.base import Teacher, TeacherUnavailableError

# Teacher name -> "module:Class" (or a factory function), resolved lazily.
TEACHERS: dict[str, str] = {
    "auto": "labeler.auto:auto_teacher",
    "comotion": "labeler.comotion:CoMotionTeacher",
    "mediapipe": "labeler.mediapipe_teacher:MediaPipeTeacher",
    "mediapipe_flip": "labeler.flip_tta:mediapipe_flip",
    "oracle": "labeler.oracle:OracleTeacher",
}

__all__ = [
    "TEACHERS",
    "CoMotionTeacher",
    "MediaPipeTeacher",
    "OracleTeacher",
    "Teacher",
    "TeacherUnavailableError",
    "teacher_class",
]


def teacher_class(name: str) -> type:
    """The teacher class (or factory) registered as `name` in `TEACHERS`, importing its module now.

    Raises:
        KeyError: if no teacher has that name (the message lists the known ones).
    """
    if name not in TEACHERS:
        raise KeyError(f"unknown teacher {name!r}; known: {sorted(TEACHERS)}")
    module, cls = TEACHERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def __getattr__(attr: str) -> type:
    """Lazy access to teacher classes by class name (PEP 562)."""
    for name, target in TEACHERS.items():
        if target.endswith(":" + attr):
            return teacher_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
