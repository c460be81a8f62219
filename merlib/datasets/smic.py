"""SMIC-HS: ``HS/s1/micro/{negative,positive,surprise}/s1_ne_01/image######.bmp`` (cropped:
``reg_image######.bmp``), 100 fps, no coding sheet.

The label is the folder; there is no apex annotation (apex missing, flagged ``apex_missing``);
onset/offset are the first/last frame numbers on disk. Subjects and clips take the MEGC list's
spelling (``s01``, ``s01_ne_01``) whether the folders say ``s1`` or ``s01``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from merlib.datasets.layout import (DatasetNotFound, MAX_DEPTH, assess_clip, scan_frames,
                                    check_root, prune_subjects, to_index, walk_dirs)
from merlib.datasets.schema import map_emotion

FPS = 100
FRAMES_DESC = ("a folder named HS holding s<N>/micro/{negative,positive,surprise}/<clip>/"
               "image######.bmp")
_SUBJECT = re.compile(r"s(\d{1,2})", re.IGNORECASE)


def canonical_name(name: str) -> str:
    """'s1' -> 's01', 's1_ne_01' -> 's01_ne_01', 'S01_po_2' -> 's01_po_2'."""
    m = re.match(r"s0*(\d+)(?=_|$)", name, re.IGNORECASE)
    return f"s{int(m.group(1)):02d}{name[m.end():]}" if m else name


def _micro(subject_dir: Path) -> Path | None:
    try:
        return next((c for c in sorted(subject_dir.iterdir())
                     if c.is_dir() and c.name.lower() == "micro"), None)
    except OSError:
        return None


def discover(root: Path) -> Path | None:
    """The HS folder below ``root``: a folder named HS whose sN folders hold ``micro``; ``root``
    itself qualifies under any name (the user pointed straight at it). VIS/NIR are ignored."""
    found = []
    for depth, folder, dirs, _ in walk_dirs(root, prune=prune_subjects):
        if depth > 0 and folder.name.lower() != "hs":
            continue
        subjects = [d for d in dirs if _SUBJECT.fullmatch(d)]
        if any(_micro(folder / s) for s in subjects):
            found.append((depth, str(folder), folder))
    return min(found)[2] if found else None


def looked_for(root: Path) -> str:
    return f"SMIC-HS: looked for {FRAMES_DESC}, up to {MAX_DEPTH} folders below {root}"


def build_rows(data_root) -> list[dict]:
    root = check_root(data_root, looked_for)
    hs = discover(root)
    if hs is None:
        raise DatasetNotFound(looked_for(root) + "; none found")
    rows = []
    subjects = sorted((d for d in hs.iterdir() if d.is_dir() and _SUBJECT.fullmatch(d.name)),
                      key=lambda d: int(_SUBJECT.fullmatch(d.name).group(1)))
    for subject_dir in subjects:
        micro = _micro(subject_dir)
        if micro is None:
            continue
        subject = canonical_name(subject_dir.name.lower())
        for label_dir in sorted(d for d in micro.iterdir() if d.is_dir()):
            emotion = label_dir.name.lower()
            for clip_dir in sorted(d for d in label_dir.iterdir() if d.is_dir()):
                frames, _ = scan_frames(clip_dir)
                rows.append({
                    "dataset": "smic", "source": "smic", "subject": subject,
                    "clip": canonical_name(clip_dir.name), "emotion": emotion,
                    "label": map_emotion("smic", emotion),
                    "onset": min(frames) if frames else None, "apex": None,
                    "offset": max(frames) if frames else None, "fps": FPS,
                    "status": "ok", "reason": "", "flags": "", "frames_dir": str(clip_dir),
                })
    return rows


def build_index(data_root) -> pd.DataFrame:
    return to_index([assess_clip(r) for r in build_rows(data_root)])
