"""Clip-level geometric augmentation (paper Sec. 4.4): random rotation in [-8, 8] degrees and a
random crop, one draw per clip applied to every frame, the identification points carried along.

Both are expressed as one 2x3 affine matrix in pixel coordinates (x right, y down), so frames are
resampled once and points follow exactly the same geometry.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from merlib.config import AugmentConfig


def affine_from(angle: float, frac: float, x0: float, y0: float, size: int) -> np.ndarray:
    """Rotation by ``angle`` degrees about the centre, then the square crop of side
    ``frac·size`` at (x0, y0) resized back to ``size``: a 2x3 pixel affine."""
    crop = frac * size
    rot = np.vstack([cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0), [0, 0, 1]])
    zoom = np.array([[size / crop, 0, -x0 * size / crop], [0, size / crop, -y0 * size / crop], [0, 0, 1]])
    return (zoom @ rot)[:2]


def draw_affine(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random rotation about the centre followed by a crop resized back to ``size``."""
    s = cfg.size
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    frac = rng.uniform(cfg.min_crop_frac, 1.0)
    x0, y0 = rng.uniform(0.0, s - frac * s, size=2)
    return affine_from(angle, frac, x0, y0, s)


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


# --------------------------------------------------------------------------- batched, on the device
# The paper profile draws a fresh rotation and crop for every clip of every step (Sec. 4.4); these
# do it for a whole batch on the batch's device. Same geometry as the numpy functions above.

def affines_from(draws: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """(n, 4) uniforms in [0, 1) -> (n, 2, 3) pixel affines of :func:`affine_from`: the angle,
    the crop fraction and the crop's x0 and y0, each spread over its range in ``cfg``."""
    s = float(cfg.size)
    u = draws.double()
    angle = torch.deg2rad((2 * u[:, 0] - 1) * cfg.max_rotation_deg)
    crop = (cfg.min_crop_frac + (1 - cfg.min_crop_frac) * u[:, 1]) * s
    x0, y0 = u[:, 2] * (s - crop), u[:, 3] * (s - crop)
    a, b, c = torch.cos(angle), torch.sin(angle), s / 2
    k = s / crop
    # cv2.getRotationMatrix2D((c, c), angle, 1) = [[a, b, (1-a)c - bc], [-b, a, bc + (1-a)c]],
    # then the zoom [[k, 0, -x0·k], [0, k, -y0·k]]
    row0 = torch.stack([k * a, k * b, k * ((1 - a) * c - b * c) - x0 * k], 1)
    row1 = torch.stack([-k * b, k * a, k * (b * c + (1 - a) * c) - y0 * k], 1)
    return torch.stack([row0, row1], 1)  # (n, 2, 3) float64


def draw_affines(n: int, cfg: AugmentConfig, *, generator: torch.Generator) -> torch.Tensor:
    """``n`` independent draws on the generator's device: (n, 2, 3) float64 pixel affines."""
    return affines_from(torch.rand((n, 4), generator=generator, device=generator.device,
                                   dtype=torch.float64), cfg)


def _pixel_to_unit(size: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel centres 0..size-1 -> grid_sample's [-1, 1] (align_corners=False)."""
    return like.new_tensor([[2 / size, 0, 1 / size - 1], [0, 2 / size, 1 / size - 1], [0, 0, 1]])


def warp_clips(frames: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) float -> same shape: clip b's frames all through ``affines[b]`` (2x3 pixel
    affine, as cv2.warpAffine reads it), bilinear, zero outside (as :func:`warp_frames`)."""
    b, t, c, h, w = frames.shape
    if h != w:
        raise ValueError(f"warp_clips expects square frames, got {h}x{w}")
    full = torch.cat([affines.double(), affines.new_tensor([0, 0, 1]).double().expand(b, 1, 3)], 1)
    n = _pixel_to_unit(h, full)
    theta = (n @ torch.linalg.inv(full) @ torch.linalg.inv(n))[:, :2]   # output -> source, in [-1, 1]
    theta = theta.to(frames.dtype).repeat_interleave(t, 0)               # (B·T, 2, 3)
    x = frames.flatten(0, 1)                                             # (B·T, C, H, W)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.unflatten(0, (b, t))


def warp_points_batch(points: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
    """(B, T, K, 2) pixel points through each clip's affine (B, 2, 3)."""
    a = affines.to(points.dtype)
    return torch.einsum("btkj,bij->btki", points, a[:, :, :2]) + a[:, None, None, :, 2]


def warp_sides_batch(sides: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
    """(B, T, K) block sides scaled by each affine's isotropic scale."""
    scale = torch.linalg.det(affines[:, :, :2].double()).abs().sqrt().to(sides.dtype)
    return sides * scale[:, None, None]
