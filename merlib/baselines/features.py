"""Per-clip baseline features from the preprocessing cache's aligned frames, cached per clip.

Two kinds: ``lbptop`` (the LBP-TOP descriptor, for lbptop-svm) and ``flow`` (onset→apex u, v and
optical strain at 28×28, raw; shared by ststnet and off-apexnet, which scale and pick channels).
One folder per kind and settings::

    <cache_dir>/<kind>-<settings key>/
        settings.json                          the settings hashed into the key
        <preprocessing folder>/<subject>__<clip>.npz   features + the source file's fingerprint

``<preprocessing folder>`` is the name of the folder the clip's npz came from (it holds the
preprocessing key), so clips of two preprocessing configurations never overwrite each other.
A file is written to a temporary name and renamed into place; a rerun reuses every file whose
fingerprint (size and mtime of the source npz) still matches and computes the rest, in worker
processes. A clip whose features cannot be computed is reported with its reason and the others
go on.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd

from merlib.baselines.flow import TVL1, FlowFailed, onset_apex_flow
from merlib.baselines.image import to_gray
from merlib.baselines.lbptop import lbp_top_histograms
from merlib.files import atomic_path, atomic_write_text

META_COLUMNS = ["dataset", "source", "subject", "clip", "label"]
FAILED_COLUMNS = ["subject", "clip", "reason"]

# What each kind computes; the JSON of these dicts is hashed into the folder name. Bump
# "version" when the code's output changes for the same settings.
SETTINGS = {
    "lbptop": {"kind": "lbptop", "gray": "cv2 RGB2GRAY uint8", "radii_xyt": [1, 1, 4], "points": 4,
               "method": "default", "blocks": [5, 5], "histogram": "per block and plane, sum 1",
               "version": 1},
    "flow": {"kind": "flow", "gray": "cv2 RGB2GRAY uint8", "pair": "frames[0] -> frames[-1]",
             "tvl1": TVL1, "strain": "sqrt(u_x^2 + v_y^2 + (u_y + v_x)^2 / 2), np.gradient",
             "size": 28, "resize": "cv2.INTER_AREA", "channels": ["u", "v", "strain"],
             "version": 1},
    # A derived release's own onset -> apex flow images (the index's flow_file): read as stored.
    "flow_file": {"kind": "flow_file", "source": "the row's flow_file, a 28x28 8-bit RGB image",
                  "size": 28, "channels": ["u", "v", "strain"], "version": 1},
}
# One thread per worker process, set before anything is imported there.
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ClipFailed(ValueError):
    """A clip without features; the message is the reason."""


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def feature_folder(cache_dir: str | Path, kind: str) -> Path:
    return Path(cache_dir) / f"{kind}-{settings_key(SETTINGS[kind])}"


def compute(kind: str, frames: np.ndarray) -> np.ndarray:
    """The features of one clip from its aligned frames (T, H, W, 3) uint8 RGB:
    ``lbptop`` -> (blocks·3·2^P,) float32, ``flow`` -> (3, 28, 28) float32 (u, v, strain).
    (``flow_file`` reads the release's image instead: :func:`work`.)"""
    s = SETTINGS[kind]
    if kind == "lbptop":
        hist = lbp_top_histograms(to_gray(frames), radii=tuple(s["radii_xyt"]), points=s["points"],
                                  blocks=tuple(s["blocks"]))
        return hist.ravel().astype(np.float32)
    return onset_apex_flow(frames, size=s["size"], tvl1=s["tvl1"])


def feature_shape(kind: str) -> tuple[int, ...]:
    s = SETTINGS[kind]
    if kind == "lbptop":
        return (s["blocks"][0] * s["blocks"][1] * 3 * 2 ** s["points"],)
    return (len(s["channels"]), s["size"], s["size"])


# --------------------------------------------------------------------------- one clip

def clip_name(row: dict) -> str:
    return f"{row['subject']}/{row['clip']}"


def _source(row: dict, kind: str = "") -> tuple[Path, str]:
    """The file the clip's features come from (its preprocessed npz; for ``flow_file`` the
    release's flow image) and its fingerprint; ClipFailed when it is missing."""
    if kind == "flow_file":
        flow = str(row.get("flow_file") or "")
        if not flow:
            raise ClipFailed(f"{clip_name(row)}: the index names no flow file for this clip")
        try:
            st = Path(flow).stat()
        except OSError:
            raise ClipFailed(f"{clip_name(row)}: flow file missing: {flow}") from None
        return Path(flow), f"{Path(flow).name}:{st.st_size}:{st.st_mtime_ns}"
    file = row.get("file")
    file = "" if file is None or (isinstance(file, float) and np.isnan(file)) else str(file)
    if not file:
        raise ClipFailed(f"{clip_name(row)}: the manifest names no preprocessed file")
    src = Path(file)
    try:
        st = src.stat()
    except OSError:
        raise ClipFailed(f"{clip_name(row)}: preprocessed clip file missing: {src}") from None
    return src, f"{src.parent.parent.name}/{src.name}:{st.st_size}:{st.st_mtime_ns}"


def target(folder: Path, row: dict) -> Path:
    src = Path(str(row["file"]))
    return folder / src.parent.parent.name / src.name  # <preprocessing folder>/<subject>__<clip>.npz


def _features(kind: str, src: Path, row: dict) -> np.ndarray:
    if kind == "flow_file":
        from merlib.datasets.megc_public import FlowReadError, read_flow

        try:
            return read_flow(src, clip=clip_name(row))
        except FlowReadError as exc:
            raise ClipFailed(str(exc)) from None
    return compute(kind, _load_frames(src, row))


def read_cached(path: Path, fingerprint: str) -> np.ndarray | None:
    """The cached features when the file is whole and made from this very source file."""
    try:
        with np.load(path) as z:
            if str(z["source"]) != fingerprint:
                return None
            return z["features"]
    except (OSError, ValueError, KeyError, EOFError):
        return None  # absent, half-written or stale: compute again


def _write(path: Path, features: np.ndarray, fingerprint: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=features, source=np.array(fingerprint))


def _load_frames(src: Path, row: dict) -> np.ndarray:
    try:
        with np.load(src) as z:
            frames = z["frames"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the clip's reason
        raise ClipFailed(f"{clip_name(row)}: unreadable preprocessed clip {src}: "
                         f"{type(exc).__name__}: {exc}") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise ClipFailed(f"{clip_name(row)}: preprocessed clip {src} has frames of "
                         f"{frames.dtype} {frames.shape}, expected (T >= 2, H, W, 3) uint8")
    return frames


def work(kind: str, row: dict, path: Path) -> tuple[np.ndarray | None, str]:
    """Compute and cache one clip's features: (features, "") or (None, reason). Never raises
    for a bad clip."""
    try:
        src, fingerprint = _source(row, kind)
        features = _features(kind, src, row)
        _write(path, features, fingerprint)
        return features, ""
    except ClipFailed as exc:
        return None, str(exc)
    except FlowFailed as exc:
        return None, f"{clip_name(row)}: {exc}"
    except Exception as exc:  # noqa: BLE001 - one clip's bug must not stop the others
        return None, f"{clip_name(row)}: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- many clips

def _init_worker() -> None:
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    threadpool_limits(1)


def _pool_round(kind: str, todo: dict[int, tuple[dict, Path]], workers: int, results: dict,
                bar) -> bool:
    """Run ``todo`` in a pool of ``workers`` processes into ``results``; False if the pool broke
    (a worker died)."""
    from joblib.externals.loky import get_reusable_executor

    pool = get_reusable_executor(max_workers=workers, timeout=60, initializer=_init_worker,
                                 env=_ONE_THREAD)
    futures = {pool.submit(work, kind, row, path): i for i, (row, path) in todo.items()}
    try:
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            bar.update(1)
    except BrokenProcessPool:
        return False
    return True


def run(kind: str, rows: list[dict], folder: Path, *, jobs: int = 0, progress: bool = False
        ) -> list[tuple[np.ndarray | None, str]]:
    """(features or None, reason) per row, from the cache or computed (in ``jobs`` worker
    processes; 0: one per core, 1: in this process). A worker that dies is retried alone, and
    a clip that kills its own worker is reported as such."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    settings_file = folder / "settings.json"
    if not settings_file.exists():
        atomic_write_text(settings_file, json.dumps(SETTINGS[kind], indent=1, sort_keys=True) + "\n")
    results: dict[int, tuple[np.ndarray | None, str]] = {}
    todo: dict[int, tuple[dict, Path]] = {}
    for i, row in enumerate(rows):
        try:
            _, fingerprint = _source(row, kind)
        except ClipFailed as exc:
            results[i] = (None, str(exc))
            continue
        cached = read_cached(target(folder, row), fingerprint)
        if cached is not None:
            results[i] = (cached, "")
        else:
            todo[i] = (row, target(folder, row))
    jobs = (os.cpu_count() or 1) if jobs <= 0 else jobs
    with tqdm(total=len(todo), desc=f"{kind} features", unit="clip", disable=not progress) as bar:
        if jobs == 1 or len(todo) <= 1:
            for i, (row, path) in todo.items():
                results[i] = work(kind, row, path)
                bar.update(1)
        elif not _pool_round(kind, todo, min(jobs, len(todo)), results, bar):
            for i in [i for i in todo if i not in results]:  # one clip per fresh pool
                if not _pool_round(kind, {i: todo[i]}, 1, results, bar):
                    results[i] = (None, f"{clip_name(todo[i][0])}: worker process died")
                    bar.update(1)
    return [results[i] for i in range(len(rows))]


def build(kind: str, manifest: pd.DataFrame, cache_dir: str | Path, *, jobs: int = 0,
          progress: bool = False) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Features of the manifest's usable rows (status ok), in manifest order: (X (N, ...),
    kept rows' meta, failed clips (subject, clip, reason))."""
    ok = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    rows = [{k: (None if v is pd.NA else v) for k, v in r.items()} for r in ok.to_dict("records")]
    out = run(kind, rows, feature_folder(cache_dir, kind), jobs=jobs, progress=progress)
    kept = [i for i, (features, _) in enumerate(out) if features is not None]
    X = (np.stack([out[i][0] for i in kept]) if kept
         else np.empty((0, *feature_shape(kind)), dtype=np.float32))
    meta = ok.loc[kept, META_COLUMNS].reset_index(drop=True)
    failed = pd.DataFrame([{"subject": rows[i]["subject"], "clip": rows[i]["clip"], "reason": reason}
                           for i, (features, reason) in enumerate(out) if features is None],
                          columns=FAILED_COLUMNS)
    return X, meta, failed
