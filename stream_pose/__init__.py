"""stream-pose shared core: skeleton, record types, camera geometry and the target codec.

Every stage (video_sources, labeler, data, train) talks to the next one only through the
types defined here.
"""

from stream_pose.skeleton import BONES, FLIP_PERM, JOINT_NAMES, NUM_JOINTS, PARENTS
from stream_pose.types import Frame, PersonLabel, Sample, VideoRef

__all__ = [
    "BONES",
    "FLIP_PERM",
    "Frame",
    "JOINT_NAMES",
    "NUM_JOINTS",
    "PARENTS",
    "PersonLabel",
    "Sample",
    "VideoRef",
]
