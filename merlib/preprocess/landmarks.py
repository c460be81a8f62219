"""Face landmarks per clip, and the two numberings of the key points.

The face box and the 68 points of one image come from :mod:`merlib.faces` (face_recognition's
dlib HOG detector + 68-point shape predictor, shared with SynthME); they are re-exported here.

Two numberings of the key points (docs/DESIGN.md, "Preprocessing", step 4):

- ``dlib68``: dlib's 68 points in dlib's order.
- ``fr72``: the paper's 72 key points = the lists of ``face_recognition.face_landmarks`` in its dict
  order (chin 17, left_eyebrow 5, right_eyebrow 5, nose_bridge 4, nose_tip 5, left_eye 6,
  right_eye 6, top_lip 12, bottom_lip 12) concatenated. Points 1-55 equal dlib's 1-55; after that
  they repeat and reorder dlib's lip points (``FR72_FROM_DLIB68``).

Arrays are 0-based like all numpy arrays; the paper numbers points from 1. ``p(points, k)`` reads
the paper's point k (1-based), so code can quote the paper's numbers verbatim.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from merlib.faces import (Box, FaceFind, detect_face, find_face,  # noqa: F401  (one face finder;
                          landmarks68)                               # re-exported)

# fr72 index (0-based) -> dlib68 index (0-based); mirrors face_recognition.api.face_landmarks.
FR72_FROM_DLIB68 = np.array(
    list(range(0, 48))                                   # chin, eyebrows, nose, eyes
    + list(range(48, 55)) + [64, 63, 62, 61, 60]         # top_lip
    + list(range(54, 60)) + [48, 60, 67, 66, 65, 64],    # bottom_lip
    dtype=np.intp,
)
# dlib68 index -> an fr72 index holding the same point (every dlib point occurs in fr72).
DLIB68_FROM_FR72 = np.array([int(np.flatnonzero(FR72_FROM_DLIB68 == i)[0]) for i in range(68)],
                            dtype=np.intp)
FR72_GROUPS = (("chin", 17), ("left_eyebrow", 5), ("right_eyebrow", 5), ("nose_bridge", 4),
               ("nose_tip", 5), ("left_eye", 6), ("right_eye", 6), ("top_lip", 12),
               ("bottom_lip", 12))


def p(points: np.ndarray, k: int) -> np.ndarray:
    """Paper point ``k`` (1-based) of ``points`` (..., P, 2) -> (..., 2)."""
    if not 1 <= k <= points.shape[-2]:
        raise IndexError(f"point {k} out of 1..{points.shape[-2]}")
    return points[..., k - 1, :]


def to72(points68: np.ndarray) -> np.ndarray:
    """dlib-68 points (..., 68, 2) -> the paper's 72 points (..., 72, 2)."""
    points68 = np.asarray(points68)
    if points68.shape[-2:] != (68, 2):
        raise ValueError(f"expected (..., 68, 2) points, got {points68.shape}")
    return points68[..., FR72_FROM_DLIB68, :]


def to68(points72: np.ndarray) -> np.ndarray:
    """The paper's 72 points (..., 72, 2) -> dlib-68 points (..., 68, 2) (inverse of ``to72``)."""
    points72 = np.asarray(points72)
    if points72.shape[-2:] != (72, 2):
        raise ValueError(f"expected (..., 72, 2) points, got {points72.shape}")
    return points72[..., DLIB68_FROM_FR72, :]


def box_from_points(points: np.ndarray) -> Box:
    """Bounding box (top, right, bottom, left) of landmark points, rounded outwards."""
    points = np.asarray(points, dtype=np.float64)
    x0, y0 = np.floor(points.min(axis=0))
    x1, y1 = np.ceil(points.max(axis=0))
    return int(y0), int(x1), int(y1), int(x0)


def landmarks_ok(points: np.ndarray, shape: tuple[int, ...], *, min_inside: float = 0.5,
                 min_extent: float = 4.0) -> bool:
    """Plausibility of a 68-point fit: finite, at least ``min_inside`` of the points inside the
    image, and spread over more than ``min_extent`` pixels in both directions."""
    points = np.asarray(points, dtype=np.float64)
    if not np.all(np.isfinite(points)):
        return False
    h, w = shape[:2]
    inside = ((points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h))
    extent = points.max(axis=0) - points.min(axis=0)
    return bool(inside.mean() >= min_inside and np.all(extent > min_extent))


class ClipLandmarks(NamedTuple):
    points: np.ndarray   # (T, 72, 2) for scheme "fr72", (T, 68, 2) for "dlib68"; float64 (x, y)
    n_fallback: int      # frames whose fit failed and took a neighbour's points


def clip_landmarks72(frames: np.ndarray, box: Box, *, scheme: str = "fr72") -> ClipLandmarks:
    """Landmarks of every frame (T, H, W, 3) uint8 with one known face box (never re-detected).

    A frame whose fit fails (exception, or ``landmarks_ok`` false) takes the previous frame's
    points; leading failures take the first good frame's points. Each such frame is counted in
    ``n_fallback``. Raises ValueError when no frame gives usable landmarks.
    """
    if scheme not in ("fr72", "dlib68"):
        raise ValueError(f"scheme must be 'fr72' or 'dlib68', got {scheme!r}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"expected frames (T, H, W, 3), got shape {frames.shape}")
    fits: list[np.ndarray | None] = []
    for frame in frames:
        try:
            pts = landmarks68(frame, box)
            fits.append(pts if landmarks_ok(pts, frame.shape) else None)
        except Exception:  # noqa: BLE001 - dlib raises RuntimeError / ValueError on bad input: a miss
            fits.append(None)
    good = [i for i, f in enumerate(fits) if f is not None]
    if not good:
        raise ValueError(f"no usable landmarks in any of {len(fits)} frames with box {tuple(box)}")
    last = fits[good[0]]
    out = []
    for f in fits:
        last = f if f is not None else last
        out.append(last)
    points = np.stack(out)
    n_fallback = len(fits) - len(good)
    return ClipLandmarks(to72(points) if scheme == "fr72" else points, n_fallback)
