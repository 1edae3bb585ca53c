"""A serving session: one video or one client stream, frame by frame, every frame answered.

Per frame (`Session.step`):
1. Observe. With a student: the top-down tracker (`serve.tracker.TopDownTracker`) crops each
   tracked person and runs the student on the batch; the teacher boxes people when tracking
   starts or is lost. With a teacher alone (`model=mediapipe`): the teacher's people.
2. Associate observations with the session's tracks: the tracker's own person id where it
   continues a track, else the best box overlap (IoU >= 0.3) with a track's predicted box, else a
   new `track_id`. So a person who vanishes for a few frames (occlusion, a blank frame, a missed
   detection) comes back with the same id.
3. Filter each observed track's 2D and 3D joints with a One Euro filter (`serve.filters`), reset
   when the track is re-found after a gap or jumps by more than half its box.
4. Fill gaps (as PHALP does for 4D-Humans, seed 001): a track with no observation in this frame
   is predicted from its motion (2D joints moved by the track's velocity, damped by
   `GAP_VELOCITY_DECAY` per frame; 3D held) for up to `max_gap` frames, flagged `predicted` with
   `tracking_confidence` decayed by `GAP_CONFIDENCE_DECAY` per missing frame, then dropped.

Units: 2D image pixels of the frame given (x right, y down); 3D metres, pelvis-relative, camera
axes (X right, Y down, Z forward). Time: seconds, from `time_s` or `frame_number / fps`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from labeler.base import Teacher
from serve.filters import OneEuroConfig, OneEuroFilter
from serve.models import CropModel
from serve.tracker import IOU_SAME_PERSON, TopDownTracker, box_iou
from stream_pose.camera import default_K
from stream_pose.codec import bbox_from_kpts
from stream_pose.skeleton import NUM_JOINTS
from stream_pose.types import Frame, VideoRef

logger = logging.getLogger(__name__)

GAP_VELOCITY_DECAY = 0.8  # a predicted track slows down: velocity x 0.8 per missing frame
GAP_CONFIDENCE_DECAY = 0.85  # tracking_confidence x 0.85 per missing frame (halves in ~4)
RESET_JUMP = 0.5  # re-found more than half a box side away from its prediction: reset filters
# Frame rates a session accepts (frames/s). Above 1000 (high-speed cameras) the time step
# 1/fps vanishes and the One Euro filter's smoothing factor with it: every answer turned null.
FPS_RANGE = (0.01, 1000.0)
# Frame numbers stay exact as floats (number / fps); beyond that a client is not counting frames.
MAX_FRAME_NUMBER = 2**53
# Defaults measured on ../shared/videos at 30 fps: 2D speed is divided by the box side, so
# beta is per box-side/s; 3D speed is in m/s (a body is ~1.7 m, about one box side).
FILTER_2D = OneEuroConfig(min_cutoff=1.5, beta=4.0, d_cutoff=1.0)
FILTER_3D = OneEuroConfig(min_cutoff=1.0, beta=2.0, d_cutoff=1.0)


@dataclass
class TrackedPose:
    """One person in one frame, as the session answers.

    Attributes:
        track_id: stable within the session.
        kpts2d: `[J, 2]` float32 image pixels.
        kpts3d: `[J, 3]` float32 metres, pelvis-relative, camera axes.
        confidence: `[J]` float32 in [0, 1].
        defined: `[J]` bool, the joints the model gives (a teacher alone lacks some: MediaPipe
            has no spine, neck or collar joints); undefined joints have confidence 0.
        box_xyxy: `[4]` float32 image pixels, around the defined joints.
        predicted: True when the person was not observed in this frame (gap filling).
        tracking_confidence: in [0, 1]; the observation's confidence, decayed while predicted.
    """

    track_id: int
    kpts2d: np.ndarray
    kpts3d: np.ndarray
    confidence: np.ndarray
    defined: np.ndarray
    box_xyxy: np.ndarray
    predicted: bool
    tracking_confidence: float


@dataclass
class SessionFrame:
    """The answer for one frame.

    Attributes:
        frame_number: the caller's frame number.
        width, height: frame size in pixels.
        K: `[3, 3]` float32 intrinsics used (pixels).
        people: one `TrackedPose` per live track, by `track_id`.
        processing_ms: milliseconds of `Session.step` (observe, associate, filter, fill).
        teacher_ms: milliseconds in the teacher this frame, or None if it did not run.
    """

    frame_number: int
    width: int
    height: int
    K: np.ndarray
    people: list[TrackedPose]
    processing_ms: float
    teacher_ms: float | None


@dataclass
class _Observation:
    source_id: int | None  # the tracker's person id (None for a teacher alone)
    kpts2d: np.ndarray
    kpts3d: np.ndarray
    confidence: np.ndarray
    defined: np.ndarray
    box: np.ndarray
    score: float


@dataclass
class _Track:
    id: int
    source_id: int | None
    last: TrackedPose
    time_s: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros((NUM_JOINTS, 2), np.float32))
    gap: int = 0
    score: float = 0.0  # tracking confidence of the last observation
    f2d: OneEuroFilter | None = None
    f3d: OneEuroFilter | None = None


class Session:
    """Tracks, filters and gap-fills the poses of one video or client stream.

    Args:
        crop_model: the student (`serve.models.CropModel`), or None to serve the teacher alone.
        teacher: boxes people for the student, or is the model itself; the session owns it
            (`close` closes it).
        redetect_every: the teacher runs at least every this many frames (student only).
        min_confidence: a student track below this mean joint confidence is lost and re-boxed.
        max_gap: frames a track is predicted without an observation before it is dropped.
        smoothing: One Euro filtering on (True) or off.
        filter_2d, filter_3d: the filters' parameters (pixels scaled by box side; metres).
        fps: frame rate assumed when frames come without `time_s`, within `FPS_RANGE`.

    Raises:
        ValueError: on out-of-range arguments.
    """

    def __init__(
        self,
        crop_model: CropModel | None,
        teacher: Teacher,
        *,
        redetect_every: int = 30,
        min_confidence: float = 0.4,
        max_gap: int = 30,
        smoothing: bool = True,
        filter_2d: OneEuroConfig = FILTER_2D,
        filter_3d: OneEuroConfig = FILTER_3D,
        fps: float = 30.0,
    ) -> None:
        if max_gap < 0 or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:  # NaN fails both
            raise ValueError(f"need max_gap >= 0 and fps in [{FPS_RANGE[0]}, {FPS_RANGE[1]}], "
                             f"got {max_gap}, {fps}")
        self.teacher = teacher
        self.tracker = None if crop_model is None else TopDownTracker(
            crop_model, teacher, redetect_every=redetect_every, min_confidence=min_confidence)
        self.max_gap, self.smoothing, self.fps = max_gap, smoothing, fps
        self.filter_2d, self.filter_3d = filter_2d, filter_3d
        self.frames = 0
        self._tracks: dict[int, _Track] = {}
        self._next_id = 0
        self._video = VideoRef(id="session", kind="stream", uri="")

    def close(self) -> None:
        """Release the teacher; idempotent."""
        if self.teacher is not None:
            self.teacher.close()
            self.teacher = None

    def step(self, image: np.ndarray, frame_number: int | None = None,
             time_s: float | None = None, K: np.ndarray | None = None,
             original_size: tuple[int, int] | None = None) -> SessionFrame:
        """Answer one frame.

        Args:
            image: `[h, w, 3]` uint8 RGB, possibly downscaled from what the client sent.
            frame_number: the caller's number (default: frames seen so far).
            time_s: presentation time in seconds (default: `frame_number / fps`).
            K: `[3, 3]` intrinsics of the original frame; default `default_K(H, W)`.
            original_size: (W, H) the client's frame had; 2D answers (keypoints, boxes) are
                scaled to it. Default: the image's own size.

        Raises:
            ValueError: an image that is not `[H, W, 3]` uint8.
            RuntimeError: the session was closed.
            labeler.base.TeacherUnavailableError: the teacher cannot run.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 RGB image, got {image.shape} "
                             f"{image.dtype}")
        if self.teacher is None:
            raise RuntimeError("session is closed")
        t0 = time.perf_counter()
        number = self.frames if frame_number is None else int(frame_number)
        now = number / self.fps if time_s is None else float(time_s)
        h, w = image.shape[:2]
        frame = Frame(image=image, index=number, time_s=now, video=self._video)
        observations, teacher_ms = self._observe(frame)
        people = self._update_tracks(observations, now)
        self.frames += 1
        W, H = (w, h) if original_size is None else (int(original_size[0]),
                                                      int(original_size[1]))
        if (W, H) != (w, h):
            people = [_rescaled(p, W / w, H / h) for p in people]
        return SessionFrame(
            frame_number=number, width=W, height=H,
            K=(default_K(H, W) if K is None else np.asarray(K, np.float32)),
            people=people, processing_ms=1000.0 * (time.perf_counter() - t0),
            teacher_ms=teacher_ms,
        )

    def _observe(self, frame: Frame) -> tuple[list[_Observation], float | None]:
        """This frame's people, from the tracker + student or from the teacher alone."""
        if self.tracker is not None:
            poses = self.tracker.step(frame)
            defined = self.tracker.model.defined
            return [
                _Observation(
                    source_id=p.person, kpts2d=p.kpts2d, kpts3d=p.kpts3d,
                    confidence=p.confidence, defined=defined,
                    box=bbox_from_kpts(p.kpts2d, p.tracked),
                    score=float(p.confidence[p.tracked].mean()) if p.tracked.any() else 0.0,
                ) for p in poses.people
            ], poses.teacher_ms
        t0 = time.perf_counter()
        labels = self.teacher.label(frame)
        ms = 1000.0 * (time.perf_counter() - t0)
        return [
            _Observation(
                source_id=None, kpts2d=lb.kpts2d, kpts3d=lb.kpts3d,
                confidence=(lb.visibility > 0) * np.float32(lb.confidence),
                defined=lb.visibility > 0, box=np.asarray(lb.bbox_xyxy, np.float32),
                score=float(lb.confidence),
            ) for lb in labels
        ], ms

    def _update_tracks(self, observations: list[_Observation], now: float) -> list[TrackedPose]:
        """Associate, filter, fill gaps; returns the frame's people by track id."""
        matches = self._associate(observations)
        people = []
        for obs, track in zip(observations, matches):
            people.append(self._observed(obs, track, now))
        seen = {p.track_id for p in people}
        for track in list(self._tracks.values()):
            if track.id in seen:
                continue
            track.gap += 1
            if track.gap > self.max_gap:
                del self._tracks[track.id]
                continue
            people.append(self._predicted(track, now))
        return sorted(people, key=lambda p: p.track_id)

    def _associate(self, observations: list[_Observation]) -> list[_Track | None]:
        """The track each observation continues (None: a new person)."""
        matches: list[_Track | None] = [None] * len(observations)
        free = dict(self._tracks)
        for i, obs in enumerate(observations):  # the tracker's id continues its own track
            for track in free.values():
                if obs.source_id is not None and track.source_id == obs.source_id:
                    matches[i] = free.pop(track.id)
                    break
        pairs = sorted(((box_iou(obs.box, _predicted_box(t)), i, t.id)
                        for i, obs in enumerate(observations) if matches[i] is None
                        for t in free.values()), reverse=True)
        for iou, i, track_id in pairs:
            if iou >= IOU_SAME_PERSON and matches[i] is None and track_id in free:
                matches[i] = free.pop(track_id)
        return matches

    def _observed(self, obs: _Observation, track: _Track | None, now: float) -> TrackedPose:
        """The pose of an observed person, filtered along its track (created if new)."""
        if track is None:
            track = _Track(id=self._next_id, source_id=obs.source_id, last=None, time_s=now)  # type: ignore[arg-type]
            self._next_id += 1
            self._tracks[track.id] = track
        kpts2d, kpts3d = obs.kpts2d.astype(np.float32), obs.kpts3d.astype(np.float32)
        side = float(max(obs.box[2] - obs.box[0], obs.box[3] - obs.box[1], 1.0))
        if track.last is not None and (track.gap > 0 or _jump(track, obs.box) > RESET_JUMP):
            track.f2d = track.f3d = None  # re-found elsewhere: the past no longer applies
        if self.smoothing:
            track.f2d = track.f2d or OneEuroFilter(self.filter_2d)
            track.f3d = track.f3d or OneEuroFilter(self.filter_3d)
            dt = now - track.time_s
            kpts2d = track.f2d.update(kpts2d, dt, scale=side)
            kpts3d = track.f3d.update(kpts3d, dt)
        if track.last is not None:
            frames = max(1, track.gap + 1)
            step = np.nan_to_num((kpts2d - track.last.kpts2d) / frames)
            track.velocity = 0.5 * track.velocity + 0.5 * step if track.gap == 0 else step
        pose = TrackedPose(
            track_id=track.id, kpts2d=kpts2d, kpts3d=kpts3d,
            confidence=(obs.confidence * obs.defined).astype(np.float32),
            defined=obs.defined.copy(), box_xyxy=np.asarray(obs.box, np.float32),
            predicted=False, tracking_confidence=float(np.clip(obs.score, 0.0, 1.0)),
        )
        track.last, track.time_s, track.gap, track.source_id = pose, now, 0, obs.source_id
        track.score = pose.tracking_confidence
        return pose

    def _predicted(self, track: _Track, now: float) -> TrackedPose:
        """The pose of a track missing from this frame: moved on by its damped velocity."""
        track.velocity = track.velocity * GAP_VELOCITY_DECAY
        last = track.last
        kpts2d = last.kpts2d + track.velocity
        shift = track.velocity[last.defined].mean(0) if last.defined.any() else np.zeros(2)
        decay = GAP_CONFIDENCE_DECAY ** track.gap
        pose = TrackedPose(
            track_id=track.id, kpts2d=kpts2d.astype(np.float32), kpts3d=last.kpts3d.copy(),
            confidence=(last.confidence * GAP_CONFIDENCE_DECAY).astype(np.float32),
            defined=last.defined.copy(),
            box_xyxy=(last.box_xyxy + np.tile(shift, 2)).astype(np.float32), predicted=True,
            tracking_confidence=float(track.score * decay),
        )
        track.last = pose
        track.source_id = None  # the tracker lost it; a re-detection is matched by overlap
        return pose


def _rescaled(pose: TrackedPose, sx: float, sy: float) -> TrackedPose:
    """A copy of `pose` with its 2D (keypoints, box) scaled by (sx, sy)."""
    scale = np.array([sx, sy], np.float32)
    return replace(pose, kpts2d=pose.kpts2d * scale, box_xyxy=pose.box_xyxy * np.tile(scale, 2))


def _predicted_box(track: _Track) -> np.ndarray:
    """Where the track's box is expected in the next frame (`[4]` xyxy pixels)."""
    v = track.velocity[track.last.defined].mean(0) if track.last.defined.any() else np.zeros(2)
    return track.last.box_xyxy + np.tile(v, 2)


def _jump(track: _Track, box: np.ndarray) -> float:
    """Distance from the track's predicted box centre to `box`'s centre, in box sides."""
    pred = _predicted_box(track)
    side = max(pred[2] - pred[0], pred[3] - pred[1], 1.0)
    return float(np.linalg.norm((box[:2] + box[2:]) / 2 - (pred[:2] + pred[2:]) / 2) / side)
