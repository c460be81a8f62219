"""MEGC2019 composite: the official 442-sample list (package data) joined to the CASME II, SAMM
and SMIC-HS indexes found under one data root.

The list is authoritative for membership and label; the source supplies emotion, frames and
onset/apex/offset. A listed clip that its source lacks (or whose source is not found at all)
stays as ``not_in_source`` with the reason.

A data root that holds its own list, a file named ``megc2019_composite_3class.csv`` (``LIST_FILE``)
at its top level, in the official file's format, is read with that list instead: this is how a
SynthME written in the ``megc`` layout names its composite. A root without one (the licensed
datasets as unpacked) is read with the packaged official list, as always. A list file that is
not in the official format is an error naming it, never half used.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from merlib.datasets import casme2, samm, smic
from merlib.datasets.layout import DatasetNotFound, assess_clip, check_root, to_index
from merlib.datasets.schema import map_emotion
from merlib.registry import CLASSES

SOURCES = {"casme2": casme2, "samm": samm, "smic": smic}
LIST_FILE = "megc2019_composite_3class.csv"


LIST_COLUMNS = ["dataset", "subject", "clip", "label", "label_id"]


def megc_list(root: Path | None = None) -> pd.DataFrame:
    """The composite's rows (dataset, subject, clip, label, label_id), subjects as text ('006'):
    ``root``'s own list file when it has one, else the official 442 rows (package data)."""
    own = Path(root) / LIST_FILE if root is not None else None
    if own is not None and own.is_file():
        return _checked_list(pd.read_csv(own, dtype=str, keep_default_na=False), own)
    with resources.files("merlib.data").joinpath(LIST_FILE).open("r") as fh:
        return pd.read_csv(fh, dtype=str, keep_default_na=False)


def _checked_list(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    if list(table.columns) != LIST_COLUMNS:
        raise ValueError(f"{path}: columns {list(table.columns)}, expected {LIST_COLUMNS} "
                         f"(the official MEGC2019 composite list's)")
    bad = [f"row {i + 2}: {r.dataset},{r.subject},{r.clip},{r.label},{r.label_id}"
           for i, r in enumerate(table.itertuples())
           if r.dataset not in SOURCES or r.label not in CLASSES
           or r.label_id != str(CLASSES.index(r.label)) or not r.subject or not r.clip]
    if table.duplicated(["dataset", "subject", "clip"]).any():
        bad.append("repeated (dataset, subject, clip) rows")
    if bad:
        raise ValueError(f"{path}: not a MEGC2019 composite list (dataset in {tuple(SOURCES)}, "
                         f"label in {CLASSES} with its label_id): " + "; ".join(bad[:5]))
    return table


def looked_for(root: Path) -> str:
    return "MEGC2019 composite: " + " | ".join(m.looked_for(root) for m in SOURCES.values())


def build_index(data_root) -> pd.DataFrame:
    root = check_root(data_root, looked_for)
    listed = megc_list(root)
    sources: dict[str, dict[tuple[str, str], dict]] = {}
    missing: dict[str, str] = {}
    for name, module in SOURCES.items():
        try:
            rows = module.build_rows(root)
        except DatasetNotFound as exc:
            missing[name] = str(exc)
            continue
        by_key: dict[tuple[str, str], dict] = {}
        for row in rows:
            by_key.setdefault((row["subject"], row["clip"]), row)
        sources[name] = by_key
    if not sources:
        raise DatasetNotFound("MEGC2019 composite: none of its three sources was found. "
                              + " | ".join(missing.values()))
    out = []
    for item in listed.to_dict("records"):
        source, subject, clip, label = item["dataset"], item["subject"], item["clip"], item["label"]
        row = sources.get(source, {}).get((subject, clip))
        if row is None:
            why = (f"{source} not found under {root} ({missing[source]})" if source in missing
                   else f"no such clip in the {source} index")
            out.append({"dataset": "megc", "source": source, "subject": subject, "clip": clip,
                        "emotion": "", "label": label, "onset": None, "apex": None,
                        "offset": None, "n_frames": 0,
                        "fps": SOURCES[source].FPS, "status": "not_in_source",
                        "reason": f"{subject}/{clip}: listed by MEGC2019 as {label} but {why}",
                        "flags": "", "frames_dir": ""})
            continue
        row = dict(row, dataset="megc", label=label)
        own = map_emotion(source, row["emotion"])
        if own != label:
            note = (f"{subject}/{clip}: MEGC2019 label {label!r} used; the {source} emotion "
                    f"{row['emotion']!r} maps to {own or 'nothing (excluded)'!r}")
            row["reason"] = "; ".join(r for r in (row["reason"], note) if r)
        out.append(assess_clip(row))
    return to_index(out)
