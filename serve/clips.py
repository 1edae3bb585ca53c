"""The evaluation core: held-out clips labelled in memory, and the student's errors on them.

`serve.evaluate` (a checkpoint on a source's split) and the benchmarks (`bench.learning`,
`bench.ablation`: whole held-out real clips) all go through here:

1. `label_clips` decodes a finite source and labels every frame with the teacher; each person is
   cut into a crop exactly as training cuts it (`stream_pose.codec.crop_sample`, the teacher's
   box) and kept with the teacher's labels, grouped into one `ClipSet` per video id (whole
   clips). With a flip pair teacher (`labeler.flip_tta.FlipTTATeacher.label_pairs`) every person
   also carries the teacher's answer on the mirror image, mirrored back.
2. `predict` runs the student on the crops.
3. `measure_clips` (or `clip_metrics` / `pooled`) compares the two, per clip and pooled over every
   person of every clip:

- student vs teacher: MPJPE, PA-MPJPE, PCK3D@150 mm (pelvis-relative 3D over visible joints,
  through `train.metrics.PoseErrorMetric`, the metric validation logs), 2D PCK in crop pixels at
  0.05 and 0.1 of the crop side (what serving draws), per-joint MPJPE;
- the mean-pose baseline: always predicting the mean training target, MPJPE and PA-MPJPE, and
  the student's ratio to each;
- the teacher's flip floor: the mirror pass (mirrored back) vs the reference labels, on joints
  both see. The student is judged against the teacher, so it cannot be expected to get closer to
  it than the teacher gets to itself. None without a mirror pass;
- left/right: the share of people whose predicted 2D fits the teacher better with left and right
  swapped, i.e. seen facing the other way (front for back).

Nothing is written anywhere: crops and labels stay in memory.

Legend: N people, J = 27 joints, S crop side in pixels. 3D in metres, pelvis-relative, camera
axes; 2D in crop pixels. Errors are reported in millimetres, PCK and shares in percent.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from labeler.base import Teacher, TeacherUnavailableError
from labeler.flip_tta import FlipTTATeacher, pair_label
from labeler.oracle import OracleTeacher
from stream_pose.camera import apply_affine
from stream_pose.codec import box_crop_affine, crop_sample
from stream_pose.skeleton import FLIP_PERM, JOINT_NAMES
from stream_pose.types import Frame, PersonLabel
from train.metrics import PoseErrorMetric, PoseErrors
from train.module import image_to_float

logger = logging.getLogger(__name__)

PCK2D_FRACTIONS = (0.05, 0.1)  # of the crop side
CLIP_FIELDS = ("image", "kpts2d", "kpts3d", "visibility", "K_crop", "mirror2d", "mirror3d",
               "mirror_vis")


@dataclass
class ClipSet:
    """One held-out clip (or several pooled), labelled and cropped in memory.

    Attributes:
        video_id: the clip's id ("all" for a pooled set).
        image: `[N, 3, S, S]` uint8 crops, one per labelled person.
        kpts2d: `[N, J, 2]` float32 crop pixels (the teacher's: the reference).
        kpts3d: `[N, J, 3]` float32 metres, pelvis-relative (the teacher's: the reference).
        visibility: `[N, J]` float32 in {0, 1}.
        K_crop: `[N, 3, 3]` float32 crop intrinsics.
        mirror2d: `[N, J, 2]` float32 the teacher on the mirror image, mirrored back, in crop
            pixels (meaningless where `mirror_vis` is 0).
        mirror3d: `[N, J, 3]` float32 the same in 3D, metres.
        mirror_vis: `[N, J]` float32 visibility of `mirror2d`/`mirror3d`: all 0 where the mirror
            pass missed the person or there was none.
        frames: frames decoded.
        teacher_s: seconds in the teacher per pass over the clip (the total halved when it also
            labelled the mirror images).
    """

    video_id: str
    image: torch.Tensor
    kpts2d: torch.Tensor
    kpts3d: torch.Tensor
    visibility: torch.Tensor
    K_crop: torch.Tensor
    mirror2d: torch.Tensor
    mirror3d: torch.Tensor
    mirror_vis: torch.Tensor
    frames: int
    teacher_s: float

    def __len__(self) -> int:
        """N, the people in the clip."""
        return len(self.image)


@dataclass
class _Rows:
    """One clip's fields while it is being labelled (lists of per-person numpy arrays)."""

    fields: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {k: [] for k in CLIP_FIELDS})
    frames: int = 0
    teacher_s: float = 0.0
    errors: int = 0
    last_error: str = ""


def label_clips(
    source: Iterable[Frame], teacher: Teacher | FlipTTATeacher, crop_size: int, *,
    max_people: int | None = None, averaged: bool = False,
) -> list[ClipSet]:
    """Label every frame of a finite source and cut the crops, one `ClipSet` per video id.

    The teacher is reset whenever the video id changes. A frame on which the teacher raises is
    counted and skipped (one warning per clip), as training's labelling loop does; a person whose
    box is degenerate is skipped, as training skips it.

    Args:
        source: frames, video after video (a `VideoSource` with `loop=False`).
        teacher: a plain `Teacher` (no mirror pass: no flip floor), or a `FlipTTATeacher`, whose
            `label_pairs` gives each person the mirror pass's label too.
        crop_size: S, the student's crop side.
        max_people: stop after the frame that brings the count to this many people and keep the
            last `max_people` of them, as training's frozen val set (a ring buffer of that
            capacity, `data.datamodule.StreamDataModule`) keeps them; None: every frame.
        averaged: with a `FlipTTATeacher`, compare with its flip-averaged labels (what its
            `label` returns, `labeler.flip_tta.pair_label`) rather than with the plain pass; the
            flip floor is then the mirror pass against that average.

    Returns:
        The clips in the order the source gave them; a clip in which the teacher found nobody
        is left out.

    Raises:
        TeacherUnavailableError: the teacher cannot run at all.
    """
    pairs_of = teacher.label_pairs if isinstance(teacher, FlipTTATeacher) else (
        lambda frame: [(label, None) for label in teacher.label(frame)])
    passes = 2 if isinstance(teacher, FlipTTATeacher) else 1
    clips: dict[str, _Rows] = {}
    current, people = None, 0
    rows = _Rows()
    for frame in source:
        if frame.video.id != current:
            current = frame.video.id
            teacher.reset()
            rows = clips.setdefault(current, _Rows())
        rows.frames += 1
        start = time.perf_counter()
        try:
            pairs = pairs_of(frame)
        except TeacherUnavailableError:
            raise
        except Exception as exc:  # one bad frame must not end the evaluation
            rows.errors += 1
            rows.last_error = f"{type(exc).__name__}: {exc}"
            continue
        finally:
            rows.teacher_s += (time.perf_counter() - start) / passes
        for plain, mirrored in pairs:
            people += _add_person(rows, frame, plain, mirrored, crop_size, averaged)
        if max_people is not None and people >= max_people:
            break
    _drop_oldest(list(clips.values()), 0 if max_people is None else people - max_people)
    out = []
    for video_id, rows in clips.items():
        if rows.errors:
            logger.warning("clip %s: the teacher failed on %d of %d frames (last: %s)",
                           video_id, rows.errors, rows.frames, rows.last_error)
        if rows.fields["image"]:
            arrays = {k: torch.from_numpy(np.stack(v)) for k, v in rows.fields.items()}
            out.append(ClipSet(video_id=video_id, frames=rows.frames, teacher_s=rows.teacher_s,
                               **arrays))
        else:
            logger.info("clip %s: the teacher found nobody in %d frames", video_id, rows.frames)
    return out


def _add_person(rows: _Rows, frame: Frame, plain: PersonLabel, mirrored: PersonLabel | None,
                crop_size: int, averaged: bool) -> int:
    """Crop one person into `rows`; returns 1, or 0 when it was skipped."""
    reference = pair_label(plain, mirrored, frame.image.shape[:2]) if averaged else plain
    if reference is None:  # the average has too few joints: FlipTTATeacher.label drops it too
        return 0
    try:
        sample = crop_sample(frame, reference, crop_size)
    except ValueError:  # degenerate box: training skips it too
        return 0
    if mirrored is None:
        mirrored = dataclasses.replace(plain, visibility=np.zeros_like(plain.visibility))
    affine = box_crop_affine(reference.bbox_xyxy, crop_size)  # the reference crop's
    for key, value in (("image", sample.image), ("kpts2d", sample.kpts2d),
                       ("kpts3d", sample.kpts3d), ("visibility", sample.visibility),
                       ("K_crop", sample.K_crop),
                       ("mirror2d", apply_affine(mirrored.kpts2d, affine)),
                       ("mirror3d", mirrored.kpts3d), ("mirror_vis", mirrored.visibility)):
        rows.fields[key].append(value)
    return 1


def _drop_oldest(clips: list[_Rows], excess: int) -> None:
    """Remove the first `excess` people, in labelling order, across `clips`."""
    for rows in clips:
        k = min(max(excess, 0), len(rows.fields["image"]))
        for values in rows.fields.values():
            del values[:k]
        excess -= k


def label_clip(source: Iterable[Frame], teacher: Teacher | FlipTTATeacher, video_id: str,
               crop_size: int) -> ClipSet:
    """`label_clips` over a source of exactly one clip, every frame.

    Args:
        source: a finite `VideoSource` over this one clip.
        teacher: as for `label_clips`; reset here first.
        video_id: the clip's id, for the error message.
        crop_size: S, the student's crop side.

    Raises:
        RuntimeError: the teacher found nobody in the clip.
        ValueError: the source held more than one clip.
    """
    clips = label_clips(source, teacher, crop_size)
    if not clips:
        raise RuntimeError(f"the teacher found nobody in held-out clip {video_id!r}")
    if len(clips) > 1:
        raise ValueError(f"the source of clip {video_id!r} held {[c.video_id for c in clips]}")
    return clips[0]


def teacher_pair(labeler: DictConfig) -> FlipTTATeacher:
    """The plain/mirror pair over a labeler config's teacher (unwrapped if it was flip-averaged
    already): with `averaged=False`, the student is compared with the plain teacher, as a user
    would run it.

    Args:
        labeler: a conf/labeler node (a `_partial_` teacher factory).
    """
    return FlipTTATeacher(instantiate(_unwrapped(labeler)))


def clip_teacher(labeler: DictConfig, mirror: bool = True
                 ) -> tuple[Teacher | FlipTTATeacher, bool]:
    """The teacher as a labeler config makes it, run as a flip pair where that measures something.

    The reference labels stay the configured teacher's (a flip-averaged one keeps its averaged
    labels), so that a run's own labeler reproduces the labels it validated on.

    Args:
        labeler: a conf/labeler node (a `_partial_` teacher factory).
        mirror: run the mirror pass (the flip floor, at twice the teacher's time). A
            flip-averaged labeler runs it anyway; the oracle never does: ground truth has no
            noise to measure, and it reads the truth rather than the image.

    Returns:
        `(teacher, averaged)`, the arguments of `label_clips`.
    """
    flip = _unwrapped(labeler) is not labeler
    if flip:
        return teacher_pair(labeler), True
    factory = instantiate(labeler)
    if not mirror or _is_oracle(labeler):
        return factory(), False
    return FlipTTATeacher(factory), False


def _unwrapped(labeler: DictConfig) -> DictConfig:
    """The inner teacher's node of a `labeler.flip_tta.FlipTTATeacher` config, else `labeler`."""
    inner = labeler.get("teacher")
    if inner is not None and "flip_tta" in str(labeler.get("_target_", "")):
        return inner
    return labeler


def _is_oracle(labeler: DictConfig) -> bool:
    try:
        target = get_object(str(labeler.get("_target_", "")))
    except Exception:  # not importable: not the oracle
        return False
    return isinstance(target, type) and issubclass(target, OracleTeacher)


@torch.no_grad()
def predict(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 128,
            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The student on uint8 crops `[N, 3, S, S]`, in batches, in eval mode.

    Args:
        net: the student (`train.student.PoseStudent` or anything returning `kpts3d`, `kpts2d`).
        images: `[N, 3, S, S]` uint8 RGB crops (made float in [0, 1] here).
        batch_size: crops per forward pass.
        device: where the student runs (moved there); None: where it is.

    Returns:
        `(kpts3d [N, J, 3] float32 metres, kpts2d [N, J, 2] float32 crop pixels)` on the CPU.
    """
    net.eval()
    if device is not None:
        net.to(device)
    device = next(net.parameters()).device
    out3, out2 = [], []
    for i in range(0, len(images), batch_size):
        out = net(image_to_float(images[i:i + batch_size].to(device)))
        out3.append(out.kpts3d.float().cpu())
        out2.append(out.kpts2d.float().cpu())
    return torch.cat(out3), torch.cat(out2)


@dataclass
class ClipErrors:
    """3D errors of one clip (or a pooled set), as `train.metrics.PoseErrors`.

    Attributes:
        student: the student vs the reference labels.
        mean_pose: the mean pose vs the reference labels.
        flip_floor: the mirror pass vs the reference labels, on joints both see; None where the
            mirror pass saw none (or there was none).
    """

    student: PoseErrors
    mean_pose: PoseErrors
    flip_floor: PoseErrors | None


def clip_errors(clip: ClipSet, pred3d: torch.Tensor, mean_pose: torch.Tensor) -> ClipErrors:
    """The student's, the mean pose's and the mirror pass's 3D errors on a clip.

    Args:
        clip: the reference labels (`kpts3d`, `visibility`) and the mirror pass.
        pred3d: `[N, J, 3]` metres, the student on the clip's crops.
        mean_pose: `[J, 3]` metres, the mean training target (`MeanPoseBaseline.mean()`).
    """
    gt, vis = clip.kpts3d, clip.visibility
    both = vis * clip.mirror_vis
    pairs = [(pred3d, vis), (mean_pose.to(gt).expand_as(gt), vis)]
    if both.any():
        pairs.append((clip.mirror3d, both))
    errors = []
    for pred, mask in pairs:
        metric = PoseErrorMetric()
        metric.update(pred, gt, mask)
        errors.append(metric.compute())
    return ClipErrors(*errors) if len(errors) == 3 else ClipErrors(*errors, flip_floor=None)


def clip_metrics(clip: ClipSet, pred3d: torch.Tensor, pred2d: torch.Tensor,
                 mean_pose: torch.Tensor) -> dict[str, Any]:
    """One report row: the student, mean-pose and flip-floor figures of a clip.

    Args:
        clip: the clip (or a pooled set, `concat`).
        pred3d: `[N, J, 3]` metres and pred2d: `[N, J, 2]` crop pixels, the student's
            (`predict`).
        mean_pose: `[J, 3]` metres, the mean training target.

    Returns:
        `video_id`, `frames`, `people`; `mpjpe_mm`, `pa_mpjpe_mm`, `pck3d_150` (%),
        `pck2d_0.05`, `pck2d_0.1` (% of visible joints within that fraction of the crop side),
        `mean_pose_mpjpe_mm`, `mean_pose_pa_mpjpe_mm`, `mpjpe_vs_mean_pose`,
        `pa_mpjpe_vs_mean_pose`, `flip_floor_mpjpe_mm`, `flip_floor_pa_mpjpe_mm` (None without
        a mirror pass), `left_right_swapped_pct` (%), `teacher_ms_per_frame` (one pass), and the
        per-joint sums `_joint_sum_mm`, `_joint_count` (`[J]` lists).
    """
    return _row(clip, pred2d, clip_errors(clip, pred3d, mean_pose))


def _row(clip: ClipSet, pred2d: torch.Tensor, errors: ClipErrors) -> dict[str, Any]:
    """`clip_metrics`' row from the clip's `ClipErrors` and the student's 2D."""
    vis, floor = clip.visibility, errors.flip_floor
    student, mean = errors.student, errors.mean_pose
    d2 = torch.linalg.vector_norm(pred2d - clip.kpts2d, dim=-1)  # [N, J] crop px
    side = clip.image.shape[-1]
    out: dict[str, Any] = {
        "video_id": clip.video_id,
        "frames": clip.frames,
        "people": len(clip),
        "mpjpe_mm": 1000 * float(student.mpjpe),
        "pa_mpjpe_mm": 1000 * float(student.pa_mpjpe),
        "pck3d_150": 100 * float(student.pck3d),
        "mean_pose_mpjpe_mm": 1000 * float(mean.mpjpe),
        "mean_pose_pa_mpjpe_mm": 1000 * float(mean.pa_mpjpe),
        "flip_floor_mpjpe_mm": None if floor is None else 1000 * float(floor.mpjpe),
        "flip_floor_pa_mpjpe_mm": None if floor is None else 1000 * float(floor.pa_mpjpe),
        "teacher_ms_per_frame": 1000 * clip.teacher_s / max(clip.frames, 1),
        "_joint_sum_mm": (1000 * student.per_joint.nan_to_num() * student.count).tolist(),
        "_joint_count": student.count.tolist(),
    }
    for frac in PCK2D_FRACTIONS:
        hit = ((d2 < frac * side).float() * vis).sum() / vis.sum().clamp_min(1)
        out[f"pck2d_{frac:g}"] = 100 * hit.item()
    out["left_right_swapped_pct"] = 100 * left_right_swapped(pred2d, clip.kpts2d, vis).item()
    out["mpjpe_vs_mean_pose"] = _ratio(out["mpjpe_mm"], out["mean_pose_mpjpe_mm"])
    out["pa_mpjpe_vs_mean_pose"] = _ratio(out["pa_mpjpe_mm"], out["mean_pose_pa_mpjpe_mm"])
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def left_right_swapped(pred2d: torch.Tensor, kpts2d: torch.Tensor, vis: torch.Tensor
                       ) -> torch.Tensor:
    """Fraction of people whose predicted 2D fits the teacher better with left and right swapped.

    A person's left/right decides which way they face (front or back), and the lifted 3D turns
    with it: a swapped person is roughly mirrored in depth. Mean 2D error over visible joints,
    as predicted vs with `FLIP_PERM` applied to the prediction.

    Args:
        pred2d, kpts2d: `[N, J, 2]` crop pixels; vis: `[N, J]`.

    Returns:
        Scalar in [0, 1].
    """
    perm = torch.as_tensor(FLIP_PERM)
    weight = vis / vis.sum(1, keepdim=True).clamp_min(1)
    err = (torch.linalg.vector_norm(pred2d - kpts2d, dim=-1) * weight).sum(1)
    swapped = (torch.linalg.vector_norm(pred2d[:, perm] - kpts2d, dim=-1) * weight).sum(1)
    return (swapped < err).float().mean()


def concat(clips: list[ClipSet]) -> ClipSet:
    """Every person of every clip in one `ClipSet` ("all"): frames and teacher time summed."""
    return ClipSet(
        video_id="all", frames=sum(c.frames for c in clips),
        teacher_s=sum(c.teacher_s for c in clips),
        **{k: torch.cat([getattr(c, k) for c in clips]) for k in CLIP_FIELDS},
    )


def pooled(clips: list[ClipSet], preds: list[tuple[torch.Tensor, torch.Tensor]],
           mean_pose: torch.Tensor) -> dict[str, Any]:
    """`clip_metrics` over every person of every clip together (the headline row).

    Args:
        clips: the clips; preds: `predict`'s `(kpts3d, kpts2d)` for each; mean_pose: `[J, 3]`.
    """
    return clip_metrics(concat(clips), torch.cat([p[0] for p in preds]),
                        torch.cat([p[1] for p in preds]), mean_pose)


@dataclass
class ClipReport:
    """The student on a list of clips, per clip and pooled.

    Attributes:
        clips: one `clip_metrics` row per clip, without the per-joint sums.
        pooled: the same row over every person of every clip (`video_id` "all").
        errors: the pooled `ClipErrors` (for `train.metrics.metric_dict`).
    """

    clips: list[dict[str, Any]]
    pooled: dict[str, Any]
    errors: ClipErrors

    def per_joint_mpjpe_mm(self) -> dict[str, float]:
        """Joint name -> pooled MPJPE in mm, for the joints with a visible sample."""
        student = self.errors.student
        return {name: 1000 * e for name, e, n in
                zip(JOINT_NAMES, student.per_joint.tolist(), student.count.tolist()) if n > 0}


def measure_clips(net: torch.nn.Module, clips: list[ClipSet], mean_pose: torch.Tensor, *,
                  batch_size: int = 128, device: torch.device | str | None = None
                  ) -> ClipReport:
    """Run the student on every clip and measure it per clip and pooled.

    Args:
        net: the student; clips: non-empty, from `label_clips`; mean_pose: `[J, 3]` metres.
        batch_size, device: as for `predict`.
    """
    preds = [predict(net, clip.image, batch_size, device) for clip in clips]
    rows = [clip_metrics(c, *p, mean_pose) for c, p in zip(clips, preds)]
    everyone = concat(clips)
    errors = clip_errors(everyone, torch.cat([p[0] for p in preds]), mean_pose)
    total = _row(everyone, torch.cat([p[1] for p in preds]), errors)
    for row in [*rows, total]:
        del row["_joint_sum_mm"], row["_joint_count"]
    return ClipReport(clips=rows, pooled=total, errors=errors)


def clip_table(rows: list[dict[str, Any]]) -> list[str]:
    """`clip_metrics` rows as the lines of a Markdown table: errors in mm, PCK and swaps in %,
    the mean pose and the flip floor with their PA-MPJPE in brackets ("n/a": no mirror pass)."""
    lines = ["| clip | people | MPJPE | PA-MPJPE | PCK3D@150 | 2D PCK@0.05 / @0.1 | L/R swapped "
             "| mean pose (PA) | ratio (PA ratio) | flip floor (PA) |", "|" + "---|" * 10]
    for row in rows:
        floor, floor_pa = row["flip_floor_mpjpe_mm"], row["flip_floor_pa_mpjpe_mm"]
        floor_text = "n/a" if floor is None else f"{floor:.0f} ({floor_pa:.0f})"
        lines.append(
            f"| {row['video_id']} | {row['people']} | {row['mpjpe_mm']:.1f} | "
            f"{row['pa_mpjpe_mm']:.1f} | {row['pck3d_150']:.1f} | {row['pck2d_0.05']:.1f} / "
            f"{row['pck2d_0.1']:.1f} | {row['left_right_swapped_pct']:.0f} | "
            f"{row['mean_pose_mpjpe_mm']:.1f} "
            f"({row['mean_pose_pa_mpjpe_mm']:.1f}) | {row['mpjpe_vs_mean_pose']:.2f} "
            f"({row['pa_mpjpe_vs_mean_pose']:.2f}) | {floor_text} |")
    return lines
