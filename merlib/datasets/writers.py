"""Write clips in the real on-disk formats, coding sheets included (fixtures and SynthME).

Each writer takes :class:`~merlib.datasets.schema.ClipRecord` objects and returns the dataset
root to pass as ``data_root`` to :func:`merlib.datasets.build_index`. Output is byte-for-byte
deterministic for the same input: sheets get fixed document timestamps and fixed zip entry dates;
JPEG (fixed quality) and BMP encoding are deterministic. ``frames`` may be a callable, called
once per clip, so a dataset is streamed to disk rather than held in memory.

Fixture hooks (not needed by ordinary callers): ``frames=None`` writes the sheet row but no
folder (a missing folder); ``extra={"sheet": {header: value}}`` overrides the record's cells in
the sheet (e.g. an unparseable ``OnsetFrame``).
"""
from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from openpyxl import Workbook
from PIL import Image

from merlib.datasets.layout import subject_number
from merlib.datasets.schema import ClipRecord

FIXED_TIME = dt.datetime(2000, 1, 1, 0, 0, 0)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # earliest date a zip entry can hold

CASME2_HEADERS = {
    "2014": ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
             "Action Units", "Estimated Emotion"],
    "revised": ["Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame",
                "Action Units", "Estimated Emotion"],
}
SAMM_HEADERS = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame",
                "Offset Frame", "Duration", "Micro", "Action Units", "Estimated Emotion",
                "Objective Classes", "Notes"]
SAMM_HEADER_ROW = 14
SAMM_TITLE = [
    "SAMM: Spontaneous Actions and Micro-Movements",
    "Micro-movement FACS codes",
    "Frame numbers are those of the frame files of each clip folder.",
    "Onset, Apex and Offset Frame: first, peak and last frame of the movement.",
    "Duration: Offset Frame - Onset Frame + 1.",
    "Estimated Emotion: the coders' estimate from the action units and the inducement.",
    "Objective Classes: classes I-VII from the action units.",
]


# --------------------------------------------------------------------------- helpers

def _frames(clip: ClipRecord) -> Iterable[np.ndarray] | None:
    frames = clip.frames
    return frames() if callable(frames) else frames


def _save_image(frame: np.ndarray, path: Path, *, quality: int | None = None) -> None:
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"frame for {path} must be (H, W, 3) uint8 RGB, got "
                         f"{array.shape} {array.dtype}")
    image = Image.fromarray(array)
    if quality is None:
        image.save(path, format="BMP")
    else:
        image.save(path, format="JPEG", quality=quality)


def _write_frames(clip: ClipRecord, folder: Path, name: Callable[[int], str], *,
                  quality: int | None) -> None:
    frames = _frames(clip)
    if frames is None:  # fixture hook: the sheet row without its folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        _save_image(frame, folder / name(clip.first_frame + i), quality=quality)


def _subject_int(subject) -> int | str:
    number = subject_number(subject)
    return number if number is not None else str(subject)


def _write_xlsx(path: Path, rows: Sequence[Sequence], *, title: str) -> Path:
    """Write ``rows`` to the first sheet of a deterministic .xlsx at ``path``."""
    wb = Workbook()
    ws = wb.active
    ws.title = title
    for row in rows:
        ws.append(list(row))
    wb.properties.creator = "merlib"
    wb.properties.created = FIXED_TIME
    wb.properties.modified = FIXED_TIME
    buffer = io.BytesIO()
    wb.save(buffer)  # openpyxl stamps 'modified' with the current time here
    stamp = FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = io.BytesIO()
    with zipfile.ZipFile(buffer) as src, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                              rb"\g<1>" + stamp.encode() + rb"\g<2>", data)
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            dst.writestr(entry, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())
    return path


def _cells(headers: Sequence[str | None], values: dict, clip: ClipRecord) -> list:
    values = {**values, **clip.extra.get("sheet", {})}
    unknown = set(clip.extra.get("sheet", {})) - set(h for h in headers if h)
    if unknown:
        raise ValueError(f"{clip.clip}: sheet overrides for unknown columns {sorted(unknown)}")
    return [values.get(h) if h else None for h in headers]


# --------------------------------------------------------------------------- writers

def write_casme2(root, clips: Iterable[ClipRecord], *, cropped: bool = False,
                 sheet_name: str = "CASME2-coding-20140508.xlsx", sheet_layout: str = "2014",
                 jpeg_quality: int = 95) -> Path:
    """CASME II layout: ``root/CASME2_RAW_selected/subNN/<clip>/img<N>.jpg`` (cropped:
    ``root/Cropped/subNN/<clip>/reg_img<N>.jpg``) and the sheet ``root/<sheet_name>``, in the
    2014 column layout (blank columns) or the ``revised`` one. Returns ``root``."""
    if sheet_layout not in CASME2_HEADERS:
        raise ValueError(f"sheet_layout must be one of {sorted(CASME2_HEADERS)}")
    root = Path(root)
    headers = CASME2_HEADERS[sheet_layout]
    onset_h, apex_h, offset_h = [h for h in headers if h and "Frame" in h]
    frames_root = root / ("Cropped" if cropped else "CASME2_RAW_selected")
    prefix = "reg_img" if cropped else "img"
    rows = [headers]
    for clip in clips:
        subject = _subject_int(clip.subject)
        folder = f"sub{subject:02d}" if isinstance(subject, int) else subject
        _write_frames(clip, frames_root / folder / clip.clip, lambda n: f"{prefix}{n}.jpg",
                      quality=jpeg_quality)
        rows.append(_cells(headers, {
            "Subject": subject, "Filename": clip.clip, onset_h: clip.onset,
            apex_h: "/" if clip.apex is None else clip.apex, offset_h: clip.offset,
            "Action Units": clip.action_units, "Estimated Emotion": clip.emotion}, clip))
    _write_xlsx(root / sheet_name, rows, title="Sheet1")
    return root


def write_samm(root, clips: Iterable[ClipRecord], *, pad: int = 5,
               sheet_name: str = "SAMM_Micro_FACS_Codes_v2.xlsx", jpeg_quality: int = 95) -> Path:
    """SAMM layout: ``root/SAMM/<subj>/<clip>/<subj>_<N zero-padded to pad>.jpg`` and the sheet
    ``root/<sheet_name>`` with a 13-row title block and its header on row 14. Returns ``root``."""
    root = Path(root)
    rows: list[list] = [[line] for line in SAMM_TITLE]
    rows += [[] for _ in range(SAMM_HEADER_ROW - 1 - len(SAMM_TITLE))]
    rows.append(SAMM_HEADERS)
    for clip in clips:
        subject = _subject_int(clip.subject)
        subj = f"{subject:03d}" if isinstance(subject, int) else subject
        _write_frames(clip, root / "SAMM" / subj / clip.clip, lambda n: f"{subj}_{n:0{pad}d}.jpg",
                      quality=jpeg_quality)
        duration = (clip.offset - clip.onset + 1
                    if isinstance(clip.onset, int) and isinstance(clip.offset, int) else None)
        rows.append(_cells(SAMM_HEADERS, {
            "Subject": subject, "Filename": clip.clip, "Inducement Code": 1,
            "Onset Frame": clip.onset, "Apex Frame": clip.apex, "Offset Frame": clip.offset,
            "Duration": duration, "Micro": "Micro", "Action Units": clip.action_units,
            "Estimated Emotion": clip.emotion, "Objective Classes": None, "Notes": None}, clip))
    _write_xlsx(root / sheet_name, rows, title="FACS_Movement_Only")
    return root


def write_smic(root, clips: Iterable[ClipRecord], *, cropped: bool = False,
               subject_style: str = "s1") -> Path:
    """SMIC-HS layout: ``root/HS/s1/micro/<emotion>/s1_ne_01/image<6 digits>.bmp`` (cropped:
    ``reg_image...``). The record's emotion is the label folder; SMIC has no sheet, so onset,
    apex and offset are not written (the loader takes the first/last frame on disk).
    ``subject_style`` 's1' or 's01' spells the subject in folder and clip names.
    Returns ``root``."""
    if subject_style not in ("s1", "s01"):
        raise ValueError("subject_style must be 's1' or 's01'")
    root = Path(root)
    prefix = "reg_image" if cropped else "image"
    for clip in clips:
        number = subject_number(clip.subject)
        if number is None:
            raise ValueError(f"{clip.clip}: SMIC subject {clip.subject!r} is not s<N>")
        subj = f"s{number}" if subject_style == "s1" else f"s{number:02d}"
        name = re.sub(r"^s\d+(?=_|$)", subj, clip.clip, flags=re.IGNORECASE)
        folder = root / "HS" / subj / "micro" / clip.emotion.lower() / name
        _write_frames(clip, folder, lambda n: f"{prefix}{n:06d}.bmp", quality=None)
    return root


MEGC_PUBLIC_COLUMNS = ["dataset", "sub", "filename_o", "label", "apex", "imagename", "sub_filename"]


def megc_public_image_name(dataset: str, sub: str, filename_o: str) -> str:
    """The release's apex image name: ``<sub>_<filename_o>.jpg``, SMIC clips in the short
    spelling (``s01`` + ``s01_ne_01`` -> ``s01_s1_ne_01.jpg``)."""
    clip = re.sub(r"^s0*(\d+)", r"s\1", filename_o) if dataset == "smic" else filename_o
    return f"{sub}_{clip}.jpg"


def write_megc_public(root, samples: Iterable[dict]) -> Path:
    """A look-alike of the public MEGC2019 release (HTNet's layout, see ``megc_public``):
    ``root/combined_3_class2_for_optical_flow.csv``, the apex images (JPEG q95) under
    ``root/datasets/combined_datasets_whole/`` and the flow images (PNG) under
    ``root/datasets/STSNet_whole_norm_u_v_os/``. Returns ``root``.

    Each sample is a dict: ``dataset``, ``sub``, ``filename_o``, ``label`` (written as given, e.g.
    0/1/2), ``image`` ((H, W, 3) uint8 or None: no file) and ``flow`` ((28, 28, 3) uint8 or None).
    Optional: ``imagename`` (default ``megc_public_image_name``) and ``flow_name`` (default
    ``'<sub>_<filename_o> .png'``, the space before ``.png`` as in the release)."""
    root = Path(root)
    images = root / "datasets" / "combined_datasets_whole"
    flows = root / "datasets" / "STSNet_whole_norm_u_v_os"
    images.mkdir(parents=True, exist_ok=True)
    flows.mkdir(parents=True, exist_ok=True)
    lines = [",".join(MEGC_PUBLIC_COLUMNS)]
    for s in samples:
        imagename = s.get("imagename") or megc_public_image_name(s["dataset"], s["sub"],
                                                                 s["filename_o"])
        lines.append(",".join([s["dataset"], s["sub"], s["filename_o"], str(s["label"]), "",
                               imagename, ""]))
        if s.get("image") is not None:
            _save_image(s["image"], images / imagename, quality=95)
        if s.get("flow") is not None:
            flow = np.asarray(s["flow"])
            if flow.dtype != np.uint8 or flow.shape != (28, 28, 3):
                raise ValueError(f"flow of {s['filename_o']} must be (28, 28, 3) uint8, got "
                                 f"{flow.shape} {flow.dtype}")
            name = s.get("flow_name") or f"{s['sub']}_{s['filename_o']} .png"
            Image.fromarray(flow).save(flows / name, format="PNG")
    (root / "combined_3_class2_for_optical_flow.csv").write_text("\n".join(lines) + "\n")
    return root
