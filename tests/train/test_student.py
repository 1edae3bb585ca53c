"""The student network: shapes, units, input checks and the soft-argmax read-out."""

import pytest
import torch

from train.student import PoseStudent, soft_argmax_2d

SMALL = dict(widths=(8, 16, 16, 32), depths=(1, 1, 1, 1), neck_width=16, head_hidden=32)


@pytest.mark.parametrize("crop_size", [64, 128])
def test_output_shapes_and_exact_zero_pelvis(crop_size):
    net = PoseStudent(crop_size, **SMALL).eval()
    out = net(net.example_input(3))
    assert out.kpts3d.shape == (3, 27, 3) and out.kpts2d.shape == (3, 27, 2)
    assert out.kpts3d.dtype == torch.float32
    assert torch.all(out.kpts3d[:, 0] == 0)
    assert torch.all(out.kpts3d[:, 1:].abs().sum(-1) > 0)
    # Soft-argmax is a convex combination of cell centres, so 2D stays inside the crop.
    assert out.kpts2d.min() >= 0 and out.kpts2d.max() <= crop_size - 1


def test_default_size_is_compact():
    params = sum(p.numel() for p in PoseStudent().parameters())
    assert 0.5e6 <= params <= 3e6


def test_normalisation_is_inside_the_model():
    net = PoseStudent(64, **SMALL)
    torch.testing.assert_close(net.trunk.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert "trunk.mean" not in net.state_dict()  # constants, not weights


def test_soft_argmax_finds_a_peak_at_its_pixel_centre():
    logits = torch.full((1, 2, 8, 8), -1e4)
    logits[0, 0, 2, 5] = 0.0  # row 2, column 5
    logits[0, 1, 7, 0] = 0.0
    xy = soft_argmax_2d(logits, stride=4)
    # cell i spans crop pixels [4i - 0.5, 4i + 3.5]: its centre is 4i + 1.5
    torch.testing.assert_close(xy[0], torch.tensor([[21.5, 9.5], [1.5, 29.5]]))


def test_soft_argmax_of_a_flat_map_is_the_crop_centre():
    xy = soft_argmax_2d(torch.zeros(2, 3, 4, 4), stride=8)
    torch.testing.assert_close(xy, torch.full((2, 3, 2), 15.5))  # (32 - 1) / 2


def test_gradients_reach_the_first_layer():
    net = PoseStudent(64, **SMALL)
    out = net(net.example_input(2))
    (out.kpts3d.sum() + out.kpts2d.sum()).backward()
    assert net.trunk.stem[0].weight.grad is not None and net.trunk.stem[0].weight.grad.abs().sum() > 0


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError):
        PoseStudent(100)
    with pytest.raises(ValueError):
        PoseStudent(64, widths=(8, 16, 32))
    net = PoseStudent(64, **SMALL)
    with pytest.raises(ValueError):
        net(torch.rand(1, 3, 96, 96))
    with pytest.raises(TypeError):
        net(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_lift_head_reads_the_2d_only_and_keeps_the_pelvis_at_zero():
    net = PoseStudent(64, head3d="lift", **SMALL).eval()
    out = net(net.example_input(2))
    torch.testing.assert_close(out.kpts3d, net.lift(out.kpts2d))  # 3D is a function of the 2D
    assert torch.all(out.kpts3d[:, 0] == 0)
    shifted = net.lift(out.kpts2d + 7.0)  # a translated 2D pose: pelvis-relative input
    torch.testing.assert_close(shifted, out.kpts3d, atol=1e-5, rtol=0)


@pytest.mark.parametrize("grad_to_2d", [False, True])
def test_lift_loss_reaches_the_heatmaps_only_when_asked(grad_to_2d):
    net = PoseStudent(64, head3d="lift", lift_grad_to_2d=grad_to_2d, **SMALL)
    net(net.example_input(2)).kpts3d.sum().backward()
    grad = net.heatmap.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == grad_to_2d
    assert net.head3d[0].weight.grad.abs().sum() > 0


def test_anchored_head_scales_the_2d_into_metres():
    net = PoseStudent(64, head3d="anchored", **SMALL).eval()
    for p in net.head3d[-1].parameters():  # residual and log-scale 0: pure anchor
        torch.nn.init.zeros_(p)
    out = net(net.example_input(1))
    xy = (out.kpts2d - out.kpts2d[:, :1]) * 2.125 / 64
    torch.testing.assert_close(out.kpts3d[..., :2], xy)
    assert torch.all(out.kpts3d[..., 2] == 0)


def test_lift_needs_the_lift_head():
    with pytest.raises(ValueError, match="head3d"):
        PoseStudent(64, head3d="magic", **SMALL)
    with pytest.raises(RuntimeError, match="lift"):
        PoseStudent(64, **SMALL).lift(torch.zeros(1, 27, 2))
