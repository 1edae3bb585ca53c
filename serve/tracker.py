"""Top-down tracking for inference: people boxed by the teacher, then by the student's own joints.

The student is a top-down model: it needs one square crop per person. As in MediaPipe Pose's
region-of-interest tracking (Bazarevsky et al., "BlazePose", 2020), the detector (here the
teacher) places each person once, and after that a person's next crop comes from the student's
own keypoints in the previous frame. Crops are cut exactly as training cuts them: a square of
`CROP_MARGIN` x the longer side of the tight box around the joints (`stream_pose.camera`).

When the teacher runs (documented rule):
- on the first frame, and on any frame where no person is tracked;
- every `redetect_every` frames, to pick up people who entered and to correct slow drift (the
  student has no person-presence output to notice either itself);
- when a track is lost. A person's prediction is implausible, so the track is lost, when fewer
  than `min_joints_in_frame` of its tracked joints lie inside the frame, when its box centre
  left the crop it was predicted in, or when its box side differs from the side of the box the
  teacher last gave that person by more than `max_scale_change` times. The last rule catches
  a box that collapses onto a few pixels or blows up, at once or by a little every frame;
  a person who really grows or shrinks that much is simply re-boxed by the teacher. A track is
  also lost when the student's mean confidence over its tracked joints falls below
  `min_confidence` (`train.student.heatmap_confidence`: a crop that no longer shows a person,
  e.g. a blank frame or someone who walked off, gives diffuse heatmaps). The
  teacher then re-boxes that very frame and the student runs again on its boxes, so no
  frame's output comes from a lost box.
Tracked joints are those the teacher labelled visible when it last placed the person: the joints
a teacher lacks (MediaPipe: spine, neck, collars, head) were never supervised and do not steer.

Legend: J = 27 joints, S crop side. 2D in image pixels of the frame unless said otherwise;
3D in metres, pelvis-relative, camera axes (X right, Y down, Z forward).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from labeler.base import Teacher
from serve.models import CropModel, TorchCropModel
from stream_pose.camera import square_box
from stream_pose.codec import CROP_MARGIN, bbox_from_kpts, crop_from_box, in_frame
from stream_pose.types import Frame

logger = logging.getLogger(__name__)

IOU_SAME_PERSON = 0.3  # a re-detected box keeps the id of the track it overlaps this much


@dataclass
class PersonPose:
    """One person in one frame, as the student sees them.

    Attributes:
        person: track id, stable while the person is tracked.
        kpts2d: `[J, 2]` float32 image pixels.
        kpts3d: `[J, 3]` float32 metres, pelvis-relative, camera axes.
        tracked: `[J]` bool, the joints that steer the box (visible to the teacher).
        crop_xyxy: `[4]` float32, the square crop the student saw, in image pixels.
        box_from: "teacher" or "student": who placed that crop.
        confidence: `[J]` float32 in [0, 1], the student's per-joint confidence.
    """

    person: int
    kpts2d: np.ndarray
    kpts3d: np.ndarray
    tracked: np.ndarray
    crop_xyxy: np.ndarray
    box_from: str
    confidence: np.ndarray | None = None


@dataclass
class FramePoses:
    """The people of one frame and what they cost.

    Attributes:
        people: one `PersonPose` per tracked person.
        student_ms: milliseconds of the student's part (crop, forward, back to image pixels).
        teacher_ms: milliseconds in the teacher, or None when it did not run on this frame.
    """

    people: list[PersonPose]
    student_ms: float
    teacher_ms: float | None


@dataclass
class _Track:
    id: int
    box: np.ndarray  # [4] xyxy, the tight person box the next crop is squared from
    tracked: np.ndarray  # [J] bool
    teacher_side: float  # longer side of the box the teacher last gave, pixels


class TopDownTracker:
    """Runs the student on video, frame by frame, boxing people as the module docstring says.

    Args:
        net: the student: a `serve.models.CropModel` (uint8 crops), or a torch module taking
            crops `[B, 3, S, S]` float in [0, 1] (wrapped in `TorchCropModel`).
        teacher: places people (its `label` boxes); used only on some frames.
        redetect_every: the teacher runs at least every this many frames (>= 1).
        min_joints_in_frame: fraction in (0, 1] of tracked joints that must stay in the frame.
        max_scale_change: > 1, the largest ratio between a person's box size and the size the
            teacher last gave it.
        margin: crop side / longer box side (training's `CROP_MARGIN`).
        min_confidence: a track whose mean joint confidence (over its tracked joints) is below
            this is lost; 0 disables the rule.
        device: where a torch student runs.

    Raises:
        ValueError: on out-of-range arguments.
    """

    def __init__(
        self,
        net: CropModel | torch.nn.Module,
        teacher: Teacher,
        *,
        redetect_every: int = 30,
        min_joints_in_frame: float = 0.5,
        max_scale_change: float = 2.0,
        margin: float = CROP_MARGIN,
        min_confidence: float = 0.4,
        device: str | torch.device = "cpu",
    ) -> None:
        if redetect_every < 1 or not 0 < min_joints_in_frame <= 1 or max_scale_change <= 1:
            raise ValueError("need redetect_every >= 1, 0 < min_joints_in_frame <= 1 and "
                             "max_scale_change > 1")
        self.model = TorchCropModel(net, device) if isinstance(net, torch.nn.Module) else net
        self.teacher = teacher
        self.redetect_every, self.min_joints_in_frame = redetect_every, min_joints_in_frame
        self.max_scale_change, self.margin = max_scale_change, margin
        self.min_confidence = min_confidence
        self.teacher_frames = 0  # frames the teacher ran on since construction
        self.reset()

    def reset(self) -> None:
        """Forget all tracks (and the teacher's own state): call before a new video."""
        self.teacher.reset()
        self._tracks: list[_Track] = []
        self._since_teacher, self._lost, self._next_id = 0, False, 0

    def step(self, frame: Frame) -> FramePoses:
        """Box, crop and predict every tracked person of `frame` (`image` `[H, W, 3]` uint8 RGB).

        Returns:
            The frame's `FramePoses`: one `PersonPose` per person (2D in this frame's pixels),
            and the milliseconds spent in the student and, if it ran, the teacher.

        Raises:
            labeler.base.TeacherUnavailableError: the teacher cannot run on this frame.
        """
        teacher_ms = None
        if not self._tracks or self._lost or self._since_teacher >= self.redetect_every:
            teacher_ms = self._detect(frame)
        box_from = "student" if teacher_ms is None else "teacher"
        people, student_ms = self._predict(frame, box_from)
        boxes = [self._next_box(p, t, frame.hw) for p, t in zip(people, self._tracks)]
        if teacher_ms is None and any(b is None for b in boxes):
            teacher_ms = self._detect(frame)  # lost: re-box this frame and predict again
            people, again_ms = self._predict(frame, "teacher")
            student_ms += again_ms
            boxes = [self._next_box(p, t, frame.hw) for p, t in zip(people, self._tracks)]
        self._lost = any(b is None for b in boxes)
        for track, box in zip(self._tracks, boxes):
            if box is not None:
                track.box = box
        self._since_teacher += 1
        return FramePoses(people, student_ms, teacher_ms)

    def _detect(self, frame: Frame) -> float:
        """Replace the tracks with the teacher's people; returns the teacher's milliseconds."""
        t0 = time.perf_counter()
        labels = [lb for lb in self.teacher.label(frame) if _croppable(lb.bbox_xyxy, self.margin)]
        ms = 1000.0 * (time.perf_counter() - t0)
        ids = self._assign_ids([lb.bbox_xyxy for lb in labels])
        self._tracks = [
            _Track(id=i, box=lb.bbox_xyxy.astype(np.float32), tracked=lb.visibility > 0,
                   teacher_side=_longer_side(lb.bbox_xyxy))
            for i, lb in zip(ids, labels)
        ]
        self._since_teacher, self._lost = 0, False
        self.teacher_frames += 1
        return ms

    def _assign_ids(self, boxes: list[np.ndarray]) -> list[int]:
        """Ids for re-detected boxes: a current track's id where a box overlaps it with
        IoU >= 0.3 (greedy, best overlap first, each id once), a new id otherwise."""
        pairs = sorted(((box_iou(b, t.box), i, t.id) for i, b in enumerate(boxes)
                        for t in self._tracks), reverse=True)
        ids: dict[int, int] = {}
        for iou, i, track_id in pairs:
            if iou >= IOU_SAME_PERSON and i not in ids and track_id not in ids.values():
                ids[i] = track_id
        for i in range(len(boxes)):
            if i not in ids:
                ids[i], self._next_id = self._next_id, self._next_id + 1
        return [ids[i] for i in range(len(boxes))]

    def _predict(self, frame: Frame, box_from: str) -> tuple[list[PersonPose], float]:
        """Crop every track as training does, run the student once on the batch, map back."""
        if not self._tracks:
            return [], 0.0
        t0 = time.perf_counter()
        crops = [crop_from_box(frame.image, t.box, self.model.crop_size, self.margin)
                 for t in self._tracks]
        out = self.model(np.stack([c.image.transpose(2, 0, 1) for c in crops]))  # [P, ...]
        people = [
            PersonPose(
                person=t.id, kpts2d=crop.to_image(k2), kpts3d=k3.astype(np.float32),
                tracked=t.tracked.copy(), crop_xyxy=crop.box_xyxy, box_from=box_from,
                confidence=c,
            )
            for t, crop, k2, k3, c in zip(self._tracks, crops, out.kpts2d, out.kpts3d,
                                          out.confidence)
        ]
        return people, 1000.0 * (time.perf_counter() - t0)

    def _next_box(
        self, person: PersonPose, track: _Track, image_hw: tuple[int, int]
    ) -> np.ndarray | None:
        """Tight box around the tracked joints, or None if the prediction is implausible."""
        pts = person.kpts2d[person.tracked]
        if len(pts) < 2 or in_frame(pts, image_hw).mean() < self.min_joints_in_frame:
            return None
        if float(person.confidence[person.tracked].mean()) < self.min_confidence:
            return None
        box = bbox_from_kpts(person.kpts2d, person.tracked)
        scale = _longer_side(box) / track.teacher_side
        if not 1 / self.max_scale_change <= scale <= self.max_scale_change:
            return None
        if not _croppable(box, self.margin):
            return None
        centre, crop = (box[:2] + box[2:]) / 2, person.crop_xyxy
        if np.any(centre < crop[:2]) or np.any(centre > crop[2:]):
            return None
        return box


def _longer_side(box: np.ndarray) -> float:
    """The longer side of a `[4]` xyxy box, in pixels."""
    return float(max(box[2] - box[0], box[3] - box[1]))


def _croppable(box: np.ndarray, margin: float) -> bool:
    """Whether a person box gives a crop (the producer drops the same degenerate boxes)."""
    try:
        square_box(box, margin)
    except ValueError:
        return False
    return True


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two `[4]` xyxy boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0
