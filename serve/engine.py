"""The serving engine: one loaded pose model per process, shared by every session.

    engine = Engine("runs/<run>/export/last.onnx")      # or a .ckpt, "mediapipe", "comotion"
    session = engine.new_session()                      # one video or one client stream
    result = session.step(image_rgb, frame_number=0)    # serve.session.SessionFrame

`model` is one of
- an exported student `.onnx` (`serve.export`), run by ONNX Runtime on the CPU;
- a training checkpoint `.ckpt`, run by torch (`serve.checkpoint.load_student`);
- `mediapipe` or `comotion`: the teacher alone, the fallback when no student exists.
A student is top-down: the teacher (`teacher`, MediaPipe by default) boxes people when tracking
starts or is lost (`serve.tracker`), the student predicts every crop of a frame in one batch.

The crop models (`CropModel`, the ONNX and torch adapters, `load_crop_model`) live in
`serve.models`, below the sessions and the tracker; they are re-exported here. Teachers hold
per-video state (MediaPipe's tracking), so each session gets its own teacher instance
(`new_teacher`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from labeler import TEACHERS, teacher_class
from labeler.base import Teacher
from serve.models import (  # noqa: F401 (re-exported: the crop models' old home)
    DEFAULT_MAX_SIDE,
    TEACHER_MODELS,
    CropModel,
    CropPoses,
    ModelLoadError,
    OnnxCropModel,
    TorchCropModel,
    load_crop_model,
)
from serve.session import Session

logger = logging.getLogger(__name__)


class Engine:
    """A pose model loaded once, and the factory of sessions that use it.

    Args:
        model: `.onnx`, `.ckpt`, `mediapipe` or `comotion` (module docstring).
        teacher: the model that boxes people for a student (a name in `labeler.TEACHERS`).
        threads: CPU threads of the student.
        device: torch device of a `.ckpt` student.
        max_side: frames are downscaled to this longer side before anything runs; None: the
            model's training size (`frame_max_side`), else `DEFAULT_MAX_SIDE`; 0: never.
        session_options: defaults for `new_session` (see `serve.session.Session`).

    Raises:
        ModelLoadError: as `load_crop_model`, or an unknown teacher.
    """

    def __init__(self, model: str = "mediapipe", *, teacher: str = "mediapipe", threads: int = 1,
                 device: str = "cpu", max_side: int | None = None,
                 **session_options: Any) -> None:
        self.model = str(model)
        if self.model in TEACHER_MODELS:
            self.crop_model, self.teacher_name = None, self.model
        else:
            self.crop_model, self.teacher_name = load_crop_model(
                self.model, threads=threads, device=device), teacher
        if self.teacher_name not in TEACHERS:
            raise ModelLoadError(f"unknown teacher {self.teacher_name!r}; known: "
                                 f"{', '.join(sorted(TEACHERS))}")
        self.session_options = session_options
        self.warm = False
        if max_side is None:
            max_side = getattr(self.crop_model, "max_side", None) or DEFAULT_MAX_SIDE
        self.max_side: int | None = int(max_side) or None

    @property
    def name(self) -> str:
        """`model_version` of the responses: the student file, or the teacher's name."""
        if self.crop_model is None:
            return f"stream-pose-{self.teacher_name}"
        return f"stream-pose-student:{self.crop_model.name}"

    def check_teacher(self) -> None:
        """Start and close one teacher, so that a teacher that cannot run here fails at start-up
        (one clear error) rather than on the first request.

        Raises:
            labeler.base.TeacherUnavailableError: the teacher cannot run here.
        """
        self.new_teacher().close()

    def new_teacher(self) -> Teacher:
        """A fresh teacher instance (its own per-video state).

        Raises:
            labeler.base.TeacherUnavailableError: the teacher cannot run here.
        """
        return teacher_class(self.teacher_name)()

    def new_session(self, **options: Any):
        """A `serve.session.Session` with this engine's model and a fresh teacher."""
        return Session(self.crop_model, self.new_teacher(), **{**self.session_options, **options})

    def warmup(self) -> float:
        """Load and run everything once (student on one blank crop, teacher on a blank frame).

        Returns:
            Seconds it took.

        Raises:
            labeler.base.TeacherUnavailableError: the teacher cannot run here.
        """
        t0 = time.perf_counter()
        if self.crop_model is not None:
            s = self.crop_model.crop_size
            self.crop_model(np.zeros((1, 3, s, s), np.uint8))
        session = self.new_session()
        try:
            session.step(np.zeros((64, 64, 3), np.uint8), frame_number=0)
        finally:
            session.close()
        self.warm = True
        return time.perf_counter() - t0

    def describe(self) -> dict[str, str]:
        """Model name -> "loaded" (the `models` field of `/health`)."""
        models = {"teacher:" + self.teacher_name: "loaded" if self.warm else "on_demand"}
        if self.crop_model is not None:
            models = {"student:" + self.crop_model.name: "loaded", **models}
        return models
