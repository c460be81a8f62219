"""Paths and run settings.

Every path merlib reads or writes is resolved here, from environment variables with defaults
inside the project folder. Nothing else in the package hard-codes a location.

- ``MERLIB_DATA``: where datasets live (real ones unpacked by the user, SynthME generated).
  Default: ``<project>/data``.
- ``MERLIB_CACHE``: preprocessing cache. Default: ``<project>/.cache/merlib``.
- ``MERLIB_OUT``: where ``tables/``, ``figures/`` and ``runs/`` are written. Default: ``<project>``.
- ``MERLIB_PROJECT``: the project folder itself, when merlib is not run from a checkout.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from merlib.files import atomic_write_text
from merlib.registry import (APEX_SOURCES, DATASETS, EXECUTORS, INPUTS, NETS, SCHEMES,
                             SYNTH_LAYOUTS, SYNTH_PRESETS, VARIANT_ORDER)

# The training profiles (``PROFILES`` below holds their settings), the CPU one first.
PROFILE_NAMES = ("quick", "paper")


def project_root() -> Path:
    """The checkout merlib runs from: ``MERLIB_PROJECT``, else the folder holding pyproject.toml
    above this package, else the current directory."""
    env = os.environ.get("MERLIB_PROJECT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd().resolve()


@dataclass(frozen=True)
class Paths:
    data: Path
    cache: Path
    out: Path

    @property
    def tables(self) -> Path:
        return self.out / "tables"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def tables_for(self, dataset: str) -> Path:
        return self.tables / dataset

    def figures_for(self, dataset: str) -> Path:
        return self.figures / dataset

    def runs_for(self, dataset: str) -> Path:
        return self.runs / dataset

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Paths":
        env = os.environ if environ is None else environ
        root = project_root()

        def pick(name: str, default: Path) -> Path:
            value = env.get(name)
            return Path(value).expanduser().resolve() if value else default

        return cls(
            data=pick("MERLIB_DATA", root / "data"),
            cache=pick("MERLIB_CACHE", root / ".cache" / "merlib"),
            out=pick("MERLIB_OUT", root),
        )


@dataclass(frozen=True)
class SynthConfig:
    """Which SynthME a run uses when ``dataset == "synthme"``."""

    preset: str = "tiny"  # one of registry.SYNTH_PRESETS: tiny (CI) | demo | megc
    seed: int = 0
    layout: str = "casme2"  # on-disk format written: one of registry.SYNTH_LAYOUTS (megc: all three)

    def folder_name(self) -> str:
        return f"synthme-{self.preset}-{self.layout}-seed{self.seed}"


# --------------------------------------------------------------------------- the run configuration
# One frozen dataclass per concern, gathered in RunConfig. The CLI and the notebooks' papermill
# parameters build it with the same function (make_run_config); config.json is its serialisation.


def _check(what: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {tuple(allowed)}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which data a run reads. ``root`` empty means SynthME under ``MERLIB_DATA`` (a real dataset
    needs one to be read: ``experiment.data_root``); ``preset``, ``layout`` and ``seed`` only
    matter for SynthME."""

    dataset: str = "synthme"
    root: str = ""
    preset: str = "tiny"
    layout: str = "casme2"
    seed: int = 0

    def __post_init__(self) -> None:
        _check("dataset", self.dataset, DATASETS)
        if self.dataset == "synthme":
            _check("SynthME preset", self.preset, SYNTH_PRESETS)
            _check("SynthME layout", self.layout, SYNTH_LAYOUTS)

    @property
    def synth(self) -> SynthConfig | None:
        if self.dataset != "synthme":
            return None
        return SynthConfig(preset=self.preset, seed=self.seed, layout=self.layout)

    @property
    def name(self) -> str:
        """The run's folder name under tables/, figures/, runs/ and the caches: the dataset, or
        for SynthME its preset, layout and seed (so CI's tiny runs never overwrite a demo run)."""
        return self.synth.folder_name() if self.synth else self.dataset

    @property
    def loader(self) -> str:
        """The on-disk format read: the dataset's own, or SynthME's layout."""
        return self.layout if self.dataset == "synthme" else DATASETS[self.dataset].loader


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that changes a processed clip; its ``key()`` names the cache folder."""

    n_frames: int = 10          # TIM output length
    size: int = 224             # aligned frame side
    apex: str = "annotated"     # annotated | detected (rows without a valid annotation: detected)
    scheme: str = "fr72"        # how the IPs read the landmarks: one of SCHEMES
    lwm_neighbors: int = 12     # N of the LWM fit
    detect_upsample: int = 1    # HOG detector upsampling of the first frame
    min_frames: int = 2         # fewest frames in onset..offset for a clip to be processed
    version: int = 2            # bump when the pipeline's output changes for the same settings
    #                             (2: the face found by faces.find_face, its route recorded)

    def __post_init__(self):
        _check("apex", self.apex, APEX_SOURCES)
        _check("scheme", self.scheme, SCHEMES)
        if self.n_frames < 1 or self.size < 16 or self.min_frames < 1:
            raise ValueError(f"bad sizes in {self}")

    def key(self) -> str:
        """Short hash of the config's JSON: equal settings, equal key."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def apex_for(loader: str, requested: str = "annotated") -> str:
    """SMIC-HS has no apex annotation, so a SMIC-format run always uses the detected apex (the
    one rule, whatever the dataset is called: SynthME in the SMIC layout included)."""
    return "detected" if loader == "smic" else requested


@dataclass(frozen=True)
class AugmentConfig:
    """Sec. 4.4: a random rotation and a random crop, one draw per clip for all its frames."""

    max_rotation_deg: float = 8.0
    min_crop_frac: float = 0.875  # crop side as a fraction of the frame, drawn in [min, 1]
    size: int = 224


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and which parts train. ``blocks``: 0 ("Without IBs"), 24 or 10."""

    blocks: int = 10
    freeze_transfer: bool = True
    freeze_gia_convs: bool = False  # True for the CPU 'quick' profile (maps cached per clip)
    dropout: float = 0.5
    lstm_hidden: int = 128
    global_dim: int = 512  # τ_g output
    block_dim: int = 64  # τ_k output
    gate_channels: int = 128  # φ: 1×1 conv width
    gate_hidden: int = 64  # φ: hidden FC width
    crop: int = 6  # block window side on the 28×28 map
    head_hidden: tuple[int, ...] = (128, 64)  # 3 FC layers in all: 256 -> 128 -> 64 -> classes
    num_classes: int = 3
    normalize_input: bool = True  # ImageNet mean/std inside the model

    def __post_init__(self) -> None:
        if self.blocks < 0:
            raise ValueError(f"ModelConfig.blocks must be >= 0, got {self.blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def fused_dim(self) -> int:
        """Per-frame feature size after fusion: 512, 1152 (10 IBs), 2048 (24 IBs)."""
        return self.global_dim + self.blocks * self.block_dim


@dataclass(frozen=True)
class TrainConfig:
    """LOSO training (Sec. 4.3-4.4). ``model`` is the network; everything else the loop."""

    profile: str = "quick"
    net: str = "mernet"        # the paper's model, or a baseline (merlib.baselines)
    model: ModelConfig = ModelConfig()
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    l2: float = 1e-5           # lambda: loss += l2 * sum ||w||^2 over trainable parameters
    views: int = 16            # pre-augmented views per clip (view 0 = no augmentation), cached path
    stream: bool = False       # paper: frames streamed, fresh augmentation every step, nothing cached
    loader_workers: int = 0    # DataLoader workers of the streaming path
    weights: str = "imagenet"  # imagenet | random | auto | path to a VGG16 state_dict
    seed: int = 0
    device: str = "auto"       # auto | cpu | cuda
    bf16: bool = True          # autocast on CUDA only
    shuffle_labels: bool = False  # sanity check: permute the training labels within each fold
    checkpoints: bool = False  # keep each fold's last trainable weights (~100-170 MB per fold)
    inputs: str = "frames"     # frames (the paper) | onset_delta (maps minus the onset's, quick)
    #                            | channel_norm (maps standardised per channel; a tested candidate)
    gia_fc_lr: float = 0.0     # learning rate of GIA's 51 M-parameter τ_g FC; 0: the same as lr
    augment: AugmentConfig = AugmentConfig()
    baseline_epochs: int = 0   # a baseline's epochs; 0: its reference schedule, or under quick
    #                            its shorter quick_epochs (merlib.registry.BASELINES)

    def __post_init__(self) -> None:
        _check("profile", self.profile, PROFILE_NAMES)
        _check("net", self.net, NETS)
        _check("inputs", self.inputs, INPUTS)
        _check("blocks", self.model.blocks, VARIANT_ORDER)
        if (self.epochs < 1 or self.batch_size < 1 or self.views < 1 or self.loader_workers < 0
                or self.baseline_epochs < 0):
            raise ValueError(f"epochs, batch_size and views must be >= 1 and loader_workers >= 0 "
                             f"in {self}")
        if self.stream and self.inputs != "frames":
            raise ValueError(f"inputs={self.inputs!r} needs cached maps; the streaming path "
                             f"(stream=True, the paper profile) trains on the paper's frames")

    @property
    def blocks(self) -> int:
        return self.model.blocks

    @property
    def train_gia_convs(self) -> bool:
        return not self.model.freeze_gia_convs


PROFILES = {
    # Fold checkpoints are off: 124-186 MB each x 68 folds x 3 variants on MEGC; the predictions and
    # fold.json are the record (--keep-checkpoints keeps each fold's last one).
    # Streams (issue 12): every step draws a fresh rotation + crop per clip on the device and runs
    # the frozen transfer layer on it; GIA's convolutions train. Nothing per clip is cached, so
    # host and device memory do not grow with the dataset.
    "paper": TrainConfig(profile="paper", epochs=100, views=1, stream=True, loader_workers=4,
                         weights="imagenet", checkpoints=False,
                         model=ModelConfig(freeze_gia_convs=False)),
    # CPU budget: `make reproduce` runs 3 variants of LOSO on the demo SynthME in minutes, with
    # every convolution frozen. On such maps the static face swamps the micro-motion and the
    # model does not fit in that budget; onset-relative maps let it learn (docs/DECISIONS.md,
    # "What quick can show"). Not the paper's input: labelled so. Checkpoints are not kept: 30
    # folds of a demo run would take ~4 GB.
    # The baseline nets' reference schedules take ~200 s (STSTNet) and ~50 min (OFF-ApexNet) per
    # demo LOSO on 2 cores: quick trains them shorter (each baseline's quick_epochs in
    # merlib.registry), and labels their rows quick too.
    "quick": TrainConfig(profile="quick", epochs=5, views=1, weights="auto", checkpoints=False,
                         inputs="onset_delta", model=ModelConfig(freeze_gia_convs=True)),
}


def dataset_defaults(data: DataConfig, profile: str) -> tuple[PreprocessConfig, TrainConfig]:
    """The preprocessing and training settings a run of ``profile`` on ``data`` starts from: the
    profile's, with what the dataset's registry entry changes (a single-frame release: one
    frame per clip, and its own map inputs under ``quick``)."""
    entry = DATASETS[data.dataset]
    prep = PreprocessConfig(apex=apex_for(data.loader),
                            **({"n_frames": 1, "min_frames": 1} if entry.single_frame else {}))
    train = PROFILES[profile]
    if entry.quick_inputs and not train.stream:
        train = dataclasses.replace(train, inputs=entry.quick_inputs)
    return prep, train


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the folds run. Not part of a run's identity: the same seed gives the same
    predictions whatever the executor, so a run may be resumed on another one."""

    kind: str = "local"              # local (sequential, this process) | dask | slurm
    workers: int = 0                 # dask LocalCluster: 0 = one per visible GPU, else all cores
    threads: int = 0                 # torch CPU threads per fold (0: the cores / the workers); the
                                     # last bits of CPU sums depend on it, not the predictions' sense
    scheduler: str = ""              # dask: address of an existing scheduler
    slurm_partition: str = ""
    slurm_gpus_per_task: int = 1
    slurm_time: int = 240            # minutes
    slurm_array_parallelism: int = 16

    def __post_init__(self) -> None:
        _check("executor", self.kind, EXECUTORS)


@dataclass(frozen=True)
class RunConfig:
    """One run: data, preprocessing and training (its identity: config.json, the resume check
    and the run name), and where its folds execute."""

    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = PROFILES["quick"]
    executor: ExecutorConfig = ExecutorConfig()

    def to_dict(self) -> dict:
        return to_jsonable(self)

    def variant(self, blocks: int) -> "RunConfig":
        """The same run with another number of identification blocks (0, 24 or 10)."""
        t = self.train
        return dataclasses.replace(self, train=dataclasses.replace(
            t, model=dataclasses.replace(t.model, blocks=blocks)))

    def identity(self) -> dict:
        """What makes two runs the same experiment: everything but how it is executed (the
        executor, and the loader's worker count, which a test shows changes no prediction)."""
        d = self.to_dict()
        d.pop("executor")
        d["train"].pop("loader_workers")
        if self.data.synth is None:  # SynthME's knobs say nothing about a real dataset's run
            for key in ("preset", "layout", "seed"):
                d["data"].pop(key)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        train = dict(d["train"])
        train["model"] = ModelConfig(**{**train["model"],
                                        "head_hidden": tuple(train["model"]["head_hidden"])})
        train["augment"] = AugmentConfig(**train["augment"])
        return cls(DataConfig(**d["data"]), PreprocessConfig(**d["preprocess"]), TrainConfig(**train),
                   ExecutorConfig(**d.get("executor", {})))

    def run_name(self) -> str:
        """``<profile>-blocks<K>``, then every setting that differs from the profile's and the
        preprocessing defaults (``-epochs3-weightsrandom``), so each configuration gets its own
        folder and the default runs keep their familiar names."""
        if self.train.net == "mernet":
            parts = [f"{self.train.profile}-blocks{self.train.blocks}"]
        else:  # a baseline has no blocks: <net>-<profile>
            parts = [f"{self.train.net}-{self.train.profile}"]
        prep, train = dataset_defaults(self.data, self.train.profile)
        default_train, default_prep = to_jsonable(train), to_jsonable(prep)
        changed = (flat_diff(to_jsonable(self.train), default_train,
                              skip={"profile", "model.blocks", "net", "loader_workers"})
                   + flat_diff(to_jsonable(self.preprocess), default_prep))
        for key, value in changed:
            parts.append(re.sub(r"[^A-Za-z0-9.]+", "", f"{key.rsplit('.', 1)[-1]}{value}"))
        name = "-".join(parts)
        if len(name) > 80:  # long override lists: keep the readable start, make it unique
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            name = f"{name[:60]}-{digest}"
        return name


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as one dict with dotted keys."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flat_diff(now: dict, before: dict, skip=frozenset()) -> list[tuple[str, object]]:
    """(dotted key, value now) for every setting that differs between two nested dicts."""
    a, b = _flatten(now), _flatten(before)
    return [(k, a.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in skip]


def config_changes(saved: dict, now: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs between two serialised configs."""
    old, new = _flatten(saved), _flatten(now)
    return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def with_overrides(config: RunConfig, overrides: dict[str, object]) -> RunConfig:
    """``config`` with fields set by dotted name; a value given as text is read as JSON when it
    parses (``1e-3``, ``true``, ``[128, 64]``), else kept as text. Unknown names are refused."""
    d = config.to_dict()
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = d
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"unknown setting {key!r}: {part!r} is not a section")
            node = node[part]
        if leaf not in node or isinstance(node[leaf], dict):
            raise ValueError(f"unknown setting {key!r}; the settings are "
                             f"{', '.join(sorted(_flatten(config.to_dict())))}")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        before = node[leaf]
        numeric = isinstance(before, (int, float)) and not isinstance(before, bool)
        if (numeric and (isinstance(value, bool) or not isinstance(value, (int, float)))) or (
                isinstance(before, (bool, str)) and type(value) is not type(before)):
            raise ValueError(f"setting {key!r} takes a {type(before).__name__} like {before!r}, "
                             f"got {value!r}")
        node[leaf] = value
    return RunConfig.from_dict(d)


def git_commit(root: Path | None = None) -> str:
    """The commit of the checkout, with ``+dirty`` when it has uncommitted changes; ``unknown``
    outside git."""
    root = root or project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def to_jsonable(obj):
    """Dataclasses, paths and tuples as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(path: Path, **configs) -> Path:
    """Write the resolved configs with the git commit and host, next to a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "host": platform.platform(),
        **{name: to_jsonable(cfg) for name, cfg in configs.items()},
    }
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
