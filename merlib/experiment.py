"""One run = one :class:`~merlib.config.RunConfig`: data -> preprocessing (cached) -> LOSO -> metrics.

This is the top of the data flow (datasets -> preprocess -> model/train -> metrics -> here), used by
``merlib train``, ``merlib reproduce`` and the notebooks, so all of them run exactly the same code.
Notebooks call :func:`open_run` with their parameters and read what it gives; they never train
behind the reader's back (:meth:`Run.results` only reads finished runs).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from merlib import metrics
from merlib.config import (PROFILES, VARIANT_ORDER, VARIANTS, Paths, PreprocessConfig, RunConfig,
                           flat_diff, apex_for, atomic_write_text, make_run_config)
from merlib.datasets.resolve import DataSpec, index_hash, load_index, resolve


class MissingRun(FileNotFoundError):
    """A result a notebook reads has not been computed yet; the message names the command."""


@dataclass
class Prepared:
    spec: DataSpec
    index: pd.DataFrame
    manifest: pd.DataFrame
    prep: PreprocessConfig
    cache_dir: Path
    manifest_file: Path


def prepare(config: RunConfig, *, paths: Paths | None = None, cache: str | Path | None = None,
            jobs: int = 0, progress: bool = True) -> Prepared:
    """Resolve the data, index it, and preprocess every usable clip into the cache (resuming)."""
    from merlib.preprocess.pipeline import manifest_path
    from merlib.preprocess.pipeline import run as preprocess_run

    paths = paths or Paths.from_env()
    spec = resolve(config.data.dataset, config.data.root or None, synth=config.data.synth, paths=paths)
    index = load_index(spec)
    cache_dir = (Path(cache) if cache else paths.cache) / spec.name
    manifest = preprocess_run(index, config.preprocess, cache_dir, jobs=jobs, progress=progress)
    return Prepared(spec, index, manifest, config.preprocess, cache_dir,
                    manifest_path(cache_dir, spec.dataset, config.preprocess))


def run_dir(config: RunConfig, paths: Paths | None = None) -> Path:
    """The default output folder of a training run: ``runs/<data>/train/<run name>``."""
    paths = paths or Paths.from_env()
    return paths.runs_for(config.data.name) / "train" / config.run_name()


def train_command(config: RunConfig) -> str:
    """The ``merlib train`` command line that computes ``config``'s run."""
    d, t, p = config.data, config.train, config.preprocess
    base = PROFILES[t.profile]
    parts = ["merlib train", f"--dataset {d.dataset}"]
    if d.dataset == "synthme":
        parts += [f"--preset {d.preset}", f"--layout {d.layout}", f"--seed {d.seed}"]
    else:
        parts.append(f"--data-root {d.root}")
    parts += [f"--profile {t.profile}", f"--blocks {t.blocks}"]
    if p.apex != apex_for(d.loader):
        parts.append(f"--apex {p.apex}")
    if p.scheme != PreprocessConfig().scheme:
        parts.append(f"--scheme {p.scheme}")
    for flag, value, default in (("--epochs", t.epochs, base.epochs),
                                 ("--weights", t.weights, base.weights),
                                 ("--inputs", t.inputs, base.inputs),
                                 ("--train-seed", t.seed, base.seed)):
        if value != default:
            parts.append(f"{flag} {value}")
    if t.net != "mernet":
        parts.append(f"--model {t.net}")
    flags = make_run_config(
        dataset=d.dataset, data_root=d.root, synth_preset=d.preset, synth_layout=d.layout,
        synth_seed=d.seed, apex=p.apex, scheme=p.scheme, profile=t.profile, blocks=t.blocks,
        epochs=t.epochs, weights=t.weights, inputs=t.inputs, train_seed=t.seed, model=t.net)
    for key, value in flat_diff(config.identity(), flags.identity()):  # the rest: --set
        parts.append(f"--set {key.removeprefix('run.')}={json.dumps(value)}")
    return " ".join(parts)


def train(config: RunConfig, *, prepared: Prepared | None = None, out_dir: str | Path | None = None,
          restart: bool = False, paths: Paths | None = None, cache: str | Path | None = None,
          jobs: int = 0, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """LOSO for one run; writes predictions.csv, metrics.json and config.json in its folder."""
    from merlib.train import build_baseline_context, load_clipset, run_loso

    paths = paths or Paths.from_env()
    prepared = prepared or prepare(config, paths=paths, cache=cache, jobs=jobs, progress=progress)
    default_dir = run_dir(config, paths)
    out_dir = Path(out_dir) if out_dir else default_dir
    t0 = time.time()
    if config.train.net == "mernet":
        clips = load_clipset(prepared.manifest, config.train.blocks, frames=not config.train.stream)
    else:  # a baseline: its features, computed once per clip and cached beside the maps
        clips = build_baseline_context(prepared.manifest, config, jobs=jobs, progress=progress,
                                       features_dir=prepared.cache_dir / "baselines")
    pred = run_loso(clips, config, out_dir, maps_dir=prepared.cache_dir / "maps",
                    prep_key=prepared.prep.key(), index_hash=index_hash(prepared.index),
                    manifest_file=prepared.manifest_file, restart=restart, progress=progress,
                    suggest=str(default_dir) if out_dir != default_dir else "")
    pred["dataset"] = prepared.spec.dataset
    summary = {
        "dataset": prepared.spec.dataset, "run": prepared.spec.name, "name": config.run_name(),
        "profile": config.train.profile,
        **({"blocks": config.train.blocks} if config.train.net == "mernet" else {}),
        "variant": VARIANTS[config.train.blocks] if config.train.net == "mernet" else config.train.net,
        "net": config.train.net,
        **({"inputs": config.train.inputs} if config.train.net == "mernet" else {}),
        "n_clips": int(len(pred)), "n_folds": int(pred["fold"].nunique()),
        "wall_time_s": round(time.time() - t0, 1),
        "pooled": metrics.compute_metrics(pred["y_true"], pred["y_pred"]),
    }
    if prepared.spec.dataset == "megc":
        summary["per_source"] = metrics.metrics_table(pred, by="source").to_dict(orient="records")
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=2, default=float) + "\n")
    return pred, summary


def read_run(config: RunConfig, paths: Paths | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """Pooled predictions, metrics and saved config of a finished run; :class:`MissingRun`
    naming the command that computes it when there is none."""
    folder = run_dir(config, paths)
    files = [folder / n for n in ("predictions.csv", "metrics.json", "config.json")]
    if not all(f.exists() for f in files):
        what = VARIANTS[config.train.blocks] if config.train.net == "mernet" else config.train.net
        raise MissingRun(f"{what} has no finished run in {folder}. "
                         f"Train it with:  {train_command(config)}  (or run notebook 04 with "
                         f"blocks = {config.train.blocks}; `merlib reproduce` runs every variant)")
    pred = pd.read_csv(files[0], dtype={"subject": str, "clip": str})
    return pred, json.loads(files[1].read_text()), json.loads(files[2].read_text())


def per_fold_metrics(pred: pd.DataFrame) -> pd.DataFrame:
    """Acc / UF1 / UAR of each held-out subject (for inspection only; the result is the pooled row)."""
    rows = []
    for (fold, subject), g in pred.groupby(["fold", "subject"]):
        rows.append({"fold": fold, "subject": subject, **metrics.compute_metrics(g["y_true"], g["y_pred"])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- notebooks

class Run:
    """What a notebook works on: the run configuration built from its parameters, the data and
    the output folders. Everything is computed on first use and cached."""

    def __init__(self, config: RunConfig, paths: Paths | None = None) -> None:
        self.config = config
        self.paths = paths or Paths.from_env()
        self.started = time.time()

    @property
    def name(self) -> str:
        return self.config.data.name

    @property
    def tables_dir(self) -> Path:
        return self.paths.tables_for(self.name)

    @property
    def figures_dir(self) -> Path:
        return self.paths.figures_for(self.name)

    @cached_property
    def spec(self) -> DataSpec:
        d = self.config.data
        return resolve(d.dataset, d.root or None, synth=d.synth, paths=self.paths)

    @cached_property
    def index(self) -> pd.DataFrame:
        return load_index(self.spec)

    @cached_property
    def prepared(self) -> Prepared:
        # No progress bars in notebooks: a saved notebook shows a widget bar at its first state
        # (0%) to any reader who has not trusted it; the notebook prints what was done instead.
        return prepare(self.config, paths=self.paths, progress=False)

    @property
    def manifest(self) -> pd.DataFrame:
        return self.prepared.manifest

    @cached_property
    def prov(self):
        """A provenance record started when the run was opened."""
        from merlib.report import Provenance

        return Provenance(dataset=self.config.data.dataset, index_hash=index_hash(self.index),
                          profile=self.config.train.profile, config=self.config.to_dict(),
                          started=self.started)

    def variant(self, blocks: int) -> RunConfig:
        """The same run with another number of identification blocks."""
        return self.config.variant(blocks)

    def train(self, *, restart: bool = False) -> tuple[pd.DataFrame, dict]:
        """LOSO training of this run's variant (resuming finished folds); prints one line."""
        folds = run_dir(self.config, self.paths) / "folds"
        before = len(list(folds.glob("*/predictions.csv"))) if folds.exists() else 0
        pred, summary = train(self.config, prepared=self.prepared, paths=self.paths,
                              restart=restart, progress=False)
        print(f"{summary['variant']}: {summary['n_folds']} LOSO folds, "
              f"{summary['n_folds'] - before if not restart else summary['n_folds']} trained now "
              f"and {before if not restart else 0} found finished, in {summary['wall_time_s']:.0f} s")
        return pred, summary

    def run_dir(self, blocks: int | None = None) -> Path:
        return run_dir(self.config if blocks is None else self.variant(blocks), self.paths)

    def results(self, blocks=VARIANT_ORDER) -> tuple[dict[int, pd.DataFrame], dict[int, str]]:
        """Pooled predictions of each finished variant, and for each missing one the command
        that trains it. Only reads: a results notebook never trains behind the reader's back."""
        preds, missing = {}, {}
        for k in blocks:
            try:
                preds[k] = read_run(self.variant(k), self.paths)[0]
            except MissingRun:
                missing[k] = train_command(self.variant(k))
        return preds, missing

    def baseline(self, net: str) -> RunConfig:
        """This run's data and profile with a Table 6 baseline instead of the paper's model."""
        return dataclasses.replace(self.config, train=dataclasses.replace(self.config.train, net=net))

    def baseline_results(self) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        """Pooled predictions of each finished baseline, and the command for each missing one."""
        from merlib.config import NETS

        preds, missing = {}, {}
        for net in NETS[1:]:
            try:
                preds[net] = read_run(self.baseline(net), self.paths)[0]
            except MissingRun:
                missing[net] = train_command(self.baseline(net))
        return preds, missing

    def weights_used(self, blocks=VARIANT_ORDER) -> str:
        """The VGG16 weights the finished variants were trained on, as their configs record."""
        tags = []
        for k in blocks:
            f = run_dir(self.variant(k), self.paths) / "config.json"
            if f.exists():
                tags.append(json.loads(f.read_text()).get("weights_used", "?"))
        return "; ".join(dict.fromkeys(tags)) or "none trained"


def open_run(*, dataset: str = "synthme", data_root: str = "", profile: str = "quick",
             synth_preset: str = "tiny", synth_seed: int = 0, synth_layout: str = "casme2",
             blocks: int = 10, epochs: int = 0, weights: str = "", inputs: str = "",
             apex: str = "annotated", scheme: str = "fr72", train_seed: int = 0,
             model: str = "mernet", overrides: dict | None = None) -> Run:
    """The notebooks' one setup call: their papermill parameters in, a :class:`Run` out.
    Notebooks always run their folds here (``local``); they never start a cluster."""
    return Run(make_run_config(dataset=dataset, data_root=data_root, profile=profile,
                               synth_preset=synth_preset, synth_seed=synth_seed,
                               synth_layout=synth_layout, blocks=blocks, epochs=epochs or None,
                               weights=weights or None, inputs=inputs or None, apex=apex,
                               scheme=scheme, train_seed=train_seed, model=model, overrides=overrides))
