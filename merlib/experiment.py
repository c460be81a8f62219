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

import numpy as np
import pandas as pd

from merlib import metrics
from merlib.config import DataConfig, Paths, PreprocessConfig, RunConfig
from merlib.datasets import build_index, index_hash
from merlib.files import atomic_write_text
from merlib.options import make_run_config, seed_configs, sibling, train_command
from merlib.registry import BASELINES, DATASETS, VARIANT_ORDER, VARIANTS


# The paper's Tables 5-6 and Figure 6 columns, in its order.
PAPER_DATASETS = ("casme2", "samm", "smic", "megc")


class MissingRun(FileNotFoundError):
    """A result a notebook reads has not been computed yet; the message names the command."""


def data_root(data: DataConfig, paths: Paths | None = None, *, generate: bool = True) -> Path:
    """The folder ``data`` is read from. SynthME's is under ``MERLIB_DATA`` (named by preset,
    layout and seed) and generated there on first use (generation is cached by its marker)."""
    if data.dataset != "synthme":
        if not data.root:
            raise ValueError(f"dataset {data.dataset!r} needs a data root (--data-root): the "
                             f"licensed datasets are not shipped with merlib")
        return Path(data.root).expanduser().resolve()
    paths = paths or Paths.from_env()
    root = Path(data.root) if data.root else paths.data / data.name
    if generate:
        from merlib.synth import generate as generate_synthme
        from merlib.synth.plan import get_preset

        # one source of a megc preset: its part of the composite, rendered once for both runs
        composite = None
        if data.layout != "megc" and get_preset(data.preset).megc_sources and not data.root:
            composite = paths.data / dataclasses.replace(data, layout="megc").name
        generate_synthme(root, layout=data.layout, preset=data.preset, seed=data.seed,
                         composite=composite)
    return root


def load_index(data: DataConfig, root: Path) -> pd.DataFrame:
    """The sample index of the dataset in ``root``, read by its loader (SynthME: its layout's) and
    labelled with the run's dataset name."""
    index = build_index(data.loader, root)
    index["dataset"] = data.dataset
    return index


@dataclass
class Prepared:
    data: DataConfig
    root: Path
    index: pd.DataFrame
    manifest: pd.DataFrame
    prep: PreprocessConfig
    cache_dir: Path
    manifest_file: Path


def prepare(config: RunConfig, *, paths: Paths | None = None, cache: str | Path | None = None,
            jobs: int = 0, progress: bool = True) -> Prepared:
    """Find (or generate) the data, index it, and preprocess every usable clip into the cache
    (resuming)."""
    from merlib.preprocess.cache import manifest_path
    from merlib.preprocess.workers import run as preprocess_run

    paths = paths or Paths.from_env()
    root = data_root(config.data, paths)
    index = load_index(config.data, root)
    cache_dir = (Path(cache) if cache else paths.cache) / config.data.name
    manifest = preprocess_run(index, config.preprocess, cache_dir, jobs=jobs, progress=progress)
    return Prepared(config.data, root, index, manifest, config.preprocess, cache_dir,
                    manifest_path(cache_dir, config.data.dataset, config.preprocess))


def run_dir(config: RunConfig, paths: Paths | None = None) -> Path:
    """The default output folder of a training run: ``runs/<data>/train/<run name>``."""
    paths = paths or Paths.from_env()
    return paths.runs_for(config.data.name) / "train" / config.run_name()


def train(config: RunConfig, *, prepared: Prepared | None = None, out_dir: str | Path | None = None,
          restart: bool = False, paths: Paths | None = None, cache: str | Path | None = None,
          jobs: int = 0, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """LOSO for one run; writes predictions.csv, metrics.json and config.json in its folder."""
    from merlib.clips import load_clipset
    from merlib.loso import build_context, run_loso

    paths = paths or Paths.from_env()
    prepared = prepared or prepare(config, paths=paths, cache=cache, jobs=jobs, progress=progress)
    default_dir = run_dir(config, paths)
    out_dir = Path(out_dir) if out_dir else default_dir
    t0 = time.time()
    if config.train.net == "mernet":
        clips = load_clipset(prepared.manifest, config.train.blocks, frames=not config.train.stream)
    else:  # a baseline: its features, computed once per clip and cached beside the maps
        clips = build_context(config, manifest=prepared.manifest, jobs=jobs, progress=progress,
                              features_dir=prepared.cache_dir / "baselines")
    # clip-maps: each clip's frozen maps by content, shared by the runs of one cache (a
    # per-source run and the composite hold the same clips)
    pred = run_loso(clips, config, out_dir, maps_dir=prepared.cache_dir / "maps",
                    clip_maps_dir=prepared.cache_dir.parent / "clip-maps",
                    prep_key=prepared.prep.key(), index_hash=index_hash(prepared.index),
                    manifest_file=prepared.manifest_file, restart=restart, progress=progress,
                    suggest=str(default_dir) if out_dir != default_dir else "")
    pred["dataset"] = config.data.dataset
    summary = {
        "dataset": config.data.dataset, "run": config.data.name, "name": config.run_name(),
        "profile": config.train.profile,
        **({"blocks": config.train.blocks} if config.train.net == "mernet" else {}),
        "variant": VARIANTS[config.train.blocks] if config.train.net == "mernet" else config.train.net,
        "net": config.train.net,
        **({"inputs": config.train.inputs} if config.train.net == "mernet" else {}),
        "n_clips": int(len(pred)), "n_folds": int(pred["fold"].nunique()),
        "wall_time_s": round(time.time() - t0, 1),
        "pooled": metrics.compute_metrics(pred["y_true"], pred["y_pred"]),
    }
    if len(set(pred["source"])) > 1:  # a composite: the MEGC protocol also reports each source
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


def read_epoch_probs(config: RunConfig, paths: Paths | None = None) -> dict[int, np.ndarray] | None:
    """Per fold of a finished run, its held-out clips' probabilities after every epoch (the
    oracle diagnostic's input); None when any fold has none (an SVM, or a run from before they
    were recorded)."""
    from merlib.loso import EPOCHS_FILE

    out = {}
    for d in sorted((run_dir(config, paths) / "folds").glob("[0-9]*_*")):
        if not (d / EPOCHS_FILE).is_file():
            return None
        with np.load(d / EPOCHS_FILE) as z:
            out[int(d.name.split("_", 1)[0])] = z["probs"]
    return out or None


def read_losses(config: RunConfig, paths: Paths | None = None) -> pd.DataFrame:
    """Training loss per epoch of every finished fold (fold, subject, epoch, loss); empty for a
    classifier without epochs."""
    rows = []
    for f in sorted((run_dir(config, paths) / "folds").glob("*/fold.json")):
        rec = json.loads(f.read_text())
        rows += [{"fold": rec["fold"], "subject": rec["subject"], "epoch": i + 1, "loss": v}
                 for i, v in enumerate(rec.get("losses", []))]
    return pd.DataFrame(rows, columns=["fold", "subject", "epoch", "loss"])


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

    def __init__(self, config: RunConfig, paths: Paths | None = None, *, seeds: int = 1) -> None:
        self.config = config
        self.paths = paths or Paths.from_env()
        self.seeds = int(seeds)  # training seeds the results pool: train_seed, train_seed+1, ...
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
    def root(self) -> Path:
        """The dataset's folder (SynthME: generated on first use)."""
        return data_root(self.config.data, self.paths)

    @property
    def composite(self) -> bool:
        """A dataset pooled from several sources (MEGC2019): results also per source."""
        return len(DATASETS[self.config.data.dataset].sources) > 1

    @property
    def note(self) -> str:
        """How the dataset's results must be labelled (``registry.Dataset.note``), or ''."""
        return DATASETS[self.config.data.dataset].note

    @property
    def synthetic(self) -> bool:
        """SynthME: the generator's ground truth is in :attr:`root`."""
        return self.config.data.dataset == "synthme"

    @cached_property
    def index(self) -> pd.DataFrame:
        return load_index(self.config.data, self.root)

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
        from merlib.report.provenance import Provenance

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

    def _read_seeds(self, config: RunConfig) -> tuple[pd.DataFrame | None, str]:
        """The finished seeds' pooled predictions of ``config`` (a ``train_seed`` column tells
        them apart), and the command for the missing ones ('' when none is)."""
        found, missing = [], []
        for cfg in seed_configs(config, self.seeds):
            try:
                found.append(read_run(cfg, self.paths)[0].assign(train_seed=cfg.train.seed))
            except MissingRun:
                missing.append(train_command(cfg))
        return (pd.concat(found, ignore_index=True) if found else None), "\n  ".join(missing)

    def results(self, blocks=VARIANT_ORDER) -> tuple[dict[int, pd.DataFrame], dict[int, str]]:
        """Pooled predictions of each finished variant (all its finished seeds), and for each
        variant with a missing seed the commands that train it. Only reads: a results notebook
        never trains behind the reader's back."""
        preds, missing = {}, {}
        for k in blocks:
            pred, commands = self._read_seeds(self.variant(k))
            if pred is not None:
                preds[k] = pred
            if commands:
                missing[k] = commands
        return preds, missing

    def baseline(self, net: str) -> RunConfig:
        """This run's data and profile with a Table 6 baseline instead of the paper's model."""
        return dataclasses.replace(self.config, train=dataclasses.replace(self.config.train, net=net))

    def baseline_results(self) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        """Pooled predictions of each finished baseline, and the command for each missing one."""
        preds, missing = {}, {}
        allowed = DATASETS[self.config.data.dataset].baselines
        for net in BASELINES if allowed is None else allowed:
            pred, commands = self._read_seeds(self.baseline(net))
            if pred is not None:
                preds[net] = pred
            if commands:
                missing[net] = commands
        return preds, missing

    def oracle(self, preds: dict[int, pd.DataFrame],
               baseline_preds: dict[str, pd.DataFrame]) -> pd.DataFrame:
        """The oracle diagnostic of every finished run that recorded its epochs: honest (last
        epoch) beside what choosing the epoch on the test subject would have reported (not a
        valid result; ``metrics.oracle_metrics``)."""
        from merlib.report.tables import oracle_table

        from merlib.report.tables import first_seed

        runs = [(VARIANTS[k], first_seed(p), read_epoch_probs(self.variant(k), self.paths))
                for k, p in preds.items()]
        runs += [(net, first_seed(p), read_epoch_probs(self.baseline(net), self.paths))
                 for net, p in baseline_preds.items()]
        return oracle_table([r for r in runs if r[2] is not None])

    def paper_runs(self) -> dict[str, "Run"]:
        """The runs of the paper's four datasets (CASME II, SAMM, SMIC, MEGC) with this run's
        options: for SynthME its four layouts (same preset and seed), else the four datasets.
        Read only: their folders are found by name, so no data root is needed."""
        d = self.config.data
        changes = ({name: {"synth_layout": name} for name in PAPER_DATASETS} if self.synthetic
                   else {name: {"dataset": name, "data_root": ""} for name in PAPER_DATASETS})
        if d.dataset not in ("synthme", *PAPER_DATASETS):
            return {}  # a dataset outside the paper's four (the public release): notebook 05
        return {DATASETS[name].title: Run(sibling(self.config, **c), self.paths, seeds=self.seeds)
                for name, c in changes.items()}

    def division_table(self) -> pd.DataFrame | None:
        """The paper's division table (1-4) notebook 01 wrote for this run, or None."""
        found = sorted(self.tables_dir.glob("table[1-4]_division.csv"))
        return pd.read_csv(found[0], keep_default_na=False) if found else None

    def weights_used(self, blocks=VARIANT_ORDER) -> str:
        """The VGG16 weights the finished variants were trained on, as their configs record."""
        tags = []
        for k in blocks:
            f = run_dir(self.variant(k), self.paths) / "config.json"
            if f.exists():
                tags.append(json.loads(f.read_text()).get("weights_used", "?"))
        return "; ".join(dict.fromkeys(tags)) or "none trained"


def open_run(**options) -> Run:
    """The notebooks' one setup call: their parameters (``merlib.options.OPTIONS``) in, a
    :class:`Run` out. Notebooks always run their folds here (``local``); they never start a
    cluster."""
    return Run(make_run_config(**options), seeds=options.get("seeds", 1))
