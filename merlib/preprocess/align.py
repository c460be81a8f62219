"""Face alignment: local weighted mean (LWM) warp to a template face, eye-based crop, 224x224.

LWM (Goshtasby 1988; MATLAB ``fitgeotrans(moving, fixed, 'lwm', N)``), written here because
scikit-image and OpenCV have none. For every control point i (at its "fixed" position c_i):

- a second-order polynomial P_i (terms 1, u, v, u^2, uv, v^2 per output coordinate) is fitted by
  least squares to its N nearest control points (itself included), N = ``n_neighbors``
  (default 12, at least 6);
- its radius r_i is the distance to the N-th of those points;
- the weight of a location x is W_i(x) = 1 - 3 R^2 + 2 R^3 with R = |x - c_i| / r_i for R < 1,
  else 0; the map is sum_i W_i(x) P_i(x) / sum_i W_i(x).

Like MATLAB's, the fitted transform is the *inverse* map, fixed (output) -> moving (input), which
is what image resampling (imwarp, cv2.remap) needs. With N > 6 the polynomials are least-squares
fits, so control points are reproduced only approximately unless the warp is locally quadratic;
with N = 6 each polynomial interpolates its 6 points and control points map exactly.
Polynomials are fitted in coordinates local to each control point, (x - c_i) / r_i, for
conditioning. Where no weight covers a location (MATLAB returns NaN there and imwarp paints it
black) we use the global least-squares affine map of all control points instead; the map can
therefore jump by a few pixels at the edge of the landmarks' reach, which lies in hair or
background for faces.

Alignment (paper Sec. 4.2): LWM from the first frame's 68 landmarks to a fixed template face
whose eye centres sit at fixed places of the 224x224 output, so the warp, the eye-based crop and
the bilinear resize are one ``cv2.remap`` per frame. The template is the mean of the
face_recognition landmarks of two photographs bundled in installed packages (scikit-image's
astronaut, matplotlib's grace_hopper.jpg), each first brought by a similarity transform to the
eye positions ``EYE_Y`` and ``EYE_DIST``; it is computed on first use and cached in memory.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

# Eye-based crop: eye centres at (0.5 -/+ EYE_DIST / 2, EYE_Y) x out_size in the aligned frame.
# Chosen so that the whole face, chin to brows, with the 24-IP mouth offsets, fits in the frame.
EYE_Y = 0.31
EYE_DIST = 0.36
_CHUNK = 16384  # query points evaluated at once (memory ~ chunk x control points x 2 floats)
_RCOND = 1e-7  # pseudo-inverse cut-off for near-degenerate neighbourhoods (points on a curve)


def _monomials(u: np.ndarray) -> np.ndarray:
    """(..., 2) -> (..., 6): 1, u, v, u^2, uv, v^2."""
    x, y = u[..., 0], u[..., 1]
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


@dataclass(frozen=True, eq=False)
class LWMTransform:
    """Inverse LWM map (fixed/output -> moving/input); call it on points (..., 2)."""

    centres: np.ndarray   # (K, 2) control points in fixed (output) coordinates
    radii: np.ndarray     # (K,) radius of influence of each control point
    coefs: np.ndarray     # (K, 6, 2) local polynomial of each control point
    affine: np.ndarray    # (3, 2) global affine fallback: [x, y, 1] @ affine

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        if points.shape[-1] != 2:
            raise ValueError(f"expected points (..., 2), got {points.shape}")
        flat = points.reshape(-1, 2)
        out = np.empty_like(flat)
        for start in range(0, len(flat), _CHUNK):
            out[start:start + _CHUNK] = self._map(flat[start:start + _CHUNK])
        return out.reshape(points.shape)

    def _map(self, x: np.ndarray) -> np.ndarray:
        inv_r = 1.0 / self.radii
        ux = (x[:, :1] - self.centres[:, 0]) * inv_r                               # (M, K)
        uy = (x[:, 1:] - self.centres[:, 1]) * inv_r
        r2 = ux * ux + uy * uy
        # Only (point, control point) pairs with R < 1 carry weight: ~7 of 68 for a face.
        m, k = np.nonzero(r2 < 1.0)
        r = np.sqrt(r2[m, k])
        w = 1.0 - 3.0 * r ** 2 + 2.0 * r ** 3                                      # (P,)
        u = np.stack([ux[m, k], uy[m, k]], axis=-1)                                # (P, 2)
        poly = np.einsum("pj,pjd->pd", _monomials(u), self.coefs[k])               # (P, 2)
        den = np.bincount(m, weights=w, minlength=len(x))
        num = np.stack([np.bincount(m, weights=w * poly[:, d], minlength=len(x)) for d in (0, 1)],
                       axis=1)
        out = np.hstack([x, np.ones((len(x), 1))]) @ self.affine                   # fallback
        covered = den > 0
        out[covered] = num[covered] / den[covered, None]
        return out


def fit_lwm(src_pts: np.ndarray, dst_pts: np.ndarray, *, n_neighbors: int = 12) -> LWMTransform:
    """LWM transform mapping ``dst_pts`` (fixed) to ``src_pts`` (moving), i.e. the inverse map that
    warps an image with landmarks ``src_pts`` onto ``dst_pts``. Swap the arguments for the
    forward map of points."""
    src = np.asarray(src_pts, dtype=np.float64)
    dst = np.asarray(dst_pts, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"expected two (K, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("control points must be finite")
    k = len(dst)
    if n_neighbors < 6:
        raise ValueError(f"n_neighbors must be at least 6 (6 polynomial terms), got {n_neighbors}")
    if k < n_neighbors:
        raise ValueError(f"LWM with n_neighbors={n_neighbors} needs at least that many control "
                         f"points, got {k}")
    dist = np.linalg.norm(dst[:, None] - dst[None], axis=-1)                      # (K, K)
    order = np.argsort(dist, axis=1, kind="stable")[:, :n_neighbors]               # self first
    radii = np.take_along_axis(dist, order[:, -1:], axis=1)[:, 0]
    if np.any(radii <= 0):
        raise ValueError("control points coincide: an LWM radius is zero")
    local = (dst[order] - dst[:, None]) / radii[:, None, None]                     # (K, N, 2)
    design = _monomials(local)                                                     # (K, N, 6)
    coefs = np.linalg.pinv(design, rcond=_RCOND) @ src[order]                      # (K, 6, 2)
    homog = np.hstack([dst, np.ones((k, 1))])
    affine = np.linalg.lstsq(homog, src, rcond=None)[0]                            # (3, 2)
    return LWMTransform(centres=dst, radii=radii, coefs=coefs, affine=affine)


# --- template face ---------------------------------------------------------------------------

def _similarity_to_eyes(points68: np.ndarray) -> np.ndarray:
    """Points moved by the similarity that puts the eye centres at (0.5 -/+ EYE_DIST/2, EYE_Y)
    of a unit frame."""
    left, right = points68[36:42].mean(axis=0), points68[42:48].mean(axis=0)
    # Complex numbers: z -> a z + b with a = rotation*scale, mapping left -> tl and right -> tr.
    tl = complex(0.5 - EYE_DIST / 2, EYE_Y)
    tr = complex(0.5 + EYE_DIST / 2, EYE_Y)
    zl, zr = complex(*left), complex(*right)
    a = (tr - tl) / (zr - zl)
    b = tl - a * zl
    z = a * (points68[:, 0] + 1j * points68[:, 1]) + b
    return np.stack([z.real, z.imag], axis=1)


@functools.lru_cache(maxsize=1)
def _photo_landmarks() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(image, 68 landmarks) of each bundled photograph, largest face."""
    from merlib.faces import PHOTOGRAPHS, detect_face, landmarks68, photograph

    out = []
    for image in map(photograph, PHOTOGRAPHS):
        box = detect_face(image)
        if box is None:
            raise RuntimeError("no face found in a bundled photograph; cannot build the template")
        out.append((image, landmarks68(image, box)))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _unit_template() -> np.ndarray:
    unit = np.mean([_similarity_to_eyes(pts) for _, pts in _photo_landmarks()], axis=0)
    unit.setflags(write=False)
    return unit


def template68(out_size: int = 224) -> np.ndarray:
    """The template face: 68 dlib-order points (68, 2) in ``out_size`` x ``out_size`` aligned
    pixel coordinates (x, y), eye centres at (0.5 -/+ EYE_DIST/2, EYE_Y) x out_size."""
    return _unit_template() * out_size


@functools.lru_cache(maxsize=8)
def template_box(out_size: int = 224) -> tuple[int, int, int, int]:
    """A face box (top, right, bottom, left) for aligned frames: the HOG detector's box on the
    aligned bundled photographs, averaged and rounded. Aligned faces all sit on the template, so
    this serves as the known box for landmarking aligned frames when detection is skipped."""
    from merlib.preprocess.landmarks import detect_face

    boxes = []
    for image, pts in _photo_landmarks():
        aligned = apply_alignment(image[None], alignment_map(pts, out_size=out_size))[0]
        box = detect_face(aligned)
        if box is not None:
            boxes.append(box)
    if not boxes:
        raise RuntimeError(f"no face detected on the aligned photographs at out_size={out_size}")
    return tuple(int(v) for v in np.rint(np.mean(boxes, axis=0)))


# --- alignment maps ----------------------------------------------------------------------------

class AlignmentMaps(NamedTuple):
    map_x: np.ndarray  # (out, out) float32: source x sampled by each output pixel (cv2.remap)
    map_y: np.ndarray  # (out, out) float32


def alignment_map(landmarks68_first_frame: np.ndarray, *, out_size: int = 224,
                  n_neighbors: int = 12, template: np.ndarray | None = None) -> AlignmentMaps:
    """cv2.remap maps taking a frame whose face has ``landmarks68_first_frame`` (68, 2) (x, y)
    to the ``out_size`` aligned frame: LWM warp onto the template, eye-based crop and resize in
    one step. ``template`` (68, 2) in output pixels defaults to ``template68(out_size)``."""
    src = np.asarray(landmarks68_first_frame, dtype=np.float64)
    dst = template68(out_size) if template is None else np.asarray(template, dtype=np.float64)
    if src.shape != (68, 2) or dst.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks and template, got {src.shape}, {dst.shape}")
    inverse = fit_lwm(src, dst, n_neighbors=n_neighbors)
    ys, xs = np.mgrid[0:out_size, 0:out_size].astype(np.float64)
    mapped = inverse(np.stack([xs, ys], axis=-1))                                  # (S, S, 2)
    return AlignmentMaps(mapped[..., 0].astype(np.float32), mapped[..., 1].astype(np.float32))


def alignment_forward(landmarks68_first_frame: np.ndarray, *, out_size: int = 224,
                      n_neighbors: int = 12, template: np.ndarray | None = None) -> LWMTransform:
    """Approximate forward map, source-frame points -> aligned-frame points (an LWM fitted the
    other way round), e.g. for ground-truth landmarks of synthetic clips."""
    src = np.asarray(landmarks68_first_frame, dtype=np.float64)
    dst = template68(out_size) if template is None else np.asarray(template, dtype=np.float64)
    return fit_lwm(dst, src, n_neighbors=n_neighbors)


def apply_alignment(frames: np.ndarray, maps: AlignmentMaps) -> np.ndarray:
    """Warp frames (N, H, W, 3) uint8 with ``alignment_map``'s maps, bilinear, black outside
    the source frame -> (N, out, out, 3) uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected frames (N, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
    map_x, map_y = maps
    return np.stack([cv2.remap(f, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                     for f in frames])
