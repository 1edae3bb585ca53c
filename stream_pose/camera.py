"""Camera geometry: default intrinsics, projection, and the square person crop as an affine map.

Camera frame: metres, X right, Y down, Z forward. Pixels: x right, y down, pixel centres at
integer coordinates (OpenCV's convention, so `cv2.warpAffine` and `apply_affine` agree).
"""

from __future__ import annotations

import cv2
import numpy as np


def default_K(height: int, width: int) -> np.ndarray:
    """CoMotion's default intrinsics for a video that gives none.

    f = 2 * max(H, W) pixels, principal point at the image centre (apple/ml-comotion,
    ``comotion_demo.utils.helper``).

    Returns:
        `[3, 3]` float32.
    """
    f = 2.0 * max(height, width)
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=np.float32)


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points.

    Args:
        points: `[..., 3]` metres, camera frame, Z > 0.
        K: `[3, 3]` intrinsics.

    Returns:
        `[..., 2]` float32 pixels.
    """
    p = np.asarray(points, dtype=np.float64) @ np.asarray(K, dtype=np.float64).T
    z = np.clip(p[..., 2:3], 1e-6, None)
    return (p[..., :2] / z).astype(np.float32)


def square_box(bbox_xyxy: np.ndarray, margin: float = 1.25) -> tuple[float, float, float]:
    """Square around a box: centre x, centre y and side, side = margin * longer box side.

    Raises:
        ValueError: if the box is degenerate (non-finite or zero area).
    """
    x0, y0, x1, y1 = (float(v) for v in bbox_xyxy)
    side = margin * max(x1 - x0, y1 - y0)
    if not np.isfinite(side) or side <= 1.0:
        raise ValueError(f"degenerate person box {bbox_xyxy!r}")
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0, side


def crop_affine(cx: float, cy: float, side: float, crop_size: int) -> np.ndarray:
    """Affine map from image pixels to crop pixels for a square of `side` centred at (cx, cy).

    Returns:
        `[2, 3]` float32 M with crop = M @ [x, y, 1]; a uniform scale S/side and a shift.
    """
    s = crop_size / side
    return np.array(
        [[s, 0, crop_size / 2.0 - s * cx], [0, s, crop_size / 2.0 - s * cy]], dtype=np.float32
    )


def apply_affine(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a `[2, 3]` affine map to `[..., 2]` pixel points; returns `[..., 2]` float32."""
    pts = np.asarray(points, dtype=np.float32)
    return (pts @ M[:, :2].T + M[:, 2]).astype(np.float32)


def warp_image(image: np.ndarray, M: np.ndarray, crop_size: int) -> np.ndarray:
    """Warp an `[H, W, 3]` uint8 image with the `[2, 3]` map M into `[S, S, 3]` uint8.

    Pixels outside the source are black. The same M applied with `apply_affine` moves keypoints
    to the matching crop pixels.
    """
    return cv2.warpAffine(
        image,
        M,
        (crop_size, crop_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def affine_to_3x3(M: np.ndarray) -> np.ndarray:
    """Lift a `[2, 3]` affine to a `[3, 3]` homogeneous matrix (float32)."""
    out = np.eye(3, dtype=np.float32)
    out[:2] = M
    return out


def crop_intrinsics(K: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Intrinsics of a crop: `[3, 3]` float32 `A @ K`, A the crop affine lifted to 3x3.

    Projecting camera-frame points with the result gives crop pixels directly.
    """
    return (affine_to_3x3(M) @ np.asarray(K, dtype=np.float32)).astype(np.float32)
