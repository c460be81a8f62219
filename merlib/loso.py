"""Leave-one-subject-out: plan the folds once, train and predict each held-out subject, pool.

:func:`run_loso` checks that a run folder may be resumed, writes ``config.json`` and
``plan.json``, builds the run's context (the paper's model with its frozen maps, or a baseline's
features) and calls :func:`run_fold` per unfinished fold: in this process, or as tasks on dask or
SLURM (``merlib.executors``, which receive :func:`fold_task`). Each fold writes its files
atomically, ``predictions.csv`` last; the pooled predictions are read back from the fold files.

Honesty rules built in:
- folds are scikit-learn's ``LeaveOneGroupOut`` with groups = subject;
- a context predicts with the model after the **last** epoch; nothing about the test subject
  steers training or selection (no early stopping, no best-epoch pick);
- seeds are fixed per fold; a rerun skips finished folds, so an interrupted run resumes at the
  first unfinished fold;
- a rerun into a folder that holds another configuration or another sample index is refused
  (finished folds of the old run would otherwise be pooled with new ones).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import LeaveOneGroupOut
from tqdm.auto import tqdm

from merlib import executors
from merlib.clips import ClipSet, load_clipset
from merlib.config import RunConfig, TrainConfig, config_changes, save_config, to_jsonable
from merlib.devices import resolve_device, use_fold_threads
from merlib.files import atomic_path, atomic_write_text
from merlib.preprocess.cache import load_manifest
from merlib.registry import CLASSES

PROB_COLUMNS = [f"p_{c}" for c in CLASSES]
PLAN_FILE = "plan.json"
# Per fold, the held-out clips' probabilities after every epoch (epochs, n_test, 3): the input of
# the oracle diagnostic (metrics.oracle_metrics), which no result, checkpoint or choice reads.
EPOCHS_FILE = "epoch_probs.npz"


class ResumeRefused(ValueError):
    """The output folder holds a run of another configuration or index."""


class Context(Protocol):
    """What every fold of a run shares (``merlib.train``'s contexts, a baseline's)."""

    meta: pd.DataFrame
    labels: np.ndarray
    at_once: bool  # trains several folds in one call: fit_predict_many(labels, folds, seeds)

    def __len__(self) -> int: ...
    def config_entry(self) -> dict: ...
    def plan_entry(self) -> dict: ...
    def checkpoint(self) -> dict | None: ...
    def fit_predict(self, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, *,
                    seed: int, progress: bool = False) -> tuple[np.ndarray, dict]: ...


# --------------------------------------------------------------------------- contexts

def build_context(config: RunConfig, *, clips: ClipSet | None = None,
                  manifest: pd.DataFrame | None = None, maps_file: str | Path | None = None,
                  maps_dir: Path | None = None, prep_key: str = "",
                  features_dir: str | Path | None = None, jobs: int = 0,
                  clip_maps_dir: Path | None = None, progress: bool = False) -> Context:
    """The run's context: the paper's model on ``clips`` (or the manifest's), or the baseline
    ``config.train.net`` on the manifest's features. On the CPU, torch's threads are set first
    (``merlib.devices``: one policy for every executor)."""
    if resolve_device(config.train.device).type == "cpu":
        use_fold_threads(config.executor.threads)
    if config.train.net != "mernet":
        from merlib.baselines.context import build_context as baseline_context

        return baseline_context(manifest, config, features_dir=Path(features_dir), jobs=jobs,
                                progress=progress)
    from merlib.train import build_context as model_context

    if clips is None:
        clips = load_clipset(manifest, config.train.blocks, frames=not config.train.stream)
    return model_context(clips, config, maps_file=Path(maps_file) if maps_file else None,
                         maps_dir=maps_dir, prep_key=prep_key, clip_maps_dir=clip_maps_dir,
                         progress=progress)


def read_plan(run_dir: Path) -> dict:
    """The plan the driver wrote; it must name a manifest for another process to rebuild the run."""
    plan = json.loads((Path(run_dir) / PLAN_FILE).read_text())
    if not plan.get("manifest"):
        raise ValueError(f"{Path(run_dir) / PLAN_FILE} names no preprocessing manifest: this run "
                         f"was planned from clips in memory, so its folds run only in that process")
    return plan


def load_context(config: RunConfig, run_dir: Path, *, progress: bool = False) -> Context:
    """A worker's own context, from the plan the driver wrote in ``run_dir`` (the driver cached
    the maps or features: this only reads them)."""
    plan = read_plan(run_dir)
    return build_context(config, manifest=load_manifest(plan["manifest"]),
                         maps_file=plan.get("maps_file") or None,
                         features_dir=plan.get("features_dir") or None, jobs=1, progress=progress)


# A worker's loaded run: {(run_dir, config identity): context}. One entry at most, so a long-lived
# worker that runs variant after variant holds one dataset's maps, not all of them.
_CONTEXTS: dict = {}


def forget_contexts() -> None:
    _CONTEXTS.clear()


def fold_task(config_dict: dict, fold: int, run_dir: str, threads: int | None = None,
              cache: bool = True) -> dict:
    """One fold on a worker: the run's context (loaded once per worker when ``cache``), then
    :func:`run_fold`. ``threads``: torch intra-op threads; ``None`` splits this process's cores
    between the worker's task slots (``merlib.devices``)."""
    config = RunConfig.from_dict(config_dict)
    run_dir = Path(run_dir)
    key = (str(run_dir.resolve()), json.dumps(config.identity(), sort_keys=True))
    ctx = _CONTEXTS.get(key) if cache else None
    before = torch.get_num_threads()
    try:
        if ctx is None:
            ctx = load_context(config, run_dir)
            _check_weights(ctx.config_entry().get("weights_used"), run_dir)
            if cache:
                _CONTEXTS.clear()
                _CONTEXTS[key] = ctx
        if resolve_device(config.train.device).type == "cpu":
            use_fold_threads(threads or 0)
        status = run_fold(config, fold, run_dir, context=ctx)
    finally:
        if not cache:  # in-process (submitit debug): leave the caller's setting as it was
            torch.set_num_threads(before)
    return {**status, "host": os.uname().nodename, "pid": os.getpid()}


def _check_weights(tag: str | None, run_dir: Path) -> None:
    """A worker whose VGG16 weights differ from the driver's (``weights=auto`` falling back to
    random where the ImageNet file is missing) would train another model: refuse."""
    saved = json.loads((run_dir / "config.json").read_text()).get("weights_used")
    if tag and saved and saved != tag:
        raise RuntimeError(f"this worker resolved the VGG16 weights to {tag!r} but the run was "
                           f"planned with {saved!r}: put the same weights file in every worker's "
                           f"MERLIB_CACHE / torch hub cache (merlib weights) or pass --weights")


# --------------------------------------------------------------------------- folds

def plan_folds(clips) -> list[tuple[np.ndarray, np.ndarray]]:
    """Leave-one-subject-out (train, test) indices, in scikit-learn's order, of anything with
    ``meta`` (a subject column) and ``labels``: clips, or a context."""
    subjects = clips.meta["subject"].to_numpy()
    return list(LeaveOneGroupOut().split(np.zeros(len(clips)), clips.labels, groups=subjects))


def fold_dir(run_dir: Path, clips, fold: int, test_idx: np.ndarray) -> Path:
    return Path(run_dir) / "folds" / f"{fold:03d}_{clips.meta['subject'].iloc[test_idx[0]]}"


def fold_labels(labels: np.ndarray, train_idx: np.ndarray, cfg: TrainConfig, fold: int) -> np.ndarray:
    """The labels a fold trains on: the clips' own, or with ``shuffle_labels`` the training
    subjects' labels permuted among them (the test labels stay true)."""
    labels = labels.copy()
    if cfg.shuffle_labels:
        labels[train_idx] = np.random.default_rng(cfg.seed + fold).permutation(labels[train_idx])
    return labels


def run_fold(config: RunConfig, fold: int, run_dir: str | Path, *, context: Context | None = None,
             progress: bool = False) -> dict:
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
    t0 = time.time()
    probs, record = ctx.fit_predict(fold_labels(ctx.labels, train_idx, cfg, fold), train_idx,
                                    test_idx, seed=cfg.seed + fold, progress=progress)
    return write_fold(config, ctx, fold, out, train_idx, test_idx, probs, record, time.time() - t0)


def run_folds_at_once(config: RunConfig, ctx: Context, todo: list[int], run_dir: Path, *,
                      progress: bool = False) -> None:
    """Folds ``todo`` of a context that trains several at once (``at_once``: a flow
    net), a core's worth at a time so that an interrupted run keeps what finished; each fold's
    files as :func:`run_fold` writes them, and the same predictions."""
    folds, cfg = plan_folds(ctx), config.train
    chunk = max(1, torch.get_num_threads())
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        t0 = time.time()
        results = ctx.fit_predict_many([fold_labels(ctx.labels, folds[f][0], cfg, f) for f in part],
                                       [folds[f] for f in part], [cfg.seed + f for f in part],
                                       progress=progress)
        seconds = (time.time() - t0) / len(part)
        for f, (probs, record) in zip(part, results):
            tr, te = folds[f]
            write_fold(config, ctx, f, fold_dir(run_dir, ctx, f, te), tr, te, probs, record, seconds)


def write_fold(config: RunConfig, ctx: Context, fold: int, out: Path, train_idx: np.ndarray,
               test_idx: np.ndarray, probs: np.ndarray, record: dict, seconds: float) -> dict:
    """A trained fold's files: per-epoch probabilities, checkpoint, fold.json, and last,
    atomically, predictions.csv (its presence marks the fold finished)."""
    cfg = config.train
    subject = ctx.meta["subject"].iloc[test_idx[0]]
    out.mkdir(parents=True, exist_ok=True)
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
        if "epochs" in record:  # a network baseline: its schedule may be shorter than the reference's
            pred["epochs"] = record["epochs"]
    epoch_probs = record.pop("epoch_probs", None)
    if epoch_probs is not None:  # the oracle diagnostic's input; never read to choose anything
        with atomic_path(out / EPOCHS_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, probs=np.asarray(epoch_probs, np.float32))
    state = ctx.checkpoint() if cfg.checkpoints else None
    if state is not None:
        with atomic_path(out / "checkpoint.pt") as tmp:
            torch.save({"model": state, "fold": fold, "subject": subject, "epochs": cfg.epochs,
                        "losses": record["losses"]}, tmp)
    seconds = round(seconds, 2)
    atomic_write_text(out / "fold.json", json.dumps(
        {"fold": fold, "subject": subject, "n_train": len(train_idx), "n_test": len(test_idx),
         **record, "checkpoint": state is not None, "seconds": seconds}, indent=2))
    atomic_write_text(out / "predictions.csv", pred.to_csv(index=False))  # last: marks it finished
    return {"fold": fold, "subject": subject, "state": "done", "seconds": seconds}


# --------------------------------------------------------------------------- a run

def run_loso(source: ClipSet | Context, config: RunConfig, out_dir: str | Path, *,
             maps_dir: Path | None = None, prep_key: str = "", index_hash: str = "",
             manifest_file: Path | None = None, restart: bool = False, progress: bool = True,
             suggest: str = "", clip_maps_dir: Path | None = None) -> pd.DataFrame:
    """Leave-one-subject-out training and pooled predictions, resuming finished folds.

    Plans once (resume check, ``config.json``, the context with its cached maps, ``plan.json``),
    runs :func:`run_fold` per fold in this process or hands the unfinished ones to
    ``config.executor``, pools. ``source``: the paper model's clips (its context is built here,
    after the resume check, so a finished run computes nothing), or a ready context (a
    baseline's). ``restart`` discards an earlier run in ``out_dir``; ``suggest`` is the folder a
    refusal names as the alternative."""
    out_dir = Path(out_dir)
    record = {"run": config.identity(), "index_hash": index_hash}
    check_resumable(out_dir, record, restart=restart, suggest=suggest)
    folds = plan_folds(source)
    dirs = [fold_dir(out_dir, source, i, te) for i, (_, te) in enumerate(folds)]
    if (out_dir / "config.json").exists() and all((d / "predictions.csv").exists() for d in dirs):
        return pool(dirs, out_dir)  # finished earlier: just pool

    ctx = (build_context(config, clips=source, maps_dir=maps_dir, prep_key=prep_key,
                         clip_maps_dir=clip_maps_dir, progress=progress)
           if isinstance(source, ClipSet) else source)
    save_config(out_dir / "config.json", **record, **ctx.config_entry(), executor=config.executor)
    atomic_write_text(out_dir / PLAN_FILE, json.dumps(
        {"manifest": str(manifest_file) if manifest_file else "", "maps_file": "",
         "features_dir": "", **ctx.plan_entry(),
         "folds": [{"fold": i, "subject": d.name.split("_", 1)[1], "n_test": len(te)}
                   for i, ((_, te), d) in enumerate(zip(folds, dirs))]}, indent=2) + "\n")
    todo = [i for i, d in enumerate(dirs) if not (d / "predictions.csv").exists()]
    if config.executor.kind == "local" and ctx.at_once and len(todo) > 1:
        run_folds_at_once(config, ctx, todo, out_dir, progress=progress)
    elif config.executor.kind == "local":
        for fold in tqdm(todo, desc=f"LOSO {config.run_name()}", disable=not progress or not todo):
            run_fold(config, fold, out_dir, context=ctx)
    elif todo:  # folds as tasks on another engine; each worker builds its own context from the plan
        del ctx  # the driver must not hold the model (and on a GPU, its memory) while workers run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        plan = read_plan(out_dir)
        executors.run_folds(fold_task, config, out_dir, todo, shared=shared_paths(out_dir, plan),
                            cleanup=forget_contexts,
                            subjects={f["fold"]: f["subject"] for f in plan["folds"]},
                            progress=progress, threads=config.executor.threads or None)
    return pool(dirs, out_dir)


def shared_paths(run_dir: Path, plan: dict) -> list[str]:
    """What every worker must see: the run folder, the manifest, one clip file it lists, and
    the maps cache file (the paper's model) or the features folder (a baseline)."""
    paths = [str(Path(run_dir).resolve()), plan["manifest"]]
    ok = load_manifest(plan["manifest"])
    ok = ok[ok["status"] == "ok"]
    if len(ok):
        paths.append(str(ok["file"].iloc[0]))
    return paths + [plan[key] for key in ("maps_file", "features_dir") if plan.get(key)]


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


def pool(fold_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """Pooled predictions read back from the fold files, so a resumed run and an uninterrupted
    one give identical tables."""
    pooled = pd.concat([pd.read_csv(d / "predictions.csv", dtype={"subject": str, "clip": str})
                        for d in fold_dirs], ignore_index=True)
    atomic_write_text(out_dir / "predictions.csv", pooled.to_csv(index=False))
    return pooled
