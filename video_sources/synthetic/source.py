"""The synthetic `VideoSource`: videos generated on demand, each a pure function of
(seed, split, index), with exact 3D ground truth on every frame.

Legend: T frames per video. 3D in metres, camera frame: X right, Y down, Z forward.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from stream_pose.codec import label_from_camera
from stream_pose.types import Frame, PersonLabel, VideoRef
from video_sources.base import SourceStats
from video_sources.splits import GENERATED_SPLITS, check_shard, check_split, in_position_shard
from video_sources.synthetic.body import REST_HEIGHT_M
from video_sources.synthetic.render import (
    NOISE_AMPLITUDE_RANGE,
    NOISE_MARGIN,
    DrawList,
    draw_list,
    draw_people,
    render_background,
)
from video_sources.synthetic.scene import (
    CAMERA_TILT_RANGE_DEG,
    DEPTH_RANGE_M,
    Person,
    place_roots,
    sample_focal,
    sample_person,
)

log = logging.getLogger(__name__)


@dataclass
class _Video:
    """One generated video: camera, background, people and their per-frame draw list."""

    ref: VideoRef
    K: np.ndarray  # [3, 3] float32
    background: np.ndarray  # [H, W, 3] uint8
    noise: np.ndarray  # [H + margin, W + margin, 3] uint8 in [0, 2 * amplitude]
    amplitude: int
    noise_shifts: np.ndarray  # [T, 2] int window offsets
    people: list[Person]
    draw: DrawList


class SyntheticSource:
    """Endless or fixed-length stream of rendered people with exact 3D ground truth.

    Video k of a split is a pure function of (seed, split, k): the random stream is seeded with
    `SeedSequence([seed, split code, k])`, so train, val and test never share a video and any
    video can be regenerated alone. Each `Frame` has `K` and `truth` (one `PersonLabel` per
    person with at least two joints in frame, `teacher="ground_truth"`, `track_id` = the person's
    index in the video, `root_cam` the pelvis in the camera frame).

    Args:
        split: "train", "val" or "test".
        num_videos: videos per pass. Val and test (and train with `loop=False`) yield exactly
            videos 0 .. num_videos-1 once.
        frames_per_video: frames T in every video.
        seed: non-negative base seed.
        image_size: fixed (H, W) in pixels; None draws H and W per video, each uniformly in
            `size_range` (so both portrait and landscape occur).
        size_range: inclusive (min, max) pixels for H and W when `image_size` is None.
        max_people: each video has 1 .. max_people people (uniformly).
        fps: frame rate; `time_s = index / fps` (exact here: generated video is constant rate).
        loop: for train, True streams new videos forever (k = 0, 1, 2, ... never repeats, so the
            student never sees the same clip twice); ignored for val and test.
        shard, num_shards: yield only videos with `k % num_shards == shard`
            (`video_sources.splits.in_position_shard`), so that several producers can split
            one stream without overlap.
        skip_ids: video ids (`synth-<split>-<k>`) not to yield, e.g. those a resumed run used
            before (`StreamDataModule.load_state_dict`); they are skipped without rendering.

    Raises:
        ValueError: on an unknown split or out-of-range argument.
    """

    kind = "synthetic"

    def __init__(
        self,
        *,
        split: str = "train",
        num_videos: int = 64,
        frames_per_video: int = 32,
        seed: int = 0,
        image_size: Sequence[int] | None = None,
        size_range: Sequence[int] = (192, 384),
        max_people: int = 2,
        fps: float = 30.0,
        loop: bool = True,
        shard: int = 0,
        num_shards: int = 1,
        skip_ids: Iterable[str] = (),
    ) -> None:
        check_split(split, choices=sorted(GENERATED_SPLITS))
        check_shard(shard, num_shards)
        if min(num_videos, frames_per_video, max_people) < 1:
            raise ValueError("num_videos, frames_per_video, max_people must be >= 1")
        if seed < 0 or fps <= 0:
            raise ValueError("need seed >= 0 and fps > 0")
        self.image_size = None if image_size is None else _size_pair(image_size, "image_size")
        self.size_range = _size_pair(size_range, "size_range")
        if self.size_range[0] > self.size_range[1]:
            raise ValueError(f"size_range must be (min, max), got {self.size_range}")
        self.split, self.num_videos, self.frames_per_video = split, num_videos, frames_per_video
        self.seed, self.max_people, self.fps, self.loop = seed, max_people, float(fps), loop
        self.shard, self.num_shards = shard, num_shards
        self.skip_ids = frozenset(skip_ids)
        self.stats = SourceStats()
        self._closed = False

    def __iter__(self) -> Iterator[Frame]:
        """Frames of each video in order, video after video (see the class docstring)."""
        endless = self.loop and self.split == "train"
        indices = itertools.count() if endless else range(self.num_videos)
        for k in indices:
            if self._closed:
                return
            mine = in_position_shard(k, self.shard, self.num_shards)
            if not mine or video_id(self.split, k) in self.skip_ids:
                continue
            self.stats.videos_ok += 1
            for frame in self.video(k):
                self.stats.frames += 1
                yield frame

    def video(self, k: int) -> Iterator[Frame]:
        """Frames of video k >= 0 of this split, deterministic and independent of other videos.

        Calling it directly (random access, tests) does not touch `stats`.

        Raises:
            ValueError: if k < 0.
        """
        if k < 0:
            raise ValueError(f"video index must be >= 0, got {k}")
        video = self._make_video(k)
        for t in range(self.frames_per_video):
            yield self._frame(video, t)

    def close(self) -> None:
        """Stop iteration after the current video; there is nothing to release."""
        self._closed = True

    def _make_video(self, k: int) -> _Video:
        """Sample the camera, background and people of video k and precompute their drawing."""
        code = GENERATED_SPLITS[self.split]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, code, k]))
        h, w = self.image_size or rng.integers(*self.size_range, 2, endpoint=True).tolist()
        depth0 = rng.uniform(*DEPTH_RANGE_M)
        f = sample_focal(rng, h, w, depth0, REST_HEIGHT_M)
        K = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1]])
        n_people = int(rng.integers(1, self.max_people + 1))
        tilt = np.radians(rng.uniform(*CAMERA_TILT_RANGE_DEG))
        roots = place_roots(rng, n_people, h, w, f, depth0)
        people = [sample_person(rng, self.frames_per_video, r, tilt) for r in roots]
        amplitude = int(rng.integers(*NOISE_AMPLITUDE_RANGE, endpoint=True))
        m = NOISE_MARGIN
        log.debug("%s-%04d: %dx%d, f=%.0f px, %d people", self.split, k, h, w, f, n_people)
        return _Video(
            ref=VideoRef(id=video_id(self.split, k), kind=self.kind),
            K=K.astype(np.float32),
            background=render_background(rng, h, w),
            noise=rng.integers(0, 2 * amplitude + 1, (h + m, w + m, 3), dtype=np.uint8),
            amplitude=amplitude,
            noise_shifts=rng.integers(0, m + 1, (self.frames_per_video, 2)),
            people=people,
            draw=draw_list(people, K),
        )

    def _frame(self, video: _Video, t: int) -> Frame:
        """Render frame t of `video` and attach its ground truth."""
        h, w = video.background.shape[:2]
        image = video.background.copy()
        draw_people(image, video.draw, t)
        dy, dx = video.noise_shifts[t]
        cv2.add(image, video.noise[dy : dy + h, dx : dx + w], dst=image)  # saturating, uint8
        cv2.subtract(image, (video.amplitude,) * 3, dst=image)  # centre the noise on zero
        truth = tuple(
            label
            for i, person in enumerate(video.people)
            if (label := _truth(person.kpts_cam[t], video.K, (h, w), i)) is not None
        )
        return Frame(
            image=image, index=t, time_s=t / self.fps, video=video.ref, K=video.K.copy(),
            truth=truth,
        )


def video_id(split: str, k: int) -> str:
    """Id of video k of a split, e.g. `synth-train-0007` (`VideoRef.id`)."""
    return f"synth-{split}-{k:04d}"


def _truth(
    kpts_cam: np.ndarray, K: np.ndarray, hw: tuple[int, int], track_id: int
) -> PersonLabel | None:
    """Ground-truth label of one person in one frame via the shared codec (None if off-frame)."""
    return label_from_camera(
        kpts_cam, K, hw, track_id=track_id, confidence=1.0, teacher="ground_truth"
    )


def _size_pair(value: Sequence[int], name: str) -> tuple[int, int]:
    """Two positive ints from a tuple, list or Hydra ListConfig."""
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 16:
        raise ValueError(f"{name} must be two integers >= 16, got {value!r}")
    return pair
