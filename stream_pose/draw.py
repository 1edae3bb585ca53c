"""Draw a 27-joint skeleton on an image: training's W&B panels and serving's overlays share it.

Colours follow the synthetic renderer's convention: the person's left side warm (orange), right
side cool (blue), the midline green. Images are `[H, W, 3]` uint8 RGB; 2D points in image pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from stream_pose.skeleton import BONES, SIDE

SIDE_RGB = {1: (255, 140, 0), -1: (30, 144, 255), 0: (60, 200, 60)}  # left, right, midline
BOX_RGB = (255, 255, 255)


def draw_pose(
    image: np.ndarray, kpts2d: np.ndarray, joints: np.ndarray | None = None,
    box_xyxy: np.ndarray | None = None,
) -> None:
    """Draw one skeleton onto `image` in place.

    Args:
        image: `[H, W, 3]` uint8 RGB, modified.
        kpts2d: `[J, 2]` image pixels.
        joints: `[J]` bool, the joints to draw (bones need both ends); None draws all.
        box_xyxy: optional `[4]` box drawn as a thin rectangle (e.g. the crop the model saw).
    """
    joints = np.ones(len(kpts2d), bool) if joints is None else np.asarray(joints, bool)
    width = max(2, round(max(image.shape[:2]) / 400))  # ~3 px lines at 1080p
    pts = np.round(np.nan_to_num(kpts2d)).astype(np.int32)
    for parent, child in BONES:
        if joints[parent] and joints[child]:
            cv2.line(image, tuple(map(int, pts[parent])), tuple(map(int, pts[child])),
                     SIDE_RGB[int(SIDE[child])], width, cv2.LINE_AA)
    for j in np.flatnonzero(joints):
        cv2.circle(image, tuple(map(int, pts[j])), width + 1, SIDE_RGB[int(SIDE[j])], -1,
                   cv2.LINE_AA)
    if box_xyxy is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box_xyxy)
        cv2.rectangle(image, (x0, y0), (x1, y1), BOX_RGB, 1, cv2.LINE_AA)
