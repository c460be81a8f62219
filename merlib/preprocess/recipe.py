"""The per-clip recipe (docs/DESIGN.md, "Preprocessing"): one index row in, the processed clip's arrays and record out.

Read the onset..offset frames -> apex (Eqs. 16-17) on that span, annotated apex used where present
and valid (per ``PreprocessConfig.apex``) -> TIM of onset..apex to ``n_frames`` frames -> face
detected once, on the first TIM frame (= the onset frame), and its 68 landmarks -> LWM alignment
maps -> the same warp applied to every TIM frame (``size`` x ``size``) -> 72 landmarks on each
aligned frame inside the template box (no re-detection) -> identification points and block sides
of both schemes (24 and 10).

The face is found by ``faces.find_face``: the HOG detector, then the frame inside a black border,
then a finer detector pyramid, then (only for rows whose loader declares its frames face crops,
index column ``precropped``) the whole frame; the record's ``face_route`` says which route. The
detector's box is used as before; a fallback route's box is used only when its landmarks align
(``fallback_box_problem``: plausible landmarks, a face on the frame they align, and that frame's
landmarks within ``FALLBACK_MAX_RESIDUAL`` template eye distances of the template), else the
next route is tried; the record's ``face_rejected`` names the routes turned down and why.

Single-frame clips: a row whose ``frame_file`` column names an image (the public MEGC2019
release keeps only the apex frame) is a clip of that one frame, onset = apex = offset. It is
processed with ``PreprocessConfig(n_frames=1, min_frames=1)``: the apex is that frame (no
detection needed: Eq. 17 is undefined on one frame and the annotated apex is used), TIM of one
frame to one frame is the frame itself, and alignment, landmarks and blocks run as usual on it.
Another config fails such a clip (``too_few_frames``) rather than repeat the frame.

``process_clip`` reads the clip's frames and writes nothing; the cache (``cache``) and the worker
pool (``workers``) are separate. A bad clip raises ``ClipFailed`` with one of ``FAIL_CODES``.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd

from merlib.config import PreprocessConfig
from merlib.preprocess import align, landmarks
from merlib.preprocess.apex import apex_error, detect_apex
from merlib.preprocess.blocks import identification_points
from merlib.preprocess.tim import tim_interpolate

__all__ = ["FAIL_CODES", "STEPS", "ClipFailed", "PreprocessConfig", "clip_name", "process_clip"]

# A fallback route's face box is kept when the landmarks re-fitted on the frame it aligns lie
# on average within this share of the template's eye distance from the template. On the public
# MEGC2019 release the detector's own boxes give at most 0.057; padded-route boxes reaching far
# below three SAMM crops put the mouth on the chin and gave 0.124-0.129. A blank frame aligned
# with the whole frame as its box gives 0.104: this bound alone is no face check.
FALLBACK_MAX_RESIDUAL = 0.1

STEPS = ("read", "apex", "tim", "detect", "align", "landmarks", "blocks", "write")

# Failure codes of a clip (the reason column says the specifics).
FAIL_CODES = {
    "missing_folder": "the clip's frame folder is gone",
    "unreadable_frame": "a frame file is truncated, not an image, or missing",
    "too_few_frames": "the onset..offset span holds fewer frames than PreprocessConfig.min_frames "
                      "(or a single-frame clip meets a config other than n_frames=1, min_frames=1)",
    "no_face": "no route of faces.find_face finds a face on the first frame",
    "no_landmarks": "no aligned frame gives usable landmarks, or no fallback face box aligns",
    "error": "an unexpected exception while processing the clip (type and message in reason)",
    "worker_crashed": "the worker process died while the clip was in flight, on every retry",
}


class ClipFailed(Exception):
    """A clip that cannot be processed; ``status`` is a FAIL_CODES key, ``reason`` names the clip."""

    def __init__(self, status: str, reason: str):
        assert status in FAIL_CODES, status
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- one clip

def clip_name(row: dict) -> str:
    """``subject/clip``, the name a reason gives a clip."""
    return f"{row['subject']}/{row['clip']}"


def _int_or_none(value) -> int | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


@contextmanager
def _timed(times: dict, step: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times[step] = times.get(step, 0.0) + time.perf_counter() - t0


def _span_numbers(row: dict) -> list[int]:
    """Frame numbers on disk from onset to offset (all frames when either is missing)."""
    from merlib.datasets import frame_paths

    name = clip_name(row)
    try:
        numbers = list(frame_paths(row["frames_dir"]))
    except FileNotFoundError as exc:
        raise ClipFailed("missing_folder", f"{name}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise ClipFailed("unreadable_frame", f"{name}: {exc}") from exc
    onset, offset = _int_or_none(row.get("onset")), _int_or_none(row.get("offset"))
    lo = numbers[0] if onset is None and numbers else onset
    hi = numbers[-1] if offset is None and numbers else offset
    return [n for n in numbers if lo <= n <= hi] if numbers else []


def single_frame_file(row: dict) -> str:
    """The one image of a single-frame clip (index column ``frame_file``), or '' for a clip read
    from its frame folder (every loader but the public MEGC2019 release)."""
    value = row.get("frame_file")
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def declared_precropped(row: dict) -> bool:
    """Whether the row's loader declares its frames face crops (index column ``precropped``):
    a bool, or its text after a CSV round trip."""
    value = row.get("precropped")
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if value is not None and value is not pd.NA else False


def _read_single_frame(row: dict, frame_file: str, cfg: PreprocessConfig
                       ) -> tuple[list[int], np.ndarray]:
    """([frame number], (1, H, W, 3) frames) of a single-frame clip."""
    from merlib.datasets import FrameReadError, read_frame

    name = clip_name(row)
    if cfg.n_frames != 1 or cfg.min_frames != 1:
        # TIM would repeat the one frame n_frames times: a still clip posing as a sequence.
        raise ClipFailed("too_few_frames", f"{name}: a single-frame clip ({frame_file}) needs "
                         f"PreprocessConfig(n_frames=1, min_frames=1); this one has "
                         f"n_frames={cfg.n_frames}, min_frames={cfg.min_frames}")
    marks = [_int_or_none(row.get(k)) for k in ("apex", "onset", "offset")]
    number = next((m for m in marks if m is not None), 1)
    try:
        frame = read_frame(frame_file)
    except FrameReadError as exc:
        raise ClipFailed("unreadable_frame", f"{name}: {exc}") from exc
    return [number], frame[None]


def alignment_residual(aligned: np.ndarray, *, size: int = 224) -> float:
    """How far an aligned frame (S, S, 3) is from the template face: the mean distance of its 68
    landmarks (fitted in the template box) to the template's, as a share of the template's eye
    distance; inf when the fit is unusable. A face box in the wrong place gives source landmarks
    in the wrong place and a warp that distorts the face, and the re-fitted points leave the
    template."""
    try:
        pts, _ = landmarks.clip_landmarks72(np.asarray(aligned)[None], align.template_box(size),
                                            scheme="dlib68")
    except ValueError:
        return math.inf
    template = align.template68(size)
    eyes = np.linalg.norm(template[36:42].mean(axis=0) - template[42:48].mean(axis=0))
    return float(np.linalg.norm(pts[0] - template, axis=1).mean() / eyes)


def fallback_box_problem(frame: np.ndarray, box, *, size: int = 224, n_neighbors: int = 12,
                         detect=None) -> str:
    """Why a fallback route's face box cannot align the clip, or '' when it can: its landmarks
    must be plausible (``landmarks_ok``), the frame they align must show a face to ``detect``
    (default ``landmarks.detect_face``; the aligned face is upright, centred and inside the frame,
    where HOG finds even tight crops, and a blank or noise frame is turned down here), and the
    ``alignment_residual`` of that frame must be at most ``FALLBACK_MAX_RESIDUAL``."""
    detect = landmarks.detect_face if detect is None else detect
    src68 = landmarks.landmarks68(frame, box)
    if not landmarks.landmarks_ok(src68, frame.shape):
        return "implausible landmarks"
    maps = align.alignment_map(src68, out_size=size, n_neighbors=n_neighbors)
    aligned = align.apply_alignment(np.asarray(frame)[None], maps)[0]
    if detect(aligned) is None:
        return "no face on the aligned frame"
    residual = alignment_residual(aligned, size=size)
    if residual > FALLBACK_MAX_RESIDUAL:
        return (f"aligned landmarks {residual:.3f} eye distances from the template "
                f"(at most {FALLBACK_MAX_RESIDUAL})")
    return ""


def _choose_apex(row: dict, numbers: list[int], detected: int, cfg: PreprocessConfig):
    """(annotated apex or None, apex used, 'annotated' | 'detected')."""
    annotated = _int_or_none(row.get("apex"))
    flags = str(row.get("flags") or "").split(";")
    valid = annotated is not None and "apex_outside" not in flags and annotated in numbers
    if cfg.apex == "annotated" and valid:
        return annotated, annotated, "annotated"
    return annotated, detected, "detected"


def process_clip(row: dict, cfg: PreprocessConfig) -> dict:
    """Process one index row (a dict with the index columns) -> {"arrays": {...}, "record": {...}}.

    Reads the clip's frames, writes nothing. Raises ClipFailed for bad clips."""
    from merlib.datasets import FrameReadError, read_frames

    name = clip_name(row)
    times: dict[str, float] = {}
    calls = 0

    with _timed(times, "read"):
        frame_file = single_frame_file(row)
        if frame_file:
            numbers, span = _read_single_frame(row, frame_file, cfg)      # (1, H, W, 3)
        else:
            numbers = _span_numbers(row)
            if len(numbers) < cfg.min_frames:
                raise ClipFailed("too_few_frames", f"{name}: {len(numbers)} frame(s) between "
                                 f"onset {row.get('onset')} and offset {row.get('offset')} in "
                                 f"{row['frames_dir']}, need at least {cfg.min_frames}")
            try:
                span = read_frames(row["frames_dir"], numbers)              # (N, H, W, 3)
            except (FrameReadError, OSError, ValueError) as exc:
                raise ClipFailed("unreadable_frame", f"{name}: {exc}") from exc

    with _timed(times, "apex"):
        res = detect_apex(span)                                             # Eqs. 16-17
        detected = numbers[res.index]
        annotated, used, source = _choose_apex(row, numbers, detected, cfg)
        i_apex = numbers.index(used)

    with _timed(times, "tim"):
        tim = tim_interpolate(span[:i_apex + 1], n_out=cfg.n_frames)      # (T, H, W, 3)

    with _timed(times, "detect"):
        problems: list[str] = []  # one per fallback box checked, '' for the one taken

        def aligns(box) -> bool:  # the check of a fallback route's box (one more HOG run)
            problems.append(fallback_box_problem(tim[0], box, size=cfg.size,
                                                 n_neighbors=cfg.lwm_neighbors,
                                                 detect=landmarks.detect_face))
            return not problems[-1]

        # Once per clip; the detector is passed as the module attribute so that tests can count it.
        found = landmarks.find_face(tim[0], upsample=cfg.detect_upsample,
                                    precropped=declared_precropped(row),
                                    detect=landmarks.detect_face, accept=aligns)
        calls += found.detector_calls + len(problems)
        box = found.box
        rejected = "; ".join(f"{route}: {why}" for route, why in
                             zip(found.rejected, [p for p in problems if p]))
        if box is None:
            size = f"frame {numbers[0]}, {tim.shape[2]}x{tim.shape[1]}"
            if found.rejected:
                raise ClipFailed("no_landmarks", f"{name}: no face box on the first frame "
                                 f"({size}) aligns the face; turned down: {rejected}")
            raise ClipFailed("no_face", f"{name}: no face found on the first frame ({size}; "
                             f"{found.detector_calls} detector routes tried)")
        src68 = landmarks.landmarks68(tim[0], box)                          # (68, 2)

    with _timed(times, "align"):
        maps = align.alignment_map(src68, out_size=cfg.size, n_neighbors=cfg.lwm_neighbors)
        frames = align.apply_alignment(tim, maps)                           # (T, S, S, 3)

    with _timed(times, "landmarks"):
        try:
            pts, n_fallback = landmarks.clip_landmarks72(frames, align.template_box(cfg.size),
                                                         scheme="fr72")     # (T, 72, 2)
        except ValueError as exc:
            raise ClipFailed("no_landmarks", f"{name}: {exc}") from exc

    with _timed(times, "blocks"):
        ip24, side24 = identification_points(pts, scheme=24, numbering=cfg.scheme)
        ip10, side10 = identification_points(pts, scheme=10, numbering=cfg.scheme)

    onset, offset = numbers[0], numbers[-1]
    arrays = {
        "frames": frames,
        "ip24": ip24.astype(np.float32), "side24": side24.astype(np.float32),
        "ip10": ip10.astype(np.float32), "side10": side10.astype(np.float32),
        "landmarks": pts.astype(np.float32),
        "landmarks68_source": src68.astype(np.float32),     # first frame, source pixels
        "box_source": np.asarray(box, dtype=np.int32),      # (top, right, bottom, left)
        "dif": res.dif.astype(np.float32),
        "frame_numbers": np.asarray(numbers, dtype=np.int32),
        "apex_annotated": np.int32(-1 if annotated is None else annotated),
        "apex_detected": np.int32(detected), "apex_used": np.int32(used),
        "onset": np.int32(onset), "offset": np.int32(offset), "n_fallback": np.int32(n_fallback),
    }
    err = apex_error(annotated, detected, len(numbers)) if annotated is not None else None
    record = {
        "onset": onset, "offset": offset, "apex_source": source,
        "apex_annotated": annotated, "apex_detected": detected, "apex_used": used,
        "apex_abs_err": None if err is None else err.frames,
        "apex_rel_err": None if err is None else err.fraction,
        "n_frames_span": len(numbers), "n_frames_tim": i_apex + 1,
        "n_landmark_fallback": int(n_fallback), "detector_calls": calls,
        "face_route": found.route, "face_rejected": rejected,
        **{f"t_{k}": round(v, 4) for k, v in times.items()},
    }
    return {"arrays": arrays, "record": record}
