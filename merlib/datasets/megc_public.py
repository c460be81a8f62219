"""The public MEGC2019 release: the derived data that ``wangzhifengharrison/HTNet`` ships for the
442 samples of the 3-class composite, one apex face crop and one flow image per sample.

Layout (a clone of that repository, or any folder laid out the same way), found up to
``MAX_DEPTH`` folders below the data root::

    combined_3_class2_for_optical_flow.csv       dataset, sub, filename_o, label (0/1/2), imagename
    datasets/combined_datasets_whole/<imagename>                the apex frame, a tight face crop
    datasets/STSNet_whole_norm_u_v_os/<sub>_<filename_o> .png   28x28 RGB flow: u, v, strain

Naming quirks: the flow files have a space before ``.png``; SMIC is spelled three ways
(``filename_o`` ``s01_ne_01``, image ``s01_s1_ne_01.jpg``, flow ``s01_s01_ne_01 .png``); SAMM
subjects are ``006`` (read as text, never as the number 6). Files are looked up under the
release's own names first, then under the other spellings (``file_candidates``).

Frames: every clip is ONE frame, the apex. onset = apex = offset = 1 (the release keeps no frame
numbers of its source datasets; 1 numbers the frame of the stored one-frame clip), and
n_frames = 1 when the image reads. The frame is the file in the extra column ``frame_file``;
``frames_dir`` is only the folder holding it (one folder holds every sample's image, so it cannot
be listed as a clip's frames). Preprocess with ``preprocess_config()`` (n_frames=1, min_frames=1).

Rows: the official 442-sample list (``megc.megc_list``) is authoritative for membership and label,
as for the ``megc`` loader, and gives the row order; subjects and clips are spelled as in that
list and ``source`` is the sample's dataset. The release's label id (0 negative, 1 positive,
2 surprise; ``emotion`` holds its word) is cross-checked: a disagreement keeps the list's label,
flags the row ``label_disagrees`` and names both. A release row not in the list is
``not_in_list`` (after the listed rows); a listed sample the release lacks is ``not_in_source``;
a second release row for the same sample is flagged ``duplicate_in_release`` on the first (only
the first is used). A missing or unreadable image or flow file makes the row ``missing_file`` /
``unreadable_file`` with a reason naming the clip and the file; the other rows go on.

Extra columns after ``INDEX_COLUMNS`` (``EXTRA_COLUMNS``): ``frame_file`` and ``flow_file``
(absolute paths; '' when not found) and ``precropped`` (True: the frames are face crops, so
``faces.find_face`` may take the whole frame as the face box).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd

from merlib.config import DataConfig, PreprocessConfig, dataset_defaults
from merlib.registry import CLASSES
from merlib.datasets import casme2, samm, smic
from merlib.datasets.layout import (MAX_DEPTH, DatasetNotFound, FrameReadError, cell_text,
                                    check_root, find_files, load_image, prune_subjects,
                                    subject_number, to_index)
from merlib.datasets.megc import megc_list

DATASET = "megc-public"
CSV_NAME = "combined_3_class2_for_optical_flow.csv"
IMAGES_DIR = ("datasets", "combined_datasets_whole")
FLOW_DIR = ("datasets", "STSNet_whole_norm_u_v_os")
FLOW_SIZE = 28
EXTRA_COLUMNS = ["frame_file", "flow_file", "precropped"]
FPS = {"casme2": casme2.FPS, "samm": samm.FPS, "smic": smic.FPS}
REQUIRED = ("dataset", "sub", "filename_o", "label")


class FlowReadError(FrameReadError):
    """A release flow image that cannot be used (missing, truncated, not 28x28 RGB)."""


def looked_for(root: Path) -> str:
    return (f"public MEGC2019 release (HTNet layout): looked for {CSV_NAME} with "
            f"{'/'.join(IMAGES_DIR)}/ and {'/'.join(FLOW_DIR)}/ beside it, up to {MAX_DEPTH} "
            f"folders below {root}")


def preprocess_config(**overrides) -> PreprocessConfig:
    """The preprocessing settings of single-frame clips (TIM to one frame, spans of one frame):
    the registry entry's, as every run of this dataset gets them (``config.dataset_defaults``)."""
    prep, _ = dataset_defaults(DataConfig(dataset=DATASET, root="."), "quick")
    return dataclasses.replace(prep, **overrides)


# --------------------------------------------------------------------------- names

def canonical_subject(source: str, sub) -> str | None:
    """The official list's spelling of a subject: casme2 'sub01', samm '006', smic 's01'; None
    when ``sub`` holds no subject number or the source is unknown."""
    number = subject_number(sub)
    if number is None or source not in FPS:
        return None
    return {"casme2": f"sub{number:02d}", "samm": f"{number:03d}", "smic": f"s{number:02d}"}[source]


def canonical_clip(source: str, clip) -> str:
    """The official list's spelling of a clip: SMIC 's1_ne_01' -> 's01_ne_01', SAMM '6_1_2' ->
    '006_1_2'; CASME II names are irregular and taken literally."""
    clip = cell_text(clip)
    if source == "smic":
        return smic.canonical_name(clip)
    m = re.fullmatch(r"0*(\d+)(_.+)", clip) if source == "samm" else None
    return f"{int(m.group(1)):03d}{m.group(2)}" if m else clip


def _smic_short(clip: str) -> str:
    """'s01_ne_01' -> 's1_ne_01', the spelling of the release's SMIC image names."""
    return re.sub(r"^s0*(\d+)", r"s\1", clip)


def file_candidates(kind: str, *, sub: str, filename_o: str, imagename: str, subject: str,
                    clip: str) -> list[str]:
    """File names that may hold a sample's ``kind`` ('image' or 'flow'), the release's own
    spelling first: the CSV's ``imagename`` for images, ``<sub>_<filename_o> .png`` (with the
    space) for flow; then the canonical and the short SMIC spellings, with and without the space."""
    stems = [f"{sub}_{filename_o}", f"{subject}_{clip}", f"{subject}_{_smic_short(clip)}"]
    if kind == "image":
        names = [imagename] + [f"{s}.jpg" for s in stems]
    elif kind == "flow":
        names = [n for s in stems for n in (f"{s} .png", f"{s}.png")]
    else:
        raise ValueError(f"kind must be 'image' or 'flow', got {kind!r}")
    return list(dict.fromkeys(n for n in names if n and not n.startswith("_")))


def _first_existing(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


# --------------------------------------------------------------------------- files

def read_flow(path: str | Path, *, clip: str = "") -> np.ndarray:
    """A release flow PNG as a (3, 28, 28) float32 array: channels u, v, optical strain as stored
    (the 8-bit values 0..255, not rescaled). FlowReadError naming ``clip`` and the file when it is
    missing, truncated, not an image, or not a 28x28 RGB image."""
    who = f"{clip}: " if clip else ""
    try:
        image = load_image(path, what="flow image")
    except FrameReadError as exc:
        raise FlowReadError(f"{who}{exc}") from exc
    if image.mode != "RGB" or image.size != (FLOW_SIZE, FLOW_SIZE):
        w, h = image.size
        raise FlowReadError(f"{who}flow image {path} is {w}x{h} {image.mode}; expected "
                            f"{FLOW_SIZE}x{FLOW_SIZE} RGB (u, v, strain)")
    return np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1))


def _check_files(name: str, image: Path | None, flow: Path | None, images_dir: Path,
                 flow_dir: Path, wanted: tuple[str, str]) -> tuple[str, list[str], int]:
    """(status, reasons, n_frames) of a sample's two files: missing beats unreadable."""
    missing, unreadable = [], []
    n_frames = 0
    if image is None:
        missing.append(f"{name}: apex image {images_dir / wanted[0]} not found")
    else:
        try:
            load_image(image, what="apex image")
            n_frames = 1
        except FrameReadError as exc:
            unreadable.append(f"{name}: {exc}")
    if flow is None:
        missing.append(f"{name}: flow image {flow_dir / wanted[1]} not found")
    else:
        try:
            read_flow(flow, clip=name)
        except FlowReadError as exc:
            unreadable.append(str(exc))
    status = "missing_file" if missing else "unreadable_file" if unreadable else "ok"
    return status, missing + unreadable, n_frames


# --------------------------------------------------------------------------- index

def discover(root: Path) -> Path | None:
    """The release's CSV below ``root``, the shallowest one holding the image folder beside it
    (else the shallowest one)."""
    found = find_files(root, re.escape(CSV_NAME), prune=prune_subjects)
    with_images = [p for p in found if p.parent.joinpath(*IMAGES_DIR).is_dir()]
    return (with_images or found or [None])[0]


def read_release_csv(path: Path) -> pd.DataFrame:
    """The release's CSV as text (SAMM's '006' stays '006'); ValueError naming missing columns."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # unreadable, not CSV: name the file whatever it was
        raise ValueError(f"release list {path} cannot be read as CSV: {exc}") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    lacking = [c for c in REQUIRED if c not in table.columns]
    if lacking:
        raise ValueError(f"release list {path} lacks columns {', '.join(lacking)} (has: "
                         f"{', '.join(table.columns)})")
    if "imagename" not in table.columns:
        table["imagename"] = ""
    return table


def _label_word(value) -> str:
    """'0' -> 'negative', '1' -> 'positive', '2' -> 'surprise'; '' for anything else."""
    text = cell_text(value)
    if re.fullmatch(r"\d+(\.0+)?", text) and int(float(text)) < len(CLASSES):
        return CLASSES[int(float(text))]
    return ""


def build_rows(data_root) -> list[dict]:
    """One dict per sample: the listed ones in list order, then release rows not in the list."""
    root = check_root(data_root, looked_for)
    csv_path = discover(root)
    if csv_path is None:
        raise DatasetNotFound(looked_for(root) + "; none found")
    base = csv_path.parent
    images_dir, flow_dir = base.joinpath(*IMAGES_DIR), base.joinpath(*FLOW_DIR)
    table = read_release_csv(csv_path)

    release: dict[tuple[str, str, str], dict] = {}
    unlisted_order: list[tuple[str, str, str]] = []
    for line, rec in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        source = cell_text(rec["dataset"]).lower()
        subject = canonical_subject(source, rec["sub"]) or cell_text(rec["sub"])
        key = (source, subject, canonical_clip(source, rec["filename_o"]))
        if key in release:
            release[key]["duplicates"].append(line)
            continue
        release[key] = {**rec, "line": line, "duplicates": []}
        unlisted_order.append(key)

    rows = []
    listed = megc_list()
    listed_keys = set()
    for item in listed.to_dict("records"):
        key = (item["dataset"], item["subject"], item["clip"])
        listed_keys.add(key)
        rec = release.get(key)
        if rec is None:
            rows.append(_row(key, label=item["label"], emotion="", status="not_in_source",
                             reasons=[f"{key[1]}/{key[2]}: listed by MEGC2019 as "
                                      f"{item['label']} but not in {csv_path}"],
                             flags=[], frames_dir=images_dir))
            continue
        rows.append(_release_row(key, rec, item["label"], csv_path, images_dir, flow_dir))
    for key in unlisted_order:
        if key not in listed_keys:
            rows.append(_release_row(key, release[key], None, csv_path, images_dir, flow_dir))
    return rows


def _row(key, *, label, emotion, status, reasons, flags, frames_dir, n_frames=0,
         frame_file="", flow_file="") -> dict:
    source, subject, clip = key
    known = source in FPS
    return {"dataset": DATASET, "source": source, "subject": subject, "clip": clip,
            "emotion": emotion, "label": label, "onset": 1 if known else None,
            "apex": 1 if known else None, "offset": 1 if known else None, "n_frames": n_frames,
            "fps": FPS.get(source), "status": status, "reason": "; ".join(reasons),
            "flags": ";".join(flags), "frames_dir": str(frames_dir),
            "frame_file": frame_file, "flow_file": flow_file, "precropped": True}


def _release_row(key, rec: dict, list_label: str | None, csv_path: Path, images_dir: Path,
                 flow_dir: Path) -> dict:
    """The row of one release sample; ``list_label`` None: not in the official list."""
    source, subject, clip = key
    name = f"{subject}/{clip}"
    own = _label_word(rec["label"])
    reasons, flags = [], []
    if list_label is None:
        why = (f"dataset {source!r} is not casme2, samm or smic" if source not in FPS
               else "not in the official MEGC2019 list")
        reasons.append(f"{name}: line {rec['line']} of {csv_path.name}: {why}")
    elif own != list_label:
        flags.append("label_disagrees")
        reasons.append(f"{name}: MEGC2019 label {list_label!r} used; the release's label "
                       f"{cell_text(rec['label'])!r} ({own or 'not 0, 1 or 2'}) disagrees")
    if rec["duplicates"]:
        flags.append("duplicate_in_release")
        reasons.append(f"{name}: also on line(s) {', '.join(map(str, rec['duplicates']))} of "
                       f"{csv_path.name}; line {rec['line']} used")
    names = dict(sub=cell_text(rec["sub"]), filename_o=cell_text(rec["filename_o"]),
                 imagename=cell_text(rec["imagename"]), subject=subject, clip=clip)
    image_names, flow_names = file_candidates("image", **names), file_candidates("flow", **names)
    image = _first_existing(images_dir, image_names)
    flow = _first_existing(flow_dir, flow_names)
    status, problems, n_frames = _check_files(name, image, flow, images_dir, flow_dir,
                                              (image_names[0], flow_names[0]))
    reasons += problems
    if list_label is None:
        status = "not_in_list"
    return _row(key, label=list_label or "", emotion=own, status=status, reasons=reasons,
                flags=flags, frames_dir=images_dir, n_frames=n_frames,
                frame_file=str(image.resolve()) if image else "",
                flow_file=str(flow.resolve()) if flow else "")


def build_index(data_root) -> pd.DataFrame:
    """The index (``INDEX_COLUMNS`` then ``EXTRA_COLUMNS``) of the release below ``data_root``."""
    rows = build_rows(data_root)
    index = to_index(rows)
    for col in EXTRA_COLUMNS[:2]:
        index[col] = [r[col] for r in rows]
    index["precropped"] = np.array([bool(r["precropped"]) for r in rows], dtype=bool)
    return index
