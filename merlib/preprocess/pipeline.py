"""The clip pipeline (DESIGN §4): index rows in, a cache of processed clips and a manifest out.

Per clip, in the DESIGN order: read the onset..offset frames -> apex (Eqs. 16-17) on that span,
annotated apex used where present and valid (per ``PreprocessConfig.apex``) -> TIM of onset..apex
to ``n_frames`` frames -> face detected once, on the first TIM frame (= the onset frame), and its
68 landmarks -> LWM alignment maps -> the same warp applied to every TIM frame (``size`` x
``size``) -> 72 landmarks on each aligned frame inside the template box (no re-detection) ->
identification points and block sides of both schemes (24 and 10).

Cache layout, one folder per (dataset, config)::

    <cache>/<dataset>-<cfg.key()>/
        config.json            the resolved PreprocessConfig, commit and host (save_config)
        clips/<subject>__<clip>.npz     arrays of one processed clip
        records/<subject>__<clip>.json  its record: status ok or failed, reason, apex, timings
        manifest.csv           rebuilt from the records (and the index) after every run

Clip files and records are written to ``*.tmp`` and renamed into place, the record after the clip
file, so a killed run leaves either a finished clip or nothing that counts: a rerun skips every
clip whose record exists (ok or failed, for the same index row) and redoes the rest.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from merlib.config import PreprocessConfig, atomic_write_text
from merlib.preprocess import align, landmarks
from merlib.preprocess.apex import apex_error, detect_apex
from merlib.preprocess.blocks import identification_points
from merlib.preprocess.tim import tim_interpolate

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

MANIFEST_COLUMNS = [
    "dataset", "source", "subject", "clip", "label", "stage", "status", "reason", "file",
    "onset", "offset", "apex_source", "apex_annotated", "apex_detected", "apex_used",
    "apex_abs_err", "apex_rel_err", "n_frames_span", "n_frames_tim", "n_landmark_fallback",
    "detector_calls", "seconds", *[f"t_{s}" for s in STEPS],
    "gt_apex", "gt_abs_err", "gt_rel_err",
]


class ClipFailed(Exception):
    """A clip that cannot be processed; ``status`` is a FAIL_CODES key, ``reason`` names the clip."""

    def __init__(self, status: str, reason: str):
        assert status in FAIL_CODES, status
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- one clip

def _clip_name(row: dict) -> str:
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

    name = _clip_name(row)
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

    name = _clip_name(row)
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


# --------------------------------------------------------------------------- cache files

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def clip_stem(row) -> str:
    """File stem of a clip in the cache: ``<subject>__<clip>`` with unsafe characters replaced."""
    return f"{_UNSAFE.sub('-', str(row['subject']))}__{_UNSAFE.sub('-', str(row['clip']))}"


def row_key(row: dict) -> str:
    """Fingerprint of the index fields a processed clip depends on: a record whose row changed
    (e.g. a corrected coding sheet) is redone. The folder's location is left out, so moving the
    data does not invalidate the cache."""
    fields = [str(row.get(k)) for k in ("dataset", "source", "subject", "clip", "label", "onset",
                                        "apex", "offset", "n_frames", "flags")]
    return hashlib.sha256("|".join(fields).encode()).hexdigest()[:12]


def cache_folder(cache_dir: str | Path, dataset: str, cfg: PreprocessConfig) -> Path:
    return Path(cache_dir) / f"{dataset}-{cfg.key()}"


def manifest_path(cache_dir: str | Path, dataset: str, cfg: PreprocessConfig) -> Path:
    return cache_folder(cache_dir, dataset, cfg) / "manifest.csv"


def _write_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or half-written by a killed run: redo the clip


# --------------------------------------------------------------------------- SynthME ground truth

def _synth_root(frames_dir: str | Path) -> Path | None:
    """The SynthME folder a clip belongs to (a parent holding the generator's marker), or None."""
    from merlib.synth import MARKER

    for parent in list(Path(frames_dir).parents)[:5]:
        if (parent / MARKER).is_file():
            return parent
    return None


def _groundtruth_fields(row: dict, record: dict, gt_root: Path | None) -> dict:
    """gt_apex / gt_abs_err / gt_rel_err of the detected apex against SynthME's true apex."""
    from merlib.synth import groundtruth_path

    if gt_root is None or record.get("apex_detected") is None:
        return {}
    path = groundtruth_path(gt_root, row["subject"], row["clip"])
    if not path.is_file():
        return {}
    with np.load(path) as z:
        true_apex = int(z["apex"])
    err = apex_error(true_apex, record["apex_detected"], record["n_frames_span"])
    return {"gt_apex": true_apex, "gt_abs_err": err.frames, "gt_rel_err": err.fraction}


# --------------------------------------------------------------------------- workers

# Set in the workers before anything is imported: one process per core, no nested threading.
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _init_worker(size: int) -> None:
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)        # one process per core: no nested threading
    threadpool_limits(1)
    align.template_box(size)    # build the template face once per worker, before its first clip


def _work(row: dict, cfg: PreprocessConfig, folder: Path, gt_root: Path | None) -> dict:
    """Process, write the clip file then its record; never raises for a bad clip."""
    t0 = time.perf_counter()
    stem = clip_stem(row)
    base = {k: row.get(k, "") for k in ("dataset", "source", "subject", "clip", "label")}
    base["row_key"] = row_key(row)
    try:
        out = process_clip(row, cfg)
        t_write = time.perf_counter()
        path = folder / "clips" / f"{stem}.npz"
        _write_npz(path, out["arrays"])
        rec = {**base, **out["record"], "status": "ok", "reason": "", "file": str(path.resolve()),
               "t_write": round(time.perf_counter() - t_write, 4)}
        rec.update(_groundtruth_fields(row, rec, gt_root or _synth_root(row["frames_dir"])))
    except ClipFailed as exc:
        rec = {**base, "status": exc.status, "reason": exc.reason, "file": ""}
    except Exception as exc:  # one clip's bug must not stop the run; the reason says what broke
        rec = {**base, "status": "error", "file": "",
               "reason": f"{_clip_name(row)}: {type(exc).__name__}: {exc}"}
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    _write_json(folder / "records" / f"{stem}.json", rec)
    return rec


def _crashed(row: dict, folder: Path, message: str) -> dict:
    rec = {**{k: row.get(k, "") for k in ("dataset", "source", "subject", "clip", "label")},
           "row_key": row_key(row), "status": "worker_crashed", "file": "",
           "reason": f"{_clip_name(row)}: {message}"}
    _write_json(folder / "records" / f"{clip_stem(row)}.json", rec)
    return rec


def _pool_round(rows: list[dict], workers: int, cfg, folder, gt_root, bar) -> str | None:
    """Submit ``rows`` to a reusable pool of ``workers`` processes; the message of the error
    that broke the pool (a worker died), or None."""
    from joblib.externals.loky import get_reusable_executor

    pool = get_reusable_executor(max_workers=workers, timeout=60, initializer=_init_worker,
                                 initargs=(cfg.size,), env=_ONE_THREAD)
    try:
        for fut in as_completed([pool.submit(_work, row, cfg, folder, gt_root) for row in rows]):
            fut.result()
            bar.update(1)
    except BrokenProcessPool as exc:
        return f"worker process died ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    return None


def _run_pool(todo: list[dict], cfg, folder, gt_root, jobs: int, bar) -> None:
    """Run ``todo`` on ``jobs`` worker processes (loky: spawned, not forked, and without re-running
    the caller's script, so it works from scripts without a main guard and from notebooks).

    A worker that dies (segfault, out of memory) breaks the pool and every clip in flight with
    it. The clips without a record are then retried: the first of them (it was in flight) alone
    in one process, so the one that kills its worker is recorded as worker_crashed, and the
    others in a fresh pool again."""
    def unrecorded(rows):
        return [r for r in rows if _read_record(folder / "records" / f"{clip_stem(r)}.json") is None]

    pending = list(todo)
    while pending:
        error = _pool_round(pending, min(jobs, len(pending)), cfg, folder, gt_root, bar)
        pending = unrecorded(pending)
        if error is None or not pending:
            continue
        head = pending[0]
        error = _pool_round([head], 1, cfg, folder, gt_root, bar)
        if error is not None and unrecorded([head]):
            _crashed(head, folder, error)
            bar.update(1)
        pending = unrecorded(pending)


# --------------------------------------------------------------------------- run

def _rows(index: pd.DataFrame) -> list[dict]:
    out = []
    for rec in index.to_dict("records"):
        out.append({k: (None if v is pd.NA else v) for k, v in rec.items()})
    return out


def run(index: pd.DataFrame, cfg: PreprocessConfig, cache_dir: str | Path, *, jobs: int = 0,
        progress: bool = True, groundtruth_root: str | Path | None = None) -> pd.DataFrame:
    """Process every ``status == ok`` row of ``index`` into the cache and return the manifest.

    ``jobs``: worker processes (0: ``os.cpu_count()``; 1: in this process, no pool).
    ``groundtruth_root``: a SynthME folder whose ground truth gives the gt_* columns; by default
    each clip's is found from its frame folder when that lies inside a SynthME.
    Clips already recorded in the cache for the same index row are not redone."""
    from tqdm.auto import tqdm

    from merlib.config import save_config

    if index.empty:
        raise ValueError("the index has no rows")
    datasets = index["dataset"].unique()
    if len(datasets) != 1:
        raise ValueError(f"one dataset per run, the index has {list(datasets)}")
    rows = _rows(index)
    stems = [clip_stem(r) for r in rows]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"index rows share a cache name (subject__clip): {dupes[:5]}")
    folder = cache_folder(cache_dir, str(datasets[0]), cfg)
    for sub in ("clips", "records"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for tmp in (folder / sub).glob("*.tmp"):  # left by a killed run
            tmp.unlink(missing_ok=True)
    save_config(folder / "config.json", preprocess=cfg)
    gt_root = Path(groundtruth_root) if groundtruth_root else None

    todo = []
    for row in rows:
        if row["status"] != "ok":
            continue
        rec = _read_record(folder / "records" / f"{clip_stem(row)}.json")
        if rec is not None and rec.get("row_key") == row_key(row):
            continue
        todo.append(row)

    jobs = (os.cpu_count() or 1) if jobs <= 0 else jobs
    with tqdm(total=len(todo), desc=f"preprocess {datasets[0]}", unit="clip",
              disable=not progress) as bar:
        if jobs == 1 or len(todo) <= 1:
            for row in todo:
                _work(row, cfg, folder, gt_root)
                bar.update(1)
        else:
            _run_pool(todo, cfg, folder, gt_root, jobs, bar)
    return write_manifest(index, folder)


def write_manifest(index: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """manifest.csv of a cache folder, one row per index row: its record for processed clips,
    the index's status and reason for the rest."""
    out = []
    for row in _rows(index):
        base = {k: row.get(k, "") for k in ("dataset", "source", "subject", "clip", "label")}
        rec = None
        if row["status"] == "ok":
            rec = _read_record(folder / "records" / f"{clip_stem(row)}.json")
            if rec is not None and rec.get("row_key") != row_key(row):
                rec = None
        if rec is None:
            status = row["status"] if row["status"] != "ok" else "pending"
            out.append({**base, "stage": "index", "status": status,
                        "reason": row.get("reason", ""), "file": ""})
        else:
            out.append({**base, "stage": "preprocess",
                        **{k: rec.get(k) for k in MANIFEST_COLUMNS if k in rec}})
    manifest = pd.DataFrame(out, columns=MANIFEST_COLUMNS)
    for col in ("reason", "file", "apex_source"):
        manifest[col] = manifest[col].astype(object).fillna("").astype(str)
    for col in ("onset", "offset", "apex_annotated", "apex_detected", "apex_used", "gt_apex",
                "n_frames_span", "n_frames_tim", "n_landmark_fallback", "detector_calls"):
        manifest[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v))
                                  else int(v) for v in manifest[col]], dtype="Int64")
    atomic_write_text(folder / "manifest.csv", manifest.to_csv(index=False))
    return manifest


def load_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest.csv as written by ``run``: names kept as text, empty text cells as ''."""
    text = ["dataset", "source", "subject", "clip", "label", "stage", "status", "reason", "file",
            "apex_source"]
    manifest = pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False,
                           na_values=[""])
    manifest[text] = manifest[text].fillna("")
    return manifest


# --------------------------------------------------------------------------- CLI

def summary(manifest: pd.DataFrame, path: Path | None = None) -> str:
    """Clips ok / failed / skipped by the index, each failed clip with its reason."""
    ok = manifest["status"].eq("ok")
    failed = manifest[~ok & manifest["stage"].eq("preprocess")]
    skipped = manifest[manifest["stage"].eq("index")]
    lines = [f"{int(ok.sum())} clips ok, {len(failed)} failed, {len(skipped)} not processed "
             f"(index status: {', '.join(f'{k} {v}' for k, v in skipped['status'].value_counts().items()) or 'none'})"]
    for r in failed.itertuples():
        lines.append(f"  FAILED {r.subject}/{r.clip}: {r.status}: {r.reason}")
    if ok.any() and manifest.loc[ok, "gt_abs_err"].notna().any():
        g = manifest.loc[ok & manifest["gt_abs_err"].notna()]
        lines.append(f"detected apex vs SynthME ground truth: mean |error| "
                     f"{g['gt_abs_err'].mean():.2f} frames ({100 * g['gt_rel_err'].mean():.1f}% of "
                     f"clip length), {100 * (g['gt_abs_err'] <= 3).mean():.0f}% within 3 frames")
    if path is not None:
        lines.append(f"manifest: {path}")
    return "\n".join(lines)
