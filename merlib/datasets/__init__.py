"""Dataset layer: real on-disk formats in, one tidy sample index out (``schema.INDEX_COLUMNS``).

``build_index(dataset, data_root)`` finds the dataset below ``data_root`` (up to four folders
deep), reads its coding sheet and frame folders, and returns one row per clip; rows that cannot be
used stay in the index with a status and a reason. Frames are read on demand with
``frame_paths`` / ``read_frames``. ``writers`` writes clips back in the same real formats.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from merlib.datasets.layout import (DatasetNotFound, FrameReadError, frame_paths, read_frame,
                                    read_frames)

LOADERS = ("casme2", "samm", "smic", "megc")


def build_index(dataset: str, data_root: str | Path) -> pd.DataFrame:
    """The sample index of ``dataset`` (casme2 | samm | smic | megc) found below ``data_root``.

    Raises DatasetNotFound (naming every pattern looked for, and where) when the dataset is not
    there, ValueError naming the sheet and columns when a coding sheet is malformed."""
    if dataset not in LOADERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(LOADERS)}")
    from importlib import import_module

    return import_module(f"merlib.datasets.{dataset}").build_index(data_root)


__all__ = ["DatasetNotFound", "FrameReadError", "LOADERS", "build_index", "frame_paths",
           "read_frame", "read_frames"]
