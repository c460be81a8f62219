"""SynthME's base faces and the landmark geometry everything else is measured in.

The base identities are the two bundled photographs (:mod:`merlib.faces`), each as is and
mirrored, with dlib-68 landmarks of the largest HOG face. Geometry: a face's axes and width (jaw
point 1 to 17, counted as ``FACE_SCALE`` px when giving amplitudes), virtual skin points the 68
landmarks do not cover, and elliptic radii / raised-cosine falloffs in the face's axes.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from merlib.faces import detect_face, landmarks68, photograph

FACE_SCALE = 224.0  # the face width (jaw point 1 to 17) counted as 224 px when giving amplitudes
# subject i takes base face i % 4 in this order: changing it changes every SynthME
BASE_PHOTOGRAPHS = ("astronaut", "grace_hopper")


@dataclass(frozen=True)
class BaseFace:
    name: str
    image: np.ndarray  # RGB uint8
    landmarks: np.ndarray  # (68, 2) float64, dlib-68 order, (x, y)


_FACES_LOCK = threading.Lock()


def base_faces() -> tuple[BaseFace, ...]:
    """The four base identities: two bundled photographs, each as is and mirrored (landmarks are
    detected again on the mirror, so the dlib order stays image-left to image-right)."""
    with _FACES_LOCK:  # dlib's detector is not safe to run from two threads at once
        return _base_faces()


@lru_cache(maxsize=None)
def _base_faces() -> tuple[BaseFace, ...]:
    faces = []
    for name in BASE_PHOTOGRAPHS:
        photo = photograph(name)
        for mirrored in (False, True):
            img = np.ascontiguousarray(photo[:, ::-1]) if mirrored else photo
            box = detect_face(img)
            if box is None:  # never expected: the photographs are fixed
                raise RuntimeError(f"no face found in the bundled photograph {name}")
            faces.append(BaseFace(name + ("_mirrored" if mirrored else ""), img,
                                  landmarks68(img, box)))
    return tuple(faces)


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


def ellipse_radius(shape: tuple[int, int], lm: np.ndarray, ru: float, rv: float,
                   shift_v: float = 0.0) -> np.ndarray:
    """Normalised elliptic radius (1 on the ellipse) of every pixel, in the face's axes."""
    c, u, v, w = face_axes(lm)
    c = c + shift_v * w * v
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    dx, dy = xx - np.float32(c[0]), yy - np.float32(c[1])
    pu = (dx * u[0] + dy * u[1]) / (ru * w)
    pv = (dx * v[0] + dy * v[1]) / (rv * w)
    return np.sqrt(pu * pu + pv * pv)


def falloff(r: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """1 inside r0, raised-cosine down to 0 at r1."""
    t = np.clip((r - r0) / (r1 - r0), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)
