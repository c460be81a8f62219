"""Preprocessed clips as training reads them: from the preprocessing cache into memory, or one
batch at a time through a ``DataLoader`` (the streaming ``paper`` path).

Every cache file is opened and checked before training starts, so a missing or corrupt clip is
named up front with the command that rebuilds it, instead of failing a fold half-way.
"""
from __future__ import annotations

import multiprocessing
import zipfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from merlib.config import TrainConfig
from merlib.model import IMAGE_SIZE
from merlib.registry import label_ids

FRAME_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
META_COLUMNS = ["dataset", "source", "subject", "clip"]


@dataclass
class ClipSet:
    """Preprocessed clips of one dataset: in memory, or (``frames`` None) their cache files, read
    one batch at a time by the streaming ``paper`` path."""

    frames: np.ndarray | None  # (N, T, 224, 224, 3) uint8, or None: read from ``files``
    centres: np.ndarray    # (N, T, K, 2) float32, pixels in the 224 frame
    sides: np.ndarray      # (N, T, K) float32
    labels: np.ndarray     # (N,) int64
    meta: pd.DataFrame     # dataset, source, subject, clip per row
    files: tuple[str, ...] = ()  # each clip's preprocessed .npz (frames, IPs)

    def __len__(self) -> int:
        return len(self.labels)

    def read_frames(self, i: int) -> np.ndarray:
        """Clip ``i``'s (T, 224, 224, 3) uint8 frames."""
        if self.frames is not None:
            return self.frames[i]
        return read_clip(self.files[i], self.meta.iloc[i], frames_only=True)


def read_clip(file: str, row, *, key: int = 24, frames_only: bool = False):
    """frames, or (frames, centres, sides), of one cached clip; a missing or corrupt file is named
    with its clip and the command that rebuilds it."""
    try:
        with np.load(file) as z:
            frames = z["frames"]
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != FRAME_SHAPE:
                raise ValueError(f"frames are {frames.dtype} {frames.shape}, expected uint8 "
                                 f"(T, {', '.join(map(str, FRAME_SHAPE))})")
            if frames_only:
                return frames
            return frames, z[f"ip{key}"].astype(np.float32), z[f"side{key}"].astype(np.float32)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{row.subject}/{row.clip}: its preprocessed clip {file} is missing "
                         f"or corrupt ({type(exc).__name__}: {exc}); delete it and rerun "
                         f"`merlib preprocess` (the cache redoes only that clip)") from exc


def load_clipset(manifest: pd.DataFrame, blocks: int, *, frames: bool = True) -> ClipSet:
    """The usable clips listed in a preprocessing manifest (status ok). Every file is read and
    checked here, before training, so a missing or corrupt clip is named up front; with
    ``frames=False`` the frames are then dropped again (host memory stays one clip, whatever
    the dataset's size) and read per batch."""
    ok = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        raise ValueError("the preprocessing manifest lists no usable clip")
    kept, centres, sides = [], [], []
    key = 24 if blocks == 0 else blocks  # blocks=0 ignores them; keep shapes regular
    for row in ok.itertuples():
        fr, c, s = read_clip(row.file, row, key=key)
        if frames:
            kept.append(fr)
        centres.append(c)
        sides.append(s)
    labels = label_ids(ok["label"]).to_numpy(np.int64)
    return ClipSet(np.stack(kept) if frames else None, np.stack(centres), np.stack(sides), labels,
                   ok[META_COLUMNS].copy(), tuple(str(f) for f in ok["file"]))


# --------------------------------------------------------------------------- streaming reads

class ClipFrames(torch.utils.data.Dataset):
    """(frames (T, 224, 224, 3) uint8, index) of each clip, read from its cache file."""

    def __init__(self, clips: ClipSet) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(self.clips.read_frames(i))), i


class EpochOrder(torch.utils.data.Sampler):
    """The fold's clips in a new random order at every pass, drawn in the main process from the
    fold's own generator, so the order is the same with or without loader workers."""

    def __init__(self, idx: np.ndarray, rng: np.random.Generator | None) -> None:
        self.idx, self.rng = np.asarray(idx), rng

    def __len__(self) -> int:
        return len(self.idx)

    def __iter__(self):
        order = self.idx if self.rng is None else self.rng.permutation(self.idx)
        return iter(order.tolist())


def clip_loader(clips: ClipSet, idx: np.ndarray, cfg: TrainConfig, device: torch.device,
                rng: np.random.Generator | None = None, seed: int = 0) -> torch.utils.data.DataLoader:
    """Batches of ``idx`` (shuffled at every pass when ``rng`` is given) with loader workers and,
    on CUDA, pinned memory. Inside a daemonic process (a dask worker) the clips are read in-process:
    daemonic processes may not start children."""
    workers = 0 if multiprocessing.current_process().daemon else cfg.loader_workers
    # Its own generator: a loader draws its workers' base seed at every iterator, and from the
    # global RNG that would shift the CPU dropout stream with the worker count.
    return torch.utils.data.DataLoader(
        ClipFrames(clips), batch_size=cfg.batch_size, sampler=EpochOrder(idx, rng),
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None, generator=torch.Generator().manual_seed(seed))
