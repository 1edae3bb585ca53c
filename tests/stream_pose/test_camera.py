"""Camera geometry: default K, projection and the square crop affine on image and keypoints."""

import numpy as np
import pytest

from stream_pose.camera import (
    apply_affine,
    crop_affine,
    crop_intrinsics,
    default_K,
    project,
    square_box,
    warp_image,
)


def test_default_K_follows_comotion():
    K = default_K(480, 640)
    assert K.shape == (3, 3) and K.dtype == np.float32
    assert K[0, 0] == K[1, 1] == 1280.0
    assert (K[0, 2], K[1, 2]) == (320.0, 240.0)


def test_project_point_on_optical_axis_hits_principal_point():
    K = default_K(480, 640)
    uv = project(np.array([[0.0, 0.0, 4.0], [0.5, -0.25, 2.0]]), K)
    np.testing.assert_allclose(uv[0], [320.0, 240.0])
    np.testing.assert_allclose(uv[1], [320 + 1280 * 0.25, 240 - 1280 * 0.125])


def test_square_box_rejects_degenerate_boxes():
    with pytest.raises(ValueError):
        square_box(np.array([10, 10, 10, 10.0]))
    with pytest.raises(ValueError):
        square_box(np.array([0, 0, np.nan, 5.0]))


@pytest.mark.parametrize("point", [(120.0, 80.0), (200.0, 300.0), (157.0, 222.0)])
def test_crop_affine_moves_image_and_keypoints_together(point):
    image = np.zeros((400, 300, 3), np.uint8)
    x, y = int(point[0]), int(point[1])
    image[y - 2 : y + 3, x - 2 : x + 3] = 255
    cx, cy, side = square_box(np.array([100, 60, 220, 320.0]))
    M = crop_affine(cx, cy, side, 128)
    crop = warp_image(image, M, 128)
    assert crop.shape == (128, 128, 3)
    ys, xs = np.nonzero(crop[..., 0] > 0)
    weights = crop[ys, xs, 0].astype(np.float64)
    centroid = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    np.testing.assert_allclose(centroid, apply_affine(np.array(point), M), atol=0.35)


def test_crop_intrinsics_project_straight_to_crop_pixels():
    rng = np.random.default_rng(0)
    K = default_K(720, 1280)
    pts = rng.uniform([-1, -1, 3], [1, 1, 6], size=(27, 3))
    cx, cy, side = square_box(np.array([500, 200, 700, 600.0]))
    M = crop_affine(cx, cy, side, 256)
    np.testing.assert_allclose(
        project(pts, crop_intrinsics(K, M)), apply_affine(project(pts, K), M), atol=1e-3
    )
