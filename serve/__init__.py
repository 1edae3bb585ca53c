"""Serving: everything that uses a trained student (or a teacher alone) on new video.

Checkpoint loading (`checkpoint`), export (`export`), evaluation (`evaluate`), the top-down
tracker (`tracker`), prediction on a file (`predict`), overlays (`overlay`) and the pose services
(`engine`, `session`, `fields`, `jobs`, `stdio`, `http`) behind the `stream-pose` command (`cli`).
"""
