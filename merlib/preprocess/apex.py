"""Apex-frame detection by frame differences (paper Sec. 4.2, Eqs. 16-17).

Frames are compared in grayscale on the 0-255 scale: RGB is reduced with the ITU-R BT.601 luma
weights ``0.299 R + 0.587 G + 0.114 B`` (the weights of ``cv2.COLOR_RGB2GRAY``), kept in float64
without rounding. ``|a - b|`` is the mean absolute difference of two grayscale frames.

    f(x_i, x_j) = (|x_i - x_j| + 1) / (|x_i - x_{i-1}| + 1)            (Eq. 16)
    dif_i       = f(x_i, x_on) + f(x_i, x_off)                          (Eq. 17)

The apex is the argmax of ``dif`` over the frames strictly between onset and offset (the first
one on ties). A span with no strictly-inner frame (onset and offset equal or adjacent: clips of
1-2 frames) has no defined ``dif``; the apex is then the middle index ``(onset + offset) // 2``,
i.e. the onset, and ``ApexResult.fallback`` is True.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# ITU-R BT.601 luma weights, as cv2.cvtColor(..., COLOR_RGB2GRAY) uses.
BT601_RGB = np.array([0.299, 0.587, 0.114])


class ApexResult(NamedTuple):
    index: int          # apex, as an index into the frame stack
    dif: np.ndarray     # (N,) float64, Eq. 17; NaN outside onset < i < offset

    @property
    def fallback(self) -> bool:
        """True when no frame lies strictly between onset and offset (index is the middle)."""
        return bool(np.all(np.isnan(self.dif)))


class ApexError(NamedTuple):
    frames: np.ndarray | float      # |annotated - detected| in frames
    fraction: np.ndarray | float    # the same, divided by the clip length in frames


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) RGB, any real dtype on the 0-255 scale -> (N, H, W) float64."""
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] == 3:
        return frames.astype(np.float64) @ BT601_RGB
    if frames.ndim == 3:
        return frames.astype(np.float64)
    raise ValueError(f"expected frames (N,H,W) or (N,H,W,3), got shape {frames.shape}")


def difference_curve(frames: np.ndarray, *, onset: int = 0, offset: int | None = None) -> np.ndarray:
    """Eq. 17 for every frame strictly between ``onset`` and ``offset`` (indices into ``frames``,
    offset defaults to the last frame); NaN elsewhere."""
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4):
        raise ValueError(f"expected frames (N,H,W) or (N,H,W,3), got shape {frames.shape}")
    n = frames.shape[0]
    offset = n - 1 if offset is None else int(offset)
    onset = int(onset)
    if not 0 <= onset <= offset < n:
        raise ValueError(f"need 0 <= onset <= offset < {n} frames, got onset={onset}, offset={offset}")
    dif = np.full(n, np.nan)
    if offset - onset < 2:
        return dif
    # One frame at a time: a (N, H, W) float64 stack of a long 960x650 clip would take ~1 GB.
    g_on, g_off = to_gray(frames[onset:onset + 1])[0], to_gray(frames[offset:offset + 1])[0]
    g_prev = to_gray(frames[onset:onset + 1])[0]
    for i in range(onset + 1, offset):
        g = to_gray(frames[i:i + 1])[0]
        noise = np.abs(g - g_prev).mean() + 1.0                  # denominator of Eq. 16
        dif[i] = (np.abs(g - g_on).mean() + 1.0) / noise + (np.abs(g - g_off).mean() + 1.0) / noise
        g_prev = g
    return dif


def detect_apex(frames: np.ndarray, *, onset: int = 0, offset: int | None = None) -> ApexResult:
    """Apex index (into ``frames``) and the Eq. 17 curve; see the module docstring for edge cases."""
    frames = np.asarray(frames)
    if frames.ndim < 1 or frames.shape[0] == 0:
        raise ValueError("detect_apex needs at least one frame")
    dif = difference_curve(frames, onset=onset, offset=offset)
    offset = frames.shape[0] - 1 if offset is None else int(offset)
    if np.all(np.isnan(dif)):
        return ApexResult((int(onset) + offset) // 2, dif)
    return ApexResult(int(np.nanargmax(dif)), dif)


def apex_error(annotated, detected, n_frames) -> ApexError:
    """Absolute apex error in frames and as a fraction of the clip length (scalars or arrays)."""
    err = np.abs(np.asarray(annotated, dtype=np.float64) - np.asarray(detected, dtype=np.float64))
    length = np.asarray(n_frames, dtype=np.float64)
    if np.any(length <= 0):
        raise ValueError("n_frames must be positive")
    frac = err / length
    if err.ndim == 0 and frac.ndim == 0:
        return ApexError(float(err), float(frac))
    return ApexError(err, frac)
