"""Provenance: who, what and where of every table and figure merlib writes, and the writers
that put a ``.provenance.json`` beside each."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from merlib.config import git_commit, to_jsonable
from merlib.files import atomic_write_text

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scikit-image",
            "opencv-contrib-python-headless", "face-recognition", "dlib-bin", "papermill")


def hardware() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "system": platform.platform()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # torch is optional for the division tables
        pass
    return info


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Provenance:
    """Who/what/where of a result. Start it when the work starts, so wall time is honest."""

    dataset: str
    index_hash: str = ""
    profile: str = ""
    config: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def record(self, **extra) -> dict:
        return {
            "git_commit": git_commit(),
            "dataset": self.dataset,
            "index_hash": self.index_hash,
            "profile": self.profile,
            "config": to_jsonable(self.config),
            "packages": package_versions(),
            "hardware": hardware(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.time() - self.started, 2),
            **to_jsonable(extra),
        }



def provenance_table(prov: Provenance, *, weights: str = "—") -> pd.DataFrame:
    """The provenance a reader wants at a glance (the full record is in the .provenance.json
    files beside every table and figure): commit, data, profile, weights, wall time, machine."""
    rec = prov.record()
    data = rec["config"].get("data", {})
    where = data.get("root") or (f"SynthME under MERLIB_DATA ({data.get('preset')}, "
                                 f"{data.get('layout')} layout, seed {data.get('seed')})")
    rows = [("commit", rec["git_commit"][:12] + ("+dirty" if rec["git_commit"].endswith("+dirty") else "")),
            ("dataset", f"{rec['dataset']} (index hash {rec['index_hash']})"),
            ("data", where),
            ("profile", rec["profile"] or "—"),
            ("VGG16 weights", weights),
            ("wall time so far", f"{rec['wall_time_s']:.0f} s"),
            ("machine", f"{rec['hardware'].get('cpu_count', '?')} CPU cores, "
                        f"{rec['hardware'].get('gpu') or 'no GPU'}"),
            ("packages", ", ".join(f"{k} {v}" for k, v in rec["packages"].items()
                                   if k in ("torch", "torchvision", "scikit-learn")))]
    return pd.DataFrame(rows, columns=["item", "value"])


def write_table(df: pd.DataFrame, out_dir: Path, name: str, prov: Provenance,
                *, floatfmt: str = ".4f", **extra) -> dict[str, Path]:
    """``name.csv``, ``name.md`` and ``name.provenance.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{name}.csv", "md": out_dir / f"{name}.md",
             "provenance": out_dir / f"{name}.provenance.json"}
    atomic_write_text(paths["csv"], df.to_csv(index=False))
    atomic_write_text(paths["md"], df.to_markdown(index=False, floatfmt=floatfmt, missingval="—") + "\n")
    atomic_write_text(paths["provenance"],
                  json.dumps(prov.record(table=name, **extra), indent=2, sort_keys=True) + "\n")
    return paths


def may_keep_faces(dataset: str) -> bool:
    """Only SynthME's faces may be written to disk: a real dataset's belong to research
    participants, so a figure showing them is shown in the notebook and never saved under
    figures/ (which is committed)."""
    from merlib.registry import DATASETS

    return DATASETS[dataset].synthetic


def write_figure(fig, out_dir: Path, name: str, prov: Provenance, *, faces: bool = False,
                 **extra) -> dict[str, Path]:
    """``name.png``, ``name.pdf`` and ``name.provenance.json`` in ``out_dir``; nothing for a
    figure of real faces (``faces`` and a real dataset: :func:`may_keep_faces`)."""
    if faces and not may_keep_faces(prov.dataset):
        return {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / f"{name}.png", "pdf": out_dir / f"{name}.pdf",
             "provenance": out_dir / f"{name}.provenance.json"}
    fig.savefig(paths["png"], dpi=150, bbox_inches="tight")
    fig.savefig(paths["pdf"], bbox_inches="tight", metadata={"CreationDate": None})
    atomic_write_text(paths["provenance"],
                  json.dumps(prov.record(figure=name, **extra), indent=2, sort_keys=True) + "\n")
    return paths


def relative_paths(df: pd.DataFrame, root: str | Path | None, columns=("frames_dir", "file")) -> pd.DataFrame:
    """``df`` with its path columns relative to ``root`` (a committed table must not carry the
    absolute paths of the machine that wrote it); paths outside ``root`` are left as they are."""
    if root is None:
        return df
    root = Path(root).resolve()
    out = df.copy()
    for col in columns:
        if col in out:
            out[col] = [_relative(v, root) for v in out[col]]
    return out


def _relative(value, root: Path):
    if not isinstance(value, str) or not value:
        return value
    try:
        return Path(value).resolve().relative_to(root).as_posix()
    except ValueError:
        return value

