"""What the trainable part of the ``quick`` profile sees: the frozen convolutions' maps of every
clip, cached once per run, and the per-fold transforms of them (paper Sec. 4.4; the inputs
options in docs/DECISIONS.md, "What quick can show").

The frozen convolutions run once per clip and *view* (view 0 is the clip itself, views 1.. are
pre-drawn augmentations: rotation + crop, the same draw for all frames, IPs carried along) and
their maps are reused across folds and epochs. ``quick`` freezes every convolution (maps after
conv5_2 cached too). With one view and frozen GIA convolutions the block windows never change
either, so they are cut once per run (:func:`precompute_crops`) instead of at every step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from merlib.augment import draw_affine, warp_frames, warp_points, warp_sides
from merlib.clips import ClipSet
from merlib.config import TrainConfig, to_jsonable
from merlib.files import atomic_path
from merlib.model import MERNet

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


def clip_maps_file(clip_dir: Path, frames: np.ndarray, cfg: TrainConfig, weights_tag: str) -> Path:
    """Where one clip's view-0 maps are kept for every run that has the same frames (the
    composite and a per-source run share every clip): named by the frames' bytes, the weights
    and whether the GIA convolutions are frozen."""
    h = hashlib.sha256(np.ascontiguousarray(frames).tobytes())
    h.update(json.dumps({"shape": list(frames.shape), "weights": weights_tag,
                         "normalize": cfg.model.normalize_input,
                         "gia_frozen": not cfg.train_gia_convs}, sort_keys=True).encode())
    return Path(clip_dir) / f"{h.hexdigest()[:24]}.pt"


@torch.no_grad()
def compute_maps(model: MERNet, clips: ClipSet, cfg: TrainConfig, device: torch.device,
                 *, progress: bool = True, clip_dir: Path | None = None, weights_tag: str = "") -> Maps:
    """Run the frozen convolutions once per clip and view. ``clip_dir`` (one view only): keep
    each clip's maps there by content, and take them from there when another run made them."""
    model.eval()
    n, t = clips.centres.shape[:2]
    f28 = torch.empty((n, cfg.views, t, 512, 28, 28), dtype=torch.float16)
    f14 = None if cfg.train_gia_convs else torch.empty((n, cfg.views, t, 512, 14, 14),
                                                       dtype=torch.float16)
    affines = torch.zeros((n, cfg.views, 2, 3), dtype=torch.float64)
    for i in tqdm(range(n), desc="frozen feature maps", disable=not progress, leave=False):
        rng = np.random.default_rng([cfg.seed, i])
        shared = None
        if clip_dir is not None and cfg.views == 1:
            shared = clip_maps_file(clip_dir, clips.read_frames(i), cfg, weights_tag)
            if shared.exists():
                blob = torch.load(shared, weights_only=True)
                f28[i, 0] = blob["f28"]
                if f14 is not None:
                    f14[i, 0] = blob["f14"]
                affines[i, 0] = torch.as_tensor(np.eye(3)[:2])
                continue
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
        if shared is not None:
            shared.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(shared) as tmp:
                torch.save({"f28": f28[i, 0].clone(), **({"f14": f14[i, 0].clone()} if f14 is not None else {})},
                           tmp)
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


def load_or_compute_maps(model, clips, cfg, device, cache_file: Path | None, *, progress=True,
                         clip_dir: Path | None = None, weights_tag: str = "") -> Maps:
    if cache_file is not None and cache_file.exists():
        blob = torch.load(cache_file, weights_only=True)
        if blob["f28"].shape[0] == len(clips):
            return Maps(blob["f28"], blob.get("f14"), blob["affines"])
    maps = compute_maps(model, clips, cfg, device, progress=progress, clip_dir=clip_dir,
                        weights_tag=weights_tag)
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            torch.save({k: v for k, v in dataclasses.asdict(maps).items() if v is not None}, tmp)
    return maps


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

    crops: torch.Tensor            # (N, T, K, 512, 6, 6) float32, a view of (K, N, T, 6, 6, 512) memory
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
    return Windows(window_storage(torch.cat(out)), torch.cat(weights) if weights else None)


# Windows live in memory block-major and channels-last, (K, N, T, 6, 6, 512), and are handed
# around as (N, T, K, 512, 6, 6) views of it: BIA's per-block matmuls (merlib.model.BlockLinear)
# then read a batch's windows in place, and a fold scales them in one contiguous pass.
_TO_STORAGE = (2, 0, 1, 4, 5, 3)   # (N, T, K, C, h, w) -> (K, N, T, h, w, C)
_TO_LOGICAL = (1, 2, 0, 5, 3, 4)   # and back


def window_storage(crops: torch.Tensor) -> torch.Tensor:
    """(N, T, K, C, 6, 6) windows -> the same values as a view of block-major channels-last memory."""
    return crops.permute(*_TO_STORAGE).contiguous().permute(*_TO_LOGICAL)


@dataclass
class FoldInputs:
    """One fold's inputs of every clip, view 0, already transformed by the fold's
    :class:`MapInputs`: what :func:`make_batch` would build batch after batch, built once per fold
    with the same elementwise operations (so the same bits), so that a step only gathers rows.

    Built and gathered into memory that is kept from fold to fold and batch to batch: on a small
    VM a fresh tensor of hundreds of MB costs more to fault in than to fill
    (``bench/quick_profile.py``). So a :meth:`batch` is valid until the next call."""

    inputs: MapInputs              # the transform they were built with
    f14: torch.Tensor              # (N, T, 512, 14, 14) float32
    # (K, N, T, 6, 6, 512) float32 in memory when the model has blocks (see window_storage)
    crops: torch.Tensor | None
    # onset_delta: the unscaled differences, computed once per run; a fold only scales them
    f14_delta: torch.Tensor | None = None
    buffers: dict = dataclasses.field(default_factory=dict)  # batch size -> (f14, crops)

    @staticmethod
    def applies(maps: Maps, crops: Windows | None, blocks: int) -> bool:
        """One view (no augmentation to draw per step), frozen GIA convolutions, and the block
        windows cut already when there are blocks."""
        return maps.f14 is not None and maps.f14.shape[1] == 1 and (blocks == 0 or crops is not None)

    @classmethod
    def build(cls, maps: Maps, crops: Windows | None, inputs: MapInputs, device: torch.device,
              *, reuse: "FoldInputs | None" = None, chunk: int = 8) -> "FoldInputs":
        """``reuse``: the previous fold's, whose memory is overwritten (a 24-block composite's
        windows are ~1.3 GB)."""
        n = maps.f14.shape[0]
        f14 = reuse.f14 if reuse is not None else torch.empty(
            (n, *maps.f14.shape[2:]), dtype=torch.float32, device=device)
        win = None
        if crops is not None:
            shape = crops.crops.permute(*_TO_STORAGE).shape
            win = reuse.crops if reuse is not None and reuse.crops is not None else torch.empty(
                shape, dtype=torch.float32, device=device)
        delta = reuse.f14_delta if reuse is not None else None
        if inputs.inputs == "onset_delta":
            if delta is None:  # (f - f_onset) as MapInputs.transform computes it, once
                delta = torch.empty_like(f14)
                for start in range(0, n, chunk):
                    sl = slice(start, min(start + chunk, n))
                    f = maps.f14[sl, 0].to(device, torch.float32)
                    delta[sl] = f - f[:, :1]
            torch.mul(delta, inputs.scale14, out=f14)
        else:
            for start in range(0, n, chunk):  # a chunk at a time: no second full-size temporary
                sl = slice(start, min(start + chunk, n))
                f14[sl] = inputs.transform(maps.f14[sl, 0].to(device, torch.float32), 14)
        if win is not None:
            src = crops.crops.permute(*_TO_STORAGE)  # contiguous as precompute_crops stores it
            if inputs.inputs == "onset_delta" and src.is_contiguous() and src.device == win.device:
                torch.mul(src, inputs.scale28, out=win)  # transform_crops's product, in one pass
            else:
                for start in range(0, n, chunk):
                    sl = slice(start, min(start + chunk, n))
                    weight = None if crops.weight is None else crops.weight[sl].to(device)
                    win[:, sl] = inputs.transform_crops(crops.crops[sl].to(device),
                                                        weight).permute(*_TO_STORAGE)
        return cls(inputs, f14, win, delta, reuse.buffers if reuse is not None else {})

    def batch(self, idx: np.ndarray) -> "Batch":
        """Rows ``idx``, copied into this batch size's kept buffers (valid until the next call)."""
        b = len(idx)
        if b not in self.buffers:
            f14 = torch.empty((b, *self.f14.shape[1:]), dtype=self.f14.dtype, device=self.f14.device)
            crops = None if self.crops is None else torch.empty(
                (self.crops.shape[0], b, *self.crops.shape[2:]), dtype=self.crops.dtype,
                device=self.crops.device)
            self.buffers[b] = (f14, crops)
        f14, crops = self.buffers[b]
        for j, i in enumerate(np.asarray(idx).tolist()):
            f14[j].copy_(self.f14[i])
            if crops is not None:
                crops[:, j].copy_(self.crops[:, i])
        return Batch(None, f14, None, None, None if crops is None else crops.permute(*_TO_LOGICAL))


@dataclass
class Batch:
    """The arguments of ``MERNet.forward_from_maps`` for one batch: maps, and either the IPs or
    the windows already cut from them."""

    f28: torch.Tensor | None      # (B, T, 512, 28, 28), when BIA cuts or GIA convs run
    f14: torch.Tensor | None      # (B, T, 512, 14, 14), when the GIA convs are frozen
    centres: torch.Tensor | None  # (B, T, K, 2); None when ``crops`` are given
    sides: torch.Tensor | None    # (B, T, K)
    crops: torch.Tensor | None    # (B, T, K, 512, 6, 6), precomputed BIA windows


def make_batch(maps: Maps, clips: ClipSet, idx: np.ndarray, views: np.ndarray,
               device: torch.device, inputs: MapInputs = MapInputs(), *, need_f28: bool = True,
               crops: Windows | None = None) -> Batch:
    """Maps of the drawn views, and the clips' IPs carried through the same views' affines.
    ``need_f28=False`` (no blocks or precomputed crops, GIA convs frozen) skips the 28×28 maps."""
    f28 = maps.f28[idx, views].to(device, torch.float32) if need_f28 or maps.f14 is None else None
    f14 = None if maps.f14 is None else maps.f14[idx, views].to(device, torch.float32)
    f28, f14 = inputs.transform(f28, 28), inputs.transform(f14, 14)
    if crops is not None:  # the windows are cut already: no geometry needed
        weight = None if crops.weight is None else crops.weight[idx].to(device)
        return Batch(f28, f14, None, None, inputs.transform_crops(crops.crops[idx].to(device), weight))
    affines = maps.affines[idx, views].numpy()                                # (B, 2, 3)
    centres = np.stack([warp_points(clips.centres[i], a) for i, a in zip(idx, affines)])
    sides = np.stack([warp_sides(clips.sides[i], a) for i, a in zip(idx, affines)])
    return Batch(f28, f14, torch.as_tensor(centres, dtype=torch.float32, device=device),
                 torch.as_tensor(sides, dtype=torch.float32, device=device), None)

