"""The bundled face photographs and face finding, shared by SynthME and preprocessing.

Photographs: scikit-image's ``astronaut`` and matplotlib's ``grace_hopper.jpg``, installed with
those packages, so SynthME and the tests need no download.

Faces: face_recognition's dlib HOG detector and its 68-point shape predictor. HOG can return false
positives (the astronaut's suit gives a second box, 90x90 px against the face's 91x91), so the
largest face is kept. ``find_face`` adds fallback routes for frames where HOG sees no face
(``FACE_ROUTES``), and says which route gave the box.

Base layer, like config: anything may import it. face_recognition, scikit-image and matplotlib are
imported on first use, so importing this module stays cheap.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

PHOTOGRAPHS = ("astronaut", "grace_hopper")

Box = tuple[int, int, int, int]  # (top, right, bottom, left), face_recognition's "css" order


def photograph(name: str) -> np.ndarray:
    """A bundled photograph (``PHOTOGRAPHS``) as a fresh RGB uint8 (H, W, 3) array."""
    if name == "astronaut":
        from skimage.data import astronaut

        return np.ascontiguousarray(astronaut()[..., :3])
    if name == "grace_hopper":
        from matplotlib.cbook import get_sample_data
        from PIL import Image

        with Image.open(get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
            return np.asarray(im.convert("RGB")).copy()
    raise ValueError(f"unknown photograph {name!r}; choose one of {PHOTOGRAPHS}")


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


def face_boxes(image: np.ndarray, *, upsample: int = 1) -> list[Box]:
    """Every face the HOG detector finds, as (top, right, bottom, left), in the detector's order."""
    import face_recognition

    boxes = face_recognition.face_locations(_rgb_uint8(image), number_of_times_to_upsample=upsample,
                                            model="hog")
    return [tuple(int(v) for v in b) for b in boxes]


def detect_face(image: np.ndarray, *, upsample: int = 1) -> Box | None:
    """The largest face found by the HOG detector as (top, right, bottom, left), or None."""
    boxes = face_boxes(image, upsample=upsample)
    if not boxes:
        return None
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))


def landmarks68(image: np.ndarray, box: Box) -> np.ndarray:
    """dlib's 68 points (68, 2) float64 (x, y) for the face in ``box``; the box is not re-detected."""
    from face_recognition import api

    shape = api._raw_face_landmarks(_rgb_uint8(image), [tuple(int(v) for v in box)], model="large")[0]
    return np.array([(pt.x, pt.y) for pt in shape.parts()], dtype=np.float64)


# The routes of ``find_face``, in the order they are tried.
FACE_ROUTES = ("detector", "padded", "upsampled", "whole_frame")


class FaceFind(NamedTuple):
    box: Box | None       # (top, right, bottom, left) in the image's pixels, or None
    route: str            # the FACE_ROUTES entry that gave ``box``; "" when none did
    detector_calls: int   # HOG runs made (the cost; whole_frame makes none)
    rejected: tuple[str, ...] = ()  # fallback routes whose box ``accept`` turned down


def pad_image(image: np.ndarray, pad: int) -> np.ndarray:
    """``image`` (H, W, 3) inside a black border ``pad`` pixels wide on every side."""
    image = np.asarray(image)
    out = np.zeros((image.shape[0] + 2 * pad, image.shape[1] + 2 * pad) + image.shape[2:],
                   dtype=image.dtype)
    out[pad:pad + image.shape[0], pad:pad + image.shape[1]] = image
    return out


def find_face(image: np.ndarray, *, upsample: int = 1, pad_fraction: float = 0.25,
              route_upsample: int = 2, precropped: bool = False,
              detect: Callable[..., Box | None] | None = None,
              accept: Callable[[Box], bool] | None = None) -> FaceFind:
    """The face of ``image`` (H, W, 3) uint8 and the route that found it, trying in order:

    - ``detector``: ``detect(image, upsample=upsample)`` (default ``detect_face``), as before;
    - ``padded``: the same on the image inside a black border of ``pad_fraction`` of its longer
      side, the box shifted back. HOG's windows must hold the whole face outline, so a tight crop
      whose brows or chin touch the border is missed; with a border it is seen. The box may then
      reach outside the image: dlib's shape predictor reads outside pixels as black, the very
      border the detector saw, so ``landmarks68`` on the image with that box is the fit on the
      padded image, shifted back;
    - ``upsampled``: ``detect`` with ``upsample=route_upsample`` (skipped unless larger than
      ``upsample``): finer pyramid levels for faces near the detector's size limits;
    - ``whole_frame``: only when ``precropped`` (the loader declares its frames face crops), the
      frame itself, (0, W, H, 0): on such crops HOG's own boxes are the frame to a few pixels.

    The detector's own box is taken as it comes (as before the routes existed). A fallback box
    is a guess, so it is taken only when ``accept(box)`` is true (default: always); a rejected one
    is listed in ``rejected`` and the next route tried. ``detect`` is a parameter so the recipe can
    pass the module attribute that tests monkeypatch to count its calls. Returns
    ``FaceFind(None, "", calls, rejected)`` when no route gives an accepted face.
    """
    detect = detect_face if detect is None else detect
    image = _rgb_uint8(image)
    h, w = image.shape[:2]
    calls = 1
    box = detect(image, upsample=upsample)
    if box is not None:
        return FaceFind(tuple(int(v) for v in box), "detector", calls)
    rejected: list[str] = []

    def take(route: str, found) -> FaceFind | None:
        if found is None:
            return None
        found = tuple(int(v) for v in found)
        if accept is None or accept(found):
            return FaceFind(found, route, calls, tuple(rejected))
        rejected.append(route)
        return None

    pad = int(round(pad_fraction * max(h, w)))
    if pad > 0:
        calls += 1
        box = detect(pad_image(image, pad), upsample=upsample)
        hit = take("padded", None if box is None else [v - pad for v in box])
        if hit:
            return hit
    if route_upsample > upsample:
        calls += 1
        hit = take("upsampled", detect(image, upsample=route_upsample))
        if hit:
            return hit
    if precropped:
        hit = take("whole_frame", (0, w, h, 0))
        if hit:
            return hit
    return FaceFind(None, "", calls, tuple(rejected))
