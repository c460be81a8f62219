"""One entry point from (dataset name, data root) to a sample index, SynthME included.

``dataset == "synthme"`` means: the SynthME folder for the given preset/layout/seed under
``MERLIB_DATA`` (generated on first use, then reused), read through the real loader of its
layout. The index's ``dataset`` column then says ``synthme`` and ``source`` the layout.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from merlib.config import Paths, SynthConfig


@dataclass(frozen=True)
class DataSpec:
    """What a run reads: the dataset name, the folder, and which loader reads it."""

    dataset: str
    root: Path
    loader: str  # casme2 | samm | smic | megc
    synth: SynthConfig | None = None

    @property
    def name(self) -> str:
        """The run's folder name under tables/, figures/, runs/ and the caches: the dataset, or
        for SynthME its preset, layout and seed (so CI's tiny runs never overwrite a demo run)."""
        return self.synth.folder_name() if self.synth else self.dataset


def resolve(dataset: str, data_root: str | Path | None = None, *,
            synth: SynthConfig | None = None, paths: Paths | None = None,
            generate_missing: bool = True) -> DataSpec:
    """Where ``dataset`` lives and how to read it. For SynthME, generate it when absent."""
    paths = paths or Paths.from_env()
    if dataset == "synthme":
        synth = synth or SynthConfig()
        root = Path(data_root) if data_root else paths.data / synth.folder_name()
        if generate_missing:
            from merlib.synth import generate  # generation is cached by its marker file

            generate(root, layout=synth.layout, preset=synth.preset, seed=synth.seed)
        return DataSpec(dataset, root, synth.layout, synth)
    if not data_root:
        raise ValueError(
            f"dataset {dataset!r} needs a data root: pass --data-root / data_root= the folder you "
            f"unpacked it into (the licensed datasets are not shipped with merlib)")
    return DataSpec(dataset, Path(data_root).expanduser().resolve(), dataset, None)


def load_index(spec: DataSpec) -> pd.DataFrame:
    """The sample index of ``spec``, relabelled with the run's dataset name."""
    from merlib.datasets import build_index

    index = build_index(spec.loader, spec.root)
    index["dataset"] = spec.dataset
    return index


def index_hash(index: pd.DataFrame) -> str:
    """A short content hash of an index, independent of where the data sit on disk."""
    cols = ["dataset", "source", "subject", "clip", "label", "onset", "apex", "offset",
            "n_frames", "status"]
    text = index[cols].astype(str).sort_values(cols[:4]).to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
