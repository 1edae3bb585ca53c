"""Typed records that cross stage boundaries.

Legend: J = 27 joints (see ``stream_pose.skeleton``), S = crop side in pixels.
Camera frame: metres, X right, Y down, Z forward (away from the camera).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class VideoRef:
    """Where a video came from: metadata only, never pixels.

    Attributes:
        id: stable id, unique within a source kind (file stem, Pexels id, ``synth-train-0003``).
        kind: source kind: ``local``, ``url``, ``pexels``, ``synthetic``.
        uri: path or URL the bytes came from ("" for generated video).
        licence: licence of the footage, if known.
        attribution: creator credit, if known.
    """

    id: str
    kind: str
    uri: str = ""
    licence: str = ""
    attribution: str = ""


@dataclass
class PersonLabel:
    """One person in one frame, as a teacher (or ground truth) sees them.

    Attributes:
        track_id: id of the person within the video (stable across frames when tracked).
        kpts2d: `[J, 2]` float32, image pixels (x right, y down; pixel centres at integers).
        kpts3d: `[J, 3]` float32, metres, camera-frame axes, pelvis-relative (`kpts3d[0] == 0`).
        visibility: `[J]` float32 in {0, 1}: 1 where the teacher defines the joint, it projects
            inside the frame and the teacher is confident in it.
        bbox_xyxy: `[4]` float32 pixels, box around the person.
        confidence: person-level confidence in [0, 1].
        teacher: name of the teacher that produced the label.
        root_cam: optional `[3]` float32, pelvis position in the camera frame (metres), when the
            teacher knows it (CoMotion, synthetic ground truth); None otherwise (MediaPipe).
    """

    track_id: int
    kpts2d: np.ndarray
    kpts3d: np.ndarray
    visibility: np.ndarray
    bbox_xyxy: np.ndarray
    confidence: float
    teacher: str
    root_cam: np.ndarray | None = None


@dataclass
class Frame:
    """One decoded video frame.

    Attributes:
        image: `[H, W, 3]` uint8 RGB.
        index: frame number within its video (0-based, counting decoded frames).
        time_s: presentation time in seconds (pts x time_base), not index / fps.
        video: the video this frame belongs to.
        K: optional `[3, 3]` float32 intrinsics in pixels; None means unknown
            (use ``stream_pose.camera.default_K``).
        truth: ground-truth people, only for synthetic video (empty otherwise).
    """

    image: np.ndarray
    index: int
    time_s: float
    video: VideoRef
    K: np.ndarray | None = None
    truth: tuple[PersonLabel, ...] = field(default_factory=tuple)

    @property
    def hw(self) -> tuple[int, int]:
        """Image height and width in pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass
class Sample:
    """One person in one frame, cropped: what the ring buffer holds and the student learns from.

    Attributes:
        image: `[3, S, S]` uint8 RGB, square crop around the person.
        kpts2d: `[J, 2]` float32, crop pixels.
        kpts3d: `[J, 3]` float32, metres, pelvis-relative, camera-frame axes.
        visibility: `[J]` float32 in {0, 1}.
        K_crop: `[3, 3]` float32, intrinsics of the crop (the crop affine composed with K).
        video_id: id of the source video (``VideoRef.id``).
        frame_index: frame number within that video.
        track_id: person id within that video.
    """

    image: np.ndarray
    kpts2d: np.ndarray
    kpts3d: np.ndarray
    visibility: np.ndarray
    K_crop: np.ndarray
    video_id: str
    frame_index: int
    track_id: int
