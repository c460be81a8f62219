"""MEGC2019 composite: the official 442-sample list (package data) joined to the CASME II, SAMM
and SMIC-HS indexes found under one data root.

The list is authoritative for membership and label; the source supplies emotion, frames and
onset/apex/offset. A listed clip that its source lacks (or whose source is not found at all)
stays as ``not_in_source`` with the reason.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from merlib.datasets import casme2, samm, smic
from merlib.datasets.layout import DatasetNotFound, assess_clip, check_root, to_index
from merlib.datasets.schema import map_emotion

SOURCES = {"casme2": casme2, "samm": samm, "smic": smic}
LIST_FILE = "megc2019_composite_3class.csv"


def megc_list() -> pd.DataFrame:
    """The 442 rows (dataset, subject, clip, label, label_id), subjects as text ('006')."""
    with resources.files("merlib.data").joinpath(LIST_FILE).open("r") as fh:
        return pd.read_csv(fh, dtype=str, keep_default_na=False)


def looked_for(root: Path) -> str:
    return "MEGC2019 composite: " + " | ".join(m.looked_for(root) for m in SOURCES.values())


def build_index(data_root) -> pd.DataFrame:
    root = check_root(data_root, looked_for)
    listed = megc_list()
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
