"""CASME II: coding sheet ``CASME2-coding-*.xlsx`` + ``CASME2_RAW_selected/subNN/<clip>/imgN.jpg``
(or ``Cropped/subNN/<clip>/reg_imgN.jpg``), 200 fps.

The sheet comes in the 2014 layout (``Subject, Filename, (blank), OnsetFrame, ApexFrame,
OffsetFrame, (blank), Action Units, Estimated Emotion``) and in later revisions without the blank
columns and with spaced names (``Onset Frame``); headers are matched after lower-casing and
removing spaces/underscores. ``Subject`` is an integer (padded to ``subNN``); ``ApexFrame`` may
be ``/`` (apex missing); file names are irregular (``EP01_2``, ``EP09f``) and taken literally.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from merlib.datasets.layout import (MAX_DEPTH, assess_clip, cell_text, latest_sheet, require_sheet, sheet_row,
                                    check_root, prune_subjects, read_sheet,
                                    subject_number, to_index, walk_dirs)

FPS = 200
SHEET_PATTERN = r"casme2?[-_ ]?coding.*\.xlsx"
SHEET_GLOB = "CASME2-coding-*.xlsx"
FRAME_FOLDERS = {  # folder name pattern -> what it holds; the first is preferred when both exist
    r"casme2?[-_ ]?raw[-_ ]?selected": "CASME2_RAW_selected/subNN/<clip>/imgN.jpg",
    r"cropped": "Cropped/subNN/<clip>/reg_imgN.jpg",
}
REQUIRED = {
    "subject": ("subject",),
    "filename": ("filename",),
    "onset": ("onsetframe", "onset"),
    "apex": ("apexframe", "apex"),
    "offset": ("offsetframe", "offset"),
    "emotion": ("estimatedemotion", "emotion"),
}
OPTIONAL = {"action_units": ("actionunits", "aus", "au")}
_SUBJECT_DIR = re.compile(r"sub\d+", re.IGNORECASE)


def _is_frames_root(folder: Path, dirs: list[str]) -> int | None:
    """Rank of ``folder`` among FRAME_FOLDERS when it holds subNN folders, else None."""
    for rank, pattern in enumerate(FRAME_FOLDERS):
        if re.fullmatch(pattern, folder.name, re.IGNORECASE) and \
                any(_SUBJECT_DIR.fullmatch(d) for d in dirs):
            return rank
    return None


def discover(root: Path) -> tuple[Path | None, Path | None]:
    """(coding sheet, frames folder) below ``root``; either may be None. Several sheet revisions:
    the latest by name (their names end in the date). Both frame folders: CASME2_RAW_selected."""
    found: list[tuple[int, int, str, Path]] = []
    for depth, folder, dirs, _ in walk_dirs(root, prune=prune_subjects):
        rank = _is_frames_root(folder, dirs)
        if rank is not None:
            found.append((rank, depth, str(folder), folder))
    frames_root = min(found)[3] if found else None
    return latest_sheet(root, SHEET_PATTERN), frames_root


def looked_for(root: Path) -> str:
    return (f"CASME II: looked for the coding sheet {SHEET_GLOB} (any revision) and a frames "
            f"folder {' or '.join(FRAME_FOLDERS.values())}, up to {MAX_DEPTH} folders below {root}")


def build_rows(data_root) -> list[dict]:
    """One dict per sheet row (before the frame checks of :func:`assess_clip`)."""
    root = check_root(data_root, looked_for)
    sheet, frames_root = discover(root)
    sheet = require_sheet(sheet, frames_root, looked_for(root))
    table = read_sheet(sheet, required=REQUIRED, optional=OPTIONAL,
                       header_keys=("subject", "filename"))
    no_frames_note = "" if frames_root else f"no frames folder found ({looked_for(root)})"
    base = frames_root or root / "CASME2_RAW_selected"
    rows = []
    for rec in table.to_dict("records"):
        number = subject_number(rec["subject"])
        subject = f"sub{number:02d}" if number is not None else cell_text(rec["subject"])
        problems = [] if number is not None else [f"subject {rec['subject']!r} is not a subject number"]
        rows.append(sheet_row(rec, dataset="casme2", subject=subject, clip=cell_text(rec["filename"]),
                              emotion=cell_text(rec["emotion"]).lower(), problems=problems,
                              sheet=sheet, frames_base=base, fps=FPS, no_frames_note=no_frames_note))
    return rows


def build_index(data_root) -> pd.DataFrame:
    return to_index([assess_clip(r) for r in build_rows(data_root)])

