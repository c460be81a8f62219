"""LOSO training of the GIA + BIA + Bi-LSTM model (paper Sec. 4.3-4.4, DESIGN §6).

Shaped like torchvision's ``references/classification/train.py``: :func:`train_one_epoch` and
:func:`evaluate` are the loop; :func:`run_fold` trains and predicts one held-out subject and is a
top-level function a worker process can call on its own; :func:`run_loso` plans the folds once,
calls :func:`run_fold` per fold and pools.

Honesty rules built in:
- folds are scikit-learn's ``LeaveOneGroupOut`` with groups = subject;
- the model after the **last** epoch is evaluated on the held-out subject; nothing about the test
  subject steers training or selection (no early stopping, no best-epoch pick);
- seeds are fixed per fold; each fold writes its predictions, and a rerun skips finished folds,
  so an interrupted run resumes at the first unfinished fold;
- a rerun into a folder that holds another configuration or another sample index is refused
  (finished folds of the old run would otherwise be pooled with new ones).

Speed: the frozen convolutions are run once per clip and *view* (view 0 is the clip itself, views
1.. are pre-drawn augmentations: rotation + crop, the same draw for all frames, IPs carried along)
and their maps are reused across folds and epochs. ``quick`` freezes every convolution (maps after
conv5_2 cached too); ``paper`` freezes the transfer layer and trains the GIA convolutions. With one
view and frozen GIA convolutions the block windows never change either, so they are cut once per
run (:func:`precompute_crops`) instead of at every step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import LeaveOneGroupOut
from torch import nn
from tqdm.auto import tqdm

from merlib.augment import (draw_affine, draw_affines, warp_clips, warp_frames, warp_points,
                            warp_points_batch, warp_sides, warp_sides_batch)
from merlib.config import (CLASSES, ModelConfig, RunConfig, TrainConfig, atomic_write_text,
                           config_changes, save_config, to_jsonable)
from merlib.model import IMAGE_SIZE, MERNet
from merlib.weights import vgg16_features

PROB_COLUMNS = [f"p_{c}" for c in CLASSES]
PLAN_FILE = "plan.json"


class ResumeRefused(ValueError):
    """The output folder holds a run of another configuration or index."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- clips from cache

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
        return _read_clip(self.files[i], self.meta.iloc[i], frames_only=True)


FRAME_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)


def _read_clip(file: str, row, *, key: int = 24, frames_only: bool = False):
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
        fr, c, s = _read_clip(row.file, row, key=key)
        if frames:
            kept.append(fr)
        centres.append(c)
        sides.append(s)
    labels = ok["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    meta = ok[["dataset", "source", "subject", "clip"]].copy()
    return ClipSet(np.stack(kept) if frames else None, np.stack(centres), np.stack(sides), labels,
                   meta, tuple(str(f) for f in ok["file"]))


# --------------------------------------------------------------------------- model

def make_model(model_cfg: ModelConfig, weights: str) -> tuple[MERNet, str]:
    """The model and a tag saying which VGG16 weights it really has (``merlib.weights`` holds the
    policy: results never pass random features off as ImageNet ones)."""
    features, tag = vgg16_features(weights)
    return MERNet(config=model_cfg, vgg_features=features), tag


# --------------------------------------------------------------------------- frozen maps

@dataclass
class Maps:
    """Frozen-convolution outputs per clip and view, and each view's augmentation affine.

    Block-scheme independent: the IP centres and sides of any scheme are carried through the
    view's affine when a batch is drawn, so 0/10/24-block runs share one cache.
    """

    f28: torch.Tensor          # (N, V, T, 512, 28, 28) float16
    f14: torch.Tensor | None   # (N, V, T, 512, 14, 14) float16, when GIA convs are frozen
    affines: torch.Tensor      # (N, V, 2, 3) float64, view v's pixel affine (view 0: identity)


def _to_float(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float RGB in [0, 1], (T, 3, H, W); the model normalises itself."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255)


@torch.no_grad()
def compute_maps(model: MERNet, clips: ClipSet, cfg: TrainConfig, device: torch.device,
                 *, progress: bool = True) -> Maps:
    """Run the frozen convolutions once per clip and view."""
    model.eval()
    n, t = clips.centres.shape[:2]
    f28 = torch.empty((n, cfg.views, t, 512, 28, 28), dtype=torch.float16)
    f14 = None if cfg.train_gia_convs else torch.empty((n, cfg.views, t, 512, 14, 14),
                                                       dtype=torch.float16)
    affines = torch.zeros((n, cfg.views, 2, 3), dtype=torch.float64)
    for i in tqdm(range(n), desc="frozen feature maps", disable=not progress, leave=False):
        rng = np.random.default_rng([cfg.seed, i])
        for v in range(cfg.views):
            if v == 0:
                fr, affine = clips.read_frames(i), np.eye(3)[:2]
            else:
                affine = draw_affine(rng, cfg.augment)
                fr = warp_frames(clips.read_frames(i), affine)
            x = _to_float(fr, device)[None]                                  # (1, T, 3, 224, 224)
            m28 = model.transfer(x)                                          # (1, T, 512, 28, 28)
            f28[i, v] = m28[0].to("cpu", torch.float16)
            if f14 is not None:
                f14[i, v] = model.gia_convs(m28)[0].to("cpu", torch.float16)  # (T, 512, 14, 14)
            affines[i, v] = torch.as_tensor(affine)
    return Maps(f28, f14, affines)


def maps_key(prep_key: str, clips: ClipSet, cfg: TrainConfig, weights_tag: str) -> str:
    """Cache key of the frozen maps: preprocessing, clips, weights, views, and the augmentation and
    seed that draw views 1.. (with one view, the clip itself, neither matters; random VGG16
    weights are a fixed draw, see ``merlib.weights``)."""
    spec = json.dumps({"prep": prep_key, "weights": weights_tag, "views": cfg.views,
                       "clips": hashlib.sha256("|".join(clips.meta["subject"] + "/" + clips.meta["clip"])
                                               .encode()).hexdigest(),
                       "gia_frozen": not cfg.train_gia_convs,
                       "augment": to_jsonable(cfg.augment) if cfg.views > 1 else None,
                       "seed": cfg.seed if cfg.views > 1 else None},
                      sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def load_or_compute_maps(model, clips, cfg, device, cache_file: Path | None, *, progress=True) -> Maps:
    if cache_file is not None and cache_file.exists():
        blob = torch.load(cache_file, weights_only=True)
        if blob["f28"].shape[0] == len(clips):
            return Maps(blob["f28"], blob.get("f14"), blob["affines"])
    maps = compute_maps(model, clips, cfg, device, progress=progress)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + ".tmp")
        torch.save({k: v for k, v in dataclasses.asdict(maps).items() if v is not None}, tmp)
        tmp.replace(cache_file)
    return maps


# --------------------------------------------------------------------------- what the model sees

def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass(frozen=True)
class MapInputs:
    """What the trainable part sees of the cached maps, fit on a fold's training clips only.

    ``frames`` (the paper): the maps as they are. ``onset_delta``: each frame's maps minus the
    onset frame's maps of the same clip and view, divided by the standard deviation of those
    differences over the training clips (one scalar per map level), so the micro-motion is not
    swamped by the face's static appearance. ``channel_norm``: the paper's maps standardised per
    channel by the training clips' mean and standard deviation (a candidate of issue 11; see
    docs/DECISIONS.md, "What quick can show").
    """

    inputs: str = "frames"
    scale28: float = 1.0
    scale14: float = 1.0
    mean28: tuple[float, ...] = ()     # channel_norm: per channel, training clips only
    inv_std28: tuple[float, ...] = ()
    mean14: tuple[float, ...] = ()
    inv_std14: tuple[float, ...] = ()

    @classmethod
    def fit(cls, moments: np.ndarray | None, train_idx: np.ndarray, inputs: str) -> "MapInputs":
        """``moments``: :func:`input_moments` of every clip; only ``train_idx`` rows are used."""
        if inputs == "frames":
            return cls("frames")
        n, total, squares = moments[train_idx].sum(0)  # each (2, C): count, sum, sum of squares
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
        inv = np.where(std > 0, 1.0 / np.maximum(std, 1e-12), 1.0)
        if inputs == "onset_delta":
            return cls(inputs, float(inv[0, 0]), float(inv[1, 0]))
        as_tuple = lambda a: tuple(float(v) for v in a)  # noqa: E731
        return cls(inputs, mean28=as_tuple(mean[0]), inv_std28=as_tuple(inv[0]),
                   mean14=as_tuple(mean[1]), inv_std14=as_tuple(inv[1]))

    def _channel(self, level: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, inv = (self.mean28, self.inv_std28) if level == 28 else (self.mean14, self.inv_std14)
        as_t = lambda v: torch.tensor(v, dtype=like.dtype, device=like.device).view(-1, 1, 1)  # noqa: E731
        return as_t(mean), as_t(inv)  # (C, 1, 1)

    def transform(self, f: torch.Tensor | None, level: int) -> torch.Tensor | None:
        """(B, T, C, H, W) float maps -> what the model sees; ``level`` 28 or 14."""
        if f is None or self.inputs == "frames":
            return f
        if self.inputs == "channel_norm":
            mean, inv = self._channel(level, f)
            return (f - mean) * inv
        return (f - f[:, :1]) * (self.scale28 if level == 28 else self.scale14)

    def transform_crops(self, crops: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """Windows cut by :func:`precompute_crops` (B, T, K, C, 6, 6) -> windows of the
        transformed maps. ``weight`` (B, T, K, 1, 6, 6): the cut of a map of ones, i.e. how much
        of each bilinear sample lies on the map; ``channel_norm`` needs it because the cut of a
        constant is that constant times the weight (exact at the map's edges too)."""
        if self.inputs == "frames":
            return crops
        if self.inputs == "channel_norm":
            mean, inv = self._channel(28, crops)
            return (crops - mean * weight) * inv
        return crops * self.scale28  # cutting is linear: the cut of scaled maps


def input_moments(maps: Maps, inputs: str) -> np.ndarray | None:
    """Per clip, the sums a fold fits :class:`MapInputs` from: (N, 3, 2, C) float64 with count,
    sum and sum of squares at the 28×28 and 14×14 levels. ``onset_delta``: C = 1, over (frame −
    onset frame) of every view, frame, channel and cell; ``channel_norm``: C = 512, the maps per
    channel. Summed over a fold's training clips they give its statistics without the test
    subject."""
    if inputs == "frames":
        return None
    channels = maps.f28.shape[3] if inputs == "channel_norm" else 1
    out = np.zeros((maps.f28.shape[0], 3, 2, channels))
    for i in range(maps.f28.shape[0]):
        for j, f in enumerate([maps.f28, maps.f14]):
            if f is None:
                out[i, 0, j] = 1.0
                continue
            for view in f[i]:  # (T, C, H, W); one view at a time: float64 copies of all are GBs
                if inputs == "onset_delta":
                    d = view.float()
                    d = (d[1:] - d[:1]).double()  # frame 0's difference is 0 by construction
                    out[i, :, j, 0] += (d.numel(), d.sum().item(), d.square().sum().item())
                else:
                    d = view.double().transpose(0, 1).flatten(1)  # (C, T·H·W)
                    out[i, 0, j] += d.shape[1]
                    out[i, 1, j] += d.sum(1).numpy()
                    out[i, 2, j] += d.square().sum(1).numpy()
    return out


@dataclass
class Windows:
    """BIA windows of view 0 of every clip, cut once (:func:`precompute_crops`)."""

    crops: torch.Tensor            # (N, T, K, 512, 6, 6) float32
    weight: torch.Tensor | None    # (N, T, K, 1, 6, 6): the cut of a map of ones (channel_norm)


@torch.no_grad()
def precompute_crops(model: MERNet, maps: Maps, clips: ClipSet, inputs: str,
                     *, chunk: int = 8) -> Windows:
    """The BIA windows of view 0 of every clip, cut once.

    Valid when the windows never move (one unaugmented view) and nothing before BIA trains. For
    ``onset_delta`` they are cut from the *unscaled* difference maps, for ``channel_norm`` from
    the maps themselves; the fold's statistics are applied at each step
    (:meth:`MapInputs.transform_crops`; cutting is linear)."""
    out, weights = [], []
    unscaled = MapInputs("onset_delta" if inputs == "onset_delta" else "frames")
    for start in range(0, len(clips), chunk):
        idx = np.arange(start, min(start + chunk, len(clips)))
        f28 = unscaled.transform(maps.f28[idx, 0].float(), 28)              # (b, T, 512, 28, 28)
        c = torch.as_tensor(clips.centres[idx]).flatten(0, 1)                # (b·T, K, 2)
        s = torch.as_tensor(clips.sides[idx]).flatten(0, 1)                  # (b·T, K)
        crops = model.bia.crop(f28.flatten(0, 1), c, s)
        out.append(crops.unflatten(0, (len(idx), f28.shape[1])))            # (b, T, K, 512, 6, 6)
        if inputs == "channel_norm":
            ones = f28.new_ones((c.shape[0], 1, *f28.shape[-2:]))
            weights.append(model.bia.crop(ones, c, s).unflatten(0, (len(idx), f28.shape[1])))
    return Windows(torch.cat(out), torch.cat(weights) if weights else None)


@dataclass
class Batch:
    f28: torch.Tensor | None      # (B, T, 512, 28, 28), when BIA cuts or GIA convs run
    f14: torch.Tensor | None      # (B, T, 512, 14, 14), when the GIA convs are frozen
    centres: torch.Tensor         # (B, T, K, 2)
    sides: torch.Tensor           # (B, T, K)
    crops: torch.Tensor | None    # (B, T, K, 512, 6, 6), precomputed BIA windows

    def forward(self, model: MERNet) -> torch.Tensor:
        if self.crops is not None:  # the windows are cut already: no geometry needed
            return model.forward_head(model.forward_features_from_maps(
                self.f28, self.f14, None, None, crops=self.crops))
        return model.forward_head(model.forward_features_from_maps(
            self.f28, self.f14, self.centres, self.sides))


def make_batch(maps: Maps, clips: ClipSet, idx: np.ndarray, views: np.ndarray,
               device: torch.device, inputs: MapInputs = MapInputs(), *, need_f28: bool = True,
               crops: Windows | None = None) -> Batch:
    """Maps of the drawn views, and the clips' IPs carried through the same views' affines.
    ``need_f28=False`` (no blocks or precomputed crops, GIA convs frozen) skips the 28×28 maps."""
    f28 = maps.f28[idx, views].to(device, torch.float32) if need_f28 or maps.f14 is None else None
    f14 = None if maps.f14 is None else maps.f14[idx, views].to(device, torch.float32)
    f28, f14 = inputs.transform(f28, 28), inputs.transform(f14, 14)
    affines = maps.affines[idx, views].numpy()                                # (B, 2, 3)
    centres = np.stack([warp_points(clips.centres[i], a) for i, a in zip(idx, affines)])
    sides = np.stack([warp_sides(clips.sides[i], a) for i, a in zip(idx, affines)])
    cut = None
    if crops is not None:
        weight = None if crops.weight is None else crops.weight[idx].to(device)
        cut = inputs.transform_crops(crops.crops[idx].to(device), weight)
    return Batch(f28, f14, torch.as_tensor(centres, dtype=torch.float32, device=device),
                 torch.as_tensor(sides, dtype=torch.float32, device=device), cut)


# --------------------------------------------------------------------------- the loop

def param_groups(model: nn.Module, cfg: TrainConfig) -> list[nn.Parameter] | list[dict]:
    """The trainable parameters; with ``gia_fc_lr`` GIA's τ_g FC in a group of its own."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not cfg.gia_fc_lr:
        return [p for _, p in named]
    return [{"params": [p for n, p in named if not n.startswith("gia.tau.")]},
            {"params": [p for n, p in named if n.startswith("gia.tau.")], "lr": cfg.gia_fc_lr}]


def make_optimizer(params: list[nn.Parameter] | list[dict], cfg: TrainConfig) -> torch.optim.Adam:
    """Adam on CE + λ·Σ‖w‖²: the L2 term's gradient 2λw is Adam's (coupled) ``weight_decay`` =
    2λ, applied inside the fused kernel instead of summing ~60 M squares in the graph."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=2 * cfg.l2, fused=True)


@dataclass
class ModelContext:
    """What every fold of one run shares, built once per process: the clips, the model at its
    initial weights, the device and which VGG16 weights the model has."""

    clips: ClipSet
    model: MERNet
    init_state: dict
    device: torch.device
    weights_tag: str

    @property
    def meta(self) -> pd.DataFrame:
        return self.clips.meta

    @property
    def labels(self) -> np.ndarray:
        return self.clips.labels

    def __len__(self) -> int:
        return len(self.clips)


@dataclass
class FoldContext(ModelContext):
    """The cached path (``quick``): also the clips' frozen maps, precomputed windows and the
    moments the map inputs are fit from."""

    maps: Maps | None = None
    moments: np.ndarray | None = None
    crops: Windows | None = None
    maps_file: Path | None = None

    @property
    def need_f28(self) -> bool:
        return (self.model.bia is not None and self.crops is None) or self.maps.f14 is None


@contextlib.contextmanager
def oom_hint(device: torch.device, cfg: TrainConfig):
    """An out-of-memory error that says which batch size to lower, and how."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise torch.OutOfMemoryError(
            f"out of memory on {device} at batch size {cfg.batch_size}: lower it, e.g. "
            f"`merlib train ... --set train.batch_size={max(1, cfg.batch_size // 2)}` (a finished "
            f"fold is kept; the run resumes at this one). {exc}") from exc


def _autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    """bf16 autocast on CUDA (when ``cfg.bf16``); a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16)


def optimizer_step(forward, y: torch.Tensor, opt: torch.optim.Optimizer, device: torch.device,
                   cfg: TrainConfig) -> float:
    """One Adam step on the cross-entropy of ``forward()``'s logits (bf16 autocast on CUDA);
    the batch's mean loss."""
    with oom_hint(device, cfg):
        with _autocast(device, cfg):
            logits = forward()
        loss = nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def train_one_epoch(ctx: FoldContext, opt: torch.optim.Optimizer, labels: torch.Tensor,
                    train_idx: np.ndarray, cfg: TrainConfig, inputs: MapInputs,
                    rng: np.random.Generator) -> float:
    """One pass over the training clips in a random order; the mean cross-entropy."""
    model, device = ctx.model, ctx.device
    model.train()
    order = rng.permutation(train_idx)
    total, seen = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        views = rng.integers(0, cfg.views, size=len(idx))
        batch = make_batch(ctx.maps, ctx.clips, idx, views, device, inputs,
                           need_f28=ctx.need_f28, crops=ctx.crops)
        total += optimizer_step(lambda: batch.forward(model), labels[idx].to(device), opt,
                                device, cfg) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate(ctx: FoldContext, idx: np.ndarray, inputs: MapInputs = MapInputs(),
             batch_size: int = 16) -> np.ndarray:
    """Class probabilities on view 0 (no augmentation) of ``idx``."""
    ctx.model.eval()
    out = []
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        batch = make_batch(ctx.maps, ctx.clips, b, np.zeros(len(b), dtype=np.int64), ctx.device,
                           inputs, need_f28=ctx.need_f28, crops=ctx.crops)
        out.append(torch.softmax(batch.forward(ctx.model).float(), dim=1).cpu())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- streaming (paper)
# The paper profile trains GIA's convolutions, so nothing after the transfer layer can be cached,
# and it augments every sample afresh. Clips stream from the preprocessing cache through a
# DataLoader; each step draws one rotation + crop per clip on the device, warps the frames and the
# IPs by it, runs the frozen transfer layer without autograd and trains the rest. Host memory holds
# a few batches of uint8 frames; device memory one batch's activations, whatever the dataset's size.

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


@dataclass
class StreamContext(ModelContext):
    """The streaming path (``paper``): no maps; every step computes its own from the clips'
    frames on disk."""


def stream_batch(ctx: StreamContext, frames: torch.Tensor, idx: torch.Tensor, cfg: TrainConfig,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 frames (B, T, H, W, 3) of clips ``idx`` -> float frames (B, T, 3, H, W) in [0, 1],
    IP centres (B, T, K, 2) and sides (B, T, K) on the device; with a ``generator``, each clip
    through its own fresh rotation + crop (frames and IPs alike), else as they are."""
    device = ctx.device
    x = frames.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255)  # (B, T, 3, H, W)
    centres = torch.as_tensor(ctx.clips.centres[idx.numpy()], device=device)          # (B, T, K, 2)
    sides = torch.as_tensor(ctx.clips.sides[idx.numpy()], device=device)              # (B, T, K)
    if generator is not None:
        affines = draw_affines(len(idx), cfg.augment, generator=generator)            # (B, 2, 3)
        x = warp_clips(x, affines)
        centres, sides = warp_points_batch(centres, affines), warp_sides_batch(sides, affines)
    if device.type == "cuda":
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])
    return x, centres, sides


def _stream_logits(model: MERNet, x: torch.Tensor, centres: torch.Tensor,
                   sides: torch.Tensor) -> torch.Tensor:
    f28 = model.transfer(x)  # (B, T, 512, 28, 28); frozen: runs without autograd
    blocks = model.bia is not None
    return model.forward_head(model.forward_features_from_maps(
        f28, None, centres if blocks else None, sides if blocks else None))


def train_one_epoch_stream(ctx: StreamContext, opt: torch.optim.Optimizer, labels: torch.Tensor,
                           loader: torch.utils.data.DataLoader, cfg: TrainConfig,
                           generator: torch.Generator) -> float:
    """One pass of the streaming path, fresh augmentation per clip; the mean cross-entropy."""
    model, device = ctx.model, ctx.device
    model.train()
    total, seen = 0.0, 0
    for frames, idx in loader:
        x, centres, sides = stream_batch(ctx, frames, idx, cfg, generator)
        total += optimizer_step(lambda: _stream_logits(model, x, centres, sides),
                                labels[idx].to(device), opt, device, cfg) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate_stream(ctx: StreamContext, idx: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Class probabilities of ``idx``, unaugmented, in order."""
    ctx.model.eval()
    out = []
    for frames, b in clip_loader(ctx.clips, idx, cfg, ctx.device):
        x, centres, sides = stream_batch(ctx, frames, b, cfg, None)
        with oom_hint(ctx.device, cfg), _autocast(ctx.device, cfg):
            logits = _stream_logits(ctx.model, x, centres, sides)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy()


def _start_fold(ctx: ModelContext, cfg: TrainConfig, seed: int) -> tuple[TrainConfig, torch.optim.Adam]:
    """Seeds, the model back at the run's initial weights (every fold starts from the same),
    and a fresh optimiser: the fold's config and optimiser."""
    _seed_all(seed)
    ctx.model.load_state_dict(ctx.init_state)
    fold_cfg = dataclasses.replace(cfg, seed=seed)
    return fold_cfg, make_optimizer(param_groups(ctx.model, fold_cfg), fold_cfg)


def _stream_probs(ctx: StreamContext, cfg: TrainConfig, labels: np.ndarray, train_idx: np.ndarray,
                  test_idx: np.ndarray, seed: int, progress: bool) -> tuple[np.ndarray, dict]:
    fold_cfg, opt = _start_fold(ctx, cfg, seed)
    loader = clip_loader(ctx.clips, train_idx, cfg, ctx.device, np.random.default_rng(seed), seed)
    generator = torch.Generator(device=ctx.device).manual_seed(seed)  # the augmentation draws
    y = torch.as_tensor(labels)
    losses = [train_one_epoch_stream(ctx, opt, y, loader, fold_cfg, generator)
              for _ in tqdm(range(cfg.epochs), desc="epochs", leave=False, disable=not progress)]
    del loader  # stops its workers
    return evaluate_stream(ctx, test_idx, cfg), {"inputs": {"inputs": "frames", "stream": True},
                                                 "losses": losses}


def build_stream_context(clips: ClipSet, config: RunConfig) -> StreamContext:
    model, weights_tag, device = _placed_model(config)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    return StreamContext(clips, model, init_state, device, weights_tag)


def fold_labels(labels: np.ndarray, train_idx: np.ndarray, cfg: TrainConfig, fold: int) -> np.ndarray:
    """The labels a fold trains on: the clips' own, or with ``shuffle_labels`` the training
    subjects' labels permuted among them (the test labels stay true)."""
    labels = labels.copy()
    if cfg.shuffle_labels:
        labels[train_idx] = np.random.default_rng(cfg.seed + fold).permutation(labels[train_idx])
    return labels


# --------------------------------------------------------------------------- folds

def plan_folds(clips) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-subject-out (train, test) indices, in scikit-learn's order, of anything with
    ``meta`` (a subject column) and ``labels``: clips, or a fold context."""
    subjects = clips.meta["subject"].to_numpy()
    return list(LeaveOneGroupOut().split(np.zeros(len(clips)), clips.labels, groups=subjects))


def fold_dir(run_dir: Path, clips, fold: int, test_idx: np.ndarray) -> Path:
    return Path(run_dir) / "folds" / f"{fold:03d}_{clips.meta['subject'].iloc[test_idx[0]]}"


def _placed_model(config: RunConfig) -> tuple[MERNet, str, torch.device]:
    """The model at its seeded initial weights on the run's device (channels_last on CUDA), its
    weights tag, the device; on the CPU, torch's threads set for this process."""
    cfg = config.train
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        from merlib.executors import cpu_threads  # honours SLURM's and containers' CPU affinity

        torch.set_num_threads(config.executor.threads or cpu_threads(1))
    _seed_all(cfg.seed)
    model, weights_tag = make_model(cfg.model, cfg.weights)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, weights_tag, device


def build_context(clips: ClipSet, config: RunConfig, *, maps_file: Path | None = None,
                  maps_dir: Path | None = None, prep_key: str = "",
                  progress: bool = True) -> FoldContext | StreamContext:
    """Model, frozen maps (cached in ``maps_file``, or under ``maps_dir`` by key) and windows; or,
    for a streaming run (``train.stream``), the model and the clips alone."""
    cfg = config.train
    if cfg.stream:
        return build_stream_context(clips, config)
    model, weights_tag, device = _placed_model(config)
    if maps_file is None and maps_dir is not None:
        maps_file = Path(maps_dir) / f"maps-{maps_key(prep_key, clips, cfg, weights_tag)}.pt"
    maps = load_or_compute_maps(model, clips, cfg, device, maps_file, progress=progress)
    moments = input_moments(maps, cfg.inputs)
    crops = None
    if model.bia is not None and cfg.views == 1 and maps.f14 is not None:
        crops = precompute_crops(model, maps, clips, cfg.inputs)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    return FoldContext(clips, model, init_state, device, weights_tag, maps=maps, moments=moments,
                       crops=crops, maps_file=maps_file)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights only (frozen ones are rebuilt from the weights spec), as float16 to keep a
    3-variant LOSO run's checkpoints small; the predictions file is the record of the result."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().to("cpu", torch.float16) for n, t in model.state_dict().items()
            if n in names or not t.is_floating_point()}


def load_context(config: RunConfig, run_dir: Path, *, progress: bool = False):
    """A worker's own fold context, from the plan the driver wrote in ``run_dir``."""
    from merlib.preprocess.pipeline import load_manifest

    plan = json.loads((Path(run_dir) / PLAN_FILE).read_text())
    if not plan.get("manifest"):
        raise ValueError(f"{run_dir / PLAN_FILE} names no preprocessing manifest: this run was "
                         f"planned from clips in memory, so its folds run only in that process")
    if config.train.net != "mernet":  # features are cached by the driver: this only reads them
        return build_baseline_context(load_manifest(plan["manifest"]), config,
                                      features_dir=Path(plan["features_dir"]), jobs=1)
    clips = load_clipset(load_manifest(plan["manifest"]), config.train.blocks,
                         frames=not config.train.stream)
    return build_context(clips, config, maps_file=Path(plan["maps_file"]) if plan["maps_file"] else None,
                         progress=progress)


@dataclass
class BaselineContext:
    """What every fold of a baseline run shares: the clips' features (one row per usable clip
    whose features could be computed), their meta and labels, and the clips that failed."""

    name: str
    X: np.ndarray
    meta: pd.DataFrame
    labels: np.ndarray
    failed: pd.DataFrame
    device: torch.device
    features_dir: Path

    def __len__(self) -> int:
        return len(self.labels)


def build_baseline_context(manifest: pd.DataFrame, config: RunConfig, *, features_dir: Path,
                           jobs: int = 0, progress: bool = False) -> BaselineContext:
    """Features of a baseline (cached per clip under ``features_dir``); failed clips are named."""
    from merlib import baselines

    X, meta, failed = baselines.build_features(config.train.net, manifest, features_dir,
                                               jobs=jobs, progress=progress)
    if not len(meta):
        raise ValueError(f"{config.train.net}: no clip has usable features "
                         f"({len(failed)} failed: {', '.join(failed['clip'].astype(str)[:5])})")
    labels = meta["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    return BaselineContext(config.train.net, X, meta[["dataset", "source", "subject", "clip"]]
                           .reset_index(drop=True), labels, failed,
                           resolve_device(config.train.device), Path(features_dir))


def _baseline_probs(ctx: BaselineContext, cfg: TrainConfig, labels: np.ndarray,
                    train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    from merlib import baselines

    groups = ctx.meta["subject"].to_numpy()
    probs = baselines.fit_predict(ctx.name, ctx.X[train_idx], labels[train_idx], groups[train_idx],
                                  ctx.X[test_idx], seed=seed, device=ctx.device.type,
                                  epochs={"ststnet": cfg.ststnet_epochs,
                                          "off-apexnet": cfg.off_apexnet_epochs}.get(ctx.name))
    return probs, {"net": ctx.name}


def _mernet_probs(ctx: FoldContext, cfg: TrainConfig, labels: np.ndarray, train_idx: np.ndarray,
                  test_idx: np.ndarray, seed: int, progress: bool) -> tuple[np.ndarray, dict]:
    fold_cfg, opt = _start_fold(ctx, cfg, seed)
    inputs = MapInputs.fit(ctx.moments, train_idx, cfg.inputs)  # training subjects only
    rng = np.random.default_rng(seed)
    y = torch.as_tensor(labels)
    losses = [train_one_epoch(ctx, opt, y, train_idx, fold_cfg, inputs, rng)
              for _ in tqdm(range(cfg.epochs), desc="epochs", leave=False, disable=not progress)]
    return evaluate(ctx, test_idx, inputs), {"inputs": dataclasses.asdict(inputs), "losses": losses}


def run_fold(config: RunConfig, fold: int, run_dir: str | Path, *,
             context: FoldContext | BaselineContext | None = None, progress: bool = False) -> dict:
    """Train on every subject but fold ``fold``'s, predict that subject, write the fold's files.

    Returns at once when the fold's predictions exist; writes ``predictions.csv`` last and
    atomically, so a killed or retried fold never leaves a file that counts. Returns a small
    status: fold, subject, state ("done" or "skipped"), seconds."""
    run_dir = Path(run_dir)
    ctx = context or load_context(config, run_dir, progress=progress)
    cfg = config.train
    train_idx, test_idx = plan_folds(ctx)[fold]
    out = fold_dir(run_dir, ctx, fold, test_idx)
    subject = ctx.meta["subject"].iloc[test_idx[0]]
    done = out / "predictions.csv"
    if done.exists():
        return {"fold": fold, "subject": subject, "state": "skipped", "seconds": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seed = cfg.seed + fold
    labels = fold_labels(ctx.labels, train_idx, cfg, fold)
    if isinstance(ctx, BaselineContext):
        probs, record = _baseline_probs(ctx, cfg, labels, train_idx, test_idx, seed)
    elif isinstance(ctx, StreamContext):
        probs, record = _stream_probs(ctx, cfg, labels, train_idx, test_idx, seed, progress)
    else:
        probs, record = _mernet_probs(ctx, cfg, labels, train_idx, test_idx, seed, progress)
    pred = ctx.meta.iloc[test_idx].reset_index(drop=True).copy()
    pred["fold"] = fold
    pred["y_true"] = ctx.labels[test_idx]
    pred["y_pred"] = probs.argmax(1)
    pred[PROB_COLUMNS] = probs
    pred["profile"] = cfg.profile
    if cfg.net == "mernet":
        pred["blocks"] = cfg.blocks
        pred["inputs"] = cfg.inputs
    else:  # blocks and map inputs are the paper model's; a baseline has its own features
        pred["net"] = cfg.net
    trained = isinstance(ctx, ModelContext)
    if cfg.checkpoints and trained:
        tmp = out / "checkpoint.pt.tmp"
        torch.save({"model": _trainable_state(ctx.model), "fold": fold, "subject": subject,
                    "epochs": cfg.epochs, "losses": record["losses"]}, tmp)
        tmp.replace(out / "checkpoint.pt")
    seconds = round(time.time() - t0, 2)
    atomic_write_text(out / "fold.json", json.dumps(
        {"fold": fold, "subject": subject, "n_train": len(train_idx), "n_test": len(test_idx),
         **record, "checkpoint": cfg.checkpoints and trained,
         "seconds": seconds}, indent=2))
    atomic_write_text(done, pred.to_csv(index=False))  # last: its presence marks the fold finished
    return {"fold": fold, "subject": subject, "state": "done", "seconds": seconds}


# --------------------------------------------------------------------------- LOSO

def run_loso(clips: ClipSet | BaselineContext, config: RunConfig, out_dir: str | Path, *,
             maps_dir: Path | None = None, prep_key: str = "", index_hash: str = "",
             manifest_file: Path | None = None, restart: bool = False, progress: bool = True,
             suggest: str = "") -> pd.DataFrame:
    """Leave-one-subject-out training and pooled predictions, resuming finished folds.

    Plans once (resume check, ``config.json``, frozen maps, ``plan.json``), runs
    :func:`run_fold` per fold in this process, pools. ``clips`` are the paper model's clips, or a
    baseline's ready context. ``restart`` discards an earlier run in ``out_dir``; ``suggest`` is
    the folder a refusal names as the alternative."""
    out_dir = Path(out_dir)
    record = {"run": config.identity(), "index_hash": index_hash}
    check_resumable(out_dir, record, restart=restart, suggest=suggest)
    folds = plan_folds(clips)
    dirs = [fold_dir(out_dir, clips, i, te) for i, (_, te) in enumerate(folds)]
    if (out_dir / "config.json").exists() and all((d / "predictions.csv").exists() for d in dirs):
        return _pool(dirs, out_dir)  # finished earlier: just pool

    if isinstance(clips, BaselineContext):
        from merlib.baselines import hyperparameters

        ctx, extra = clips, {"weights_used": "none (baseline)",
                             "baseline": hyperparameters(config.train.net),
                             "failed_clips": clips.failed.to_dict(orient="records")}
    else:
        ctx = build_context(clips, config, maps_dir=maps_dir, prep_key=prep_key, progress=progress)
        extra = {"weights_used": ctx.weights_tag}
    save_config(out_dir / "config.json", **record, **extra, executor=config.executor)
    atomic_write_text(out_dir / PLAN_FILE, json.dumps(
        {"manifest": str(manifest_file) if manifest_file else "",
         "maps_file": str(getattr(ctx, "maps_file", None) or ""),
         "features_dir": str(getattr(ctx, "features_dir", "")),
         "folds": [{"fold": i, "subject": d.name.split("_", 1)[1], "n_test": len(te)}
                   for i, ((_, te), d) in enumerate(zip(folds, dirs))]}, indent=2) + "\n")
    todo = [i for i, d in enumerate(dirs) if not (d / "predictions.csv").exists()]
    if config.executor.kind == "local":
        bar = tqdm(todo, desc=f"LOSO {config.run_name()}",
                   disable=not progress or not todo)
        for fold in bar:
            run_fold(config, fold, out_dir, context=ctx)
    else:  # folds as tasks on another engine; each worker builds its own context from the plan
        from merlib.executors import run_folds

        del ctx  # the driver must not hold the model (and on a GPU, its memory) while workers run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        run_folds(config, out_dir, todo, progress=progress, threads=config.executor.threads or None)
    return _pool(dirs, out_dir)


def check_resumable(out_dir: Path, record: dict, *, restart: bool = False, suggest: str = "") -> None:
    """Resuming only continues the same experiment: the whole resolved configuration and the
    sample index's hash must match the saved ones, or finished folds of another run would be
    pooled with new ones. ``restart`` deletes the earlier run's files instead."""
    saved_file = Path(out_dir) / "config.json"
    if not saved_file.exists():
        return
    saved = json.loads(saved_file.read_text())
    before = {"run": saved.get("run", {}), "index_hash": saved.get("index_hash", "")}
    now = json.loads(json.dumps(to_jsonable(record)))
    if before == now:
        return
    if restart:
        for name in ("folds", "config.json", PLAN_FILE, "predictions.csv", "metrics.json"):
            target = Path(out_dir) / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return
    changes = config_changes(before, now)
    what = "; ".join(c.replace("index_hash", "sample index (coding sheet or data) hash")
                     for c in changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    alternative = f", or write to {suggest}" if suggest else ", or pass another --out folder"
    raise ResumeRefused(f"{out_dir} holds a run of another configuration or data ({what}). Its "
                        f"finished folds must not be pooled with new ones: rerun with --restart "
                        f"to discard them{alternative}.")


def _pool(fold_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """Pooled predictions read back from the fold files, so a resumed run and an uninterrupted
    one give identical tables."""
    pooled = pd.concat([pd.read_csv(d / "predictions.csv", dtype={"subject": str, "clip": str})
                        for d in fold_dirs], ignore_index=True)
    atomic_write_text(out_dir / "predictions.csv", pooled.to_csv(index=False))
    return pooled
