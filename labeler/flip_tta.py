"""Teacher test-time augmentation: label a frame and its mirror image, average after mirroring back.

Data distillation (Radosavovic et al., "Data Distillation: Towards Omni-Supervised Learning",
CVPR 2018) ensembles a teacher over transforms of its input to get cleaner labels. The mirror is
the transform that needs no resampling and that pose models are trained to be equivariant to, so
the two answers differ only by the teacher's own noise: on the held-out real clips MediaPipe on a
frame vs on its mirror differs by 42-97 mm MPJPE per clip (README, "How well the student learns").
The average halves the variance of that part of the noise, at twice the teacher's cost.

Mirroring back (image width W, pixel centres at integers): x -> (W - 1) - x in 2D, X -> -X in 3D
(camera axes, pelvis-relative, so the pelvis stays at 0), and left/right joints swap through
`stream_pose.skeleton.FLIP_PERM`, because the person's own left becomes their right in a mirror.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np

from labeler.base import Teacher
from stream_pose.codec import make_label
from stream_pose.skeleton import FLIP_PERM
from stream_pose.types import Frame, PersonLabel

MIN_MATCH_IOU = 0.3  # a mirrored person is the same person when the boxes overlap this much


def mirror_frame(frame: Frame) -> Frame:
    """`frame` with its image mirrored left to right (`[H, W, 3]`, a new C-contiguous array).

    `K` is kept: with the principal point at the centre the mirror has the same intrinsics.
    """
    return dataclasses.replace(frame, image=np.ascontiguousarray(frame.image[:, ::-1]))


def unmirror_label(label: PersonLabel, width: int) -> PersonLabel:
    """A label found on the mirror image, expressed for the original image of width `width`.

    2D x -> (W - 1) - x, 3D X -> -X, left and right joints swapped (2D, 3D, visibility); the box
    is mirrored. Applying it twice gives the label back.
    """
    perm = np.asarray(FLIP_PERM)
    kpts2d = label.kpts2d[perm].copy()
    kpts2d[:, 0] = (width - 1) - kpts2d[:, 0]
    kpts3d = label.kpts3d[perm] * np.array([-1.0, 1.0, 1.0], np.float32)
    x0, y0, x1, y1 = label.bbox_xyxy
    root = None
    if label.root_cam is not None:
        root = label.root_cam * np.array([-1.0, 1.0, 1.0], np.float32)
    return dataclasses.replace(
        label,
        kpts2d=kpts2d.astype(np.float32),
        kpts3d=kpts3d.astype(np.float32),
        visibility=label.visibility[perm].copy(),
        bbox_xyxy=np.array([(width - 1) - x1, y0, (width - 1) - x0, y1], np.float32),
        root_cam=root,
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two `[4]` xyxy pixel boxes (0 when either is empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_people(
    plain: list[PersonLabel], mirrored: list[PersonLabel]
) -> list[tuple[PersonLabel, PersonLabel | None]]:
    """Pair each plain label with the unmirrored label of the same person, greedily by box IoU.

    Returns:
        One `(plain, mirrored or None)` per plain label, in the plain order; a pair needs an IoU
        of at least `MIN_MATCH_IOU`, and each mirrored label is used once.
    """
    pairs = sorted(
        ((box_iou(a.bbox_xyxy, b.bbox_xyxy), i, j)
         for i, a in enumerate(plain) for j, b in enumerate(mirrored)),
        reverse=True,
    )
    partner: dict[int, PersonLabel] = {}
    used: set[int] = set()
    for iou, i, j in pairs:
        if iou >= MIN_MATCH_IOU and i not in partner and j not in used:
            partner[i] = mirrored[j]
            used.add(j)
    return [(a, partner.get(i)) for i, a in enumerate(plain)]


def average_labels(a: PersonLabel, b: PersonLabel, image_hw: tuple[int, int]) -> PersonLabel | None:
    """The mean of two labels of one person in one image (both in that image's coordinates).

    Joints visible in both are averaged (2D pixels and pelvis-relative 3D metres); a joint
    visible in one only keeps that one's value. Visibility is the union. The track id and
    teacher name are `a`'s; the confidence is the mean of both.

    Returns:
        The averaged label, or None when `stream_pose.codec.make_label` rejects it.
    """
    va, vb = a.visibility > 0, b.visibility > 0
    both = (va & vb)[:, None]
    kpts2d = np.where(both, (a.kpts2d + b.kpts2d) / 2, np.where(va[:, None], a.kpts2d, b.kpts2d))
    kpts3d = np.where(both, (a.kpts3d + b.kpts3d) / 2, np.where(va[:, None], a.kpts3d, b.kpts3d))
    root = a.root_cam
    if a.root_cam is not None and b.root_cam is not None:
        root = (a.root_cam + b.root_cam) / 2
    return make_label(
        kpts2d, kpts3d, va | vb, image_hw, track_id=a.track_id,
        confidence=(a.confidence + b.confidence) / 2, teacher=a.teacher, root_cam=root,
    )


def pair_label(
    plain: PersonLabel, mirrored: PersonLabel | None, image_hw: tuple[int, int]
) -> PersonLabel | None:
    """The label `FlipTTATeacher.label` gives one `label_pairs` pair: the plain label where the
    mirror pass missed the person, else `average_labels` of the two (None when it rejects it)."""
    return plain if mirrored is None else average_labels(plain, mirrored, image_hw)


class FlipTTATeacher:
    """Teacher protocol over any teacher: the mean of its labels on a frame and on its mirror.

    Two instances of the wrapped teacher are made, one per image stream, because a video-mode
    teacher (MediaPipe, CoMotion) tracks people from frame to frame and the mirrored frames are
    a video of their own. A person the mirror pass misses keeps the plain label.

    Args:
        teacher: factory of the wrapped teacher (e.g. a Hydra `_partial_`), called twice.

    Raises:
        Whatever the wrapped teacher's constructor raises (e.g. `TeacherUnavailableError`).
    """

    def __init__(self, teacher: Callable[[], Teacher]) -> None:
        self._plain = teacher()
        try:
            self._mirror = teacher()
        except BaseException:
            self._plain.close()
            raise
        self.name = f"{self._plain.name}+flip"
        self.device = self._plain.device

    def label_pairs(self, frame: Frame) -> list[tuple[PersonLabel, PersonLabel | None]]:
        """The plain labels of `frame`, each with the mirror pass's label of the same person.

        Both are in `frame`'s coordinates; the second is None where the mirror pass missed the
        person. Used by `label` and by the benchmark's teacher noise floor.
        """
        width = frame.image.shape[1]
        plain = self._plain.label(frame)
        mirrored = [unmirror_label(p, width) for p in self._mirror.label(mirror_frame(frame))]
        return match_people(plain, mirrored)

    def label(self, frame: Frame) -> list[PersonLabel]:
        """Averaged labels (see `pair_label`), one per person the plain pass found."""
        out = []
        for a, b in self.label_pairs(frame):
            label = pair_label(a, b, frame.image.shape[:2])
            if label is not None:
                out.append(label)
        return out

    def reset(self) -> None:
        """Reset both wrapped teachers (a new video starts)."""
        self._plain.reset()
        self._mirror.reset()

    def close(self) -> None:
        """Close both wrapped teachers; safe to call twice."""
        self._plain.close()
        self._mirror.close()



def mediapipe_flip(**mediapipe_options: Any) -> FlipTTATeacher:
    """MediaPipe with flip test-time augmentation (`pipeline.py --labeler mediapipe_flip`).

    Args:
        mediapipe_options: keyword arguments of `labeler.mediapipe_teacher.MediaPipeTeacher`.

    Raises:
        TeacherUnavailableError: mediapipe is not installed (see `MediaPipeTeacher`).
    """
    from labeler.mediapipe_teacher import MediaPipeTeacher  # mediapipe imports slowly

    return FlipTTATeacher(functools.partial(MediaPipeTeacher, **mediapipe_options))
