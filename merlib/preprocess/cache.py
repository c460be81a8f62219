"""The preprocessing cache: folder and file names, atomic clip and record files, the manifest.

One folder per (dataset, config)::

    <cache>/<dataset>-<cfg.key()>/
        config.json            the resolved PreprocessConfig, commit and host (save_config)
        clips/<subject>__<clip>.npz     arrays of one processed clip
        records/<subject>__<clip>.json  its record: status ok or failed, reason, apex, timings
        manifest.csv           rebuilt from the records (and the index) after every run

Clip files and records are written to ``*.tmp`` and renamed into place, the record after the clip
file, so a killed run leaves either a finished clip or nothing that counts: a rerun skips every
clip whose record exists (ok or failed, for the same index row) and redoes the rest.

A record holds only what the recipe computed from the clip and its index row. Scores against an
outside reference (SynthME's ground truth) are the report's (``report.apex_error_table``).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from merlib.config import PreprocessConfig
from merlib.files import TMP_SUFFIX, atomic_path, atomic_write_text
from merlib.preprocess.recipe import STEPS

MANIFEST_COLUMNS = [
    "dataset", "source", "subject", "clip", "label", "stage", "status", "reason", "file",
    "onset", "offset", "apex_source", "apex_annotated", "apex_detected", "apex_used",
    "apex_abs_err", "apex_rel_err", "n_frames_span", "n_frames_tim", "n_landmark_fallback",
    "detector_calls", "face_route", "seconds", *[f"t_{s}" for s in STEPS],
    "flow_file",  # a release's own flow image of the clip (the index's column; '' elsewhere)
]
# The index columns every record and manifest row starts with.
ROW_FIELDS = ("dataset", "source", "subject", "clip", "label")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- names

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


def clip_path(folder: Path, row) -> Path:
    return folder / "clips" / f"{clip_stem(row)}.npz"


def record_path(folder: Path, row) -> Path:
    return folder / "records" / f"{clip_stem(row)}.json"


# --------------------------------------------------------------------------- files

def open_folder(folder: Path, cfg: PreprocessConfig) -> None:
    """Create the cache folder, drop the ``*.tmp`` files a killed run left, save the config."""
    from merlib.config import save_config

    for sub in ("clips", "records"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for tmp in (folder / sub).glob(f"*{TMP_SUFFIX}"):  # left by a killed run
            tmp.unlink(missing_ok=True)
    save_config(folder / "config.json", preprocess=cfg)


def write_npz(path: Path, arrays: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def write_record(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent or half-written by a killed run: redo the clip


def current_record(folder: Path, row: dict) -> dict | None:
    """The clip's record when it exists and was made from this very index row, else None."""
    rec = read_record(record_path(folder, row))
    return rec if rec is not None and rec.get("row_key") == row_key(row) else None


# --------------------------------------------------------------------------- manifest

def index_rows(index: pd.DataFrame) -> list[dict]:
    """The index as plain dicts, pd.NA as None (rows travel to worker processes)."""
    out = []
    for rec in index.to_dict("records"):
        out.append({k: (None if v is pd.NA else v) for k, v in rec.items()})
    return out


def write_manifest(index: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """manifest.csv of a cache folder, one row per index row: its record for processed clips,
    the index's status and reason for the rest."""
    out = []
    for row in index_rows(index):
        base = {k: row.get(k, "") for k in (*ROW_FIELDS, "flow_file")}
        rec = current_record(folder, row) if row["status"] == "ok" else None
        if rec is None:
            status = row["status"] if row["status"] != "ok" else "pending"
            out.append({**base, "stage": "index", "status": status,
                        "reason": row.get("reason", ""), "file": ""})
        else:
            out.append({**base, "stage": "preprocess",
                        **{k: rec.get(k) for k in MANIFEST_COLUMNS if k in rec}})
    manifest = pd.DataFrame(out, columns=MANIFEST_COLUMNS)
    for col in ("reason", "file", "apex_source", "face_route", "flow_file"):
        manifest[col] = manifest[col].astype(object).fillna("").astype(str)
    for col in ("onset", "offset", "apex_annotated", "apex_detected", "apex_used",
                "n_frames_span", "n_frames_tim", "n_landmark_fallback", "detector_calls"):
        manifest[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v))
                                  else int(v) for v in manifest[col]], dtype="Int64")
    atomic_write_text(folder / "manifest.csv", manifest.to_csv(index=False))
    return manifest


def load_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest.csv as ``write_manifest`` writes it: names as text, empty text cells as ''."""
    text = ["dataset", "source", "subject", "clip", "label", "stage", "status", "reason", "file",
            "apex_source", "face_route", "flow_file"]
    manifest = pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False,
                           na_values=[""])
    # A manifest written before face_route was recorded still loads, with the column empty.
    for col in text:
        manifest[col] = manifest[col].fillna("") if col in manifest.columns else ""
    return manifest


def summary(manifest: pd.DataFrame, path: Path | None = None) -> str:
    """Clips ok / failed / skipped by the index, each failed clip with its reason."""
    ok = manifest["status"].eq("ok")
    failed = manifest[~ok & manifest["stage"].eq("preprocess")]
    skipped = manifest[manifest["stage"].eq("index")]
    counts = ", ".join(f"{k} {v}" for k, v in skipped["status"].value_counts().items()) or "none"
    lines = [f"{int(ok.sum())} clips ok, {len(failed)} failed, {len(skipped)} not processed "
             f"(index status: {counts})"]
    for r in failed.itertuples():
        lines.append(f"  FAILED {r.subject}/{r.clip}: {r.status}: {r.reason}")
    if path is not None:
        lines.append(f"manifest: {path}")
    return "\n".join(lines)
