"""Grayscale conversion shared by the baselines' features."""
from __future__ import annotations

import cv2
import numpy as np


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 RGB -> (..., H, W) uint8 grayscale.

    OpenCV's ``COLOR_RGB2GRAY`` (BT.601 weights 0.299, 0.587, 0.114, rounded to uint8, as MATLAB's
    ``rgb2gray``). Integer output on purpose: LBP codes compare neighbours with ``>=`` and TV-L1
    takes 8-bit images (it converges far slower on float images in 0–255).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames (..., H, W, 3), got {frames.dtype} {frames.shape}")
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    gray = np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in flat])
    return gray.reshape(*lead, *frames.shape[-3:-1])
