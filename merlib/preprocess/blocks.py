"""Identification points (IPs) and block sides (paper Sec. 3.2.2-3.2.3), in aligned coordinates.

Point numbers below are the paper's, 1-based (``landmarks.p``). ``numbering`` names the reading
of those numbers (one of ``SCHEMES``, ``PreprocessConfig.scheme``):

- ``"fr72"`` (default, the paper as printed): the 72 face_recognition key points, Eqs. 4-5.
- ``"dlib68"``: dlib's 68 points, as in gACNN where the 24-IP scheme comes from. Points 1-55 are
  the same in both; the 24-IP scheme also uses 57 and 59, inner upper-lip points in fr72 but
  lower-lip points in dlib68. The 10-IP scheme uses only points <= 55, so both agree there.
  A (..., 72, 2) array read with ``"dlib68"`` is first converted back to dlib order.
- ``"gacnn24"``: gACNN's own converter (PG-CNN ``convert_point/pts68_24``): dlib68, and Eq. 5 as
  (x55 + 16, y55 - 16), so IP23 and IP24 sit symmetrically above the two mouth corners. The
  10-IP scheme is the same as dlib68's.

24 IPs (block side 48): IP1-16 = points 19, 22, 23, 26, 39, 37, 44, 46, 28, 30, 49, 51, 53, 55,
59, 57. IP17-22 are midpoints of point pairs. The paper lists the pairs (20,38), (41,42), (18,59)
for the left side and (25,45), (47,48), (27,57) for the right, then the IP numbers "17, 19, 18,
20, 21 and 22"; we pair the two lists in the order printed, so IP17 = mid(20,38),
IP18 = mid(18,59), IP19 = mid(41,42), IP20 = mid(25,45), IP21 = mid(47,48), IP22 = mid(27,57).
IP23 = (x49 - 16, y49 - 16) and IP24 = (x55 + 16, y55 + 16), Eqs. 4-5 as printed (image y grows
downwards, so IP23 sits above-left of the left mouth corner and IP24 below-right of the right one;
``"gacnn24"`` puts IP24 above-right instead).

10 IPs (block side w = |x55 - x49| / 2 for all ten, per frame): IP1 = p49, IP2 = p55,
IP3 = (x9 - w/2, y9) (Eq. 12), IP4 = (x32 - w/2, y32) (Eq. 10), IP5 = (x36 + w/2, y36) (Eq. 11),
IP6 = (x37 - w/2, y37) (Eq. 8), IP7 = (x46 + w/2, y46) (Eq. 9), IP8 = mid(p20, p25),
IP9 = (x_IP8 - w, y_IP8) (Eq. 6), IP10 = (x_IP8 + w, y_IP8) (Eq. 7).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from merlib.config import SCHEMES  # the point readings; the first is the default
from merlib.preprocess.landmarks import p, to68

BLOCK_SIDE_24 = 48.0
MOUTH_OFFSET_24 = 16.0                                      # Eqs. 4-5
IP24_POINTS = (19, 22, 23, 26, 39, 37, 44, 46, 28, 30, 49, 51, 53, 55, 59, 57)   # IP1-16
IP24_PAIRS = ((20, 38), (18, 59), (41, 42), (25, 45), (47, 48), (27, 57))       # IP17-22


class IdentificationPoints(NamedTuple):
    centres: np.ndarray  # (..., K, 2) float64 (x, y): IP k is centres[..., k-1, :]
    sides: np.ndarray    # (..., K) float64 block side in pixels


def _as_numbering(points: np.ndarray, numbering: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 2 or points.shape[-1] != 2:
        raise ValueError(f"expected landmark points (..., P, 2), got {points.shape}")
    n = points.shape[-2]
    if numbering == "fr72":
        if n != 72:
            raise ValueError(f"numbering 'fr72' needs 72 points, got {n}")
        return points
    if numbering in ("dlib68", "gacnn24"):
        if n == 72:
            return to68(points)
        if n != 68:
            raise ValueError(f"numbering {numbering!r} needs 68 (or 72) points, got {n}")
        return points
    raise ValueError(f"numbering must be one of {SCHEMES}, got {numbering!r}")


def _mid(pts: np.ndarray, a: int, b: int) -> np.ndarray:
    return (p(pts, a) + p(pts, b)) / 2.0


def _shift(pt: np.ndarray, dx, dy=0.0) -> np.ndarray:
    return pt + np.stack([np.broadcast_to(dx, pt.shape[:-1]), np.broadcast_to(dy, pt.shape[:-1])],
                         axis=-1)


def _ips24(pts: np.ndarray, numbering: str) -> IdentificationPoints:
    centres = [p(pts, k) for k in IP24_POINTS]
    centres += [_mid(pts, a, b) for a, b in IP24_PAIRS]
    centres.append(_shift(p(pts, 49), -MOUTH_OFFSET_24, -MOUTH_OFFSET_24))   # Eq. 4
    # Eq. 5 as printed is +16 in y (below the corner); gACNN's converter uses -16, mirroring Eq. 4.
    dy24 = -MOUTH_OFFSET_24 if numbering == "gacnn24" else MOUTH_OFFSET_24
    centres.append(_shift(p(pts, 55), MOUTH_OFFSET_24, dy24))                # Eq. 5
    c = np.stack(centres, axis=-2)
    return IdentificationPoints(c, np.full(c.shape[:-1], BLOCK_SIDE_24))


def _ips10(pts: np.ndarray) -> IdentificationPoints:
    w = np.abs(p(pts, 55)[..., 0] - p(pts, 49)[..., 0]) / 2.0     # side of every block
    ip8 = _mid(pts, 20, 25)
    c = np.stack([
        p(pts, 49),                       # IP1
        p(pts, 55),                       # IP2
        _shift(p(pts, 9), -w / 2),        # IP3, Eq. 12
        _shift(p(pts, 32), -w / 2),       # IP4, Eq. 10
        _shift(p(pts, 36), w / 2),        # IP5, Eq. 11
        _shift(p(pts, 37), -w / 2),       # IP6, Eq. 8
        _shift(p(pts, 46), w / 2),        # IP7, Eq. 9
        ip8,                              # IP8
        _shift(ip8, -w),                  # IP9, Eq. 6
        _shift(ip8, w),                   # IP10, Eq. 7
    ], axis=-2)
    return IdentificationPoints(c, np.repeat(w[..., None], 10, axis=-1))


def identification_points(points: np.ndarray, *, scheme: int,
                          numbering: str = "fr72") -> IdentificationPoints:
    """IP centres (..., K, 2) and block sides (..., K) from landmarks (..., 72 or 68, 2).

    ``scheme`` is 24 or 10 (K); ``numbering`` one of ``SCHEMES``; any leading axes (e.g. time)
    are kept.
    """
    pts = _as_numbering(points, numbering)
    if scheme == 24:
        return _ips24(pts, numbering)
    if scheme == 10:
        return _ips10(pts)
    raise ValueError(f"scheme must be 24 or 10, got {scheme!r}")
