"""The codec from teacher joints to labels and crops."""

import numpy as np

from stream_pose.camera import default_K, project
from stream_pose.codec import crop_sample, label_from_camera, make_label
from stream_pose.types import Frame, VideoRef


def _person(z=4.0):
    rng = np.random.default_rng(1)
    return rng.normal(0, 0.3, size=(27, 3)) + np.array([0.1, 0.0, z])


def test_label_from_camera_is_pelvis_relative_and_projects():
    K, hw = default_K(480, 640), (480, 640)
    cam = _person()
    label = label_from_camera(cam, K, hw, track_id=3, confidence=0.9, teacher="t")
    assert label is not None
    assert np.all(label.kpts3d[0] == 0)
    np.testing.assert_allclose(label.root_cam, cam[0], atol=1e-6)
    vis = label.visibility > 0
    np.testing.assert_allclose(
        project(label.kpts3d[vis] + label.root_cam, K), label.kpts2d[vis], atol=1e-2
    )
    assert label.track_id == 3 and label.teacher == "t"


def test_out_of_frame_and_undefined_joints_are_invisible():
    K, hw = default_K(480, 640), (480, 640)
    cam = _person()
    cam[20] = [10.0, 0.0, 4.0]  # far right, outside the image
    defined = np.ones(27, bool)
    defined[3] = False
    label = label_from_camera(cam, K, hw, track_id=0, confidence=1, teacher="t", defined=defined)
    assert label.visibility[20] == 0 and label.visibility[3] == 0
    assert np.all(label.kpts3d[[3, 20]] == 0)
    x0, y0, x1, y1 = label.bbox_xyxy
    assert x1 <= 639 and x0 >= 0


def test_make_label_needs_a_pelvis():
    defined = np.ones(27, bool)
    defined[0] = False
    assert make_label(np.zeros((27, 2)), np.zeros((27, 3)), defined, (10, 10),
                      track_id=0, confidence=1, teacher="t") is None


def test_crop_sample_keeps_keypoints_on_the_person():
    K, hw = default_K(360, 480), (360, 480)
    cam = _person(z=5.0)
    label = label_from_camera(cam, K, hw, track_id=0, confidence=1, teacher="t")
    image = np.zeros((*hw, 3), np.uint8)
    j = 18
    x, y = np.round(label.kpts2d[j]).astype(int)
    image[y, x] = 255
    frame = Frame(image=image, index=7, time_s=0.2, video=VideoRef("v", "local"), K=K)
    s = crop_sample(frame, label, crop_size=96)
    assert s.image.shape == (3, 96, 96) and s.image.dtype == np.uint8
    assert (s.video_id, s.frame_index, s.track_id) == ("v", 7, 0)
    vis = label.visibility > 0
    assert np.all(s.kpts2d[vis] >= 0) and np.all(s.kpts2d[vis] <= 96)
    np.testing.assert_allclose(
        project(label.kpts3d[vis] + label.root_cam, s.K_crop), s.kpts2d[vis], atol=1e-2
    )
    ys, xs = np.nonzero(s.image[0] > 0)
    assert len(xs) > 0
    assert np.hypot(xs.mean() - s.kpts2d[j, 0], ys.mean() - s.kpts2d[j, 1]) < 1.5


def test_crop_from_box_maps_both_ways():
    from stream_pose.codec import crop_from_box

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    box = np.array([100.0, 40.0, 160.0, 200.0], np.float32)
    crop = crop_from_box(image, box, 64)
    assert crop.image.shape == (64, 64, 3)
    side = 1.25 * 160.0  # CROP_MARGIN x the longer side, centred on the box
    np.testing.assert_allclose(crop.box_xyxy, [130 - side / 2, 120 - side / 2,
                                               130 + side / 2, 120 + side / 2], atol=1e-4)
    pts = rng.uniform(50, 200, (27, 2)).astype(np.float32)
    np.testing.assert_allclose(crop.to_image(crop.to_crop(pts)), pts, atol=1e-3)
    centre = crop.to_crop(np.array([[130.0, 120.0]]))
    np.testing.assert_allclose(centre, [[32.0, 32.0]], atol=1e-3)  # box centre -> S / 2
