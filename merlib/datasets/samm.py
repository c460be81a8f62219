"""SAMM: sheet ``SAMM_Micro_FACS_Codes*.xlsx`` (a title block, then the header: row 14 in v2) +
``SAMM/006/006_1_2/006_05562.jpg`` (frame numbers zero-padded to 4 or 5 digits), 200 fps.

The header row is found by its cells (``Filename`` and ``Onset Frame``), not by a fixed row.
Subjects are canonicalised to three digits ('006') whether the sheet holds 6 or '006'. An apex
outside onset-offset keeps the row usable, flagged ``apex_outside``. 'Others' is read as 'other'.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from merlib.datasets.layout import (MAX_DEPTH, assess_clip, cell_text, latest_sheet, require_sheet, sheet_row,
                                    check_root, prune_subjects, read_sheet,
                                    subject_number, to_index, walk_dirs)

FPS = 200
SHEET_PATTERN = r"samm.*codes.*\.xlsx"
SHEET_GLOB = "SAMM_Micro_FACS_Codes*.xlsx"
FRAMES_DESC = ("a folder (preferably named SAMM) holding NNN subject folders: "
               "SAMM/006/006_1_2/006_05562.jpg")
REQUIRED = {
    "subject": ("subject",),
    "filename": ("filename",),
    "onset": ("onsetframe", "onset"),
    "apex": ("apexframe", "apex"),
    "offset": ("offsetframe", "offset"),
    "emotion": ("estimatedemotion", "emotion"),
}
OPTIONAL = {"action_units": ("actionunits", "aus", "au")}
EMOTION_ALIASES = {"others": "other"}
_SUBJECT_DIR = re.compile(r"\d{3}")


def discover(root: Path) -> tuple[Path | None, Path | None]:
    """(sheet, frames folder) below ``root``. The frames folder is one holding NNN folders that
    in turn hold NNN_* clip folders; one named SAMM* is preferred, then the shallowest."""
    found = []
    for depth, folder, dirs, _ in walk_dirs(root, prune=prune_subjects):
        subjects = [d for d in dirs if _SUBJECT_DIR.fullmatch(d)]
        if subjects and any(re.match(r"\d{3}_", c.name) for c in (folder / subjects[0]).iterdir()
                            if c.is_dir()):
            found.append((not folder.name.lower().startswith("samm"), depth, str(folder), folder))
    frames_root = min(found)[3] if found else None
    return latest_sheet(root, SHEET_PATTERN), frames_root


def looked_for(root: Path) -> str:
    return (f"SAMM: looked for the sheet {SHEET_GLOB} and {FRAMES_DESC}, up to {MAX_DEPTH} "
            f"folders below {root}")


def build_rows(data_root) -> list[dict]:
    root = check_root(data_root, looked_for)
    sheet, frames_root = discover(root)
    sheet = require_sheet(sheet, frames_root, looked_for(root))
    table = read_sheet(sheet, required=REQUIRED, optional=OPTIONAL,
                       header_keys=("filename", "onsetframe"))
    no_frames_note = "" if frames_root else f"no frames folder found ({looked_for(root)})"
    base = frames_root or root / "SAMM"
    rows = []
    for rec in table.to_dict("records"):
        clip = cell_text(rec["filename"])
        number = subject_number(rec["subject"])
        if number is None and re.match(r"\d+_", clip):  # the file name starts with the subject
            number = int(clip.split("_")[0])
        subject = f"{number:03d}" if number is not None else cell_text(rec["subject"])
        problems = [] if number is not None else [f"subject {rec['subject']!r} is not a subject number"]
        emotion = cell_text(rec["emotion"]).lower()
        rows.append(sheet_row(rec, dataset="samm", subject=subject, clip=clip,
                              emotion=EMOTION_ALIASES.get(emotion, emotion), problems=problems,
                              sheet=sheet, frames_base=base, fps=FPS, no_frames_note=no_frames_note))
    return rows


def build_index(data_root) -> pd.DataFrame:
    return to_index([assess_clip(r) for r in build_rows(data_root)])
