"""The train stage: the student network, its metrics, the LightningModule and the Hydra entry point.

- `train.student`: `PoseStudent`, crops `[B, 3, S, S]` in [0, 1] -> 3D joints `[B, 27, 3]` metres
  (pelvis-relative, camera axes) and 2D joints `[B, 27, 2]` crop pixels.
- `train.metrics`: MPJPE, PA-MPJPE and the mean-pose baseline, visibility-masked.
- `train.module`: `PoseDistillModule`, the loss, the logged metrics and the optimizer wiring.
- `train.callbacks`, `train.loggers`: stream telemetry, a checkpoint on interrupt, W&B set-up.
- `train.train`: `train(cfg)` and the `stream-pose-train` / `python -m train.train` CLI.
"""
