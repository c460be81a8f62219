"""The per-clip recipe (docs/DESIGN.md, "Preprocessing"): one index row in, the processed clip's arrays and record out.

Read the onset..offset frames -> apex (Eqs. 16-17) on that span, annotated apex used where present
and valid (per ``PreprocessConfig.apex``) -> TIM of onset..apex to ``n_frames`` frames -> face
detected once, on the first TIM frame (= the onset frame), and its 68 landmarks -> LWM alignment
maps -> the same warp applied to every TIM frame (``size`` x ``size``) -> 72 landmarks on each
aligned frame inside the template box (no re-detection) -> identification points and block sides
of both schemes (24 and 10).

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

STEPS = ("read", "apex", "tim", "detect", "align", "landmarks", "blocks", "write")

# Failure codes of a clip (the reason column says the specifics).
FAIL_CODES = {
    "missing_folder": "the clip's frame folder is gone",
    "unreadable_frame": "a frame file is truncated, not an image, or missing",
    "too_few_frames": "the onset..offset span holds fewer frames than PreprocessConfig.min_frames",
    "no_face": "the face detector finds no face on the first frame",
    "no_landmarks": "no aligned frame gives usable landmarks",
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
        numbers = _span_numbers(row)
        if len(numbers) < cfg.min_frames:
            raise ClipFailed("too_few_frames", f"{name}: {len(numbers)} frame(s) between onset "
                             f"{row.get('onset')} and offset {row.get('offset')} in "
                             f"{row['frames_dir']}, need at least {cfg.min_frames}")
        try:
            span = read_frames(row["frames_dir"], numbers)                  # (N, H, W, 3)
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
        box = landmarks.detect_face(tim[0], upsample=cfg.detect_upsample)   # once per clip
        calls += 1
        if box is None:
            raise ClipFailed("no_face", f"{name}: no face found on the first frame "
                             f"(frame {numbers[0]}, {tim.shape[2]}x{tim.shape[1]})")
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
        **{f"t_{k}": round(v, 4) for k, v in times.items()},
    }
    return {"arrays": arrays, "record": record}
