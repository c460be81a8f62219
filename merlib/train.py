"""LOSO training of the GIA + BIA + Bi-LSTM model (paper Sec. 4.3-4.4, DESIGN §6).

Honesty rules built in:
- folds are scikit-learn's ``LeaveOneGroupOut`` with groups = subject;
- the model after the **last** epoch is evaluated on the held-out subject; nothing about the test
  subject steers training or selection (no early stopping, no best-epoch pick);
- seeds are fixed per fold; each fold writes its predictions and a checkpoint, and a rerun skips
  finished folds, so an interrupted run resumes at the first unfinished fold.

Speed: the frozen convolutions are run once per clip and *view* (view 0 is the clip itself, views
1.. are pre-drawn augmentations: rotation + crop, the same draw for all frames, IPs carried along)
and their maps are reused across folds and epochs. ``quick`` freezes every convolution (maps after
conv5_2 cached too); ``paper`` freezes the transfer layer and trains the GIA convolutions.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import LeaveOneGroupOut
from torch import nn
from tqdm.auto import tqdm

from merlib.augment import AugmentConfig, draw_affine, warp_frames, warp_points, warp_sides
from merlib.config import CLASSES, atomic_write_text, save_config, to_jsonable
from merlib.model import MERNet, ModelConfig, build_model, load_vgg16_features

PROB_COLUMNS = [f"p_{c}" for c in CLASSES]
INPUTS = ("frames", "onset_delta")


@dataclass(frozen=True)
class TrainConfig:
    profile: str = "quick"
    blocks: int = 10
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    l2: float = 1e-5           # lambda: loss += l2 * sum ||w||^2 over trainable parameters
    views: int = 16            # pre-augmented views per clip (view 0 = no augmentation)
    train_gia_convs: bool = True
    weights: str = "imagenet"  # imagenet | random | auto | path to a VGG16 state_dict
    dropout: float = 0.5
    seed: int = 0
    device: str = "auto"       # auto | cpu | cuda
    bf16: bool = True          # autocast on CUDA only
    shuffle_labels: bool = False  # sanity check: permute the training labels within each fold
    checkpoints: bool = True   # write each fold's trainable weights (~100-170 MB per fold)
    inputs: str = "frames"     # frames (the paper) | onset_delta (maps minus the onset's, quick)
    augment: AugmentConfig = AugmentConfig()

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"TrainConfig.inputs must be one of {INPUTS}, got {self.inputs!r}")


PROFILES = {
    "paper": TrainConfig(profile="paper", epochs=100, views=16, train_gia_convs=True,
                         weights="imagenet"),
    # CPU budget: `make reproduce` runs 3 variants of LOSO on the demo SynthME in minutes, with
    # every convolution frozen and (without ImageNet weights) random. On such maps the static face
    # swamps the micro-motion and the model does not fit in that budget; onset-relative maps let
    # it learn (docs/DECISIONS.md, "What quick can show"). Not the paper's input: labelled so.
    # Checkpoints are not kept: 30 folds of a demo run would take ~4 GB.
    "quick": TrainConfig(profile="quick", epochs=5, views=1, train_gia_convs=False,
                         weights="auto", checkpoints=False, inputs="onset_delta"),
}


def profile_config(profile: str, **overrides) -> TrainConfig:
    return replace(PROFILES[profile], **overrides)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- clips from cache

@dataclass
class ClipSet:
    """Preprocessed clips of one dataset, in memory."""

    frames: np.ndarray     # (N, T, 224, 224, 3) uint8
    centres: np.ndarray    # (N, T, K, 2) float32, pixels in the 224 frame
    sides: np.ndarray      # (N, T, K) float32
    labels: np.ndarray     # (N,) int64
    meta: pd.DataFrame     # dataset, source, subject, clip per row

    def __len__(self) -> int:
        return len(self.labels)


def load_clipset(manifest: pd.DataFrame, blocks: int) -> ClipSet:
    """Read the usable clips listed in a preprocessing manifest (status ok)."""
    ok = manifest[manifest["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        raise ValueError("the preprocessing manifest lists no usable clip")
    frames, centres, sides = [], [], []
    key = 24 if blocks == 0 else blocks  # blocks=0 ignores them; keep shapes regular
    for path in ok["file"]:
        with np.load(path) as z:
            frames.append(z["frames"])
            centres.append(z[f"ip{key}"].astype(np.float32))
            sides.append(z[f"side{key}"].astype(np.float32))
    labels = ok["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(np.int64)
    meta = ok[["dataset", "source", "subject", "clip"]].copy()
    return ClipSet(np.stack(frames), np.stack(centres), np.stack(sides), labels, meta)


# --------------------------------------------------------------------------- model

def random_vgg16_features() -> nn.Sequential:
    """Random VGG16 weights as one fixed draw (seed 0), like a weights file: the frozen maps, and
    their cache, do not change with the training seed, which only draws the trainable part."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return load_vgg16_features(None, allow_random=True)


def make_model(model_cfg: ModelConfig, weights: str) -> tuple[MERNet, str]:
    """The model and a tag saying which VGG16 weights it really has.

    ``imagenet`` and file paths are strict (a clear error when missing); ``random`` is random
    init on request; ``auto`` takes ImageNet when the torch hub cache has it, else random init,
    and the tag records which, so results never pass random features off as ImageNet ones.
    """
    if weights == "random":
        return MERNet(config=model_cfg, vgg_features=random_vgg16_features()), "random"
    if weights == "auto":
        try:
            return build_model(model_cfg, weights="imagenet"), "imagenet"
        except RuntimeError as exc:
            first_line = str(exc).split(". ")[0]
            return (MERNet(config=model_cfg, vgg_features=random_vgg16_features()),
                    f"random (auto: {first_line})")
    return build_model(model_cfg, weights=weights), str(weights)


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
def compute_maps(model: nn.Module, clips: ClipSet, cfg: TrainConfig, device: torch.device,
                 *, progress: bool = True) -> Maps:
    """Run the frozen convolutions once per clip and view."""
    model.eval()
    n, t = clips.frames.shape[:2]
    f28 = torch.empty((n, cfg.views, t, 512, 28, 28), dtype=torch.float16)
    f14 = None if cfg.train_gia_convs else torch.empty((n, cfg.views, t, 512, 14, 14),
                                                       dtype=torch.float16)
    affines = torch.zeros((n, cfg.views, 2, 3), dtype=torch.float64)
    for i in tqdm(range(n), desc="frozen feature maps", disable=not progress, leave=False):
        rng = np.random.default_rng([cfg.seed, i])
        for v in range(cfg.views):
            if v == 0:
                fr, affine = clips.frames[i], np.eye(3)[:2]
            else:
                affine = draw_affine(rng, cfg.augment)
                fr = warp_frames(clips.frames[i], affine)
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
    weights are a fixed draw, see :func:`random_vgg16_features`)."""
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


# --------------------------------------------------------------------------- one fold

def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass(frozen=True)
class MapInputs:
    """What the trainable part sees of the cached maps, fit on a fold's training clips only.

    ``frames`` (the paper): the maps as they are. ``onset_delta``: each frame's maps minus the
    onset frame's maps of the same clip and view, divided by the standard deviation of those
    differences over the training clips (one scalar per map level), so the micro-motion is not
    swamped by the face's static appearance (docs/DECISIONS.md, "What quick can show").
    """

    inputs: str = "frames"
    scale28: float = 1.0
    scale14: float = 1.0

    @classmethod
    def fit(cls, moments: np.ndarray | None, train_idx: np.ndarray, inputs: str) -> "MapInputs":
        """``moments``: :func:`delta_moments` of every clip; only ``train_idx`` rows are used."""
        if inputs == "frames":
            return cls("frames")
        n, total, squares = moments[train_idx].sum(0)  # (3, 2): count, sum, sum of squares
        std = np.sqrt(np.maximum(squares / n - (total / n) ** 2, 0.0))
        scale = np.where(std > 0, 1.0 / np.maximum(std, 1e-12), 1.0)
        return cls(inputs, float(scale[0]), float(scale[1]))

    def transform(self, f: torch.Tensor | None, level: int) -> torch.Tensor | None:
        """(B, T, C, H, W) float maps -> what the model sees; ``level`` 28 or 14."""
        if f is None or self.inputs == "frames":
            return f
        return (f - f[:, :1]) * (self.scale28 if level == 28 else self.scale14)


def delta_moments(maps: Maps) -> np.ndarray:
    """Per clip: count, sum and sum of squares of (frame − onset frame) over all views, frames and
    map cells, for the 28×28 and 14×14 maps: (N, 3, 2) float64. Summed over a fold's training
    clips they give that fold's standard deviation without touching the test subject."""
    levels = [maps.f28, maps.f14]
    out = np.zeros((maps.f28.shape[0], 3, 2))
    for i in range(maps.f28.shape[0]):
        for j, f in enumerate(levels):
            if f is None:
                out[i, 0, j] = 1.0
                continue
            d = f[i].float()
            d = (d[:, 1:] - d[:, :1]).double()  # frame 0's difference is 0 by construction
            out[i, :, j] = (d.numel(), d.sum().item(), d.square().sum().item())
    return out


def _batch(maps: Maps, clips: ClipSet, idx: np.ndarray, views: np.ndarray, device: torch.device,
           inputs: MapInputs = MapInputs(), *, need_f28: bool = True):
    """Maps of the drawn views, and the clips' IPs carried through the same views' affines.
    ``need_f28=False`` (no blocks, GIA convs frozen) skips moving the 28×28 maps."""
    f28 = maps.f28[idx, views].to(device, torch.float32) if need_f28 or maps.f14 is None else None
    f14 = None if maps.f14 is None else maps.f14[idx, views].to(device, torch.float32)
    f28, f14 = inputs.transform(f28, 28), inputs.transform(f14, 14)
    affines = maps.affines[idx, views].numpy()                                # (B, 2, 3)
    centres = np.stack([warp_points(clips.centres[i], a) for i, a in zip(idx, affines)])
    sides = np.stack([warp_sides(clips.sides[i], a) for i, a in zip(idx, affines)])
    return (f28, f14, torch.as_tensor(centres, dtype=torch.float32, device=device),
            torch.as_tensor(sides, dtype=torch.float32, device=device))


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Adam:
    """Adam on CE + λ·Σ‖w‖²: the L2 term's gradient 2λw is Adam's (coupled) ``weight_decay`` =
    2λ, applied inside the fused kernel instead of summing ~60 M squares in the graph."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=2 * cfg.l2, fused=True)


def fit_fold(model: MERNet, maps: Maps, clips: ClipSet, labels: np.ndarray, train_idx: np.ndarray,
             cfg: TrainConfig, device: torch.device, inputs: MapInputs = MapInputs(), *,
             progress: bool = True) -> list[float]:
    """Train on ``train_idx`` for exactly ``cfg.epochs`` epochs; returns the mean cross-entropy
    per epoch (the L2 term is in the optimiser, see :func:`make_optimizer`)."""
    rng = np.random.default_rng(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    need_f28 = model.bia is not None or maps.f14 is None
    y_all = torch.as_tensor(labels)
    autocast = device.type == "cuda" and cfg.bf16
    losses = []
    for _ in tqdm(range(cfg.epochs), desc="epochs", disable=not progress, leave=False):
        model.train()
        order = rng.permutation(train_idx)
        total, seen = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            views = rng.integers(0, cfg.views, size=len(idx))
            f28, f14, c, s = _batch(maps, clips, idx, views, device, inputs, need_f28=need_f28)
            y = y_all[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model.forward_from_maps(f28, f14, c, s)
            loss = nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        losses.append(total / max(seen, 1))
    return losses


@torch.no_grad()
def predict(model: MERNet, maps: Maps, clips: ClipSet, idx: np.ndarray, device: torch.device,
            inputs: MapInputs = MapInputs(), batch_size: int = 16) -> np.ndarray:
    """Class probabilities on view 0 (no augmentation) of ``idx``."""
    model.eval()
    out = []
    need_f28 = model.bia is not None or maps.f14 is None
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        f28, f14, c, s = _batch(maps, clips, b, np.zeros(len(b), dtype=np.int64), device, inputs,
                                need_f28=need_f28)
        out.append(torch.softmax(model.forward_from_maps(f28, f14, c, s).float(), dim=1).cpu())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- LOSO

def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights only (frozen ones are rebuilt from the weights spec), as float16 to keep a
    3-variant LOSO run's checkpoints small; the predictions file is the record of the result."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().to("cpu", torch.float16) for n, t in model.state_dict().items()
            if n in names or not t.is_floating_point()}


def run_loso(clips: ClipSet, cfg: TrainConfig, out_dir: Path, *, maps_dir: Path | None = None,
             prep_key: str = "", progress: bool = True,
             extra_config: dict | None = None) -> pd.DataFrame:
    """Leave-one-subject-out training and pooled predictions, resuming finished folds."""
    out_dir = Path(out_dir)
    _check_resumable(out_dir, cfg)
    (out_dir / "folds").mkdir(parents=True, exist_ok=True)
    subjects = clips.meta["subject"].to_numpy()
    folds = list(LeaveOneGroupOut().split(np.zeros(len(clips)), clips.labels, groups=subjects))
    fold_dirs = [out_dir / "folds" / f"{i:03d}_{subjects[te[0]]}" for i, (_, te) in enumerate(folds)]
    if all((d / "predictions.csv").exists() for d in fold_dirs):  # finished earlier: just pool
        return _pool(fold_dirs, out_dir)

    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    _seed_all(cfg.seed)
    model_cfg = ModelConfig(blocks=cfg.blocks, freeze_transfer=True,
                            freeze_gia_convs=not cfg.train_gia_convs, dropout=cfg.dropout)
    base, weights_tag = make_model(model_cfg, cfg.weights)
    base = base.to(device)
    if device.type == "cuda":
        base = base.to(memory_format=torch.channels_last)
    save_config(out_dir / "config.json", train=cfg, model=model_cfg, weights_used=weights_tag,
                **(extra_config or {}))
    maps_file = (Path(maps_dir) / f"maps-{maps_key(prep_key, clips, cfg, weights_tag)}.pt"
                 if maps_dir else None)
    maps = load_or_compute_maps(base, clips, cfg, device, maps_file, progress=progress)
    init_state = {k: v.clone() for k, v in base.state_dict().items()}
    moments = delta_moments(maps) if cfg.inputs != "frames" else None

    bar = tqdm(folds, desc=f"LOSO {cfg.profile} blocks={cfg.blocks}", disable=not progress)
    for fold, (train_idx, test_idx) in enumerate(bar):
        subject = subjects[test_idx[0]]
        fold_dir = fold_dirs[fold]
        done = fold_dir / "predictions.csv"
        if done.exists():
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        _seed_all(cfg.seed + fold)
        base.load_state_dict(init_state)  # every fold starts from the same initial weights
        labels = clips.labels.copy()
        if cfg.shuffle_labels:  # permute only the training labels: the test labels stay true
            labels[train_idx] = np.random.default_rng(cfg.seed + fold).permutation(labels[train_idx])
        inputs = MapInputs.fit(moments, train_idx, cfg.inputs)  # training subjects only
        losses = fit_fold(base, maps, clips, labels, train_idx, replace(cfg, seed=cfg.seed + fold),
                          device, inputs, progress=progress)
        probs = predict(base, maps, clips, test_idx, device, inputs)
        fold_pred = clips.meta.iloc[test_idx].reset_index(drop=True).copy()
        fold_pred["fold"] = fold
        fold_pred["y_true"] = clips.labels[test_idx]
        fold_pred["y_pred"] = probs.argmax(1)
        fold_pred[PROB_COLUMNS] = probs
        fold_pred["profile"] = cfg.profile
        fold_pred["blocks"] = cfg.blocks
        fold_pred["inputs"] = cfg.inputs
        if cfg.checkpoints:
            tmp = fold_dir / "checkpoint.pt.tmp"
            torch.save({"model": _trainable_state(base), "fold": fold, "subject": subject,
                        "epochs": cfg.epochs, "losses": losses}, tmp)
            tmp.replace(fold_dir / "checkpoint.pt")
        (fold_dir / "fold.json").write_text(json.dumps(
            {"fold": fold, "subject": subject, "n_train": len(train_idx), "n_test": len(test_idx),
             "inputs": dataclasses.asdict(inputs), "losses": losses, "checkpoint": cfg.checkpoints, "seconds": round(time.time() - t0, 2)},
            indent=2))
        # written last: its presence marks the fold finished
        atomic_write_text(done, fold_pred.to_csv(index=False))
    return _pool(fold_dirs, out_dir)


def _check_resumable(out_dir: Path, cfg: TrainConfig) -> None:
    """Resuming only continues the same experiment: finished folds of another configuration in
    ``out_dir`` would otherwise be pooled with new ones."""
    saved = out_dir / "config.json"
    if not saved.exists():
        return
    before = json.loads(saved.read_text()).get("train")
    now = json.loads(json.dumps(to_jsonable(cfg)))
    if before != now:
        changed = sorted(k for k in set(before or {}) | set(now) if (before or {}).get(k) != now.get(k))
        raise ValueError(f"{out_dir} holds a run with another training configuration (differs in: "
                         f"{', '.join(changed)}); use another output folder or delete this one")


def _pool(fold_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """Pooled predictions read back from the fold files, so a resumed run and an uninterrupted
    one give identical tables."""
    pooled = pd.concat([pd.read_csv(d / "predictions.csv", dtype={"subject": str, "clip": str})
                        for d in fold_dirs], ignore_index=True)
    atomic_write_text(out_dir / "predictions.csv", pooled.to_csv(index=False))
    return pooled
