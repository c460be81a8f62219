"""Clip-level geometric augmentation (paper Sec. 4.4): random rotation in [-8, 8] degrees and a
random crop, one draw per clip applied to every frame, the identification points carried along.

Both are expressed as one 2x3 affine matrix in pixel coordinates (x right, y down), so frames are
resampled once and points follow exactly the same geometry.
"""
from __future__ import annotations

import cv2
import numpy as np

from merlib.config import AugmentConfig


def draw_affine(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random rotation about the centre followed by a crop resized back to ``size``."""
    s = cfg.size
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    frac = rng.uniform(cfg.min_crop_frac, 1.0)
    crop = frac * s
    x0, y0 = rng.uniform(0.0, s - crop, size=2)
    rot = np.vstack([cv2.getRotationMatrix2D((s / 2, s / 2), angle, 1.0), [0, 0, 1]])
    zoom = np.array([[s / crop, 0, -x0 * s / crop], [0, s / crop, -y0 * s / crop], [0, 0, 1]])
    return (zoom @ rot)[:2]


def warp_frames(frames: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(T, H, W, C) uint8 -> same shape, bilinear, zero outside."""
    h, w = frames.shape[1:3]
    return np.stack([cv2.warpAffine(f, affine, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) for f in frames])


def warp_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(..., 2) pixel coordinates through the same affine."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ affine[:, :2].T + affine[:, 2]


def warp_sides(sides: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Block sides scale with the affine's isotropic scale (rotation keeps lengths)."""
    return np.asarray(sides, dtype=np.float64) * np.sqrt(abs(np.linalg.det(affine[:, :2])))


def augment_clip(frames: np.ndarray, centres: np.ndarray, sides: np.ndarray,
                 rng: np.random.Generator, cfg: AugmentConfig):
    """The same draw for all frames and their points; returns (frames, centres, sides, affine)."""
    affine = draw_affine(rng, cfg)
    return warp_frames(frames, affine), warp_points(centres, affine), warp_sides(sides, affine), affine
