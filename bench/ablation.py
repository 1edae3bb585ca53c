"""Ablations of the real-footage recipe, side by side on the same labelled corpus.

    python -m bench.ablation [--variants base lift lift_bg ...] [--steps 3000] [--json]
    python -m bench.ablation --list
    python -m bench.ablation --table docs/results/ablation_effl0_400_steps.json   # re-print a --json run

Each clip of `source=real` (conf/source/real.yaml) is decoded in memory and labelled once by
MediaPipe on the frame and on its mirror (`labeler.flip_tta.FlipTTATeacher.label_pairs`); the
crops and labels stay in this process, never on disk. Then every variant trains a fresh student
for the same number of steps from those samples (the in-memory equivalent of the ring buffer
holding the whole corpus, as `experiment=real_cpu` does after its one labelling pass) with the
real `train.module.PoseDistillModule` losses, `data.augment.BatchAugment` and
`data.ring_buffer.video_weights`, and is evaluated on the held-out clips exactly as
`bench.learning` evaluates a checkpoint (student vs the plain teacher, mean-pose baseline of
its own training targets). A variant is a list of overrides of conf/model/<preset>.yaml plus
three data options: `video_balance`, `flip_tta` (train on the flip-averaged labels) and
`crop_size` (the corpus is labelled once per crop size that the chosen variants use).
Reported per variant: held-out MPJPE, PA-MPJPE, their ratios to the mean pose, 2D PCK and the
minutes it trained (wall clock, so run it alone on the machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bench.common import REPO_ROOT, load_conf, model_preset
from serve.clips import ClipSet, label_clip, measure_clips, pooled
from data.ring_buffer import video_weights
from labeler.flip_tta import FlipTTATeacher
from stream_pose.batch import Batch
from train.losses import masked_l1
from train.metrics import MeanPoseBaseline
from train.module import PoseDistillModule, image_to_float

logger = logging.getLogger("bench.ablation")

# name -> (model preset, overrides of that preset, data options). Light augmentation is the
# model config's own (flip, +-20 deg, 0.9-1.1 zoom, 5% shift, colour 0.2).
AUG_ON = ["augment.enabled=true"]
STRONG = ["augment.rot_prob=0.5", "augment.rot_max_deg=30", "augment.scale_range=[0.75,1.25]",
          "augment.shift_frac=0.1", "augment.color_jitter=0.3"]
LIFT = ["net.head3d=lift", "net.dropout=0.1", "loss_lift_weight=1.0"]
EFFL0 = [*AUG_ON, *LIFT, "loss_heatmap_weight=0.1"]
VARIANTS: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "base": ("student_s", AUG_ON, {}),
    "anchored": ("student_s", [*AUG_ON, "net.head3d=anchored"], {}),
    "anchored_balance": ("student_s", [*AUG_ON, "net.head3d=anchored"], {"video_balance": 0.5}),
    "lift": ("student_s", [*AUG_ON, *LIFT], {"video_balance": 0.5}),
    "lift_no_teacher2d": ("student_s", [*AUG_ON, *LIFT, "loss_lift_weight=0"],
                          {"video_balance": 0.5}),
    "lift_heatmap": ("student_s", [*AUG_ON, *LIFT, "loss_heatmap_weight=0.1"],
                     {"video_balance": 0.5}),
    "lift_flip_tta": ("student_s", [*AUG_ON, *LIFT], {"video_balance": 0.5, "flip_tta": True}),
    "lift_bg": ("student_s", [*AUG_ON, *LIFT, "augment.background_swap_prob=0.5"],
                {"video_balance": 0.5}),
    "lift_bg_strong": ("student_s", [*AUG_ON, *LIFT, *STRONG,
                                     "augment.background_swap_prob=0.5"], {"video_balance": 0.5}),
    "lift_m": ("student_m", [*AUG_ON, *LIFT], {"video_balance": 0.5}),
    # The pretrained EfficientNet-Lite0 trunk (conf/model/student_effl0.yaml) with the heads and
    # data of lift_heatmap, then one fine-tuning choice changed at a time.
    "effl0": ("student_effl0", EFFL0, {"video_balance": 0.5}),
    "effl0_random": ("student_effl0", [*EFFL0, "net.pretrained=false"], {"video_balance": 0.5}),
    "effl0_trunk_lr0.3": ("student_effl0", [*EFFL0, "trunk_lr_mult=0.3"], {"video_balance": 0.5}),
    "effl0_bn_frozen": ("student_effl0", [*EFFL0, "net.freeze_bn_stats=true"],
                        {"video_balance": 0.5}),
    "effl0_bn_m0.01": ("student_effl0", [*EFFL0, "net.bn_momentum=0.01"], {"video_balance": 0.5}),
    "effl0_freeze3": ("student_effl0", [*EFFL0, "net.frozen_stages=3"], {"video_balance": 0.5}),
    "effl0_freeze4": ("student_effl0", [*EFFL0, "net.frozen_stages=4"], {"video_balance": 0.5}),
    "effl0_flip_tta": ("student_effl0", EFFL0, {"video_balance": 0.5, "flip_tta": True}),
    "effl0_160": ("student_effl0", EFFL0, {"video_balance": 0.5, "crop_size": 160}),
}
DEFAULT_VARIANTS = ("base", "lift", "lift_bg")


@dataclass
class Corpus:
    """The labelled corpus in memory: training samples (all clips but the held-out) and the
    held-out clips. Training arrays are `[N, ...]` as in `ClipSet`, plus `video` `[N]` int64."""

    train: dict[str, torch.Tensor]
    held_out: list[ClipSet]


def real_source() -> dict[str, Any]:
    """conf/source/real.yaml as a plain dict (paths resolved against the repository root)."""
    node = OmegaConf.to_container(
        OmegaConf.merge(load_conf("source", "local"), load_conf("source", "real")), resolve=False)
    node.pop("defaults", None)
    node["paths"] = [p.replace("${paths.root_dir}", str(REPO_ROOT)) for p in node["paths"]]
    return node


def label_corpus(crop_size: int, source: dict[str, Any] | None = None) -> Corpus:
    """Label every clip of `source` (default `real_source()`) with the flip pair teacher, and
    split the clips by its `val_videos`."""
    node = dict(source or real_source())
    held = list(node["val_videos"])
    factory = instantiate(node)
    ids = factory(split="all", loop=False).video_ids()
    teacher = FlipTTATeacher(instantiate(load_conf("labeler", "mediapipe")))
    clips = []
    try:
        for video_id in ids:
            source = factory(split="val", val_videos=[video_id], loop=False)
            try:
                clips.append(label_clip(source, teacher, video_id, crop_size))
                logger.info("labelled %s: %d people", video_id, len(clips[-1].image))
            except RuntimeError as exc:  # nobody in the clip: nothing to train on
                logger.info("skipped %s: %s", video_id, exc)
            finally:
                source.close()
    finally:
        teacher.close()
    train_clips = [c for c in clips if c.video_id not in held]
    train = {k: torch.cat([getattr(c, k) for c in train_clips]) for k in
             ("image", "kpts2d", "kpts3d", "visibility", "mirror2d", "mirror3d", "mirror_vis",
              "K_crop")}
    train["video"] = torch.cat([torch.full((len(c.image),), i) for i, c in enumerate(train_clips)])
    return Corpus(train=train, held_out=[c for c in clips if c.video_id in held])


def flip_averaged(train: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Targets averaged with the mirror pass where both saw a joint (`average_labels`' rule)."""
    both = (train["visibility"] > 0) & (train["mirror_vis"] > 0)
    out = dict(train)
    for key, mirror in (("kpts2d", "mirror2d"), ("kpts3d", "mirror3d")):
        out[key] = torch.where(both[..., None], (train[key] + train[mirror]) / 2, train[key])
    return out


def build_module(preset: str, overrides: list[str], steps: int, crop_size: int
                 ) -> PoseDistillModule:
    """The LightningModule of conf/model/<preset>.yaml with `overrides`, for `steps` steps."""
    node = OmegaConf.merge(model_preset(preset), OmegaConf.from_dotlist(overrides))
    node.net.crop_size = crop_size
    node.scheduler.total_steps = steps
    node.scheduler.max_lr = node.optimizer.lr
    node.scheduler.pct_start = 0.05
    return instantiate(node)


def variant_crop_size(name: str, default: int) -> int:
    """The crop side a variant trains at: its `crop_size` data option, else `default`."""
    return int(VARIANTS[name][2].get("crop_size", default))


def train_variant(name: str, corpus: Corpus, steps: int, batch_size: int, seed: int
                  ) -> dict[str, Any]:
    """Train one variant for `steps` and evaluate it on the held-out clips."""
    preset, overrides, data = VARIANTS[name]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    crop_size = corpus.train["image"].shape[-1]
    module = build_module(preset, overrides, steps, crop_size)
    train = flip_averaged(corpus.train) if data.get("flip_tta") else corpus.train
    p = video_weights(train["video"].numpy(), data.get("video_balance", 0.0))
    opt_cfg = module.configure_optimizers()
    optimizer, scheduler = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    mean_pose = MeanPoseBaseline()
    module.train()
    start = time.monotonic()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(p), batch_size, p=p))
        batch = Batch(image=image_to_float(train["image"][idx]), kpts2d=train["kpts2d"][idx],
                      kpts3d=train["kpts3d"][idx], visibility=train["visibility"][idx],
                      K_crop=train["K_crop"][idx])
        mean_pose.update(batch.kpts3d, batch.visibility)
        if module.augment is not None:
            batch = module.augment(batch)
        loss = module.losses(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    minutes = (time.monotonic() - start) / 60
    report = measure_clips(module.net.eval(), corpus.held_out, mean_pose.mean())
    return {"variant": name, "preset": preset, "overrides": overrides, "data": data,
            "steps": steps, "minutes": minutes, "all": report.pooled, "clips": report.clips}


def teacher_lift(corpus: Corpus, steps: int, batch_size: int, seed: int,
                 noise: float = 0.0) -> dict[str, Any]:
    """The lifting head alone, trained and evaluated on the teacher's own 2D: what the 3D would
    be with perfect 2D (plus `noise` x S pixels of Gaussian 2D noise at train and test time).

    No image is seen: this bounds what a student with a lifting head gains from better 2D.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = corpus.train["image"].shape[-1]
    module = build_module("student_s", [*LIFT, "net.head3d=lift"], steps, size)
    lifter, train = module.net, corpus.train
    params = list(lifter.head3d.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    p = video_weights(train["video"].numpy(), 0.5)
    mean_pose = MeanPoseBaseline()

    def noisy(kpts2d: torch.Tensor) -> torch.Tensor:
        return kpts2d + noise * size * torch.randn_like(kpts2d)

    lifter.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(p), batch_size, p=p))
        vis = train["visibility"][idx]
        mean_pose.update(train["kpts3d"][idx], vis)
        loss = masked_l1(lifter.lift(noisy(train["kpts2d"][idx])), train["kpts3d"][idx], vis)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    lifter.eval()
    with torch.no_grad():
        preds = [(lifter.lift(noisy(c.kpts2d)), c.kpts2d) for c in corpus.held_out]
    total = pooled(corpus.held_out, preds, mean_pose.mean())
    return {"noise": noise, "mpjpe_mm": total["mpjpe_mm"],
            "mpjpe_vs_mean_pose": total["mpjpe_vs_mean_pose"],
            "pa_mpjpe_vs_mean_pose": total["pa_mpjpe_vs_mean_pose"]}


def format_rows(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per variant, pooled over the held-out clips, then per-clip ratios and
    the left/right swap share (pooled, and per clip in the same order).

    Each variant's mean pose is the mean of the targets it trained on, so video balancing
    changes the baseline as well as the student.
    """
    clips = [r["video_id"] for r in results[0]["clips"]]
    head = ("| variant | MPJPE (ratio) | PA-MPJPE (ratio) | mean pose (PA) | 2D PCK@0.05 / @0.1 "
            f"| per-clip ratio ({', '.join(clips)}) | L/R swapped % (per clip) | min |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["all"]
        per_clip = " / ".join(f"{c['mpjpe_vs_mean_pose']:.2f}" for c in r["clips"])
        swaps = " / ".join(f"{c['left_right_swapped_pct']:.0f}" for c in r["clips"])
        lines.append(
            f"| {r['variant']} | {a['mpjpe_mm']:.1f} ({a['mpjpe_vs_mean_pose']:.3f}) | "
            f"{a['pa_mpjpe_mm']:.1f} ({a['pa_mpjpe_vs_mean_pose']:.3f}) | "
            f"{a['mean_pose_mpjpe_mm']:.1f} ({a['mean_pose_pa_mpjpe_mm']:.1f}) | "
            f"{a['pck2d_0.05']:.1f} / {a['pck2d_0.1']:.1f} | {per_clip} | "
            f"{a['left_right_swapped_pct']:.0f} ({swaps}) | {r['minutes']:.1f} |")
    a = results[0]["all"]
    lines += ["", f"teacher flip floor {a['flip_floor_mpjpe_mm']:.1f} mm "
              f"(PA {a['flip_floor_pa_mpjpe_mm']:.1f}); {a['people']} held-out people"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS),
                        choices=sorted(VARIANTS), metavar="NAME")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--teacher-lift", action="store_true",
                        help="also train the lifting head alone on the teacher's 2D (clean and "
                             "with 3%% noise): the 3D a perfect 2D would give")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--table", type=Path, metavar="JSON",
                        help="print the Markdown table of an earlier --json run and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(format_rows([r for r in json.loads(args.table.read_text()) if "variant" in r]))
        return 0
    if args.list:
        for name, (preset, overrides, data) in VARIANTS.items():
            print(f"{name}: model={preset} {' '.join(overrides)} {data or ''}")
        return 0
    if args.steps <= 0 or args.batch_size <= 0 or args.crop_size % 32:
        parser.error("--steps and --batch-size must be > 0, --crop-size a multiple of 32")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    corpora: dict[int, Corpus] = {}
    results = []
    for name in args.variants:
        size = variant_crop_size(name, args.crop_size)
        if size not in corpora:
            corpora[size] = label_corpus(size)
        results.append(train_variant(name, corpora[size], args.steps, args.batch_size, args.seed))
        a = results[-1]["all"]
        logger.info("%s: MPJPE %.1f mm, ratio %.3f, PA ratio %.3f, %.1f min", name,
                    a["mpjpe_mm"], a["mpjpe_vs_mean_pose"], a["pa_mpjpe_vs_mean_pose"],
                    results[-1]["minutes"])
    corpus = corpora.get(args.crop_size) or label_corpus(args.crop_size)
    lifts = [teacher_lift(corpus, args.steps, 128, args.seed, noise)
             for noise in ((0.0, 0.03) if args.teacher_lift else ())]
    if args.json:
        print(json.dumps(results + [{"teacher_lift": lift} for lift in lifts]))
        return 0
    if results:
        print(format_rows(results))
    for lift in lifts:
        print(f"lifting the teacher's 2D (noise {lift['noise']:g} x S): MPJPE "
              f"{lift['mpjpe_mm']:.1f} mm, ratio {lift['mpjpe_vs_mean_pose']:.3f}, "
              f"PA ratio {lift['pa_mpjpe_vs_mean_pose']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
