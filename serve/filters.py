"""Temporal filtering of poses: the One Euro filter, vectorised over joints and coordinates.

The One Euro filter (Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based Low-pass
Filter for Noisy Input in Interactive Systems", CHI 2012) is a first-order low-pass filter whose
cut-off frequency rises with the signal's speed: slow motion is smoothed hard (no jitter), fast
motion passes with little lag. Per element, with sampling interval dt (seconds):

    alpha(fc)  = 1 / (1 + tau / dt),  tau = 1 / (2 pi fc)
    dx_hat     = lowpass(d_cutoff)((x - x_hat_prev) / dt)
    fc         = min_cutoff + beta * |dx_hat|
    x_hat      = lowpass(fc)(x)

MediaPipe Pose filters its landmarks the same way, with the speed divided by the person's size so
that one `beta` fits near and far people; `update(..., scale=)` does that here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroConfig:
    """Parameters of a One Euro filter.

    Attributes:
        min_cutoff: Hz, the cut-off at rest (lower: smoother, more lag when slow).
        beta: speed coefficient, Hz per unit of (scaled) speed (higher: less lag when fast).
        d_cutoff: Hz, the cut-off of the speed estimate (Casiez et al. use 1 Hz).
    """

    min_cutoff: float = 1.0
    beta: float = 1.0
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise ValueError("One Euro filter: need min_cutoff > 0, d_cutoff > 0 and beta >= 0, "
                             f"got {self}")


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass filter at `cutoff` Hz, interval `dt` s."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """A One Euro filter over an array of any shape (e.g. `[J, 2]` pixels or `[J, 3]` metres).

    Non-finite inputs (NaN joints) pass through and leave that element's state as it was.

    Args:
        config: the filter's parameters.
    """

    def __init__(self, config: OneEuroConfig = OneEuroConfig()) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next `update` returns its input unchanged."""
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    @property
    def speed(self) -> np.ndarray | None:
        """The filtered derivative (units per second, same shape as the input), or None."""
        return self._dx

    def update(self, x: np.ndarray, dt: float, scale: float = 1.0) -> np.ndarray:
        """Filter one sample.

        Args:
            x: the new sample; its shape must stay the same between resets.
            dt: seconds since the previous sample (> 0; a non-positive dt returns `x`).
            scale: the speed is divided by this before it raises the cut-off (e.g. the person's
                box side in pixels), so that `beta` does not depend on the person's size.

        Returns:
            The filtered sample, float32, shape of `x`.
        """
        x = np.asarray(x, np.float32)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        if not dt > 0:
            return self._x.copy()
        ok = np.isfinite(x)
        prev = np.where(np.isfinite(self._x), self._x, x)
        dx = np.where(ok, (x - prev) / dt, 0.0)
        self._dx = self._dx + _alpha(self.config.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.config.min_cutoff + self.config.beta * np.abs(self._dx) / max(scale, 1e-6)
        x_hat = prev + _alpha(cutoff, dt) * (x - prev)
        self._x = np.where(ok, x_hat, self._x).astype(np.float32)
        return np.where(ok, self._x, x).astype(np.float32)
