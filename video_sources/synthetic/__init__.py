"""Procedural synthetic video with exact 3D ground truth: the download-free default source.

Each video is a fixed pinhole camera looking at one or more capsule-figure people who move
smoothly between a few random keyframe poses in front of a random cluttered background. The
people are posed by forward kinematics on the SMPL-27 skeleton, so every frame carries exact
camera-frame joints; `Frame.truth` holds them as `PersonLabel`s made by the shared codec.

One room per responsibility:

- `body`: skeleton, proportions, joint ranges, keyframe angles, forward kinematics;
- `scene`: camera and people (placement, orientation, motion, palette);
- `render`: drawing the people and the background (what the pixels encode of 3D pose);
- `source`: `SyntheticSource`, the `VideoSource` that generates, renders and labels videos.

Legend: T frames per video, J = 27 joints, P drawn parts. 3D in metres. Camera frame: X right,
Y down, Z forward. Body frame (rest pose and local joint rotations): SMPL's, X = the person's
left, Y up, Z to the person's front.

`SyntheticSource` is re-exported here, so `video_sources.synthetic.SyntheticSource` (a config's
`_target_`) keeps working.
"""

from video_sources.synthetic.body import forward_kinematics
from video_sources.synthetic.source import SyntheticSource, video_id

__all__ = ["SyntheticSource", "forward_kinematics", "video_id"]
