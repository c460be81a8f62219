"""The bundled face photographs and face finding, shared by SynthME and preprocessing.

Photographs: scikit-image's ``astronaut`` and matplotlib's ``grace_hopper.jpg``, installed with
those packages, so SynthME and the tests need no download.

Faces: face_recognition's dlib HOG detector and its 68-point shape predictor. HOG can return false
positives (the astronaut's suit gives a second box, 90x90 px against the face's 91x91), so the
largest face is kept.

Base layer, like config: anything may import it. face_recognition, scikit-image and matplotlib are
imported on first use, so importing this module stays cheap.
"""
from __future__ import annotations

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
