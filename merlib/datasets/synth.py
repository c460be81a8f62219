"""SynthME: a synthetic micro-expression dataset written in the real datasets' on-disk layouts.

Faces are the two real photographs bundled with installed packages (scikit-image's
``astronaut`` and matplotlib's ``grace_hopper.jpg``), each also mirrored: four base identities.
A subject is a base identity placed into a 640x480 recording-like frame (face 190-250 px wide,
soft head-and-shoulders cut-out over a blurred/plain backdrop) under its own smooth shape warp
(eye spacing, jaw width, nose length, mouth height), roll, scale and colour.

A clip is FACS-like landmark motion of micro amplitude (at most ``amplitude_range[1]`` px at the
224-px face scale, where the face width, jaw point 1 to 17, counts as 224 px):

- positive: AU6 + AU12;  surprise: AU1 + AU2 + AU5 + AU26;
- negative: AU4 + AU7 + AU9 (disgust / anger) or AU4 + AU7 + AU15 (repression, sadness, ...);
- others (CASME II / SAMM only, excluded from the 3 classes): AU14 or AU17.

The landmark displacements become one dense backward displacement field per clip (thin-plate
spline through the landmarks and a ring of fixed points, scipy's ``RBFInterpolator``), scaled
per frame by a raised-cosine intensity that is 0 at onset, 1 at the apex and 0 at offset, and
applied with one ``cv2.remap`` per frame, together with a small head jitter. Flicker (global gain)
and sensor noise (per-frame luminance noise + fixed-pattern chroma noise) complete the frame.

Timing follows CASME II at 200 fps (clip length log-normal, median 61 frames, 10th-90th
percentile about 41-97; apex at a Beta(2.2, 2.2) fraction of onset-offset); the SMIC layout is
100 fps with half the frame counts.

Every random draw comes from a generator seeded by ``(seed, stage, subject, clip)``, so the output
does not depend on the number of workers. Frames go through the format writers of
:mod:`merlib.datasets.writers`; the ground truth is written beside them:

- ``<out>/groundtruth/<subject>/<clip>.npz``: ``landmarks`` (n_frames, 68, 2) in dlib-68 order
  and frame pixels (x, y), ``neutral_landmarks`` (68, 2), ``jitter`` (n_frames, 2),
  ``intensity`` (n_frames,), ``frame_numbers``, and onset/apex/offset, label, emotion, aus,
  amplitude, face_width, fps;
- ``<out>/groundtruth.csv``: one row per clip;
- ``<out>/synthme.json``: the marker, written last (config and file count). A folder holding a
  complete SynthME for the same (layout, preset, seed) is reused as is.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import zipfile
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
from scipy.interpolate import RBFInterpolator

from merlib.datasets.schema import CLASSES, ClipRecord

GENERATOR_VERSION = 1
MARKER = "synthme.json"
GT_DIR = "groundtruth"
GT_CSV = "groundtruth.csv"
LAYOUTS = ("casme2", "samm", "smic")
FACE_SCALE = 224.0  # the face width (jaw point 1 to 17) counted as 224 px when giving amplitudes
GT_COLUMNS = ["subject", "clip", "label", "emotion", "onset", "apex", "offset", "amplitude",
              "aus", "n_frames", "fps", "first_frame", "face_width", "identity",
              "max_landmark_motion", "groundtruth"]
DEFAULT_WORKERS = 2  # render threads; the output does not depend on it


# --------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class SynthPreset:
    """Everything that shapes one SynthME preset; timings are in frames at 200 fps."""

    name: str
    n_subjects: int
    class_counts: tuple[int, int, int]  # negative, positive, surprise (CLASSES order)
    n_others: int  # 'others' clips (CASME II / SAMM layouts only)
    length_median: float = 61.0  # clip length onset..offset, log-normal
    length_sigma: float = 0.335  # gives 10th-90th percentile ~ 41-97 at median 61
    length_range: tuple[int, int] = (30, 150)
    apex_beta: float = 2.2  # apex fraction of onset..offset ~ Beta(a, a): mean 0.5
    min_rise_fall: int = 2  # frames from onset to apex and apex to offset, at least
    amplitude_range: tuple[float, float] = (1.5, 5.5)  # px at 224 face scale
    au9_share: float = 0.65  # negative clips with AU9 (rest AU15)
    extra_au_rate: float = 0.5  # clips with one weaker AU from outside their class
    extra_au_weight: tuple[float, float] = (0.25, 0.6)  # its weight (class AUs: 0.6-1.0)
    face_width_range: tuple[float, float] = (190.0, 250.0)  # px in the 640x480 frame
    roll_deg: float = 4.0  # extra in-plane rotation, +-
    shape_warp: float = 4.0  # identity warps, px at 224 face scale, +-
    noise_sigma_range: tuple[float, float] = (1.2, 2.0)  # luminance noise, grey levels
    chroma_noise_sigma: float = 0.8  # fixed-pattern noise per clip
    jitter_step: float = 0.08  # head drift per frame (random walk), px
    jitter_tremor: float = 0.15  # head tremor per frame, px
    jitter_max: float = 1.2  # px
    flicker: float = 0.006  # relative gain amplitude
    frame_size: tuple[int, int] = (480, 640)  # (H, W)
    fps: int = 200
    jpeg_quality: int = 95

    @property
    def n_clips(self) -> int:
        return sum(self.class_counts) + self.n_others


PRESETS = {
    # CI: 4 subjects, 16 clips (14 in the SMIC layout), short clips so it generates in seconds;
    # clearer expressions (no extra AU, amplitude >= 3 px) so 14 clips carry a learnable signal.
    "tiny": SynthPreset(name="tiny", n_subjects=4, class_counts=(6, 4, 4), n_others=2,
                        length_median=24.0, length_sigma=0.2, length_range=(16, 36),
                        amplitude_range=(3.0, 5.5), extra_au_rate=0.0),
    # make reproduce: CASME II's 88/32/25 imbalance halved, 10 subjects.
    "demo": SynthPreset(name="demo", n_subjects=10, class_counts=(44, 16, 13), n_others=5),
}


def get_preset(preset: str | SynthPreset) -> SynthPreset:
    if isinstance(preset, SynthPreset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown SynthME preset {preset!r}; "
                         f"choose one of {sorted(PRESETS)}") from None


def _rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of one (seed, stage, subject, clip) cell: independent of evaluation order."""
    return np.random.default_rng([int(seed), *map(int, key)])


_STAGE_PLAN, _STAGE_SUBJECT, _STAGE_CLIP, _STAGE_RENDER = 1, 2, 3, 4


# --------------------------------------------------------------------------------------------
# Base faces


@dataclass(frozen=True)
class BaseFace:
    name: str
    image: np.ndarray  # RGB uint8
    landmarks: np.ndarray  # (68, 2) float64, dlib-68 order, (x, y)


def detect_landmarks68(image: np.ndarray) -> np.ndarray | None:
    """dlib-68 landmarks of the most confident HOG face in an RGB image, or None without a face.

    The HOG detector finds a false positive on ``astronaut`` (a patch on the suit) of the same
    size as the face, so the detection score, not the box size, picks the face.
    """
    import face_recognition.api as fr

    dets, scores, _ = fr.face_detector.run(image, 1, 0)
    if len(dets) == 0:
        return None
    best = dets[int(np.argmax(scores))]
    css = (best.top(), best.right(), best.bottom(), best.left())
    shape = fr._raw_face_landmarks(image, [css], model="large")[0]
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _photo(name: str) -> np.ndarray:
    if name == "astronaut":
        from skimage.data import astronaut

        return np.ascontiguousarray(astronaut()[..., :3])
    if name == "grace_hopper":
        from matplotlib.cbook import get_sample_data
        from PIL import Image

        with Image.open(get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            return np.asarray(im.convert("RGB")).copy()
    raise ValueError(f"unknown photograph {name!r}")


_FACES_LOCK = threading.Lock()


def base_faces() -> tuple[BaseFace, ...]:
    """The four base identities: two bundled photographs, each as is and mirrored (landmarks are
    detected again on the mirror, so the dlib order stays image-left to image-right)."""
    with _FACES_LOCK:  # dlib's detector is not safe to run from two threads at once
        return _base_faces()


@lru_cache(maxsize=None)
def _base_faces() -> tuple[BaseFace, ...]:
    faces = []
    for name in ("astronaut", "grace_hopper"):
        photo = _photo(name)
        for mirrored in (False, True):
            img = np.ascontiguousarray(photo[:, ::-1]) if mirrored else photo
            lm = detect_landmarks68(img)
            if lm is None:  # never expected: the photographs are fixed
                raise RuntimeError(f"no face found in the bundled photograph {name}")
            faces.append(BaseFace(name + ("_mirrored" if mirrored else ""), img, lm))
    return tuple(faces)


# --------------------------------------------------------------------------------------------
# Face geometry and dense fields


def face_axes(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Centre, unit axis along the eyes (image left to right), unit axis down the face, and the
    face width (jaw point 1 to 17) of a 68-landmark set."""
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    u = (eye_l - eye_r) / np.linalg.norm(eye_l - eye_r)
    v = np.array([-u[1], u[0]])  # u rotated +90 degrees in image coordinates (y down): downwards
    return lm.mean(0), u, v, float(np.linalg.norm(lm[16] - lm[0]))


def virtual_points(lm: np.ndarray) -> dict[str, np.ndarray]:
    """Skin points the 68 landmarks do not cover but AUs move: cheeks, nasolabial, glabella."""
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    return {
        "cheek_r": 0.4 * eye_r + 0.3 * lm[48] + 0.3 * lm[2],
        "cheek_l": 0.4 * eye_l + 0.3 * lm[54] + 0.3 * lm[14],
        "naso_r": 0.5 * (lm[31] + lm[48]),
        "naso_l": 0.5 * (lm[35] + lm[54]),
        "glabella": 0.5 * (lm[21] + lm[22]),
    }


VIRTUAL = ("cheek_r", "cheek_l", "naso_r", "naso_l", "glabella")


def _ring(lm: np.ndarray, n: int = 32, ru: float = 0.85, rv: float = 1.05) -> np.ndarray:
    """Fixed points on an ellipse around the face (radii in face widths) that pin the warps."""
    c, u, v, w = face_axes(lm)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return c + w * (ru * np.cos(t)[:, None] * u + rv * np.sin(t)[:, None] * v)


def _ellipse_radius(shape: tuple[int, int], lm: np.ndarray, ru: float, rv: float,
                    shift_v: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (1 on the ellipse) of every pixel, in the face's axes."""
    c, u, v, w = face_axes(lm)
    c = c + shift_v * w * v
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    dx, dy = xx - np.float32(c[0]), yy - np.float32(c[1])
    pu = (dx * u[0] + dy * u[1]) / (ru * w)
    pv = (dx * v[0] + dy * v[1]) / (rv * w)
    return np.sqrt(pu * pu + pv * pv)


def _falloff(r: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """1 inside r0, raised-cosine down to 0 at r1."""
    t = np.clip((r - r0) / (r1 - r0), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


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
    window = _falloff(_ellipse_radius(shape, lm, 0.85, 1.05), 1.0, 1.3)
    return full * window[..., None]


def sample_field(fld: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples of an (H, W, 2) field at (N, 2) points (x, y)."""
    m = pts.astype(np.float32).reshape(-1, 1, 2)
    out = cv2.remap(fld, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, 2).astype(np.float64)


def forward_points(pts: np.ndarray, fld: np.ndarray, scale: np.ndarray | float = 1.0,
                   shift: np.ndarray | None = None, shift_mask: np.ndarray | None = None,
                   iterations: int = 6) -> np.ndarray:
    """Where the points ``pts`` (N, 2) of a source image land in the frames
    ``out_t(x) = src(x + scale[t] * fld(x) + shift[t] * mask(x))``: the fixed point of
    ``x = p - scale[t] * fld(x) - shift[t] * mask(x)`` (converges: the fields are small and
    smooth). Returns (T, N, 2); T = len(scale)."""
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    n_t = len(scale)
    p = np.broadcast_to(pts.astype(np.float64), (n_t, *pts.shape))
    x = p.copy()
    for _ in range(iterations):
        flat = x.reshape(-1, 2)
        d = scale[:, None, None] * sample_field(fld, flat).reshape(x.shape)
        if shift is not None:
            m = flat.astype(np.float32).reshape(-1, 1, 2)
            mk = cv2.remap(shift_mask, m[..., 0], m[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE).reshape(n_t, -1, 1)
            d = d + mk * np.asarray(shift, dtype=np.float64).reshape(n_t, 1, 2)
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

CLASS_AUS = {
    "positive": [("AU6", "AU12")],
    "surprise": [("AU1", "AU2", "AU5", "AU26")],
    "negative": [("AU4", "AU7", "AU9"), ("AU4", "AU7", "AU15")],
    "others": [("AU14",), ("AU17",)],
}
# AUs that may join a clip weakly without changing its class (SynthPreset.extra_au_rate)
NUISANCE_AUS = ("AU1", "AU2", "AU4", "AU7", "AU14", "AU17")


def au_displacements(lm: np.ndarray, aus: Sequence[str], weights: Sequence[float]) -> np.ndarray:
    """(68 + len(VIRTUAL), 2) image-space displacements of the landmarks and virtual points for
    weighted AUs, scaled so the largest one has length 1."""
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
    return d / np.abs(np.linalg.norm(d, axis=1)).max()


# --------------------------------------------------------------------------------------------
# Subjects


@dataclass(frozen=True)
class Subject:
    index: int
    identity: str
    neutral: np.ndarray  # (H, W, 3) uint8, the face at rest in its recording frame
    landmarks: np.ndarray  # (68, 2) of the neutral frame
    face_width: float  # px
    head_mask: np.ndarray  # (H, W) float32 in [0, 1]: what moves with the head
    roi: tuple[int, int, int, int]  # y0, y1, x0, x1: where anything moves
    noise_sigma: float
    noise_bank: np.ndarray  # (K, H + pad, W + pad) float32 luminance noise; frames take windows


def _colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-subject colour: channel gains, gamma, saturation, brightness."""
    f = img.astype(np.float32) / 255.0
    f = f ** rng.uniform(0.85, 1.15)
    grey = f.mean(axis=2, keepdims=True)
    f = grey + rng.uniform(0.75, 1.2) * (f - grey)
    f = f * rng.uniform(0.92, 1.08, size=3).astype(np.float32) + rng.uniform(-0.06, 0.06)
    return np.clip(f * 255.0, 0, 255).astype(np.float32)


@lru_cache(maxsize=32)
def make_subject(preset: SynthPreset, seed: int, index: int) -> Subject:
    """Subject ``index`` of a preset: a base identity placed, warped and recoloured."""
    rng = _rng(seed, _STAGE_SUBJECT, index)
    faces = base_faces()
    base = faces[index % len(faces)]
    h, w = preset.frame_size
    c0, u0, _, w0 = face_axes(base.landmarks)

    # placement: similarity transform from the photograph into the frame
    target_w = rng.uniform(*preset.face_width_range)
    scale = target_w / w0
    roll = np.deg2rad(rng.uniform(-preset.roll_deg, preset.roll_deg))
    centre = np.array([w / 2 + rng.uniform(-30, 30), h / 2 + 15 + rng.uniform(-15, 15)])
    rot = scale * np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
    m = np.hstack([rot, (centre - rot @ c0)[:, None]])
    placed = cv2.warpAffine(base.image, m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT101)
    lm = base.landmarks @ rot.T + m[:, 2]
    person = _colour(placed, rng)

    # backdrop: a plain gradient mixed with the heavily blurred scene
    tone = rng.uniform(120, 200) + rng.uniform(-20, 20, size=3)
    grad = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None] * rng.uniform(-18, 18)
    plain = np.broadcast_to(tone.astype(np.float32), (h, w, 3)) + grad
    blurred = cv2.GaussianBlur(person, (0, 0), sigmaX=0.15 * target_w)
    mix = rng.uniform(0.2, 0.5)
    backdrop = (1 - mix) * plain + mix * blurred

    # head (ellipse, raised to take in the hair) and shoulders below the chin
    _, _, v, fw = face_axes(lm)
    head = _falloff(_ellipse_radius((h, w), lm, 0.62, 0.82, shift_v=-0.18), 0.92, 1.08)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chin = lm[8]
    below = yy - (chin[1] + 0.05 * fw)
    half = 0.32 * fw + 1.1 * np.maximum(below, 0)
    torso = ((below > 0) & (np.abs(xx - chin[0]) < np.minimum(half, 1.5 * fw))).astype(np.float32)
    mask = cv2.GaussianBlur(np.maximum(head, torso), (0, 0), sigmaX=0.03 * fw)[..., None]
    frame = mask * person + (1 - mask) * backdrop

    # identity shape warp, px at 224 face scale: eye spacing, jaw width, nose length, mouth height
    _, u, v, fw = face_axes(lm)
    k = fw / FACE_SCALE
    centre_pt = lm.mean(0)
    side = np.sign((lm - centre_pt) @ u)[:, None]
    d = np.zeros_like(lm)
    sw = preset.shape_warp
    eyes = list(range(17, 27)) + list(range(36, 48))
    d[eyes] += rng.uniform(-sw, sw) * side[eyes] * u
    jaw = {0: 1, 1: 1, 2: 1, 3: 1, 4: 0.6, 5: 0.3, 11: 0.3, 12: 0.6, 13: 1, 14: 1, 15: 1, 16: 1}
    dj = rng.uniform(-1.5 * sw, 1.5 * sw)
    for i, f in jaw.items():
        d[i] += f * dj * side[i, 0] * u
    dn = rng.uniform(-sw, sw)
    d[31:36] += dn * v
    d[30] += 0.6 * dn * v
    d[29] += 0.25 * dn * v
    d[48:68] += (rng.uniform(-0.75 * sw, 0.75 * sw) + 0.7 * dn) * v
    d *= k
    target = lm + d
    # backward field exact at the targets: out(p + d) = in(p)
    fld = dense_field(target, -d, lm, (h, w))
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    neutral = cv2.remap(frame.astype(np.float32), gx + fld[..., 0], gy + fld[..., 1],
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    neutral = np.clip(np.rint(neutral), 0, 255).astype(np.uint8)

    # what moves: the head (jitter) and the face (expressions); torso and backdrop stay
    head_mask = _falloff(_ellipse_radius((h, w), target, 0.7, 0.95, shift_v=-0.1), 0.9, 1.15)
    moving = (head_mask > 0) | (_ellipse_radius((h, w), target, 0.85, 1.05) < 1.3)
    ys, xs = np.nonzero(moving)
    roi = (max(int(ys.min()) - 2, 0), min(int(ys.max()) + 3, h),
           max(int(xs.min()) - 2, 0), min(int(xs.max()) + 3, w))
    # drawing fresh normals for every frame costs more than the rest of a frame: frames take
    # random windows of a small bank instead
    sigma = float(rng.uniform(*preset.noise_sigma_range))
    bank = (sigma * rng.standard_normal((4, h + 32, w + 32), dtype=np.float32))
    return Subject(index=index, identity=base.name, neutral=neutral, landmarks=target,
                   face_width=float(face_axes(target)[3]), head_mask=head_mask, roi=roi,
                   noise_sigma=sigma, noise_bank=bank)


# --------------------------------------------------------------------------------------------
# Dataset plan


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one clip but its pixels."""

    subject_index: int
    clip_index: int  # within the subject
    subject: str  # canonical spelling of the layout: sub01 | 006 | s01
    clip: str
    label: str  # negative | positive | surprise | '' (others)
    emotion: str  # the layout's own word, as written in its sheet / folder
    aus: tuple[str, ...]
    au_weights: tuple[float, ...]
    amplitude: float  # px at 224 face scale: the largest control-point displacement at the apex
    first_frame: int
    onset: int
    apex: int
    offset: int
    fps: int

    @property
    def n_frames(self) -> int:
        return self.offset - self.first_frame + 1


SMIC_SUBJECTS = [i for i in range(1, 21) if i not in (7, 10, 16, 17)]
SMIC_CODE = {"negative": "ne", "positive": "po", "surprise": "sur"}
CASME2_NEGATIVE = {"AU9": "disgust", "AU15": "repression"}
SAMM_NEGATIVE = {"AU9": ("Anger", "Disgust"), "AU15": ("Contempt", "Sadness", "Fear")}


def _subject_name(layout: str, i: int) -> str:
    if layout == "casme2":
        return f"sub{i + 1:02d}"
    if layout == "samm":
        return f"{i + 6:03d}"
    return f"s{SMIC_SUBJECTS[i]:02d}"


def _allocate(preset: SynthPreset, seed: int) -> list[list[str]]:
    """Which categories each subject performs: every class dealt round-robin over a seeded
    permutation of the subjects, so each class reaches most subjects."""
    rng = _rng(seed, _STAGE_PLAN)
    per_subject: list[list[str]] = [[] for _ in range(preset.n_subjects)]
    cursor = 0
    for cat, count in zip((*CLASSES, "others"), (*preset.class_counts, preset.n_others)):
        order = rng.permutation(preset.n_subjects)
        for j in range(count):
            per_subject[order[(cursor + j) % preset.n_subjects]].append(cat)
        cursor += count
    for cats in per_subject:
        rng.shuffle(cats)
    return per_subject


def _timing(preset: SynthPreset, rng: np.random.Generator,
            layout: str) -> tuple[int, int, int, int]:
    """(first frame, onset, apex, offset) of a clip; the frames run from onset to offset."""
    lo, hi = preset.length_range
    z = rng.standard_normal()
    n = int(np.clip(round(preset.length_median * np.exp(preset.length_sigma * z)), lo, hi))
    frac = rng.beta(preset.apex_beta, preset.apex_beta)
    rise = int(round(frac * (n - 1)))
    first = {"casme2": int(rng.integers(1, 300)), "samm": int(rng.integers(1000, 9000)),
             "smic": int(rng.integers(1, 3000))}[layout]
    if layout == "smic":  # 100 fps: half the frames
        n = max(n // 2, 2 * preset.min_rise_fall + 1)
        rise = int(round(rise / 2))
    rise = int(np.clip(rise, preset.min_rise_fall, n - 1 - preset.min_rise_fall))
    onset = first
    return first, onset, onset + rise, onset + n - 1


def plan_dataset(layout: str = "casme2", preset: str | SynthPreset = "tiny",
                 seed: int = 0) -> list[ClipPlan]:
    """The clips of a SynthME dataset, in writing order (subjects, then clips)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown SynthME layout {layout!r}; choose one of {LAYOUTS}")
    p = get_preset(preset)
    if layout == "smic" and p.n_subjects > len(SMIC_SUBJECTS):
        raise ValueError(f"the SMIC layout has {len(SMIC_SUBJECTS)} subject ids, "
                         f"preset {p.name} asks for {p.n_subjects}")
    plans = []
    for si, cats in enumerate(_allocate(p, seed)):
        subject = _subject_name(layout, si)
        used: set[str] = set()
        counters: Counter = Counter()
        for ci, cat in enumerate(cats):
            rng = _rng(seed, _STAGE_CLIP, si, ci)
            variants = CLASS_AUS[cat]
            if cat == "negative":  # AU15 is the rarer one (CASME II: repression 27, disgust 63)
                aus = variants[0] if rng.random() < p.au9_share else variants[1]
            else:
                aus = variants[int(rng.integers(len(variants)))]
            weights = [float(x) for x in rng.uniform(0.6, 1.0, size=len(aus))]
            if rng.random() < p.extra_au_rate:  # a weaker AU from outside the class
                pool = [a for a in NUISANCE_AUS if a not in aus]
                aus = (*aus, pool[int(rng.integers(len(pool)))])
                weights.append(float(rng.uniform(*p.extra_au_weight)))
            weights = tuple(weights)
            amplitude = float(rng.uniform(*p.amplitude_range))
            first, onset, apex, offset = _timing(p, rng, layout)
            emotion = _emotion(layout, cat, aus, rng)
            if cat == "others" and layout == "smic":
                continue  # SMIC has only the three class folders
            name = _clip_name(layout, subject, cat, rng, used, counters)
            used.add(name)
            plans.append(ClipPlan(si, ci, subject, name, "" if cat == "others" else cat, emotion,
                                  tuple(aus), weights, round(amplitude, 4), first, onset, apex,
                                  offset, p.fps // 2 if layout == "smic" else p.fps))
    return plans


def _emotion(layout: str, cat: str, aus: Sequence[str], rng: np.random.Generator) -> str:
    if layout == "smic":
        return cat
    if layout == "casme2":
        if cat == "negative":
            return CASME2_NEGATIVE[aus[2]]  # AU9 or AU15, after AU4 and AU7
        return {"positive": "happiness", "surprise": "surprise", "others": "others"}[cat]
    if cat == "negative":
        words = SAMM_NEGATIVE[aus[2]]
        return words[int(rng.integers(len(words)))]
    return {"positive": "Happiness", "surprise": "Surprise", "others": "Other"}[cat]


def _clip_name(layout: str, subject: str, cat: str, rng: np.random.Generator, used: set[str],
               counters: Counter) -> str:
    if layout == "smic":
        code = SMIC_CODE[cat]
        counters[code] += 1
        return f"{subject}_{code}_{counters[code]:02d}"
    if layout == "samm":
        while True:
            ind = int(rng.integers(1, 8))
            counters[ind] += 1
            name = f"{subject}_{ind}_{counters[ind]}"
            if name not in used:
                return name
    # CASME II's irregular names: EP02_01f, EP01_2, EP09f, EP06_02_01
    while True:
        ep, k = int(rng.integers(1, 20)), int(rng.integers(1, 10))
        style = rng.choice(4, p=[0.55, 0.2, 0.15, 0.1])
        name = [f"EP{ep:02d}_{k:02d}f", f"EP{ep:02d}_{k:02d}", f"EP{ep:02d}_{k}",
                f"EP{ep:02d}f"][style]
        if name not in used:
            return name


# --------------------------------------------------------------------------------------------
# Rendering


def intensity_curve(n_frames: int, rise: int, fall: int) -> np.ndarray:
    """Raised cosine: 0 at onset (index 0), 1 at the apex (index ``rise``), 0 at the offset."""
    t = np.arange(n_frames, dtype=np.float64)
    up = 0.5 * (1 - np.cos(np.pi * np.clip(t / rise, 0, 1)))
    down = 0.5 * (1 + np.cos(np.pi * np.clip((t - rise) / fall, 0, 1)))
    return np.where(t <= rise, up, down)


def _jitter(n: int, preset: SynthPreset, rng: np.random.Generator) -> np.ndarray:
    drift = np.cumsum(rng.normal(0, preset.jitter_step, size=(n, 2)), axis=0)
    drift -= drift[0]
    tremor = rng.normal(0, preset.jitter_tremor, size=(n, 2))
    return np.clip(drift + tremor, -preset.jitter_max, preset.jitter_max)


@dataclass
class RenderedClip:
    frames: list[np.ndarray]
    groundtruth: dict = field(default_factory=dict)


def render_clip(plan: ClipPlan, preset: str | SynthPreset, seed: int) -> RenderedClip:
    """Frames (RGB uint8, first_frame..offset) and ground truth of one planned clip."""
    p = get_preset(preset)
    subj = make_subject(p, seed, plan.subject_index)
    rng = _rng(seed, _STAGE_RENDER, plan.subject_index, plan.clip_index)
    h, w = p.frame_size
    lm = subj.landmarks
    k = subj.face_width / FACE_SCALE

    # one backward field per clip (the apex), scaled per frame by the intensity; fitted at the
    # motion's midpoints so that scaling it stays close to the exact inverse at every intensity
    # (the ground-truth landmarks below are solved exactly from it anyway)
    virt = virtual_points(lm)
    ctrl = np.vstack([lm, [virt[v] for v in VIRTUAL]])
    d = au_displacements(lm, plan.aus, plan.au_weights) * plan.amplitude * k
    fld = dense_field(ctrl + d / 2, -d, lm, (h, w))

    n = plan.n_frames
    s = intensity_curve(n, plan.apex - plan.onset, plan.offset - plan.apex)
    jit = _jitter(n, p, rng)
    gain = (1 + p.flicker * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * np.arange(n) / plan.fps
                                   + rng.uniform(0, 2 * np.pi))
            + rng.normal(0, p.flicker / 3, size=n)).astype(np.float32)
    chroma = rng.normal(0, p.chroma_noise_sigma, size=(h, w, 3)).astype(np.float32)

    y0, y1, x0, x1 = subj.roi
    gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32),
                         np.arange(y0, y1, dtype=np.float32))
    fx, fy = fld[y0:y1, x0:x1, 0], fld[y0:y1, x0:x1, 1]
    hm = subj.head_mask[y0:y1, x0:x1]
    still = subj.neutral.astype(np.float32) + chroma  # fixed-pattern noise on the still parts
    bank = subj.noise_bank
    pad = bank.shape[1] - h
    picks = rng.integers(0, [len(bank), pad + 1, pad + 1], size=(n, 3))
    frames = []
    img = np.empty((h, w, 3), np.float32)
    for t in range(n):
        # backward map: the head content moves by +jit[t], hence the minus
        mx = gx + np.float32(s[t]) * fx - np.float32(jit[t, 0]) * hm
        my = gy + np.float32(s[t]) * fy - np.float32(jit[t, 1]) * hm
        img[:] = still
        roi = img[y0:y1, x0:x1]
        roi[:] = cv2.remap(subj.neutral, mx, my, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT101)
        roi += chroma[y0:y1, x0:x1]
        img *= gain[t]
        kb, oy, ox = picks[t]
        img += bank[kb, oy:oy + h, ox:ox + w, None]  # luminance noise: a window of the bank
        np.maximum(img, 0, out=img)
        frames.append(cv2.convertScaleAbs(img))  # rounds and saturates to uint8
    marks = forward_points(lm, fld, scale=s, shift=-jit, shift_mask=subj.head_mask)

    motion = marks - jit[:, None, :] - lm[None]  # expression alone, jitter removed
    gt = {
        "subject": plan.subject, "clip": plan.clip, "label": plan.label,
        "emotion": plan.emotion.lower(), "aus": "+".join(plan.aus), "identity": subj.identity,
        "first_frame": plan.first_frame, "onset": plan.onset, "apex": plan.apex,
        "offset": plan.offset,
        "fps": plan.fps, "amplitude": plan.amplitude, "face_width": subj.face_width,
        "max_landmark_motion": float(np.linalg.norm(motion, axis=2).max() / k),
        "landmarks": marks.astype(np.float32), "neutral_landmarks": lm.astype(np.float32),
        "jitter": jit.astype(np.float32), "intensity": s.astype(np.float32),
        "frame_numbers": np.arange(plan.first_frame, plan.offset + 1, dtype=np.int32),
    }
    return RenderedClip(frames, gt)


# --------------------------------------------------------------------------------------------
# Ground-truth files


def _save_npz(path: Path, arrays: dict) -> None:
    """np.savez without the zip entries' time stamps, so equal arrays give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.asarray(arrays[key]), allow_pickle=False)


def groundtruth_path(root: str | Path, subject: str, clip: str) -> Path:
    return Path(root) / GT_DIR / subject / f"{clip}.npz"


def load_groundtruth(root: str | Path, subject: str | None = None, clip: str | None = None):
    """The dataset-level ground-truth table, or one clip's ground truth as a dict of arrays and
    scalars when ``subject`` and ``clip`` are given."""
    root = Path(root)
    if subject is None:
        return pd.read_csv(root / GT_CSV, dtype={"subject": str, "clip": str, "label": str,
                                                 "aus": str}, keep_default_na=False)
    with np.load(groundtruth_path(root, subject, clip)) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}


# --------------------------------------------------------------------------------------------
# Generation


class _Prefetcher:
    """Renders clips on a thread pool a few clips ahead of the writer that consumes them.

    Submission happens when a writer asks for a clip's frames (and for the next few), so a
    writer that lists all records first still holds only a few clips in memory."""

    def __init__(self, plans: list[ClipPlan], preset: SynthPreset, seed: int, workers: int):
        self.plans, self.preset, self.seed = plans, preset, seed
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.ahead = max(1, workers) + 1
        self.futures: dict[int, Future] = {}
        self.submitted = 0
        self.groundtruth: dict[int, dict] = {}
        self.lock = threading.Lock()

    def frames(self, i: int) -> list[np.ndarray]:
        with self.lock:
            while self.submitted < min(i + 1 + self.ahead, len(self.plans)):
                j = self.submitted
                self.futures[j] = self.pool.submit(render_clip, self.plans[j], self.preset,
                                                   self.seed)
                self.submitted += 1
            fut = self.futures.pop(i, None)
        if fut is None:  # asked twice: render again (deterministic)
            fut = self.pool.submit(render_clip, self.plans[i], self.preset, self.seed)
        out = fut.result()
        self.groundtruth[i] = out.groundtruth
        return out.frames

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _records(plans: list[ClipPlan], layout: str, pf: _Prefetcher):
    for i, pl in enumerate(plans):
        au_text = {"casme2": "+".join(a[2:] for a in pl.aus), "samm": "+".join(pl.aus),
                   "smic": ""}[layout]
        yield ClipRecord(subject=pl.subject, clip=pl.clip, emotion=pl.emotion,
                         frames=(lambda i=i: pf.frames(i)), onset=pl.onset,
                         apex=None if layout == "smic" else pl.apex, offset=pl.offset,
                         first_frame=pl.first_frame, action_units=au_text,
                         extra={"synthme_label": pl.label})


def _write_layout(root: Path, layout: str, records, preset: SynthPreset) -> Path:
    from merlib.datasets import writers

    if layout == "casme2":
        return writers.write_casme2(root, records, jpeg_quality=preset.jpeg_quality)
    if layout == "samm":
        return writers.write_samm(root, records, jpeg_quality=preset.jpeg_quality)
    return writers.write_smic(root, records)


def _marker(layout: str, preset: SynthPreset, seed: int) -> dict:
    return {"synthme": GENERATOR_VERSION, "layout": layout, "preset": preset.name,
            "seed": int(seed), "config": asdict(preset)}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER)


def is_complete(root: str | Path, *, layout: str, preset: str | SynthPreset, seed: int) -> bool:
    """Whether ``root`` holds a finished SynthME of exactly this (layout, preset, seed)."""
    root = Path(root)
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    want = _marker(layout, get_preset(preset), seed)
    same = all(marker.get(k) == json.loads(json.dumps(v)) for k, v in want.items())
    return same and marker.get("n_files") == len(_files(root))


def generate(out: Path, *, layout: str = "casme2", preset: str = "tiny", seed: int = 0,
             workers: int | None = None) -> Path:
    """Write SynthME in ``layout``'s on-disk format to ``out`` (plus its ground truth) and return
    ``out``. Reuses ``out`` when it already holds the same (layout, preset, seed); builds in a
    sibling folder and renames it into place, so ``out`` is never left half written."""
    out = Path(out).expanduser().resolve()
    p = get_preset(preset)
    plans = plan_dataset(layout, p, seed)  # validates layout
    if is_complete(out, layout=layout, preset=p, seed=seed):
        return out
    stale = _is_ours(out, layout, p.name, seed)  # same name, older generator or files missing
    if out.exists() and any(out.iterdir()) and not stale:
        what = "a different SynthME" if (out / MARKER).exists() else "other files"
        raise FileExistsError(f"{out} already holds {what}; SynthME {layout}/{p.name}/seed {seed} "
                              f"needs an empty or absent folder")
    tmp = out.parent / f".{out.name}.synthme-partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    workers = DEFAULT_WORKERS if workers is None else workers
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # subjects first, once each
        list(pool.map(lambda i: make_subject(p, seed, i),
                      sorted({pl.subject_index for pl in plans})))
    pf = _Prefetcher(plans, p, seed, workers)
    try:
        _write_layout(tmp, layout, _records(plans, layout, pf), p)
        rows = []
        for i, pl in enumerate(plans):
            gt = pf.groundtruth.get(i) or render_clip(pl, p, seed).groundtruth
            path = groundtruth_path(tmp, pl.subject, pl.clip)
            _save_npz(path, gt)
            rows.append({**{k: gt[k] for k in GT_COLUMNS if k in gt},
                         "n_frames": pl.n_frames, "groundtruth": path.relative_to(tmp).as_posix()})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        pf.close()
        make_subject.cache_clear()  # ~8 MB per subject; a later run rebuilds them in a second
    table = pd.DataFrame(rows, columns=GT_COLUMNS)
    table["amplitude"] = table["amplitude"].round(4)
    table["face_width"] = table["face_width"].round(3)
    table["max_landmark_motion"] = table["max_landmark_motion"].round(4)
    table.to_csv(tmp / GT_CSV, index=False, lineterminator="\n")
    marker = {**_marker(layout, p, seed), "n_clips": len(plans), "n_files": len(_files(tmp)),
              "classes": dict(Counter(pl.label or "excluded" for pl in plans))}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    if stale:
        trash = out.parent / f".{out.name}.synthme-stale"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(out, trash)
        shutil.rmtree(trash)
    elif out.exists():
        out.rmdir()  # empty, checked above
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


def _is_ours(root: Path, layout: str, preset: str, seed: int) -> bool:
    """Whether ``root`` carries a SynthME marker naming this (layout, preset, seed): then it is
    generated output, safe to replace when it is stale or incomplete."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and (marker.get("layout"), marker.get("preset"),
                                         marker.get("seed")) == (layout, preset, int(seed))


def dataset_digest(root: str | Path) -> str:
    """sha256 over every file's relative path and bytes: equal digests mean equal datasets."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()
