"""The one codec between teacher outputs and training targets (see STYLE.md, item 8).

Teachers call `make_label` (2D and 3D given) or `label_from_camera` (camera-frame 3D, 2D by
projection); the producer calls `crop_sample` to turn a frame and a label into a `Sample`.
Training and evaluation read the same fields, so there is no second conversion anywhere.
Both ways of the crop map live here: `crop_from_box` cuts the crop a box gives (training,
prediction and serving alike) and `Crop.to_image` takes crop-space points back to image pixels.

Legend: J = 27 joints, S = crop side in pixels. 3D in metres, camera-frame axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stream_pose.camera import (
    apply_affine,
    crop_affine,
    crop_intrinsics,
    default_K,
    project,
    square_box,
    warp_image,
)
from stream_pose.skeleton import NUM_JOINTS, PELVIS
from stream_pose.types import Frame, PersonLabel, Sample

CROP_MARGIN = 1.25  # crop side / longer side of the person box


def in_frame(kpts2d: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """`[J]` bool: which `[J, 2]` pixel points lie inside an image of size (H, W)."""
    h, w = image_hw
    x, y = kpts2d[..., 0], kpts2d[..., 1]
    return np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def bbox_from_kpts(kpts2d: np.ndarray, visibility: np.ndarray) -> np.ndarray:
    """Tight `[4]` xyxy float32 box around the visible `[J, 2]` points.

    Raises:
        ValueError: if fewer than two joints are visible.
    """
    pts = kpts2d[visibility > 0]
    if len(pts) < 2:
        raise ValueError("need at least two visible joints for a box")
    return np.array([*pts.min(0), *pts.max(0)], dtype=np.float32)


def make_label(
    kpts2d: np.ndarray,
    kpts3d: np.ndarray,
    defined: np.ndarray,
    image_hw: tuple[int, int],
    *,
    track_id: int,
    confidence: float,
    teacher: str,
    root_cam: np.ndarray | None = None,
) -> PersonLabel | None:
    """Build a `PersonLabel` from a teacher's joints; None when too little of the person shows.

    Args:
        kpts2d: `[J, 2]` image pixels.
        kpts3d: `[J, 3]` metres, camera-frame axes, any origin (made pelvis-relative here).
        defined: `[J]` bool, joints the teacher defines and is confident in.
        image_hw: (H, W) of the frame, for the in-frame test.
        track_id, confidence, teacher, root_cam: copied into the label.

    Returns:
        The label with visibility = defined & in frame, 3D shifted so `kpts3d[0] == 0`, and a box
        around the visible joints; None if fewer than two joints are visible or the pelvis is
        undefined (the 3D target would have no origin).
    """
    kpts2d = np.asarray(kpts2d, dtype=np.float32).reshape(NUM_JOINTS, 2)
    kpts3d = np.asarray(kpts3d, dtype=np.float32).reshape(NUM_JOINTS, 3)
    defined = np.asarray(defined, dtype=bool).reshape(NUM_JOINTS)
    if not defined[PELVIS] or not np.all(np.isfinite(kpts3d[PELVIS])):
        return None
    visibility = (defined & in_frame(kpts2d, image_hw) & np.isfinite(kpts3d).all(-1)).astype(
        np.float32
    )
    if visibility.sum() < 2:
        return None
    rel = np.where(visibility[:, None] > 0, kpts3d - kpts3d[PELVIS], 0.0).astype(np.float32)
    rel[PELVIS] = 0.0
    return PersonLabel(
        track_id=int(track_id),
        kpts2d=np.nan_to_num(kpts2d, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32),  # invisible
        kpts3d=rel,
        visibility=visibility,
        bbox_xyxy=bbox_from_kpts(kpts2d, visibility),
        confidence=float(confidence),
        teacher=teacher,
        root_cam=None if root_cam is None else np.asarray(root_cam, dtype=np.float32),
    )


def label_from_camera(
    kpts3d_cam: np.ndarray,
    K: np.ndarray,
    image_hw: tuple[int, int],
    *,
    track_id: int,
    confidence: float,
    teacher: str,
    defined: np.ndarray | None = None,
    kpts2d: np.ndarray | None = None,
) -> PersonLabel | None:
    """`make_label` for teachers that give camera-frame 3D (CoMotion, synthetic truth).

    Args:
        kpts3d_cam: `[J, 3]` metres in the camera frame (Z forward, > 0).
        K: `[3, 3]` intrinsics of the frame.
        image_hw: (H, W).
        defined: `[J]` bool, default all True; joints behind the camera are never defined.
        kpts2d: `[J, 2]` pixels if the teacher has its own 2D; default: projection of the 3D.
    """
    kpts3d_cam = np.asarray(kpts3d_cam, dtype=np.float32).reshape(NUM_JOINTS, 3)
    ok = np.ones(NUM_JOINTS, bool) if defined is None else np.asarray(defined, bool).copy()
    ok &= kpts3d_cam[:, 2] > 1e-3
    if kpts2d is None:
        kpts2d = project(kpts3d_cam, K)
    return make_label(
        kpts2d,
        kpts3d_cam,
        ok,
        image_hw,
        track_id=track_id,
        confidence=confidence,
        teacher=teacher,
        root_cam=kpts3d_cam[PELVIS],
    )


def box_crop_affine(bbox_xyxy: np.ndarray, crop_size: int, margin: float = CROP_MARGIN
                    ) -> np.ndarray:
    """The `[2, 3]` image-to-crop affine of the square crop that `crop_sample` cuts for a box.

    Raises:
        ValueError: if the box is degenerate.
    """
    cx, cy, side = square_box(bbox_xyxy, margin)
    return crop_affine(cx, cy, side, crop_size)


@dataclass(frozen=True)
class Crop:
    """A square person crop and its map to and from the image.

    Attributes:
        image: `[S, S, 3]` uint8 RGB.
        affine: `[2, 3]` float image-pixels -> crop-pixels map.
        box_xyxy: `[4]` float32, the square crop in image pixels.
    """

    image: np.ndarray
    affine: np.ndarray
    box_xyxy: np.ndarray

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """`[..., 2]` image pixels -> crop pixels (float32)."""
        return apply_affine(points, self.affine)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """`[..., 2]` crop pixels (e.g. a student's `kpts2d`) -> image pixels (float32): the one
        inverse of the crop map."""
        return apply_affine(points, cv2.invertAffineTransform(self.affine))


def crop_from_box(image: np.ndarray, bbox_xyxy: np.ndarray, crop_size: int,
                  margin: float = CROP_MARGIN) -> Crop:
    """The square crop training cuts for a person box: side `margin` x the box's longer side,
    centred on the box, resized to `crop_size` (out-of-image pixels are black).

    Args:
        image: `[H, W, 3]` uint8 RGB.
        bbox_xyxy: `[4]` person box, image pixels.
        crop_size: S, pixels.
        margin: crop side / longer box side (`CROP_MARGIN`).

    Raises:
        ValueError: if the box is degenerate.
    """
    cx, cy, side = square_box(bbox_xyxy, margin)
    M = crop_affine(cx, cy, side, crop_size)
    box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)
    return Crop(image=warp_image(image, M, crop_size), affine=M, box_xyxy=box)


def crop_sample(
    frame: Frame, label: PersonLabel, crop_size: int, margin: float = CROP_MARGIN
) -> Sample:
    """Cut the square crop around `label` out of `frame` and move its targets into the crop.

    The image and the 2D keypoints go through the same affine map; 3D is unchanged
    (pelvis-relative, camera axes); `K_crop` = affine @ K, with K = `frame.K` or `default_K`.

    Raises:
        ValueError: if the person's box is degenerate.
    """
    crop = crop_from_box(frame.image, label.bbox_xyxy, crop_size, margin)
    K = frame.K if frame.K is not None else default_K(*frame.hw)
    M = crop.affine
    return Sample(
        image=np.ascontiguousarray(crop.image.transpose(2, 0, 1)),
        kpts2d=crop.to_crop(label.kpts2d),
        kpts3d=label.kpts3d.astype(np.float32, copy=True),
        visibility=label.visibility.astype(np.float32, copy=True),
        K_crop=crop_intrinsics(K, M),
        video_id=frame.video.id,
        frame_index=int(frame.index),
        track_id=int(label.track_id),
    )
