"""Training of the GIA + BIA + Bi-LSTM model on one fold (paper Sec. 4.3-4.4).

Shaped like torchvision's ``references/classification/train.py``: the optimiser, one step, one
epoch and an evaluation, for the two ways the model is fed:

- **cached** (``quick``): the frozen convolutions' maps of every clip were computed once
  (:mod:`merlib.maps`); an epoch draws batches of them and trains what follows
  (``MERNet.forward_from_maps``).
- **streaming** (``paper``): clips stream from the preprocessing cache through a ``DataLoader``
  (:mod:`merlib.clips`); each step draws one rotation + crop per clip on the device, warps the
  frames and the IPs by it, and runs the whole model (``MERNet.forward``), the frozen transfer
  layer without autograd. Host memory holds a few batches of uint8 frames, device memory one
  batch's activations, whatever the dataset's size.

A context holds what every fold of a run shares (the clips, the model at its initial weights,
the device); its :meth:`~ModelContext.fit_predict` trains one fold from those initial weights and
predicts the held-out clips with the model after the **last** epoch: nothing about the test
subject steers training or selection. ``merlib.loso`` plans the folds and calls it.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from merlib.augment import draw_affines, warp_clips, warp_points_batch, warp_sides_batch
from merlib.clips import ClipSet, clip_loader
from merlib.config import ModelConfig, RunConfig, TrainConfig
from merlib.devices import resolve_device
from merlib.maps import (FoldInputs, Maps, MapInputs, Windows, input_moments, load_or_compute_maps,
                         make_batch, maps_key, precompute_crops)
from merlib.model import MERNet
from merlib.weights import vgg16_features


def make_model(model_cfg: ModelConfig, weights: str) -> tuple[MERNet, str]:
    """The model and a tag saying which VGG16 weights it really has (``merlib.weights`` holds the
    policy: results never pass random features off as ImageNet ones)."""
    features, tag = vgg16_features(weights)
    return MERNet(config=model_cfg, vgg_features=features), tag


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


# --------------------------------------------------------------------------- one step

def param_groups(model: nn.Module, cfg: TrainConfig) -> list[nn.Parameter] | list[dict]:
    """The trainable parameters; with ``gia_fc_lr`` GIA's τ_g FC in a group of its own."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not cfg.gia_fc_lr:
        return [p for _, p in named]
    return [{"params": [p for n, p in named if not n.startswith("gia.tau.")]},
            {"params": [p for n, p in named if n.startswith("gia.tau.")], "lr": cfg.gia_fc_lr}]


def make_optimizer(params: list[nn.Parameter] | list[dict], cfg: TrainConfig) -> torch.optim.Adam:
    """Adam on CE + λ·Σ‖w‖² (Sec. 4.3): the L2 term's gradient 2λw is Adam's (coupled)
    ``weight_decay`` = 2λ, applied inside the fused kernel instead of summing ~60 M squares in
    the graph."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=2 * cfg.l2, fused=True)


def reset_optimizer(opt: torch.optim.Optimizer) -> None:
    """Back to a fresh optimiser's state, in place: every moment and step count zero, which is
    what a new Adam starts from. A new Adam would allocate its ~80 M-value state again at every
    fold, which on a small VM costs about a second of page faults per fold."""
    for state in opt.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()


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


def autocast(device: torch.device, cfg: TrainConfig) -> torch.autocast:
    """bf16 autocast on CUDA (when ``cfg.bf16``); a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16)


def optimizer_step(forward, y: torch.Tensor, opt: torch.optim.Optimizer, device: torch.device,
                   cfg: TrainConfig) -> float:
    """One Adam step on the cross-entropy of ``forward()``'s logits (bf16 autocast on CUDA);
    the batch's mean loss."""
    with oom_hint(device, cfg):
        with autocast(device, cfg):
            logits = forward()
        loss = nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


# --------------------------------------------------------------------------- the two loops

def train_one_epoch(ctx: "CachedContext", opt: torch.optim.Optimizer, labels: torch.Tensor,
                    train_idx: np.ndarray, cfg: TrainConfig, inputs: MapInputs,
                    rng: np.random.Generator) -> float:
    """Cached path: one pass over the training clips in a random order; the mean cross-entropy."""
    model, device = ctx.model, ctx.device
    model.train()
    order = rng.permutation(train_idx)
    total, seen = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        views = rng.integers(0, cfg.views, size=len(idx))
        b = ctx.batch(idx, views, inputs)
        total += optimizer_step(lambda: model.forward_from_maps(b.f28, b.f14, b.centres, b.sides,
                                                                crops=b.crops),
                                labels[idx].to(device), opt, device, cfg) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate(ctx: "CachedContext", idx: np.ndarray, inputs: MapInputs = MapInputs(),
             batch_size: int = 16) -> np.ndarray:
    """Cached path: class probabilities on view 0 (no augmentation) of ``idx``."""
    ctx.model.eval()
    out = []
    for start in range(0, len(idx), batch_size):
        i = idx[start:start + batch_size]
        b = ctx.batch(i, np.zeros(len(i), dtype=np.int64), inputs)
        logits = ctx.model.forward_from_maps(b.f28, b.f14, b.centres, b.sides, crops=b.crops)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy()


def stream_batch(ctx: "StreamContext", frames: torch.Tensor, idx: torch.Tensor, cfg: TrainConfig,
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


def train_one_epoch_stream(ctx: "StreamContext", opt: torch.optim.Optimizer, labels: torch.Tensor,
                           loader: torch.utils.data.DataLoader, cfg: TrainConfig,
                           generator: torch.Generator) -> float:
    """Streaming path: one pass, fresh augmentation per clip; the mean cross-entropy."""
    model, device = ctx.model, ctx.device
    model.train()
    total, seen = 0.0, 0
    for frames, idx in loader:
        x, centres, sides = stream_batch(ctx, frames, idx, cfg, generator)
        total += optimizer_step(lambda: model(x, centres, sides),
                                labels[idx].to(device), opt, device, cfg) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate_stream(ctx: "StreamContext", idx: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Streaming path: class probabilities of ``idx``, unaugmented, in order."""
    ctx.model.eval()
    out = []
    for frames, b in clip_loader(ctx.clips, idx, cfg, ctx.device):
        x, centres, sides = stream_batch(ctx, frames, b, cfg, None)
        with oom_hint(ctx.device, cfg), autocast(ctx.device, cfg):
            logits = ctx.model(x, centres, sides)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- contexts

@dataclass
class ModelContext:
    """What every fold of one run shares, built once per process: the clips, the model at its
    initial weights, the device and which VGG16 weights the model has."""

    clips: ClipSet
    model: MERNet
    init_state: dict
    device: torch.device
    weights_tag: str
    cfg: TrainConfig
    at_once = False  # one fold per fit_predict call (the model is too large to hold one per fold)

    @property
    def meta(self) -> pd.DataFrame:
        return self.clips.meta

    @property
    def labels(self) -> np.ndarray:
        return self.clips.labels

    def __len__(self) -> int:
        return len(self.clips)

    def config_entry(self) -> dict:
        """What config.json records about the run's model beyond its settings."""
        return {"weights_used": self.weights_tag}

    def plan_entry(self) -> dict:
        """What plan.json needs for a worker to rebuild this context."""
        return {}

    def start_fold(self, seed: int) -> tuple[TrainConfig, torch.optim.Adam]:
        """Seeds, the model back at the run's initial weights (every fold starts from the same),
        and a fresh optimiser: the fold's config and optimiser."""
        seed_all(seed)
        self.model.load_state_dict(self.init_state)
        fold_cfg = dataclasses.replace(self.cfg, seed=seed)
        opt = getattr(self, "_optimizer", None)
        if opt is None:
            opt = self._optimizer = make_optimizer(param_groups(self.model, fold_cfg), fold_cfg)
        else:
            reset_optimizer(opt)
        return fold_cfg, opt

    def checkpoint(self) -> dict[str, torch.Tensor]:
        """Trainable weights only (frozen ones are rebuilt from the weights spec), as float16 to
        keep a 3-variant LOSO run's checkpoints small; the predictions file is the record."""
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        return {n: t.detach().to("cpu", torch.float16) for n, t in self.model.state_dict().items()
                if n in names or not t.is_floating_point()}

    def fit_predict(self, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, *,
                    seed: int, progress: bool = False) -> tuple[np.ndarray, dict]:
        """Train on ``train_idx`` from the initial weights, predict ``test_idx`` after the last
        epoch: probabilities (n_test, 3) and a record for fold.json (per-epoch losses...); the
        record's ``epoch_probs`` (epochs, n_test, 3), the held-out clips' probabilities after
        every epoch, are kept for the oracle diagnostic alone (``merlib.metrics``)."""
        raise NotImplementedError


@dataclass
class CachedContext(ModelContext):
    """The cached path (``quick``): also the clips' frozen maps, precomputed windows and the
    moments the map inputs are fit from."""

    maps: Maps | None = None
    moments: np.ndarray | None = None
    crops: Windows | None = None
    maps_file: Path | None = None
    fold_inputs: FoldInputs | None = None  # the current fold's, when FoldInputs.applies

    def batch(self, idx: np.ndarray, views: np.ndarray, inputs: MapInputs):
        if self.fold_inputs is not None and self.fold_inputs.inputs == inputs and not views.any():
            return self.fold_inputs.batch(idx)  # built by fit_predict for this fold
        return make_batch(self.maps, self.clips, idx, views, self.device, inputs,
                          need_f28=self.need_f28, crops=self.crops)

    @property
    def need_f28(self) -> bool:
        return (self.model.bia is not None and self.crops is None) or self.maps.f14 is None

    def plan_entry(self) -> dict:
        return {"maps_file": str(self.maps_file or "")}

    def fit_predict(self, labels, train_idx, test_idx, *, seed, progress=False):
        fold_cfg, opt = self.start_fold(seed)
        inputs = MapInputs.fit(self.moments, train_idx, self.cfg.inputs)  # training subjects only
        if FoldInputs.applies(self.maps, self.crops, self.model.config.blocks):
            # once per fold instead of once per step (the profile in bench/quick_profile.py)
            self.fold_inputs = FoldInputs.build(self.maps, self.crops, inputs, self.device,
                                                reuse=self.fold_inputs)
        rng = np.random.default_rng(seed)
        y = torch.as_tensor(labels)
        losses, epochs = [], []
        for _ in tqdm(range(self.cfg.epochs), desc="epochs", leave=False, disable=not progress):
            losses.append(train_one_epoch(self, opt, y, train_idx, fold_cfg, inputs, rng))
            # Recorded for the oracle diagnostic only (metrics.oracle_metrics); evaluation draws
            # no random number, so training goes on exactly as without it.
            epochs.append(evaluate(self, test_idx, inputs))
        return epochs[-1], {"inputs": dataclasses.asdict(inputs), "losses": losses,
                            "epoch_probs": np.stack(epochs)}


@dataclass
class StreamContext(ModelContext):
    """The streaming path (``paper``): no maps; every step computes its own from the clips'
    frames on disk."""

    def fit_predict(self, labels, train_idx, test_idx, *, seed, progress=False):
        fold_cfg, opt = self.start_fold(seed)
        loader = clip_loader(self.clips, train_idx, self.cfg, self.device,
                             np.random.default_rng(seed), seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)  # the augmentation draws
        y = torch.as_tensor(labels)
        # the held-out clips are few: read in-process, no loader workers started at every epoch
        eval_cfg = dataclasses.replace(self.cfg, loader_workers=0)
        losses, epochs = [], []
        for _ in tqdm(range(self.cfg.epochs), desc="epochs", leave=False, disable=not progress):
            losses.append(train_one_epoch_stream(self, opt, y, loader, fold_cfg, generator))
            epochs.append(evaluate_stream(self, test_idx, eval_cfg))  # oracle diagnostic only
        del loader  # stops its workers
        return epochs[-1], {"inputs": {"inputs": "frames", "stream": True}, "losses": losses,
                            "epoch_probs": np.stack(epochs)}


def place_model(config: RunConfig) -> tuple[MERNet, str, torch.device]:
    """The model at its seeded initial weights on the run's device (channels_last on CUDA), its
    weights tag, the device."""
    cfg = config.train
    device = resolve_device(cfg.device)
    seed_all(cfg.seed)
    model, weights_tag = make_model(cfg.model, cfg.weights)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, weights_tag, device


def build_context(clips: ClipSet, config: RunConfig, *, maps_file: Path | None = None,
                  maps_dir: Path | None = None, prep_key: str = "", clip_maps_dir: Path | None = None,
                  progress: bool = True) -> CachedContext | StreamContext:
    """The model and, for the cached path, the frozen maps (in ``maps_file``, or under
    ``maps_dir`` by key; each clip's also under ``clip_maps_dir`` by content, for other runs of
    the same clips) and windows; for a streaming run (``train.stream``) the clips alone."""
    cfg = config.train
    model, weights_tag, device = place_model(config)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    if cfg.stream:
        return StreamContext(clips, model, init_state, device, weights_tag, cfg)
    if maps_file is None and maps_dir is not None:
        maps_file = Path(maps_dir) / f"maps-{maps_key(prep_key, clips, cfg, weights_tag)}.pt"
    maps = load_or_compute_maps(model, clips, cfg, device, maps_file, progress=progress,
                                clip_dir=clip_maps_dir, weights_tag=weights_tag)
    crops = None
    if model.bia is not None and cfg.views == 1 and maps.f14 is not None:
        crops = precompute_crops(model, maps, clips, cfg.inputs)
    return CachedContext(clips, model, init_state, device, weights_tag, cfg, maps=maps,
                         moments=input_moments(maps, cfg.inputs), crops=crops, maps_file=maps_file)
