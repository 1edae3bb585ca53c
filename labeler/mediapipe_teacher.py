"""MediaPipe Pose as a CPU teacher: one person per frame, 20 of the 27 SMPL joints.

Uses the legacy ``mp.solutions.pose.Pose`` of mediapipe 0.10.21 (the last release that has it) in
video mode (``static_image_mode=False``): the person found in one frame seeds the next frame's
region, so feed consecutive frames of one video and call `reset()` before the next video.

Legend: J = 27 SMPL joints (``stream_pose.skeleton``), L = 33 MediaPipe landmarks.

Conventions, checked on ../shared/videos with model_complexity=1 (every frame, video mode):

- Left/right are the person's own. basketball_single.mp4 frame 21: MediaPipe's face detector
  (a separate model that fires only on a visible face; both its short- and full-range models,
  scores 0.67 / 0.60 on a 2x crop around the head) finds the face, so the player faces the
  camera, and LEFT_SHOULDER / LEFT_HIP lie at larger image x than RIGHT_* (+196 px / +119 px),
  as a person's own left does when facing the camera.
- World landmarks already use the camera-frame axes of docs/architecture.md; no conversion is applied.
  Y down: in all 180 frames of running_athlete.mp4 and all 40 of basketball_single.mp4 both
  ankles have larger y than the nose and shoulders (frame 0 of running_athlete: ankles
  y = +0.76 / +0.34 m, nose y = -0.63 m). X right: the 3D x-order of the hips matches their 2D
  x-order in 180/180 running frames and 37/40 basketball frames (the 3 others, frames 6, 7
  and 9, have the hips overlapping: |dx| < 18 px in 2D, < 2 cm in 3D). Z forward (smaller
  toward the camera): running_athlete is a side view of a runner facing image-right (nose right
  of the ears in 180/180 frames), so, with left/right as above, the person's right side is the
  near side; the right shoulder and hip have smaller z than the left ones in 180/180 frames
  (frame 0: shoulders -0.20 vs +0.11 m). In basketball_single frames 16-39, where the player
  faces the camera, the nose has z = -0.23 to -0.50 m (in front of the hips).
- 2D: MediaPipe normalises by the image extent (edges at 0 and 1); pixels here have their centres
  at integers (``stream_pose.types``), so x_px = x_norm * W - 0.5 (same for y with H).
- World landmarks have their origin midway between the hips (up to ~1 mm); the pelvis is set to
  the hip midpoint and `make_label` makes everything pelvis-relative, so `kpts3d[0] == 0` exactly.

Throughput on running_athlete.mp4 (1920x1088, 2-core CPU shared with other jobs): MediaPipe's own
`process()` takes 15-35 ms per frame (30-68 frames/s, load-dependent); this wrapper adds ~0.13 ms
(landmark conversion and `make_label`) and copies the image only if it is not C-contiguous.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from labeler.base import TeacherUnavailableError
from stream_pose.codec import make_label
from stream_pose.skeleton import JOINT_INDEX, NUM_JOINTS, PELVIS
from stream_pose.types import Frame, PersonLabel

log = logging.getLogger(__name__)

# SMPL joint <- MediaPipe PoseLandmark index (names from mediapipe's PoseLandmark enum).
# SMPL's foot joint sits near the ball of the foot, so it takes FOOT_INDEX, not HEEL.
# MediaPipe has no spine1-3, neck, collars or head joint: those stay undefined (visibility 0).
SMPL_FROM_MEDIAPIPE: dict[str, int] = {
    "left_hip": 23,  # LEFT_HIP
    "right_hip": 24,  # RIGHT_HIP
    "left_knee": 25,  # LEFT_KNEE
    "right_knee": 26,  # RIGHT_KNEE
    "left_ankle": 27,  # LEFT_ANKLE
    "right_ankle": 28,  # RIGHT_ANKLE
    "left_foot": 31,  # LEFT_FOOT_INDEX
    "right_foot": 32,  # RIGHT_FOOT_INDEX
    "left_shoulder": 11,  # LEFT_SHOULDER
    "right_shoulder": 12,  # RIGHT_SHOULDER
    "left_elbow": 13,  # LEFT_ELBOW
    "right_elbow": 14,  # RIGHT_ELBOW
    "left_wrist": 15,  # LEFT_WRIST
    "right_wrist": 16,  # RIGHT_WRIST
    "nose": 0,  # NOSE
    "right_eye": 5,  # RIGHT_EYE
    "left_eye": 2,  # LEFT_EYE
    "right_ear": 8,  # RIGHT_EAR
    "left_ear": 7,  # LEFT_EAR
}
_SMPL_IDX = np.array([JOINT_INDEX[n] for n in SMPL_FROM_MEDIAPIPE], dtype=np.int64)
_MP_IDX = np.array(list(SMPL_FROM_MEDIAPIPE.values()), dtype=np.int64)
_HIPS = np.array([JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"]], dtype=np.int64)

# Landmark model per model_complexity, relative to the mediapipe package (mediapipe.solutions.pose).
_LANDMARK_MODEL = {0: "lite", 1: "full", 2: "heavy"}
_INSTALL_HINT = 'pip install -e ".[mediapipe]"'


class MediaPipeTeacher:
    """Teacher protocol (``labeler.base.Teacher``) over MediaPipe Pose, single person, CPU.

    Not thread-safe: MediaPipe's graph keeps per-video state without a lock. Use one instance per
    producer thread or process, created there, and never one per frame (that leaks memory).

    Args:
        model_complexity: 0 (lite), 1 (full) or 2 (heavy). Only 1 ships in the mediapipe wheel;
            0 and 2 work only if their model file was already downloaded into the package.
        min_detection_confidence: MediaPipe's person-detector score threshold, in [0, 1].
        min_tracking_confidence: MediaPipe's landmark-presence threshold below which it re-detects
            on the next frame, in [0, 1].
        visibility_threshold: a landmark whose MediaPipe visibility is below this gets
            visibility 0, in [0, 1].
        smooth_landmarks: MediaPipe's temporal filter across frames of one video.

    Raises:
        ValueError: on an unknown model_complexity or a threshold outside [0, 1].
        TeacherUnavailableError: if mediapipe (with ``mp.solutions``) is not installed, or the
            landmark model for `model_complexity` is not in the package (it would be downloaded,
            which fails offline).
    """

    name = "mediapipe"
    device = "cpu"

    def __init__(
        self,
        *,
        model_complexity: int = 1,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        visibility_threshold: float = 0.5,
        smooth_landmarks: bool = True,
    ) -> None:
        if model_complexity not in _LANDMARK_MODEL:
            raise ValueError(f"model_complexity must be 0, 1 or 2, got {model_complexity!r}")
        _check_unit_interval(
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
            visibility_threshold=visibility_threshold,
        )
        mp_pose = _import_mediapipe_pose()
        _check_model_present(mp_pose, model_complexity)
        self.visibility_threshold = float(visibility_threshold)
        self._pose = mp_pose.Pose(
            static_image_mode=False,
            model_complexity=model_complexity,
            smooth_landmarks=smooth_landmarks,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        log.info("MediaPipe Pose ready (model_complexity=%d)", model_complexity)

    def label(self, frame: Frame) -> list[PersonLabel]:
        """The most prominent person in `frame`, or [] when MediaPipe finds none.

        Args:
            frame: `frame.image` `[H, W, 3]` uint8 RGB, any size.

        Returns:
            At most one `PersonLabel` with track_id 0: `kpts2d` `[J, 2]` image pixels, `kpts3d`
            `[J, 3]` metres, pelvis-relative, camera-frame axes (X right, Y down, Z forward),
            `visibility` `[J]` (0 for joints MediaPipe lacks, below `visibility_threshold` or
            outside the frame; the pelvis, the hip midpoint, counts as visible when both hips
            do), and `confidence` = mean MediaPipe visibility of the 19 mapped landmarks.
            `root_cam` is None: MediaPipe gives no camera distance.

        Raises:
            ValueError: if the image is not `[H, W, 3]` uint8.
            RuntimeError: if the teacher was closed.
        """
        if self._pose is None:
            raise RuntimeError("MediaPipeTeacher.label() called after close()")
        image = _as_rgb_uint8(frame.image)
        result = self._pose.process(image)
        if result.pose_landmarks is None or result.pose_world_landmarks is None:
            return []
        kpts2d, kpts3d, mp_vis = _to_smpl(result, image.shape[:2])
        person = make_label(
            kpts2d,
            kpts3d,
            mp_vis >= self.visibility_threshold,
            image.shape[:2],
            track_id=0,
            confidence=float(mp_vis[_SMPL_IDX].mean()),
            teacher=self.name,
        )
        return [] if person is None else [person]

    def reset(self) -> None:
        """Restart MediaPipe's graph so the next video starts without the last one's track.

        This drops the tracked region and the landmark smoothing state. MediaPipe's fake 30 fps
        clock is not rewound, but a restarted graph accepts any increasing timestamps.
        """
        if self._pose is not None:
            self._pose.reset()

    def close(self) -> None:
        """Release the MediaPipe graph; safe to call twice."""
        if self._pose is not None:
            self._pose.close()
            self._pose = None

    def __enter__(self) -> MediaPipeTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_unit_interval(**values: float) -> None:
    """Raise ValueError naming the first argument outside [0, 1]."""
    for arg, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{arg} must be in [0, 1], got {value!r}")


def _import_mediapipe_pose():
    """``mediapipe.solutions.pose``, or TeacherUnavailableError with the install hint."""
    try:
        import mediapipe as mp

        return mp.solutions.pose
    except (ImportError, AttributeError) as err:
        raise TeacherUnavailableError(
            "the MediaPipe teacher needs mediapipe 0.10.21 (mp.solutions.pose was removed in "
            f"0.10.31); install it with: {_INSTALL_HINT}"
        ) from err


def _check_model_present(mp_pose, model_complexity: int) -> None:
    """Raise TeacherUnavailableError if the landmark model would have to be downloaded."""
    kind = _LANDMARK_MODEL[model_complexity]
    # mediapipe/python/solutions/pose.py -> mediapipe/
    path = Path(mp_pose.__file__).resolve().parents[2] / (
        f"modules/pose_landmark/pose_landmark_{kind}.tflite"
    )
    if not path.is_file():
        raise TeacherUnavailableError(
            f"MediaPipe Pose model_complexity={model_complexity} needs {path.name}, which is not "
            f"in the installed mediapipe package ({path.parent}); only model_complexity=1 (full) "
            "ships in the wheel and the others are downloaded on first use, which fails offline. "
            "Use model_complexity=1, or put the file there first (mediapipe's own "
            f"mp.solutions.pose.Pose(model_complexity={model_complexity}), run once online, "
            "downloads it)."
        )


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` uint8 RGB as a C-contiguous array (copied only if it is not one already).

    Raises:
        ValueError: on another shape or dtype.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an [H, W, 3] uint8 RGB image, got {image.shape} {image.dtype}"
        )
    return np.ascontiguousarray(image)


def _to_smpl(result, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe Pose output to SMPL-27 arrays; unmapped joints are 0 with visibility 0.

    Returns:
        kpts2d `[J, 2]` float32 pixels (centres at integers), kpts3d `[J, 3]` float32 metres
        (MediaPipe world frame: hip-midpoint origin, camera axes), visibility `[J]` float32 in
        [0, 1] (MediaPipe's; the pelvis takes the lower of its two hips).
    """
    h, w = image_hw
    image_lm = np.array(
        [(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark], dtype=np.float32
    )  # [L, 3] normalised x, y and visibility
    world_lm = np.array(
        [(p.x, p.y, p.z) for p in result.pose_world_landmarks.landmark], dtype=np.float32
    )  # [L, 3] metres
    kpts2d = np.zeros((NUM_JOINTS, 2), np.float32)
    kpts3d = np.zeros((NUM_JOINTS, 3), np.float32)
    vis = np.zeros(NUM_JOINTS, np.float32)
    kpts2d[_SMPL_IDX] = image_lm[_MP_IDX, :2] * np.array([w, h], np.float32) - 0.5
    kpts3d[_SMPL_IDX] = world_lm[_MP_IDX]
    vis[_SMPL_IDX] = image_lm[_MP_IDX, 2]
    kpts2d[PELVIS] = kpts2d[_HIPS].mean(0)
    kpts3d[PELVIS] = kpts3d[_HIPS].mean(0)
    vis[PELVIS] = vis[_HIPS].min()
    return kpts2d, kpts3d, vis
