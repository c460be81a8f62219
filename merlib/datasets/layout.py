"""Shared helpers of the format loaders: discovery under a data root, frame listing and reading,
frame-number parsing, the per-clip checks that give a row its status, and the index frame.

Every loader builds plain dict rows and hands them to :func:`to_index`; every row goes through
:func:`assess_clip`, so the status rules are the same for all sources.
"""
from __future__ import annotations

import os
import re
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from merlib.datasets.schema import FRAME_SUFFIXES, INDEX_COLUMNS, STATUS_CODES, frame_number, map_emotion

MAX_DEPTH = 4  # how deep below --data-root discovery looks
# Subject folders of any source (CASME II subNN, SAMM NNN, SMIC sN): discovery never walks into
# them, so finding a dataset costs a few directory listings, not a scan of every frame.
SUBJECT_DIR = re.compile(r"sub\d+|\d{3}|s\d{1,2}", re.IGNORECASE)


def prune_subjects(folder: Path) -> bool:
    return SUBJECT_DIR.fullmatch(folder.name) is not None


class DatasetNotFound(Exception):
    """The data root holds none of the files/folders a dataset's loader looks for."""


class FrameReadError(OSError):
    """A frame file that cannot be read (truncated, not an image, missing, wrong size)."""


# --------------------------------------------------------------------------- discovery

def walk_dirs(root: Path, *, max_depth: int = MAX_DEPTH,
              prune: Callable[[Path], bool] | None = None
              ) -> Iterator[tuple[int, Path, list[str], list[str]]]:
    """Breadth-first (depth, folder, sub-folder names, file names) below ``root``, ``root``
    itself at depth 0, sorted by name so discovery is deterministic. Folders for which ``prune``
    is true are yielded but not descended into (frame folders hold thousands of files)."""
    queue: deque[tuple[int, Path]] = deque([(0, Path(root))])
    while queue:
        depth, folder = queue.popleft()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        dirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
        files = [e.name for e in entries if e.is_file()]
        yield depth, folder, dirs, files
        if depth < max_depth and not (prune and prune(folder)):
            queue.extend((depth + 1, folder / d) for d in dirs)


def find_files(root: Path, pattern: str, *, max_depth: int = MAX_DEPTH,
               prune: Callable[[Path], bool] | None = None) -> list[Path]:
    """Files whose name matches the regular expression ``pattern`` (case-insensitive),
    shallowest first. Office lock files (``~$...``) are skipped."""
    rx = re.compile(pattern, re.IGNORECASE)
    return [folder / f for _, folder, _, files in walk_dirs(root, max_depth=max_depth, prune=prune)
            for f in files if rx.fullmatch(f) and not f.startswith("~$")]


def check_root(root: str | Path | None, describe: Callable[[Path], str]) -> Path:
    """``root`` as an absolute folder; DatasetNotFound (saying what would have been looked for)
    when it is not one."""
    if root is None or str(root) == "":
        raise DatasetNotFound(describe(Path("<data root>")) + "; no data root was given")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DatasetNotFound(describe(path) + f"; {path} is not a folder")
    return path


# --------------------------------------------------------------------------- sheets

def norm_header(value) -> str:
    """'Onset Frame', 'OnsetFrame', 'onset_frame' -> 'onsetframe'."""
    if is_blank(value):
        return ""
    return re.sub(r"[\s_\-]+", "", str(value)).lower()


def read_sheet(path: Path, *, required: dict[str, tuple[str, ...]],
               optional: dict[str, tuple[str, ...]] | None = None,
               header_keys: tuple[str, ...]) -> pd.DataFrame:
    """The coding sheet at ``path`` as a frame with canonical column names.

    The header is the first row (of the first 40) whose normalised cells include every name in
    ``header_keys``: title blocks above it (SAMM) are skipped without assuming a row number.
    ``required``/``optional`` map canonical names to accepted normalised header spellings.
    Fully empty rows are dropped; cells stay as read (int, float, str or NaN).
    """
    try:
        raw = pd.read_excel(path, header=None, dtype=object, sheet_name=0)
    except Exception as exc:  # corrupt zip, not a workbook, ...: name the file whatever it was
        raise ValueError(f"coding sheet {path} cannot be read as .xlsx: {exc}") from exc
    header_row = None
    for i in range(min(len(raw), 40)):
        cells = {norm_header(v) for v in raw.iloc[i].tolist()}
        if all(k in cells for k in header_keys):
            header_row = i
            break
    if header_row is None:
        raise ValueError(f"coding sheet {path}: no header row holding columns "
                         f"{', '.join(header_keys)} in its first 40 rows")
    headers = [norm_header(v) for v in raw.iloc[header_row].tolist()]
    columns: dict[str, int] = {}
    missing = []
    for name, spellings in {**required, **(optional or {})}.items():
        idx = next((headers.index(s) for s in spellings if s in headers), None)
        if idx is None:
            if name in required:
                missing.append(f"{name} (one of: {', '.join(spellings)})")
        else:
            columns[name] = idx
    if missing:
        raise ValueError(f"coding sheet {path}: its header row lacks required columns "
                         f"{'; '.join(missing)} (names compared lower-case without spaces or "
                         f"underscores; found: {[h for h in headers if h]})")
    body = raw.iloc[header_row + 1:]
    body = body[body.notna().any(axis=1)]
    return pd.DataFrame({name: body.iloc[:, idx].tolist() for name, idx in columns.items()})


def is_blank(value) -> bool:
    """None, NaN, pd.NA, NaT or whitespace."""
    if isinstance(value, str):
        return value.strip() == ""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _integer_cell(value, text_pattern: str) -> int | None:
    """A sheet cell as an integer: blank/bool -> None, whole numbers as such, text through
    ``text_pattern`` (its first group holds the digits)."""
    if isinstance(value, bool) or is_blank(value):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else None
    m = re.fullmatch(text_pattern, str(value).strip(), re.IGNORECASE)
    return int(m.group(1)) if m else None


def parse_frame(value) -> int | None:
    """A sheet cell as a frame number: 46, 46.0, '46', ' 46 ' -> 46; anything else -> None."""
    return _integer_cell(value, r"(\d+)(?:\.0+)?")


def subject_number(value) -> int | None:
    """6, 6.0, '6', '006', 'sub06', 's6' -> 6."""
    return _integer_cell(value, r"(?:sub|s)?0*(\d+)(?:\.0+)?")


def cell_text(value) -> str:
    if is_blank(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# --------------------------------------------------------------------------- frames

def scan_frames(frames_dir: Path) -> tuple[dict[int, Path], list[str]]:
    """(frame number -> file, names that did not give a unique frame number)."""
    frames: dict[int, Path] = {}
    bad: list[str] = []
    for entry in sorted(os.scandir(frames_dir), key=lambda e: e.name):
        if not entry.is_file() or Path(entry.name).suffix.lower() not in FRAME_SUFFIXES:
            continue
        n = frame_number(entry.name)
        if n is None or n in frames:
            bad.append(entry.name)
        else:
            frames[n] = Path(entry.path)
    return frames, bad


def frame_paths(frames_dir: str | Path) -> dict[int, Path]:
    """Frame number -> frame file of a clip folder, in frame order.

    Raises FileNotFoundError for a missing folder and ValueError naming the files whose names
    carry no frame number (or repeat one)."""
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise FileNotFoundError(f"frame folder {frames_dir} does not exist")
    frames, bad = scan_frames(frames_dir)
    if bad:
        raise ValueError(f"frame folder {frames_dir}: cannot take a unique frame number from "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    return dict(sorted(frames.items()))


def load_image(path: str | Path, what: str = "frame") -> Image.Image:
    """An image file fully decoded (a detached PIL image); FrameReadError naming the file (as
    ``what``) if it is truncated, missing or not an image."""
    path = Path(path)
    # face_recognition sets PIL's LOAD_TRUNCATED_IMAGES process-wide on import, which would let
    # truncated frames decode silently with a grey bottom; be strict whatever was imported.
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.load()  # decodes fully: truncated files fail here, not later
            return im.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise FrameReadError(f"cannot read {what} {path}: {exc}") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def read_frame(path: str | Path) -> np.ndarray:
    """One frame file as an (H, W, 3) uint8 RGB array; FrameReadError naming the file if the
    image is truncated or unreadable."""
    return np.asarray(load_image(path).convert("RGB"), dtype=np.uint8)


def read_frames(frames_dir: str | Path, numbers: Iterable[int]) -> np.ndarray:
    """Frames ``numbers`` of a clip folder as an (N, H, W, 3) uint8 RGB array."""
    frames_dir = Path(frames_dir)
    paths = frame_paths(frames_dir)
    images = []
    for n in numbers:
        if int(n) not in paths:
            raise FrameReadError(f"frame {int(n)} is not in {frames_dir} "
                                 f"(frames on disk: {_span(paths)})")
        img = read_frame(paths[int(n)])
        if images and img.shape != images[0].shape:
            (h, w), (h0, w0) = img.shape[:2], images[0].shape[:2]
            raise FrameReadError(f"frame {paths[int(n)]} is {w}x{h}, the clip's first frame "
                                 f"is {w0}x{h0}")
        images.append(img)
    if not images:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.stack(images)  # (N, H, W, 3)


def _span(frames: dict[int, Path]) -> str:
    return f"{min(frames)}..{max(frames)} ({len(frames)} files)" if frames else "none"


# --------------------------------------------------------------------------- rows

def assess_clip(row: dict) -> dict:
    """Fill ``n_frames``, ``status``, ``reason`` and ``flags`` of a row from its frame folder and
    its onset/apex/offset. A ``status`` the loader already set (``bad_annotation``) is kept.

    Precedence: excluded emotion > annotation problem > folder problem > range problem > ok. An
    excluded row keeps ``excluded`` even when its frames are bad too (both reasons are given), so
    the per-emotion counts stay exact and unused clips do not show up as bad rows."""
    clip = f"{row['subject']}/{row['clip']}"
    reasons = [row["reason"]] if row.get("reason") else []
    flags = [f for f in str(row.get("flags") or "").split(";") if f]
    status = row.get("status") or "ok"
    frames_dir = Path(row["frames_dir"])
    frames: dict[int, Path] = {}
    problem = None
    if not frames_dir.is_dir():
        problem = ("missing_folder", f"{clip}: frame folder {frames_dir} does not exist")
    else:
        frames, bad = scan_frames(frames_dir)
        if bad:
            problem = ("bad_frame_names", f"{clip}: no unique frame number in file names "
                       f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} in {frames_dir}")
        elif not frames:
            problem = ("no_frames", f"{clip}: frame folder {frames_dir} holds no "
                       f"{'/'.join(FRAME_SUFFIXES)} files")
    row["n_frames"] = len(frames)
    onset, apex, offset = row.get("onset"), row.get("apex"), row.get("offset")
    if problem is None and frames and onset is not None and offset is not None:
        outside = [f"{name} {v}" for name, v in (("onset", onset), ("offset", offset))
                   if v not in frames]
        if outside:
            problem = ("frames_out_of_range", f"{clip}: {' and '.join(outside)} not among the "
                       f"frames on disk ({_span(frames)})")
        elif offset < onset:
            problem = ("frames_out_of_range", f"{clip}: offset {offset} precedes onset {onset}")
    if problem is not None:
        reasons.append(problem[1])
        if status == "ok":
            status = problem[0]
    if apex is None:
        if "apex_missing" not in flags:
            flags.append("apex_missing")
    elif onset is not None and offset is not None and not onset <= apex <= offset:
        flags.append("apex_outside")
        reasons.append(f"{clip}: apex {apex} lies outside onset-offset {onset}-{offset}")
    if not row.get("label"):
        status = "excluded"
        reasons.insert(0, f"{clip}: emotion {row.get('emotion')!r} is outside the 3-class "
                          f"MEGC2019 mapping")
    assert status in STATUS_CODES, status
    row.update(status=status, reason="; ".join(reasons), flags=";".join(flags))
    return row


def to_index(rows: list[dict]) -> pd.DataFrame:
    """Rows as an index frame with exactly INDEX_COLUMNS and stable dtypes."""
    df = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    for col in ("onset", "apex", "offset", "n_frames", "fps"):
        df[col] = pd.array([None if is_blank(v) else int(v) for v in df[col]], dtype="Int64")
    for col in ("dataset", "source", "subject", "clip", "emotion", "label", "status", "reason",
                "flags", "frames_dir"):
        df[col] = df[col].fillna("").astype(str)
    return df.reset_index(drop=True)


def latest_sheet(root: Path, pattern) -> Path | None:
    """The coding sheet below ``root``: of several revisions the latest by name (names end in
    their date), then the shallowest."""
    sheets = find_files(root, pattern, prune=prune_subjects)
    return max(sheets, key=lambda p: (p.name, -len(p.parts))) if sheets else None


def require_sheet(sheet: Path | None, frames_root: Path | None, looked_for: str) -> Path:
    """Without a coding sheet nothing can be labelled: fail, naming what was searched for."""
    if sheet is None:
        found = f" (found only the frames folder {frames_root})" if frames_root else ""
        raise DatasetNotFound(looked_for + f"; no coding sheet found{found}")
    return sheet


MISSING_APEX = ("", "/", "-")  # how the sheets write "no apex"


def sheet_frames(rec: dict) -> tuple[int | None, int | None, int | None, list[str], list[str]]:
    """(onset, apex, offset, problems, notes) of a sheet row with ``onset``/``apex``/``offset``
    cells. Problems make the row unusable (``bad_annotation``); an unreadable apex is only a note:
    the apex is then treated as missing and detected later."""
    onset, offset = parse_frame(rec["onset"]), parse_frame(rec["offset"])
    problems = [f"{name} {cell_text(rec[name])!r} is not a frame number"
                for name, value in (("onset", onset), ("offset", offset)) if value is None]
    apex = parse_frame(rec["apex"])
    raw_apex = cell_text(rec["apex"])
    notes = ([f"apex {raw_apex!r} is not a frame number; treated as missing"]
             if apex is None and raw_apex not in MISSING_APEX else [])
    return onset, apex, offset, problems, notes


def sheet_row(rec: dict, *, dataset: str, subject: str, clip: str, emotion: str, problems: list[str],
              sheet: Path, frames_base: Path, fps: int, no_frames_note: str = "") -> dict:
    """One index row of a coding-sheet clip (CASME II, SAMM), before :func:`assess_clip`: frames
    from the onset/apex/offset cells, and a reason naming the clip and the sheet. ``problems``:
    what the loader already found wrong with the row (e.g. its subject cell)."""
    problems = list(problems)
    if not clip:
        problems.append("empty Filename")
    onset, apex, offset, frame_problems, notes = sheet_frames(rec)
    problems += frame_problems
    name = f"{subject}/{clip}"
    reasons = [f"{name}: {p} in {sheet.name}" for p in problems + notes]
    if no_frames_note:
        reasons.append(no_frames_note)
    return {"dataset": dataset, "source": dataset, "subject": subject, "clip": clip,
            "emotion": emotion, "label": map_emotion(dataset, emotion),
            "onset": onset, "apex": apex, "offset": offset, "fps": fps,
            "status": "bad_annotation" if problems else "ok", "reason": "; ".join(reasons),
            "flags": "", "frames_dir": str(frames_base / subject / clip)}
