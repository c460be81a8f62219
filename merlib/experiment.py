"""One experiment = one dataset x one variant: preprocess (cached) -> LOSO training -> metrics.

This is the top of the data flow (datasets -> preprocess -> model/train -> metrics -> here), used by
``merlib train`` and notebook 04, so both run exactly the same code.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from merlib import metrics
from merlib.config import Paths, SynthConfig, atomic_write_text
from merlib.datasets.resolve import DataSpec, index_hash, load_index, resolve
from merlib.preprocess.pipeline import PreprocessConfig
from merlib.preprocess.pipeline import run as preprocess_run
from merlib.train import TrainConfig, load_clipset, profile_config, run_loso

VARIANTS = {0: "Without IBs", 24: "24 IBs", 10: "10 IBs"}


@dataclass
class Prepared:
    spec: DataSpec
    index: pd.DataFrame
    manifest: pd.DataFrame
    prep: PreprocessConfig
    cache_dir: Path


def prepare(dataset: str, data_root: str | None = None, *, synth: SynthConfig | None = None,
            prep: PreprocessConfig | None = None, paths: Paths | None = None,
            cache: str | Path | None = None, jobs: int = 0, progress: bool = True) -> Prepared:
    """Resolve the data, index it, and preprocess every usable clip into the cache (resuming)."""
    paths = paths or Paths.from_env()
    spec = resolve(dataset, data_root, synth=synth, paths=paths)
    index = load_index(spec)
    prep = prep or PreprocessConfig(apex="detected" if spec.loader == "smic" else "annotated")
    cache_dir = (Path(cache) if cache else paths.cache) / spec.name
    manifest = preprocess_run(index, prep, cache_dir, jobs=jobs, progress=progress)
    return Prepared(spec, index, manifest, prep, cache_dir)


def variant_dir(paths: Paths, spec: DataSpec, profile: str, blocks: int) -> Path:
    return paths.runs_for(spec.name) / "train" / f"{profile}-blocks{blocks}"


def train_variant(prepared: Prepared, *, blocks: int, profile: str = "quick",
                  out_dir: Path | None = None, paths: Paths | None = None,
                  progress: bool = True, **overrides) -> tuple[pd.DataFrame, dict]:
    """LOSO for one variant; writes predictions.csv, metrics.json and config.json in out_dir."""
    paths = paths or Paths.from_env()
    cfg: TrainConfig = profile_config(profile, blocks=blocks, **overrides)
    out_dir = Path(out_dir) if out_dir else variant_dir(paths, prepared.spec, profile, blocks)
    t0 = time.time()
    clips = load_clipset(prepared.manifest, blocks)
    pred = run_loso(clips, cfg, out_dir, maps_dir=prepared.cache_dir / "maps",
                    prep_key=prepared.prep.key(), progress=progress,
                    extra_config={"data": prepared.spec, "preprocess": prepared.prep,
                                  "index_hash": index_hash(prepared.index)})
    pred["dataset"] = prepared.spec.dataset
    summary = {
        "dataset": prepared.spec.dataset, "run": prepared.spec.name, "profile": profile,
        "blocks": blocks, "variant": VARIANTS[blocks], "inputs": cfg.inputs,
        "n_clips": int(len(pred)),
        "n_folds": int(pred["fold"].nunique()), "wall_time_s": round(time.time() - t0, 1),
        "pooled": metrics.compute_metrics(pred["y_true"], pred["y_pred"]),
    }
    if prepared.spec.dataset == "megc":
        summary["per_source"] = metrics.metrics_table(pred, by="source").to_dict(orient="records")
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=2, default=float) + "\n")
    return pred, summary


def ensure_variants(prepared: Prepared, *, profile: str = "quick", blocks=(0, 24, 10),
                    paths: Paths | None = None, progress: bool = True, **overrides) -> dict[int, pd.DataFrame]:
    """Pooled predictions of every variant, training (or resuming) those not finished yet."""
    return {k: train_variant(prepared, blocks=k, profile=profile, paths=paths, progress=progress,
                             **overrides)[0] for k in blocks}


def provenance(prepared: Prepared, *, profile: str, **config):
    """A provenance record started now, for the tables and figures of one notebook."""
    from merlib.report import Provenance

    return Provenance(dataset=prepared.spec.dataset, index_hash=index_hash(prepared.index),
                      profile=profile,
                      config={"data": prepared.spec, "preprocess": prepared.prep, **config})


def per_fold_metrics(pred: pd.DataFrame) -> pd.DataFrame:
    """Acc / UF1 / UAR of each held-out subject (for inspection only; the result is the pooled row)."""
    rows = []
    for (fold, subject), g in pred.groupby(["fold", "subject"]):
        rows.append({"fold": fold, "subject": subject, **metrics.compute_metrics(g["y_true"], g["y_pred"])})
    return pd.DataFrame(rows)
