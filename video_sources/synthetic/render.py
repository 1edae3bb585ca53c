"""Drawing a synthetic video: capsule-figure people, far to near, over a cluttered background.

What the renderer encodes, so that a student can recover 3D pose from pixels alone:
- side: the person's left limbs are warm (red-orange), right limbs cool (blue), torso a third hue
  (green), head neutral; shades vary per person. Upper limb segments are darker than lower ones.
- depth: parts are drawn far to near (painter's algorithm on each part's mean Z) and shaded
  brighter the nearer they are relative to the pelvis; perspective through K sets their size.
- facing: eyes and nose are drawn on the head, hidden by it when the person faces away.

Legend: T frames, N people, J = 27 joints, P drawn parts per person. Pixels are OpenCV
fixed-point (`_SHIFT` fractional bits) where marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from stream_pose.skeleton import JOINT_INDEX, NUM_JOINTS
from video_sources.synthetic.body import HEAD_RADIUS_M
from video_sources.synthetic.scene import Person

_J = JOINT_INDEX

# Parts: (kind, joints, radius in metres, colour role, brightness). Upper limb segments are
# darker than lower ones so the network can tell them apart.
_PARTS: tuple[tuple[str, tuple[int, ...], float, str, float], ...] = (
    *(
        part
        for side in ("left", "right")
        for part in (
            ("capsule", (_J[f"{side}_hip"], _J[f"{side}_knee"]), 0.075, side, 0.75),
            ("capsule", (_J[f"{side}_knee"], _J[f"{side}_ankle"]), 0.055, side, 1.0),
            ("capsule", (_J[f"{side}_ankle"], _J[f"{side}_foot"]), 0.045, side, 0.6),
            ("capsule", (_J[f"{side}_shoulder"], _J[f"{side}_elbow"]), 0.05, side, 0.75),
            ("capsule", (_J[f"{side}_elbow"], _J[f"{side}_wrist"]), 0.04, side, 1.0),
            ("circle", (_J[f"{side}_wrist"],), 0.045, side, 1.15),
        )
    ),
    ("poly", tuple(_J[n] for n in ("left_shoulder", "right_shoulder", "right_hip", "left_hip")),
     0.0, "torso", 1.0),
    ("capsule", (_J["pelvis"], _J["spine2"]), 0.11, "torso", 0.9),
    ("capsule", (_J["spine2"], _J["neck"]), 0.10, "torso", 0.95),
    ("capsule", (_J["left_hip"], _J["right_hip"]), 0.08, "torso", 0.8),
    ("capsule", (_J["left_shoulder"], _J["right_shoulder"]), 0.06, "torso", 1.0),
    ("capsule", (_J["neck"], _J["head"]), 0.05, "head", 0.8),
    ("circle", (_J["head"],), HEAD_RADIUS_M, "head", 1.0),
    ("circle", (_J["left_eye"],), 0.018, "eye", 1.0),
    ("circle", (_J["right_eye"],), 0.018, "eye", 1.0),
    ("circle", (_J["nose"],), 0.022, "nose", 1.0),
)
# [P, J] weights: a part's depth is the mean Z of its joints.
_PART_WEIGHTS = np.stack(
    [np.bincount(part[1], minlength=NUM_JOINTS) / len(part[1]) for part in _PARTS]
)
_PART_RADII = np.array([p[2] for p in _PARTS])
_PART_BRIGHTNESS = np.array([p[4] for p in _PARTS])
# Face dots get neither the build scale nor depth shading.
_BODY_PARTS = np.array([p[3] not in ("eye", "nose") for p in _PARTS])
DEPTH_SHADE_PER_M = 0.6  # brightness gain per metre nearer than the pelvis
SHADE_RANGE = (0.5, 1.3)
_SHIFT = 4  # OpenCV drawing with 4 fractional bits: sub-pixel accurate joints
_ONE = 1 << _SHIFT


@dataclass
class DrawList:
    """Everything needed to draw each frame of a video, precomputed for all T frames.

    Attributes:
        kinds, joints: per part (all people), from `_PARTS`; joints index `pixels`' second axis.
        pixels: `[T, N*J, 2]` int32 fixed-point pixels (`_SHIFT` fractional bits).
        depth: `[T, N*P]` part depth, metres (draw order: far first).
        radius: `[T, N*P]` int32 fixed-point projected radius.
        colour: `[T, N*P, 3]` uint8 shaded RGB.
    """

    kinds: list[str]
    joints: list[np.ndarray]
    pixels: np.ndarray
    depth: np.ndarray
    radius: np.ndarray
    colour: np.ndarray


def draw_list(people: Sequence[Person], K: np.ndarray) -> DrawList:
    """Project every person's parts over all frames (vectorised over T)."""
    kinds, joints, pix, depth, radius, colour = [], [], [], [], [], []
    f = float(K[0, 0])
    for n, person in enumerate(people):
        cam = person.kpts_cam  # [T, J, 3]
        uv = (cam @ K.T)[..., :2] / cam[..., 2:3]
        pix.append(np.round(uv * _ONE).astype(np.int32))
        z = cam[..., 2] @ _PART_WEIGHTS.T  # [T, P]
        depth.append(z)
        r = np.where(_BODY_PARTS, _PART_RADII * person.build, _PART_RADII)
        radius.append(np.maximum(np.round(f * r / z * _ONE), _ONE).astype(np.int32))
        shade = _PART_BRIGHTNESS * (1.0 + DEPTH_SHADE_PER_M * (cam[:, :1, 2] - z))
        base = np.stack([person.colours[p[3]] for p in _PARTS])  # [P, 3]
        shade = np.where(_BODY_PARTS, np.clip(shade, *SHADE_RANGE), 1.0)
        colour.append(np.clip(base * shade[..., None], 0, 255).astype(np.uint8))
        kinds += [p[0] for p in _PARTS]
        joints += [np.array(p[1]) + n * NUM_JOINTS for p in _PARTS]
    return DrawList(
        kinds, joints, np.concatenate(pix, 1), np.concatenate(depth, 1),
        np.concatenate(radius, 1), np.concatenate(colour, 1),
    )


def draw_people(image: np.ndarray, dl: DrawList, t: int) -> None:
    """Draw frame t's parts onto `image` `[H, W, 3]` uint8 in place, far to near."""
    pix, radius, colour = dl.pixels[t], dl.radius[t], dl.colour[t]
    for p in np.argsort(-dl.depth[t], kind="stable"):
        c = colour[p].tolist()
        pts = pix[dl.joints[p]]
        if dl.kinds[p] == "capsule":  # OpenCV's thick lines have round caps
            thick = max(1, int(2 * radius[p]) >> _SHIFT)
            cv2.line(image, tuple(pts[0]), tuple(pts[1]), c, thick, cv2.LINE_AA, _SHIFT)
        elif dl.kinds[p] == "circle":
            cv2.circle(image, tuple(pts[0]), int(radius[p]), c, -1, cv2.LINE_AA, _SHIFT)
        else:
            cv2.fillPoly(image, [pts], c, cv2.LINE_AA, _SHIFT)


def render_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """`[H, W, 3]` uint8: a smooth colour field with random ellipses, boxes and lines on it.

    The field is a random 3x3 colour grid upsampled bilinearly: cheap, and never one flat colour
    that a network could threshold away.
    """
    grid = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    image = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
    side = max(h, w)
    for _ in range(rng.integers(6, 16)):
        colour = rng.uniform(0, 255, 3).tolist()
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        size = rng.uniform(0.02, 0.25, 2) * side
        thick = -1 if rng.random() < 0.5 else int(rng.integers(1, 6))
        shape = rng.integers(3)
        if shape == 0:
            axes = (int(size[0]), int(size[1]))
            angle = rng.uniform(0, 180)
            cv2.ellipse(image, (x, y), axes, angle, 0, 360, colour, thick, cv2.LINE_AA)
        elif shape == 1:
            cv2.rectangle(image, (x, y), (int(x + size[0]), int(y + size[1])), colour, thick)
        else:
            end = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.line(image, (x, y), end, colour, max(thick, 1), cv2.LINE_AA)
    return image


NOISE_AMPLITUDE_RANGE = (2, 9)  # per-pixel uniform noise, +/- this many grey levels
NOISE_MARGIN = 16  # the noise field is this much larger; each frame takes a shifted window
