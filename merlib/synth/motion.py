"""Expression motion: the AU model, dense warp fields through moved landmarks, and the intensity
curve over a clip.

A clip is FACS-like landmark motion of micro amplitude (at most ``amplitude_range[1]`` px at the
224-px face scale):

- positive: AU6 + AU12;  surprise: AU1 + AU2 + AU5 + AU26;
- negative: AU4 + AU7 + AU9 (disgust / anger) or AU4 + AU7 + AU15 (repression, sadness, ...);
- others (CASME II / SAMM only, excluded from the 3 classes): AU14 or AU17.

The landmark displacements become one dense backward displacement field per clip (thin-plate
spline through the landmarks and a ring of fixed points, scipy's ``RBFInterpolator``), scaled
per frame by a raised-cosine intensity that is 0 at onset, 1 at the apex and 0 at offset.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from scipy.interpolate import RBFInterpolator

from merlib.synth.faces import VIRTUAL, ellipse_radius, face_axes, falloff, virtual_points


# --------------------------------------------------------------------------------------------
# Dense fields


def _ring(lm: np.ndarray, n: int = 32, ru: float = 0.85, rv: float = 1.05) -> np.ndarray:
    """Fixed points on an ellipse around the face (radii in face widths) that pin the warps."""
    c, u, v, w = face_axes(lm)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return c + w * (ru * np.cos(t)[:, None] * u + rv * np.sin(t)[:, None] * v)


def _merge_close(pts: np.ndarray, vals: np.ndarray,
                 tol: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Average control points closer than ``tol`` px (a closed mouth puts inner-lip points on top
    of each other): coincident centres make the spline system singular."""
    keep_p, keep_v, used = [], [], np.zeros(len(pts), bool)
    for i in range(len(pts)):
        if used[i]:
            continue
        near = (~used) & (np.linalg.norm(pts - pts[i], axis=1) < tol)
        used |= near
        keep_p.append(pts[near].mean(0))
        keep_v.append(vals[near].mean(0))
    return np.array(keep_p), np.array(keep_v)


def dense_field(centres: np.ndarray, values: np.ndarray, lm: np.ndarray,
                shape: tuple[int, int], step: int = 4) -> np.ndarray:
    """A smooth (H, W, 2) float32 field through ``values`` at ``centres`` and zero on a ring
    around the face: a thin-plate spline evaluated on a coarse grid, upsampled bilinearly and
    windowed so that it vanishes beyond the ring."""
    centres, values = _merge_close(np.asarray(centres, float), np.asarray(values, float))
    ring = _ring(lm)
    pts = np.vstack([centres, ring])
    vals = np.vstack([values, np.zeros_like(ring)])
    tps = RBFInterpolator(pts, vals, kernel="thin_plate_spline", degree=1, smoothing=1e-3)
    h, w = shape
    hc, wc = -(-h // step), -(-w // step)
    # coarse sample k sits where cv2.resize by `step` puts it: pixel step*k + (step-1)/2
    ys = step * np.arange(hc) + (step - 1) / 2
    xs = step * np.arange(wc) + (step - 1) / 2
    gx, gy = np.meshgrid(xs, ys)
    coarse = tps(np.column_stack([gx.ravel(), gy.ravel()])).reshape(hc, wc, 2).astype(np.float32)
    full = cv2.resize(coarse, (wc * step, hc * step), interpolation=cv2.INTER_LINEAR)[:h, :w]
    window = falloff(ellipse_radius(shape, lm, 0.85, 1.05), 1.0, 1.3)
    return full * window[..., None]


def sample_field(fld: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W, 2) field at (N, 2) points (x, y)."""
    m = pts.astype(np.float32).reshape(-1, 1, 2)
    out = cv2.remap(fld, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 2).astype(np.float64)


def forward_points(pts: np.ndarray, fld: np.ndarray, scale: np.ndarray | float = 1.0,
                   shift: np.ndarray | None = None, shift_mask: np.ndarray | None = None,
                   iterations: int = 6, *, affine: np.ndarray | None = None,
                   extra: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> np.ndarray:
    """Where the points ``pts`` (N, 2) of a source image land in the frames
    ``out_t(x) = src(x + scale[t] * fld(x) + sum_k scale_k[t] * fld_k(x) + mask(x) * h_t(x))``,
    with ``extra`` the (fld_k, scale_k) pairs and the head term ``h_t(x)`` either ``shift[t]``
    (a translation) or ``A_t x + b_t - x`` for ``affine[t] = [A_t | b_t]`` (2, 3): the fixed
    point of ``x = p - (all of that at x)`` (converges: the fields are small and smooth).
    Returns (T, N, 2); T = len(scale)."""
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    n_t = len(scale)
    p = np.broadcast_to(pts.astype(np.float64), (n_t, *pts.shape))
    x = p.copy()
    for _ in range(iterations):
        flat = x.reshape(-1, 2)
        d = scale[:, None, None] * sample_field(fld, flat).reshape(x.shape)
        for fld_k, scale_k in extra:
            d = d + np.asarray(scale_k, np.float64)[:, None, None] * \
                sample_field(fld_k, flat).reshape(x.shape)
        if shift is not None or affine is not None:
            m = flat.astype(np.float32).reshape(-1, 1, 2)
            mk = cv2.remap(shift_mask, m[..., 0], m[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE).reshape(n_t, -1, 1)
            if affine is not None:
                a = np.asarray(affine, dtype=np.float64)
                head = np.einsum("tij,tnj->tni", a[:, :, :2], x) + a[:, None, :, 2] - x
            else:
                head = np.asarray(shift, dtype=np.float64).reshape(n_t, 1, 2)
            d = d + mk * head
        x = p - d
    return x


# --------------------------------------------------------------------------------------------
# Action units: displacement of control points as (outward, downward) in units that are
# normalised per clip; 'outward' is away from the face's vertical midline.

AU_MOTION: dict[str, dict[int | str, tuple[float, float]]] = {
    "AU1": {21: (0, -1.0), 22: (0, -1.0), 20: (0, -0.8), 23: (0, -0.8), 19: (0, -0.45),
            24: (0, -0.45), 18: (0, -0.2), 25: (0, -0.2), "glabella": (0, -0.3)},
    "AU2": {17: (0, -1.0), 26: (0, -1.0), 18: (0, -0.9), 25: (0, -0.9), 19: (0, -0.6),
            24: (0, -0.6), 20: (0, -0.3), 23: (0, -0.3)},
    "AU4": {21: (-0.6, 0.8), 22: (-0.6, 0.8), 20: (-0.4, 0.8), 23: (-0.4, 0.8), 19: (-0.2, 0.6),
            24: (-0.2, 0.6), 18: (0, 0.4), 25: (0, 0.4), 17: (0, 0.25), 26: (0, 0.25),
            "glabella": (0, 0.3), 37: (0, 0.2), 38: (0, 0.2), 43: (0, 0.2), 44: (0, 0.2)},
    "AU5": {37: (0, -0.6), 38: (0, -0.6), 43: (0, -0.6), 44: (0, -0.6), 36: (0, -0.1),
            39: (0, -0.1), 42: (0, -0.1), 45: (0, -0.1)},
    "AU6": {"cheek_r": (0, -1.0), "cheek_l": (0, -1.0), 40: (0, -0.5), 41: (0, -0.5),
            46: (0, -0.5), 47: (0, -0.5), 36: (0, -0.3), 45: (0, -0.3), 1: (0, -0.25),
            15: (0, -0.25), 2: (0, -0.3), 14: (0, -0.3), 3: (0, -0.15), 13: (0, -0.15),
            "naso_r": (0, -0.4), "naso_l": (0, -0.4)},
    "AU7": {40: (0, -0.6), 41: (0, -0.6), 46: (0, -0.6), 47: (0, -0.6), 37: (0, 0.25),
            38: (0, 0.25), 43: (0, 0.25), 44: (0, 0.25), 36: (-0.1, 0), 45: (-0.1, 0)},
    "AU9": {31: (0, -0.8), 35: (0, -0.8), 32: (0, -0.5), 33: (0, -0.5), 34: (0, -0.5),
            30: (0, -0.3), 29: (0, -0.15), 50: (0, -0.45), 51: (0, -0.45), 52: (0, -0.45),
            49: (0, -0.3), 53: (0, -0.3), 61: (0, -0.35), 62: (0, -0.35), 63: (0, -0.35),
            21: (0, 0.3), 22: (0, 0.3), "naso_r": (0, -0.6), "naso_l": (0, -0.6)},
    "AU12": {48: (0.8, -0.6), 54: (0.8, -0.6), 60: (0.7, -0.5), 64: (0.7, -0.5),
             49: (0.4, -0.35), 53: (0.4, -0.35), 59: (0.45, -0.3), 55: (0.45, -0.3),
             61: (0.3, -0.2), 63: (0.3, -0.2), 67: (0.3, -0.2), 65: (0.3, -0.2),
             50: (0.15, -0.1), 52: (0.15, -0.1), 58: (0.15, -0.1), 56: (0.15, -0.1),
             "naso_r": (0.3, -0.4), "naso_l": (0.3, -0.4), "cheek_r": (0.1, -0.3),
             "cheek_l": (0.1, -0.3)},
    "AU14": {48: (-0.7, 0), 54: (-0.7, 0), 60: (-0.6, 0), 64: (-0.6, 0), 49: (-0.3, 0),
             53: (-0.3, 0), 59: (-0.3, 0), 55: (-0.3, 0), "naso_r": (-0.2, 0), "naso_l": (-0.2, 0)},
    "AU15": {48: (0.15, 1.0), 54: (0.15, 1.0), 60: (0.1, 0.8), 64: (0.1, 0.8), 59: (0, 0.5),
             55: (0, 0.5), 49: (0, 0.3), 53: (0, 0.3), 67: (0, 0.4), 65: (0, 0.4),
             "naso_r": (0, 0.2), "naso_l": (0, 0.2)},
    "AU17": {8: (0, -0.8), 7: (0, -0.7), 9: (0, -0.7), 6: (0, -0.4), 10: (0, -0.4),
             57: (0, -0.8), 56: (0, -0.7), 58: (0, -0.7), 66: (0, -0.6), 65: (0, -0.5),
             67: (0, -0.5), 55: (0, -0.4), 59: (0, -0.4)},
    "AU26": {8: (0, 1.0), 7: (0, 0.95), 9: (0, 0.95), 6: (0, 0.8), 10: (0, 0.8), 5: (0, 0.55),
             11: (0, 0.55), 4: (0, 0.3), 12: (0, 0.3), 3: (0, 0.1), 13: (0, 0.1), 57: (0, 0.85),
             56: (0, 0.8), 58: (0, 0.8), 55: (0, 0.7), 59: (0, 0.7), 48: (0, 0.4), 54: (0, 0.4),
             65: (0, 0.8), 66: (0, 0.8), 67: (0, 0.8), 60: (0, 0.4), 64: (0, 0.4)},
}

# SynthPreset.au_variants == "stereotyped": one textbook AU set per class (two for negative and
# others), drawn uniformly (negative: AU9 with au9_share). Nothing is shared between classes.
CLASS_AUS = {
    "positive": [("AU6", "AU12")],
    "surprise": [("AU1", "AU2", "AU5", "AU26")],
    "negative": [("AU4", "AU7", "AU9"), ("AU4", "AU7", "AU15")],
    "others": [("AU14",), ("AU17",)],
}
# SynthPreset.au_variants == "overlapping": (AU set, probability) per class, closer to what the
# coders of CASME II and SAMM report: partial sets are common (AU12 without AU6, AU1+AU2 without
# AU5/AU26, AU4 alone), repression shows as AU14/AU15/AU17, and several AUs occur in more than
# one class (AU4 and AU7 in negative and others, AU6/AU7 squint in positive and negative, AU14 in
# negative and others, AU1 in surprise and sadness-like negative, AU17 everywhere but surprise),
# so no single region decides the class.
CLASS_AU_MIX: dict[str, tuple[tuple[tuple[str, ...], float], ...]] = {
    "positive": ((("AU12",), 0.35), (("AU6", "AU12"), 0.3), (("AU6", "AU7", "AU12"), 0.1),
                 (("AU6",), 0.1), (("AU12", "AU17"), 0.1), (("AU6", "AU14"), 0.05)),
    "surprise": ((("AU1", "AU2"), 0.4), (("AU1", "AU2", "AU5"), 0.2), (("AU1", "AU2", "AU26"), 0.15),
                 (("AU1", "AU2", "AU5", "AU26"), 0.1), (("AU1",), 0.05), (("AU5", "AU26"), 0.05),
                 (("AU1", "AU2", "AU4"), 0.05)),
    "negative": ((("AU4",), 0.2), (("AU4", "AU7"), 0.15), (("AU4", "AU9"), 0.1),
                 (("AU4", "AU7", "AU9"), 0.1), (("AU9",), 0.05), (("AU14",), 0.1),
                 (("AU15",), 0.05), (("AU4", "AU15"), 0.05), (("AU15", "AU17"), 0.05),
                 (("AU1", "AU4"), 0.05), (("AU7",), 0.05), (("AU6", "AU7"), 0.05)),
    "others": ((("AU14",), 0.25), (("AU17",), 0.25), (("AU7",), 0.2), (("AU4",), 0.15),
               (("AU1", "AU2"), 0.05), (("AU12", "AU14"), 0.1)),
}
# AUs that may join a clip weakly without changing its class (SynthPreset.extra_au_rate)
NUISANCE_AUS = ("AU1", "AU2", "AU4", "AU7", "AU14", "AU17")


def au_displacements(lm: np.ndarray, aus: Sequence[str], weights: Sequence[float], *,
                     asymmetry: float = 0.0) -> np.ndarray:
    """(68 + len(VIRTUAL), 2) image-space displacements of the landmarks and virtual points for
    weighted AUs, scaled so the largest one has length 1. ``asymmetry`` a: the image-right half
    moves 1 + a times as far, the left 1 - a (a person's lopsided expression)."""
    c, u, v, _ = face_axes(lm)
    virt = virtual_points(lm)
    pts = np.vstack([lm, [virt[k] for k in VIRTUAL]])
    side = np.sign((pts - c) @ u)  # +1 right of the midline in the image, -1 left
    idx = {**{i: i for i in range(68)}, **{k: 68 + j for j, k in enumerate(VIRTUAL)}}
    d = np.zeros_like(pts)
    for au, wgt in zip(aus, weights):
        for key, (out, down) in AU_MOTION[au].items():
            i = idx[key]
            d[i] += wgt * (out * side[i] * u + down * v)
    if asymmetry:
        d *= (1 + asymmetry * side)[:, None]
    return d / np.abs(np.linalg.norm(d, axis=1)).max()


# Blinks (AU45): the upper lids close onto the lower lids, which rise a little; the eye corners
# stay. A nuisance: it comes with any class, at any time of the clip.
_BLINK_LIDS = ((37, 41), (38, 40), (43, 47), (44, 46))  # (upper, lower) lid points facing


def blink_displacements(lm: np.ndarray, depth: float) -> np.ndarray:
    """(68 + len(VIRTUAL), 2) image-space displacements of a blink closing the eyes by
    ``depth`` (0: open, 1: upper lids on the lower ones). The warp through them stretches the
    lid gap by about ``1 - depth / (1 - depth / 2)``: it folds over past depth 2/3, and its
    ground-truth points converge slowly near it."""
    d = np.zeros((68 + len(VIRTUAL), 2))
    for up, low in _BLINK_LIDS:
        gap = lm[low] - lm[up]
        d[up] = 0.85 * depth * gap
        d[low] = -0.15 * depth * gap
    return d


def blink_curve(n_frames: int, start: float, duration: float) -> np.ndarray:
    """0 outside the blink, rising to 1 over its first third (lids close fast) and back to 0
    over the rest (they open more slowly); ``start`` and ``duration`` in frames, any real."""
    t = (np.arange(n_frames, dtype=np.float64) - start) / duration
    close = 0.5 * (1 - np.cos(np.pi * np.clip(t / (1 / 3), 0, 1)))
    opening = 0.5 * (1 + np.cos(np.pi * np.clip((t - 1 / 3) / (2 / 3), 0, 1)))
    return np.where(t < 1 / 3, close, opening) * ((t >= 0) & (t <= 1))


# --------------------------------------------------------------------------------------------
# Intensity over a clip


def intensity_curve(n_frames: int, rise: int, fall: int) -> np.ndarray:
    """Raised cosine: 0 at onset (index 0), 1 at the apex (index ``rise``), 0 at the offset."""
    t = np.arange(n_frames, dtype=np.float64)
    up = 0.5 * (1 - np.cos(np.pi * np.clip(t / rise, 0, 1)))
    down = 0.5 * (1 + np.cos(np.pi * np.clip((t - rise) / fall, 0, 1)))
    return np.where(t <= rise, up, down)

