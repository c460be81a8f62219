"""What every LOSO fold of a baseline run shares, with the same fit/predict interface as the
paper model's contexts (``merlib.train``), so ``merlib.loso`` runs both alike."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from merlib.baselines import build_features, epochs_for, fit_predict, hyperparameters
from merlib.baselines.stacked import train_predict_folds
from merlib.clips import META_COLUMNS
from merlib.config import RunConfig, TrainConfig
from merlib.devices import resolve_device
from merlib.registry import DATASETS, baseline, label_ids


@dataclass
class BaselineContext:
    """The clips' features (one row per usable clip whose features could be computed), their
    meta and labels, and the clips that failed."""

    name: str
    X: np.ndarray
    meta: pd.DataFrame
    labels: np.ndarray
    failed: pd.DataFrame
    device: torch.device
    features_dir: Path
    cfg: TrainConfig
    flow_from: str = "frames"

    def __len__(self) -> int:
        return len(self.labels)

    def config_entry(self) -> dict:
        return {"weights_used": "none (baseline)", "baseline": hyperparameters(self.name, self.flow_from),
                "failed_clips": self.failed.to_dict(orient="records")}

    def plan_entry(self) -> dict:
        return {"features_dir": str(self.features_dir)}

    def checkpoint(self) -> None:
        return None  # the predictions are the record; a baseline keeps no weights

    def fit_predict(self, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, *,
                    seed: int, progress: bool = False) -> tuple[np.ndarray, dict]:
        if self.at_once:
            return self.fit_predict_many([labels], [(train_idx, test_idx)], [seed], progress=progress)[0]
        groups = self.meta["subject"].to_numpy()
        probs = fit_predict(self.name, self.X[train_idx], labels[train_idx], groups[train_idx],
                            self.X[test_idx], seed=seed, device=self.device.type)
        return probs, {"net": self.name}

    @property
    def at_once(self) -> bool:
        """A network trains several folds in one call (:meth:`fit_predict_many`)."""
        return bool(baseline(self.name).net)

    def fit_predict_many(self, labels: list[np.ndarray], folds: list[tuple[np.ndarray, np.ndarray]],
                         seeds: list[int], *, progress: bool = False) -> list[tuple[np.ndarray, dict]]:
        """A network's folds in one call (``merlib.baselines.stacked``: fold after fold on one
        thread per core; a fold's result does not depend on which folds share the call), each
        with every epoch's held-out probabilities for the oracle diagnostic."""
        entry = baseline(self.name)
        epochs = epochs_for(self.name, self.cfg.profile, self.cfg.baseline_epochs)
        out = train_predict_folds(self.name, self.X, np.stack(labels), folds, epochs=epochs,
                                  lr=entry.schedule["lr"], batch_size=entry.schedule["batch_size"],
                                  seeds=seeds, device=self.device.type, record_epochs=True,
                                  progress=progress)
        return [(p, {"net": self.name, "epochs": epochs, "epoch_probs": e})
                for p, e in zip(out.proba, out.per_epoch)]


def build_context(manifest: pd.DataFrame, config: RunConfig, *, features_dir: Path,
                  jobs: int = 0, progress: bool = False) -> BaselineContext:
    """Features of a baseline (cached per clip under ``features_dir``); failed clips are named."""
    name = config.train.net
    flow_from = DATASETS[config.data.dataset].flow_from
    X, meta, failed = build_features(name, manifest, features_dir, jobs=jobs, progress=progress,
                                     flow_from=flow_from)
    if not len(meta):
        raise ValueError(f"{name}: no clip has usable features "
                         f"({len(failed)} failed: {', '.join(failed['clip'].astype(str)[:5])})")
    return BaselineContext(name, X, meta[META_COLUMNS].reset_index(drop=True),
                           label_ids(meta["label"]).to_numpy(np.int64), failed,
                           resolve_device(config.train.device), Path(features_dir), config.train,
                           flow_from)
