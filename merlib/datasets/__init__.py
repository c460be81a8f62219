"""Dataset layer: real on-disk formats in, one tidy sample index out (``schema.INDEX_COLUMNS``).

``build_index(dataset, data_root)`` finds the dataset below ``data_root`` (up to four folders
deep), reads its coding sheet and frame folders, and returns one row per clip; rows that cannot be
used stay in the index with a status and a reason. Frames are read on demand with
``frame_paths`` / ``read_frames``. ``writers`` writes clips back in the same real formats.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from merlib.datasets.layout import (DatasetNotFound, FrameReadError, frame_paths, read_frame,
                                    read_frames)

from merlib.registry import DATASETS

# The loader modules of merlib.datasets, named by the dataset registry.
LOADERS = tuple(dict.fromkeys(d.loader for d in DATASETS.values() if d.loader))


def build_index(dataset: str, data_root: str | Path) -> pd.DataFrame:
    """The sample index of ``dataset`` (one of :data:`LOADERS`) found below ``data_root``.

    Raises DatasetNotFound (naming every pattern looked for, and where) when the dataset is not
    there, ValueError naming the sheet and columns when a coding sheet is malformed."""
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(LOADERS)}")
    from importlib import import_module

    return import_module(f"merlib.datasets.{dataset}").build_index(data_root)


def index_hash(index: pd.DataFrame) -> str:
    """A short content hash of an index, independent of where the data sit on disk."""
    cols = ["dataset", "source", "subject", "clip", "label", "onset", "apex", "offset",
            "n_frames", "status"]
    text = index[cols].astype(str).sort_values(cols[:4]).to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["DatasetNotFound", "FrameReadError", "LOADERS", "build_index", "frame_paths",
           "index_hash", "read_frame", "read_frames"]
