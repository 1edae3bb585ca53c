"""Batch augmentation on the training device that keeps images and labels consistent.

Legend: B batch, J = 27 joints, S crop side in pixels. Pixels: x right, y down, pixel centres at
integer coordinates (OpenCV's convention, as in `stream_pose.camera`), so a crop spans
[-0.5, S - 0.5] and its centre is c = (S - 1) / 2. 3D: metres, camera-frame axes (X right,
Y down, Z forward), pelvis-relative.

Every geometric operation is a map A of crop pixels (a `[3, 3]` homogeneous affine) and a map D of
3D points (a `[3, 3]` linear map). Images and 2D keypoints go through A, 3D through D, and the crop
intrinsics become K' = A K D^-1, so projecting the new 3D with K' gives the new 2D whenever
projecting the old 3D with K gave the old 2D.

There is deliberately no label-only 3D scaling: the image would still show a person of the
original size, so the student would learn to predict a size the pixels do not support.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from stream_pose.batch import Batch
from stream_pose.skeleton import FLIP_PERM, JOINT_INDEX, NUM_JOINTS

# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)

# Segments whose thick union approximates a person's silhouette for `background_swap`: limbs,
# the torso's sides and diagonals, and the head. Joints a teacher lacks simply drop out.
_SILHOUETTE = tuple((JOINT_INDEX[a], JOINT_INDEX[b]) for a, b in (
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"), ("left_ankle", "left_foot"),
    ("right_hip", "right_knee"), ("right_knee", "right_ankle"), ("right_ankle", "right_foot"),
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"),
    ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"),
    ("left_shoulder", "right_hip"), ("right_shoulder", "left_hip"),
    ("nose", "left_ear"), ("nose", "right_ear"), ("left_ear", "right_ear"),
    ("nose", "left_shoulder"), ("nose", "right_shoulder"),
))
SILHOUETTE_RADIUS = 0.06  # of the crop side: a limb's half-width in a crop of 1.25x the person


def hflip(batch: Batch, mask: Tensor) -> Batch:
    """Mirror the samples where `mask` is True, left to right.

    Image columns are reversed, so pixel x goes to (S - 1) - x; 3D X is negated; left and right
    joints swap through `FLIP_PERM` (2D, 3D and visibility); K_crop becomes A K D with
    A: x -> (S - 1) - x and D = diag(-1, 1, 1) (both their own inverse). Flipping twice is the
    identity.

    Args:
        batch: `stream_pose.batch.Batch` (`image` `[B, 3, S, S]`, `kpts2d` `[B, J, 2]` crop
            pixels, `kpts3d` `[B, J, 3]`, `visibility` `[B, J]`, `K_crop` `[B, 3, 3]`); the ids
            pass through.
        mask: `[B]` bool, which samples to flip.

    Returns:
        A new batch; the input tensors are not modified.
    """
    image, k2, k3 = batch.image, batch.kpts2d, batch.kpts3d
    size = image.shape[-1]
    perm = torch.as_tensor(FLIP_PERM, device=k2.device)
    flipped_k2 = k2[:, perm].clone()
    flipped_k2[..., 0] = (size - 1) - flipped_k2[..., 0]
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=k3.dtype, device=k3.device)
    A = torch.tensor(
        [[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        dtype=batch.K_crop.dtype, device=k3.device,
    )
    flipped = {
        "image": image.flip(-1),
        "kpts2d": flipped_k2,
        "kpts3d": k3[:, perm] * mirror,
        "visibility": batch.visibility[:, perm],
        "K_crop": A @ batch.K_crop * mirror,  # A K D: D scales K's first column by -1
    }
    mask = mask.to(device=image.device, dtype=torch.bool)
    return batch.replace(**{k: _where(mask, v, getattr(batch, k)) for k, v in flipped.items()})


def rotate_scale_shift(batch: Batch, angle_rad: Tensor, scale: Tensor, shift_px: Tensor) -> Batch:
    """Rotate and zoom each crop about its centre, then shift it; one resampling per image.

    2D: p' = scale R (p - c) + c + shift, with R = [[cos, -sin], [sin, cos]]; as y points down, a
    positive angle turns the picture clockwise on screen. 3D: rotated about the camera Z axis by
    the same R (so for a person on the optical axis with the principal point at c, projection
    commutes with the rotation; off the axis it is the usual in-plane approximation, and K_crop
    stays exactly consistent). Scale and shift move only the crop window, so 3D does not change.
    Joints that land outside [0, S - 1] get visibility 0; pixels from outside the crop are black.

    Args:
        batch: as in `hflip`; `image` float `[B, 3, S, S]`.
        angle_rad: `[B]` radians.
        scale: `[B]`, > 0; above 1 zooms in.
        shift_px: `[B, 2]` crop pixels (x, y).

    Returns:
        A new batch; the input tensors are not modified.
    """
    image, k2 = batch.image, batch.kpts2d
    size = image.shape[-1]
    angle_rad, scale, shift_px = (t.to(k2) for t in (angle_rad, scale, shift_px))
    centre = torch.full_like(shift_px, (size - 1) / 2.0)
    A = _similarity(angle_rad, scale, centre, centre + shift_px)  # [B, 3, 3] crop -> crop
    A_inv = _similarity(-angle_rad, 1.0 / scale, centre + shift_px, centre)
    rot3d = torch.zeros_like(A)
    rot3d[:, :2, :2] = A[:, :2, :2] / scale[:, None, None]
    rot3d[:, 2, 2] = 1.0
    new_k2 = k2 @ A[:, :2, :2].transpose(-1, -2) + A[:, None, :2, 2]  # [B, J, 2]
    inside = ((new_k2 >= 0) & (new_k2 <= size - 1)).all(-1)  # [B, J]
    return batch.replace(
        image=_warp(image, A_inv),
        kpts2d=new_k2,
        kpts3d=batch.kpts3d @ rot3d.transpose(-1, -2),
        visibility=batch.visibility * inside.to(batch.visibility.dtype),
        K_crop=A @ batch.K_crop @ rot3d.transpose(-1, -2),  # A K D^-1, D^-1 = D^T
    )


def color_jitter(
    images: Tensor, brightness: Tensor, contrast: Tensor, saturation: Tensor
) -> Tensor:
    """Per-sample brightness, contrast, then saturation; labels are untouched.

    The formulas are torchvision's `ColorJitter` ones (blend with black, with the mean grey, with
    the per-pixel grey), in that fixed order, clamped to [0, 1] after each step.

    Args:
        images: `[B, 3, S, S]` float RGB in [0, 1].
        brightness, contrast, saturation: `[B]` factors; 1 leaves the image unchanged.

    Returns:
        `[B, 3, S, S]` in [0, 1].
    """
    def per_sample(f: Tensor) -> Tensor:
        return f.to(images).view(-1, 1, 1, 1)

    x = (images * per_sample(brightness)).clamp(0, 1)
    mean = _gray(x).mean(dim=(-2, -1), keepdim=True)  # [B, 1, 1, 1]
    x = ((x - mean) * per_sample(contrast) + mean).clamp(0, 1)
    gray = _gray(x)  # [B, 1, S, S]
    return ((x - gray) * per_sample(saturation) + gray).clamp(0, 1)


def skeleton_mask(kpts2d: Tensor, vis: Tensor, size: int, radius_px: float) -> Tensor:
    """A rough person mask: pixels within `radius_px` of a visible silhouette segment.

    Args:
        kpts2d: `[B, J, 2]` crop pixels.
        vis: `[B, J]` visibility; a segment counts when both its joints are visible.
        size: S, the crop side.
        radius_px: half-width of every segment, in crop pixels.

    Returns:
        `[B, 1, S, S]` float in {0, 1}; all zeros for a sample with no visible segment.
    """
    idx_a = torch.tensor([a for a, _ in _SILHOUETTE], device=kpts2d.device)
    idx_b = torch.tensor([b for _, b in _SILHOUETTE], device=kpts2d.device)
    a, b = kpts2d[:, idx_a], kpts2d[:, idx_b]  # [B, G, 2]
    ok = (vis[:, idx_a] > 0) & (vis[:, idx_b] > 0)  # [B, G]
    coords = torch.arange(size, device=kpts2d.device, dtype=kpts2d.dtype)
    grid = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), -1).view(1, 1, -1, 2)
    ab = (b - a).unsqueeze(2)  # [B, G, 1, 2]
    t = ((grid - a.unsqueeze(2)) * ab).sum(-1) / ab.square().sum(-1).clamp_min(1e-6)
    nearest = a.unsqueeze(2) + t.clamp(0, 1).unsqueeze(-1) * ab  # [B, G, S*S, 2]
    dist = (grid - nearest).square().sum(-1)  # [B, G, S*S]
    dist = dist.masked_fill(~ok.unsqueeze(-1), float("inf")).amin(1)  # [B, S*S]
    return (dist <= radius_px**2).to(kpts2d.dtype).view(-1, 1, size, size)


def background_swap(batch: Batch, mask: Tensor) -> Batch:
    """Paste each person selected by `mask` onto the background of another crop of the batch.

    Copy-paste augmentation (Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation
    Method for Instance Segmentation", CVPR 2021) with the person's silhouette approximated from
    its own 2D joints (`skeleton_mask`), as the buffer keeps no segmentation. A student trained
    on few videos otherwise learns scenes, not people: on real footage it judged a person's
    facing (front or back, hence left from right) by the place. Labels are unchanged; the
    background comes from the next sample in the batch (rolled by one).

    Args:
        batch: as in `hflip`; `image` float `[B, 3, S, S]`.
        mask: `[B]` bool, which samples get a new background.

    Returns:
        A new batch; only `image` changes.
    """
    image = batch.image
    size = image.shape[-1]
    sel = mask.to(image.device).nonzero().flatten()
    if not len(sel):
        return batch
    # The mask is drawn at 1/4 resolution (16x fewer distances) and upsampled: it is rough anyway.
    low = max(size // 4, 1)
    scale = low / size
    person = skeleton_mask((batch.kpts2d[sel] + 0.5) * scale - 0.5, batch.visibility[sel],
                           low, SILHOUETTE_RADIUS * low)
    person = F.interpolate(person, size=(size, size), mode="bilinear", align_corners=False)
    background = image.roll(1, dims=0)[sel]
    out = image.clone()
    out[sel] = person * image[sel] + (1 - person) * background
    return batch.replace(image=out)


class BatchAugment(torch.nn.Module):
    """Random flip, rotation, zoom, shift and colour jitter of a training batch, on its device.

    Acts only when `enabled` and in training mode (like dropout); otherwise returns the batch
    as it is. Each sample draws its own parameters.

    Args:
        flip_prob: probability of a horizontal flip.
        rot_prob: probability of an in-plane rotation.
        rot_max_deg: rotation angle drawn uniformly in [-rot_max_deg, rot_max_deg] degrees.
        scale_range: zoom factor drawn uniformly in this range (> 0).
        shift_frac: shift drawn uniformly in [-shift_frac, shift_frac] * S pixels, per axis.
        color_jitter: brightness, contrast and saturation factors drawn in [1 - c, 1 + c].
        background_swap_prob: probability of pasting the person onto another sample's
            background (`background_swap`).
        enabled: False makes the module the identity.

    Raises:
        ValueError: on out-of-range settings.
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        rot_prob: float = 0.5,
        rot_max_deg: float = 30.0,
        scale_range: tuple[float, float] = (0.8, 1.2),
        shift_frac: float = 0.1,
        color_jitter: float = 0.3,
        enabled: bool = True,
        background_swap_prob: float = 0.0,
    ):
        super().__init__()
        lo, hi = (float(v) for v in scale_range)
        if not (0 <= flip_prob <= 1 and 0 <= rot_prob <= 1 and 0 <= background_swap_prob <= 1):
            raise ValueError(f"probabilities must be in [0, 1]: {flip_prob}, {rot_prob}, "
                             f"{background_swap_prob}")
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if not (0 <= color_jitter < 1 and shift_frac >= 0 and rot_max_deg >= 0):
            raise ValueError("need 0 <= color_jitter < 1, shift_frac >= 0, rot_max_deg >= 0")
        self.flip_prob, self.rot_prob, self.rot_max_deg = flip_prob, rot_prob, rot_max_deg
        self.scale_range, self.shift_frac = (lo, hi), shift_frac
        self.color_jitter, self.enabled = color_jitter, enabled
        self.background_swap_prob = background_swap_prob

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        """Augment `batch` (see `hflip` for its fields; `image` float `[B, 3, S, S]` in [0, 1]).

        Args:
            batch: the training batch, on the training device.
            generator: random generator for reproducible draws (on any device).

        Returns:
            A new batch with augmented tensors; the ids pass through.

        Raises:
            ValueError: on wrong shapes or a uint8 image.
        """
        if not (self.enabled and self.training):
            return batch
        _check_batch(batch)
        image = batch.image
        n, size = image.shape[0], image.shape[-1]

        def uniform(*shape: int) -> Tensor:  # U[0, 1) drawn on the generator's device
            device = generator.device if generator is not None else image.device
            return torch.rand(*shape, generator=generator, device=device).to(image.device)

        out = hflip(batch, uniform(n) < self.flip_prob)
        rotate = (uniform(n) < self.rot_prob).float()
        angle = (2 * uniform(n) - 1) * math.radians(self.rot_max_deg) * rotate
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * uniform(n)
        shift = (2 * uniform(n, 2) - 1) * self.shift_frac * size
        out = rotate_scale_shift(out, angle, scale, shift)
        if self.background_swap_prob > 0 and n > 1:
            out = background_swap(out, uniform(n) < self.background_swap_prob)
        if self.color_jitter > 0:
            b, c, s = (1 + (2 * uniform(n) - 1) * self.color_jitter for _ in range(3))
            out = out.replace(image=color_jitter(out.image, b, c, s))
        return out


def _similarity(angle: Tensor, scale: Tensor, centre: Tensor, offset: Tensor) -> Tensor:
    """`[B, 3, 3]` maps p -> scale R (p - centre) + offset; angle, scale `[B]`, others `[B, 2]`."""
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    M = torch.zeros(angle.shape[0], 3, 3, dtype=centre.dtype, device=centre.device)
    M[:, 0, 0], M[:, 0, 1], M[:, 1, 0], M[:, 1, 1] = cos, -sin, sin, cos
    M[:, :2, 2] = offset - (M[:, :2, :2] @ centre[:, :, None]).squeeze(-1)
    M[:, 2, 2] = 1.0
    return M


def _warp(image: Tensor, A_inv: Tensor) -> Tensor:
    """Resample `[B, C, S, S]` so that output pixel q shows input point A_inv q (zeros outside).

    `affine_grid` works in normalised coordinates; with align_corners=False, -1 and 1 are the
    outer edges of the border pixels, i.e. pixel coordinates -0.5 and S - 0.5:
    n = (2 x + 1) / S - 1.
    """
    size = image.shape[-1]
    a, b = 2.0 / size, 1.0 / size - 1.0  # n = a x + b, so x = (n - b) / a
    to_norm = [[a, 0.0, b], [0.0, a, b], [0.0, 0.0, 1.0]]
    from_norm = [[1 / a, 0.0, -b / a], [0.0, 1 / a, -b / a], [0.0, 0.0, 1.0]]
    N, N_inv = (
        torch.tensor(m, dtype=A_inv.dtype, device=A_inv.device) for m in (to_norm, from_norm)
    )
    theta = (N @ A_inv @ N_inv)[:, :2]  # [B, 2, 3] output -> input, normalised
    grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(images: Tensor) -> Tensor:
    """`[B, 1, S, S]` luma of `[B, 3, S, S]` RGB."""
    r, g, b = images.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-sample choice: `new[i]` where `mask[i]`, else `old[i]`."""
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


def _check_batch(batch: Batch) -> None:
    shapes = {"kpts2d": (NUM_JOINTS, 2), "kpts3d": (NUM_JOINTS, 3), "visibility": (NUM_JOINTS,),
              "K_crop": (3, 3)}
    image = batch.image
    if image.dim() != 4 or image.shape[1] != 3 or image.shape[2] != image.shape[3]:
        raise ValueError(f"image must be [B, 3, S, S], got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be float in [0, 1], got {image.dtype}; convert uint8 first")
    for key, shape in shapes.items():
        value = getattr(batch, key)
        if tuple(value.shape) != (image.shape[0], *shape):
            raise ValueError(f"{key} must be [B, {shape}], got {tuple(value.shape)}")
