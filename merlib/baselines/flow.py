"""Onset→apex optical flow inputs of STSTNet and OFF-ApexNet: TV-L1 flow (OpenCV contrib's
``cv2.optflow.DualTVL1OpticalFlow``), optical strain, resizing and per-clip scaling.

Flow convention (OpenCV's): ``flow = tvl1_flow(prev, nxt)`` gives, per pixel of ``prev``, the
displacement (u, v) = (flow[..., 0], flow[..., 1]) in pixels along x (columns) and y (rows) such
that prev(y, x) ≈ nxt(y + v, x + u).

Optical strain (Liong et al. 2014, "Subtle expression recognition using optical strain weighted
features"; 2016, "Spontaneous subtle expression detection and recognition based on facial
strain"): with w = (u, v), ε = ½(∇w + ∇wᵀ) and
|ε| = sqrt(ε_xx² + ε_yy² + ε_xy² + ε_yx²) = sqrt(u_x² + v_y² + ½(u_y + v_x)²).
"""
from __future__ import annotations

import cv2
import numpy as np

from merlib.baselines.image import to_gray

# OpenCV's own defaults (cv2.optflow.DualTVL1OpticalFlow_create()), written out so that a change
# of OpenCV's defaults cannot change the features silently. The same values as the IPOL TV-L1
# reference (Sánchez, Meinhardt-Llopis & Facciolo 2013) that STSTNet's authors point to, for
# tau, lambda, theta, warps and epsilon.
TVL1 = {"tau": 0.25, "lambda_": 0.15, "theta": 0.3, "nscales": 5, "warps": 5, "epsilon": 0.01,
        "inner_iterations": 30, "outer_iterations": 10, "scale_step": 0.8, "gamma": 0.0,
        "median_filtering": 5}


class FlowFailed(ValueError):
    """A clip whose flow cannot be computed; the message is the reason."""


def tvl1_flow(prev: np.ndarray, nxt: np.ndarray, *, tau: float = 0.25, lambda_: float = 0.15,
              theta: float = 0.3, nscales: int = 5, warps: int = 5, epsilon: float = 0.01,
              inner_iterations: int = 30, outer_iterations: int = 10, scale_step: float = 0.8,
              gamma: float = 0.0, median_filtering: int = 5) -> np.ndarray:
    """Dual TV-L1 flow from ``prev`` to ``nxt``: two (H, W) uint8 grayscale images ->
    (H, W, 2) float32 (u, v) in pixels."""
    for name, img in (("prev", prev), ("nxt", nxt)):
        if img.dtype != np.uint8 or img.ndim != 2:
            raise ValueError(f"{name} must be a (H, W) uint8 image, got {img.dtype} {img.shape}")
    if prev.shape != nxt.shape:
        raise ValueError(f"images differ in shape: {prev.shape} vs {nxt.shape}")
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(  # positional: the binding spells "innnerIterations"
        tau, lambda_, theta, nscales, warps, epsilon, inner_iterations, outer_iterations,
        scale_step, gamma, median_filtering, False)
    return tvl1.calc(np.ascontiguousarray(prev), np.ascontiguousarray(nxt), None)


def optical_strain(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Optical strain magnitude of a flow field: u, v (H, W) -> (H, W)
    sqrt(u_x² + v_y² + ½(u_y + v_x)²), derivatives by central differences (one-sided at the
    border, ``np.gradient``; exact for a linear field)."""
    u_y, u_x = np.gradient(np.asarray(u, dtype=np.float64))  # axis 0 is y (rows), axis 1 is x
    v_y, v_x = np.gradient(np.asarray(v, dtype=np.float64))
    return np.sqrt(u_x ** 2 + v_y ** 2 + 0.5 * (u_y + v_x) ** 2)


def onset_apex_flow(frames: np.ndarray, *, size: int = 28, tvl1: dict | None = None) -> np.ndarray:
    """The flow input of one clip: onset (frames[0]) → apex (frames[-1]).

    frames (T, H, W, 3) uint8 RGB, the cache's aligned TIM frames -> (3, size, size) float32:
    u, v and the optical strain magnitude, all computed at full resolution, then resized by
    area averaging (``cv2.INTER_AREA``). Raises ``FlowFailed`` when onset and apex are the same
    image (no motion to measure) or the flow is not finite."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise FlowFailed(f"need at least two frames (T, H, W, 3), got shape {frames.shape}")
    onset, apex = to_gray(frames[[0, -1]])
    if np.array_equal(onset, apex):
        raise FlowFailed("onset and apex frames are identical: no motion to compute flow from")
    flow = tvl1_flow(onset, apex, **(TVL1 if tvl1 is None else tvl1))  # (H, W, 2)
    if not np.isfinite(flow).all():
        raise FlowFailed("TV-L1 flow has non-finite values")
    strain = optical_strain(flow[..., 0], flow[..., 1]).astype(np.float32)
    stack = np.dstack([flow, strain])  # (H, W, 3): u, v, strain
    small = cv2.resize(stack, (size, size), interpolation=cv2.INTER_AREA)  # (size, size, 3)
    return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32)


def minmax_scale(x: np.ndarray, *, scale: float = 255.0) -> np.ndarray:
    """Each sample's channels min-max scaled to [0, scale] independently: (N, C, H, W) ->
    float32 of the same shape; a constant channel becomes 0."""
    x = np.asarray(x, dtype=np.float64)
    lo = x.min(axis=(2, 3), keepdims=True)
    span = x.max(axis=(2, 3), keepdims=True) - lo
    out = np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)
    return (out * scale).astype(np.float32)
