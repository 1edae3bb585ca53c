"""Batch augmentation: images, 2D, 3D, visibility and K_crop must stay consistent.

The consistency tests give `kpts3d` absolute camera-frame joints (not pelvis-relative) so that
projecting them with `K_crop` must reproduce `kpts2d`; every operation is linear in 3D, so the
same holds for pelvis-relative targets.
"""

import math

import numpy as np
import pytest
import torch

from data.augment import (
    BatchAugment,
    background_swap,
    color_jitter,
    hflip,
    rotate_scale_shift,
    skeleton_mask,
)
from stream_pose.batch import Batch
from stream_pose.skeleton import FLIP_PERM, JOINT_INDEX

S = 48
B = 6


def _project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """`[B, J, 3]` camera-frame points, `[B, 3, 3]` K -> `[B, J, 2]` pixels."""
    p = points @ K.transpose(-1, -2)
    return p[..., :2] / p[..., 2:]


def _batch(seed: int = 0, centred_K: bool = False) -> Batch:
    """A batch whose 2D is the projection of its 3D through an off-centre, anisotropic K_crop."""
    g = torch.Generator().manual_seed(seed)
    f = S * (1.5 + torch.rand(B, generator=g))
    c = torch.full((B, 2), (S - 1) / 2)
    if not centred_K:
        c = c + (torch.rand(B, 2, generator=g) - 0.5) * S / 2
    K = torch.zeros(B, 3, 3)
    K[:, 0, 0], K[:, 1, 1] = f, f if centred_K else f * 1.1
    K[:, :2, 2], K[:, 2, 2] = c, 1.0
    xy, z = (torch.rand(B, 2, generator=g) - 0.5) * 0.4, 3 + torch.rand(B, 1, generator=g)
    root = torch.cat([xy, z], 1)  # [B, 3] metres, a little off the optical axis
    kpts3d = root[:, None] + 0.15 * torch.randn(B, 27, 3, generator=g)
    return Batch(
        image=torch.rand(B, 3, S, S, generator=g),
        kpts2d=_project(kpts3d, K),
        kpts3d=kpts3d,
        visibility=torch.ones(B, 27),
        K_crop=K,
        frame_index=torch.arange(B),
    )


def _pixel_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """`[S, S]` y and x coordinates of pixel centres (at integers)."""
    axis = torch.arange(S, dtype=torch.float32)
    return torch.meshgrid(axis, axis, indexing="ij")


def _blob(centre: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """`[S, S]` Gaussian dot at sub-pixel (x, y)."""
    ys, xs = _pixel_grid()
    return torch.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))


def _centroid(image: torch.Tensor, near: torch.Tensor, radius: int = 7) -> torch.Tensor:
    """Intensity-weighted (x, y) of `[S, S]` image within `radius` pixels of `near`."""
    ys, xs = _pixel_grid()
    w = image * (((xs - near[0]) ** 2 + (ys - near[1]) ** 2) <= radius**2)
    return torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum()


def _dots_batch(seed: int = 0) -> tuple[Batch, list[int]]:
    """A batch whose sample b shows only a dot at its joint `joints[b]` (all channels)."""
    batch = _batch(seed)
    g = torch.Generator().manual_seed(seed + 1)
    batch.kpts2d = S * (0.3 + 0.4 * torch.rand(B, 27, 2, generator=g))
    joints = [JOINT_INDEX["left_wrist"], JOINT_INDEX["right_knee"], 0, 15, 23, 10][:B]
    batch.image = torch.stack([_blob(batch.kpts2d[b, j]).expand(3, S, S)
                                  for b, j in enumerate(joints)])
    return batch, joints


def _assert_same(a: Batch, b: Batch, atol: float = 1e-5) -> None:
    fa, fb = a.fields(), b.fields()
    assert fa.keys() == fb.keys()
    for k in fa:
        torch.testing.assert_close(fa[k], fb[k], atol=atol, rtol=0, msg=k)


# ------------------------------------------------------------------ horizontal flip


def test_flip_perm_is_an_involution_that_swaps_sides():
    assert np.array_equal(FLIP_PERM[FLIP_PERM], np.arange(27))
    assert FLIP_PERM[JOINT_INDEX["left_wrist"]] == JOINT_INDEX["right_wrist"]
    assert FLIP_PERM[JOINT_INDEX["pelvis"]] == JOINT_INDEX["pelvis"]


def test_flip_twice_is_the_identity():
    batch = _batch()
    _assert_same(hflip(hflip(batch, torch.ones(B, dtype=torch.bool)),
                       torch.ones(B, dtype=torch.bool)), batch)


def test_flip_mirrors_and_swaps_joints_only_where_masked():
    batch = _batch()
    mask = torch.tensor([True, False] * (B // 2))
    out = hflip(batch, mask)
    lw, rw = JOINT_INDEX["left_wrist"], JOINT_INDEX["right_wrist"]
    b = 0  # flipped: the new left wrist is the old right wrist, mirrored
    assert out.kpts3d[b, lw].tolist() == pytest.approx(
        (batch.kpts3d[b, rw] * torch.tensor([-1.0, 1, 1])).tolist())
    assert out.kpts2d[b, lw, 0].item() == pytest.approx(S - 1 - batch.kpts2d[b, rw, 0])
    for k in ("image", "kpts2d", "kpts3d", "K_crop"):
        assert torch.equal(getattr(out, k)[~mask], getattr(batch, k)[~mask]), k
    assert torch.equal(out.frame_index, batch.frame_index)


def test_flip_keeps_projection_consistent():
    out = hflip(_batch(), torch.ones(B, dtype=torch.bool))
    torch.testing.assert_close(_project(out.kpts3d, out.K_crop), out.kpts2d,
                               atol=1e-3, rtol=0)


def test_flipped_image_dot_sits_at_the_flipped_keypoint():
    batch, joints = _dots_batch()
    out = hflip(batch, torch.ones(B, dtype=torch.bool))
    for b, j in enumerate(joints):
        expected = out.kpts2d[b, FLIP_PERM[j]]  # joint j is now called FLIP_PERM[j]
        got = _centroid(out.image[b, 0], expected)
        assert torch.dist(got, expected) < 0.05, (b, got, expected)


# ------------------------------------------------------------------ rotation, scale, shift


def _params(angle_deg=0.0, scale=1.0, shift=(0.0, 0.0)):
    return (torch.full((B,), math.radians(angle_deg)), torch.full((B,), scale),
            torch.tensor(shift).expand(B, 2))


def test_rotating_3d_commutes_with_projection_for_a_centred_camera():
    batch = _batch(centred_K=True)
    out = rotate_scale_shift(batch, *_params(angle_deg=25.0))
    # rotate 3D, then project with the unchanged K == project, then rotate the 2D
    torch.testing.assert_close(_project(out.kpts3d, batch.K_crop), out.kpts2d,
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(out.K_crop, batch.K_crop, atol=1e-4, rtol=0)
    assert not torch.allclose(out.kpts2d, batch.kpts2d, atol=1.0)  # it did rotate


def test_rotation_scale_shift_keep_projection_consistent_for_any_camera():
    batch = _batch(seed=3)
    out = rotate_scale_shift(batch, *_params(angle_deg=-40.0, scale=1.3, shift=(3.0, -5.0)))
    torch.testing.assert_close(_project(out.kpts3d, out.K_crop), out.kpts2d,
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(out.kpts3d.norm(dim=-1), batch.kpts3d.norm(dim=-1))


def test_scale_and_shift_leave_3d_alone():
    batch = _batch()
    out = rotate_scale_shift(batch, *_params(scale=0.8, shift=(4.0, 2.0)))
    assert torch.equal(out.kpts3d, batch.kpts3d)
    c = (S - 1) / 2
    expected = 0.8 * (batch.kpts2d - c) + c + torch.tensor([4.0, 2.0])
    torch.testing.assert_close(out.kpts2d, expected)


def test_rotation_then_its_inverse_is_the_identity():
    batch = _batch(centred_K=True)
    batch.kpts2d = (S - 1) / 2 + 0.3 * (batch.kpts2d - (S - 1) / 2)  # stay inside the crop
    there = rotate_scale_shift(batch, *_params(angle_deg=33.0))
    back = rotate_scale_shift(there, *_params(angle_deg=-33.0))
    for k in ("kpts2d", "kpts3d", "visibility", "K_crop"):
        torch.testing.assert_close(getattr(back, k), getattr(batch, k), atol=1e-4, rtol=1e-5, msg=k)


def test_warped_image_dots_sit_at_the_warped_keypoints():
    batch, joints = _dots_batch(seed=5)
    angles = torch.tensor([30.0, -50.0, 90.0, 10.0, -20.0, 0.0])
    scales = torch.tensor([1.2, 0.8, 1.0, 1.1, 0.9, 1.0])
    shifts = torch.tensor([[2, -3], [0, 4.5], [-2.5, 0], [0, 0], [1, 1], [3.3, 0]])
    out = rotate_scale_shift(batch, torch.deg2rad(angles), scales, shifts)
    for b, j in enumerate(joints):
        expected = out.kpts2d[b, j]
        got = _centroid(out.image[b, 0], expected)
        assert torch.dist(got, expected) < 0.1, (b, got, expected)


def test_joints_pushed_out_of_the_crop_become_invisible():
    batch = _batch()
    batch.kpts2d = torch.rand(B, 27, 2, generator=torch.Generator().manual_seed(0)) * (S - 1)
    batch.visibility[:, 5] = 0.0
    out = rotate_scale_shift(batch, *_params(shift=(S / 2, 0.0)))
    expected = (batch.kpts2d[..., 0] + S / 2 <= S - 1).float() * batch.visibility
    assert torch.equal(out.visibility, expected)
    assert 0 < expected.sum() < expected.numel()  # both cases happen


def test_pixels_from_outside_the_crop_are_black():
    batch = _batch()
    batch.image = torch.ones(B, 3, S, S)
    out = rotate_scale_shift(batch, *_params(shift=(10.0, 0.0)))
    assert torch.all(out.image[..., :9] == 0)  # columns 0-8 came from x < 0
    assert torch.allclose(out.image[..., 11:], torch.ones(()))


# ------------------------------------------------------------------ colour


def test_colour_jitter_factors_do_what_they_say():
    images = torch.rand(B, 3, S, S, generator=torch.Generator().manual_seed(0))
    one, half, zero = torch.ones(B), torch.full((B,), 0.5), torch.zeros(B)
    torch.testing.assert_close(color_jitter(images, one, one, one), images)
    torch.testing.assert_close(color_jitter(images, half, one, one), images / 2)
    grey = color_jitter(images, one, one, zero)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    flat = color_jitter(images, one, zero, one)  # contrast 0: every pixel the mean grey
    assert torch.allclose(flat, flat[:, :1, :1, :1].expand_as(flat))
    assert not torch.allclose(flat[0], flat[1])  # the mean is per sample
    strong = torch.full((B,), 1.8)
    bright = color_jitter(images, strong, strong, strong)
    assert bright.min() >= 0 and bright.max() <= 1


# ------------------------------------------------------------------ the module


def test_disabled_or_eval_mode_returns_the_batch_unchanged():
    batch = _batch()
    assert BatchAugment(enabled=False)(batch) is batch
    assert BatchAugment().eval()(batch) is batch


def test_colour_only_augment_leaves_labels_untouched():
    batch = _batch()
    aug = BatchAugment(flip_prob=0, rot_prob=0, scale_range=(1, 1), shift_frac=0, color_jitter=0.5)
    out = aug(batch, torch.Generator().manual_seed(0))
    for k in ("kpts2d", "kpts3d", "visibility", "K_crop"):
        torch.testing.assert_close(getattr(out, k), getattr(batch, k), atol=1e-5, rtol=0, msg=k)
    assert not torch.allclose(out.image, batch.image, atol=1e-3)


def test_flip_probability_one_is_hflip():
    batch = _batch()
    aug = BatchAugment(flip_prob=1, rot_prob=0, scale_range=(1, 1), shift_frac=0, color_jitter=0)
    _assert_same(aug(batch), hflip(batch, torch.ones(B, dtype=torch.bool)), atol=1e-4)


def test_full_augment_is_reproducible_and_consistent():
    batch = _batch(seed=7)
    aug = BatchAugment(flip_prob=0.5, rot_prob=1.0)
    out = aug(batch, torch.Generator().manual_seed(1))
    _assert_same(out, aug(batch, torch.Generator().manual_seed(1)), atol=0)
    assert not torch.equal(out.kpts2d, aug(batch, torch.Generator().manual_seed(2)).kpts2d)
    torch.testing.assert_close(_project(out.kpts3d, out.K_crop), out.kpts2d,
                               atol=2e-3, rtol=0)
    assert out.image.min() >= 0 and out.image.max() <= 1
    assert torch.all(out.visibility <= batch.visibility)
    assert torch.equal(out.frame_index, batch.frame_index)


def test_bad_batches_are_rejected():
    batch = _batch()
    with pytest.raises(ValueError, match="float"):
        BatchAugment()(batch.replace(image=(batch.image * 255).to(torch.uint8)))
    with pytest.raises(ValueError, match="kpts3d"):
        BatchAugment()(batch.replace(kpts3d=batch.kpts3d[:, :17]))
    with pytest.raises(ValueError, match="scale_range"):
        BatchAugment(scale_range=(1.2, 0.8))


# ------------------------------------------------------------------ background swap


def test_skeleton_mask_covers_the_limbs_and_nothing_far_away():
    kpts = torch.zeros(1, 27, 2)
    vis = torch.zeros(1, 27)
    hip, knee = JOINT_INDEX["left_hip"], JOINT_INDEX["left_knee"]
    kpts[0, hip], kpts[0, knee] = torch.tensor([10.0, 10.0]), torch.tensor([10.0, 30.0])
    vis[0, hip] = vis[0, knee] = 1
    mask = skeleton_mask(kpts, vis, S, radius_px=3.0)[0, 0]  # [S, S], indexed [y, x]
    assert mask[20, 10] == 1 and mask[20, 13] == 1 and mask[20, 14] == 0  # 3 px either side
    assert mask[5, 10] == 0 and mask[34, 10] == 0  # past the ends by more than the radius
    assert skeleton_mask(kpts, torch.zeros(1, 27), S, 3.0).sum() == 0  # nothing visible


def test_background_swap_keeps_the_person_and_the_labels():
    batch = _batch()
    batch.image = torch.stack([torch.full((3, S, S), float(i) / B) for i in range(B)])
    mask = torch.tensor([True, False, True, False, False, False])
    out = background_swap(batch, mask)
    for key in ("kpts2d", "kpts3d", "visibility", "K_crop"):
        assert torch.equal(getattr(out, key), getattr(batch, key))
    assert torch.equal(out.image[~mask], batch.image[~mask])
    # A stick figure standing at x = 24: on it sample 0 keeps its own pixels, far from it sample
    # 0 now shows sample 5's background (the batch is rolled by one).
    figure = _batch()
    figure.image = batch.image
    figure.kpts2d = torch.stack([torch.full((27,), 24.0), torch.linspace(8, 40, 27)], -1)
    figure.kpts2d = figure.kpts2d.expand(B, 27, 2).clone()
    out = background_swap(figure, mask)
    assert out.image[0, :, 24, 24].tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    assert out.image[0, :, 24, 2].tolist() == pytest.approx([5 / B] * 3, abs=1e-6)
    assert out.image[2, :, 24, 45].tolist() == pytest.approx([1 / B] * 3, abs=1e-6)


def test_batch_augment_swaps_backgrounds_only_when_asked():
    batch = _batch()
    quiet = dict(flip_prob=0, rot_prob=0, scale_range=(1, 1), shift_frac=0, color_jitter=0)
    same = BatchAugment(**quiet)(batch)
    torch.testing.assert_close(same.image, batch.image, atol=1e-5, rtol=0)
    swapped = BatchAugment(**quiet, background_swap_prob=1.0)(batch)
    assert not torch.allclose(swapped.image, batch.image, atol=1e-3)
    with pytest.raises(ValueError):
        BatchAugment(background_swap_prob=1.5)
