"""The run options, defined once: ``merlib train``'s flags, the notebooks' ``parameters`` cells,
:func:`make_run_config`, ``experiment.open_run`` and :func:`train_command` all come from
:data:`OPTIONS`, so they cannot drift apart (tests/test_options.py checks every notebook's
parameters cell against it).

An option is a flat name (``synth_preset``, ``epochs``) that sets one field of the
:class:`~merlib.config.RunConfig` (``data.preset``, ``train.epochs``). Training options marked
``keeps_profile`` leave the profile's own value when empty ("" or 0). Any other field is reached
by its dotted name through ``overrides`` (``merlib train --set train.lr=1e-3``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from dataclasses import dataclass, fields

from merlib.config import (PROFILE_NAMES, DataConfig, ExecutorConfig, RunConfig, apex_for,
                           dataset_defaults, flat_diff, with_overrides)
from merlib.registry import (APEX_SOURCES, DATASETS, EXECUTORS, INPUTS, NETS, SCHEMES,
                             SYNTH_LAYOUTS, SYNTH_PRESETS, VARIANT_ORDER)


@dataclass(frozen=True)
class Option:
    name: str                 # keyword of make_run_config / open_run; the notebooks' parameter
    default: object           # the notebooks' value and the flag's default
    help: str
    target: str = ""          # the dotted RunConfig field it sets ("" : overrides)
    group: str = "training"   # data | SynthME | preprocessing | training: the --help section
    choices: tuple = ()
    flag: str = ""            # the command-line flag, when not --<name with dashes>
    keeps_profile: bool = False  # an empty value ("" / 0 / False) keeps the profile's own
    notebook: bool = True     # a parameter of every notebook
    per_variant: bool = False  # one variant's option: `merlib train` and the training notebook

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


OPTIONS = {o.name: o for o in (
    Option("dataset", "synthme", " | ".join(DATASETS), "data.dataset", "data", tuple(DATASETS)),
    Option("data_root", "", 'folder a licensed dataset was unpacked into; "" for SynthME',
           "data.root", "data"),
    Option("synth_preset", "tiny", "SynthME size: " + " | ".join(SYNTH_PRESETS), "data.preset",
           "SynthME", SYNTH_PRESETS, flag="--preset"),
    Option("synth_layout", "casme2", "SynthME's on-disk format: " + " | ".join(SYNTH_LAYOUTS),
           "data.layout", "SynthME", SYNTH_LAYOUTS, flag="--layout"),
    Option("synth_seed", 0, "SynthME's seed (the training seed is train_seed)", "data.seed",
           "SynthME", flag="--seed"),
    Option("apex", "annotated", "annotated | detected (a SMIC-format dataset always uses detected)",
           "preprocess.apex", "preprocessing", APEX_SOURCES),
    Option("scheme", "fr72", "IP reading: fr72 (paper as printed) | dlib68 | gacnn24 (gACNN's "
           "converter)", "preprocess.scheme", "preprocessing", SCHEMES),
    Option("profile", "quick", "quick (CPU, frozen convolutions, few epochs) | paper (GPU, Sec. 4.4)",
           "train.profile", choices=PROFILE_NAMES),
    Option("epochs", 0, "0: the profile's own epoch count", "train.epochs", keeps_profile=True),
    Option("weights", "", '"": the profile\'s (quick: auto, paper: imagenet) | imagenet | random | '
           "FILE.pth", "train.weights", keeps_profile=True),
    Option("inputs", "", '"": the profile\'s (quick: onset_delta, paper: frames) | '
           + " | ".join(INPUTS), "train.inputs", choices=("", *INPUTS), keeps_profile=True),
    Option("train_seed", 0, "seed of the trainable weights and batches", "train.seed"),
    Option("seeds", 1, "training seeds train_seed, train_seed+1, ...: each is trained (merlib "
           "train, reproduce) and the results tables show their mean, sd and range"),
    Option("model", "mernet", "mernet (the paper) | " + " | ".join(NETS[1:]) + " (Table 6 "
           "baselines)", "train.net", choices=NETS),
    Option("keep_checkpoints", False, "keep each fold's last checkpoint (off: predictions and "
           "fold.json are the record)", "train.checkpoints", keeps_profile=True, notebook=False),
    Option("overrides", {}, 'any other setting by dotted name, e.g. {"train.lr": 0.001} '
           "(merlib train --set)", flag="--set"),
    Option("blocks", 10, "0 (Without IBs) | 24 | 10", "train.model.blocks",
           choices=VARIANT_ORDER, per_variant=True),
)}
DATA_GROUPS = ("data", "SynthME", "preprocessing")


def notebook_parameters(*, training: bool = False) -> dict[str, object]:
    """The parameters cell of a notebook, as names and default values (the training notebook
    also has the per-variant ones)."""
    return {o.name: o.default for o in OPTIONS.values()
            if o.notebook and (training or not o.per_variant)}


def for_notebooks(options: dict) -> dict:
    """``options`` as notebook parameters: an option the notebooks do not have (``--keep-
    checkpoints``) rides in ``overrides`` as the setting it sets, so papermill never injects a
    name the notebook ignores."""
    out, overrides = {}, dict(options.get("overrides") or {})
    for name, value in options.items():
        o = OPTIONS[name]
        if o.notebook or name == "overrides":
            out[name] = value
        elif not (o.keeps_profile and not value):
            overrides[o.target] = value
    return {**out, "overrides": overrides}


# --------------------------------------------------------------------------- building a config

def make_run_config(*, executor: ExecutorConfig | None = None, require_root: bool = True,
                    **options) -> RunConfig:
    """The run configuration from flat options (:data:`OPTIONS`; a missing one takes its
    default). Unknown names are refused, like a setting of the wrong type. ``seeds`` is not part
    of one run: it says how many runs (``seed_configs``)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; the options are "
                         f"{', '.join(OPTIONS)}")
    v = {name: options.get(name, o.default) for name, o in OPTIONS.items()}
    if v["profile"] not in PROFILE_NAMES:
        raise ValueError(f"profile must be one of {PROFILE_NAMES}, got {v['profile']!r}")
    data = DataConfig(dataset=v["dataset"], root=str(v["data_root"] or ""),
                      preset=v["synth_preset"], layout=v["synth_layout"], seed=v["synth_seed"])
    if require_root and data.dataset != "synthme" and not data.root:
        raise ValueError(f"dataset {data.dataset!r} needs a data root (--data-root): the "
                         f"licensed datasets are not shipped with merlib")
    prep, train = dataset_defaults(data, v["profile"])
    prep = dataclasses.replace(prep, apex=apex_for(data.loader, v["apex"]), scheme=v["scheme"])
    config = RunConfig(data, prep, train, executor or ExecutorConfig())
    if int(v["seeds"]) < 1:
        raise ValueError(f"seeds must be >= 1, got {v['seeds']}")
    settings = {o.target: v[name] for name, o in OPTIONS.items()
                if o.target.startswith("train.") and name != "profile"
                and not (o.keeps_profile and not v[name])}
    return with_overrides(config, {**settings, **dict(v["overrides"] or {})})


def sibling(config: RunConfig, **data_options) -> RunConfig:
    """``config`` on other data (``dataset``, ``synth_layout``, ...): every option and ``--set``
    setting kept, the new data's own defaults (its apex source, say) where ``config`` had its
    data's defaults. The data root may stay empty: a sibling is read, not trained (no root
    check)."""
    params = {name: _get(config, o.target) for name, o in OPTIONS.items() if o.target}
    params["apex"] = "annotated" if config.preprocess.apex == apex_for(config.data.loader) else config.preprocess.apex
    base = make_run_config(**params, require_root=False)
    extra = {k: v for k, v in flat_diff(config.identity(), base.identity()) if not k.startswith("data.")}
    return make_run_config(**{**params, **data_options}, overrides=extra, require_root=False)


def seed_configs(config: RunConfig, seeds: int) -> list[RunConfig]:
    """``config`` with training seeds train_seed, train_seed+1, ...: one run each."""
    return [with_overrides(config, {"train.seed": config.train.seed + i}) for i in range(int(seeds))]


def _get(config: RunConfig, target: str):
    node = config
    for part in target.split("."):
        node = getattr(node, part)
    return node


def train_command(config: RunConfig) -> str:
    """The ``merlib train`` command line that computes ``config``'s run: the data options, the
    profile and blocks always; every other option where it differs from what the command would
    give without it; the rest as ``--set``."""
    synthetic = config.data.dataset == "synthme"
    shown = {"dataset", "profile", "blocks", *(("synth_preset", "synth_layout", "synth_seed")
                                              if synthetic else ("data_root",))}
    params = {name: _get(config, OPTIONS[name].target) for name in shown}
    reference = make_run_config(**params)
    parts = ["merlib train"]
    first = [n for n in OPTIONS if n in shown and n not in ("profile", "blocks")] + ["profile", "blocks"]
    for name in first + [n for n in OPTIONS if n not in first]:
        o = OPTIONS[name]
        if not o.target:
            continue
        value = _get(config, o.target)
        if isinstance(value, bool) and not value:
            continue  # a flag can only switch on; a profile's True switched off goes to --set
        if name in shown or value != _get(reference, o.target):
            params[name] = value
            parts.append(o.cli_flag if isinstance(value, bool)
                         else f"{o.cli_flag} {shlex.quote(str(value))}")
    rebuilt = make_run_config(**params)
    for key, value in flat_diff(config.identity(), rebuilt.identity()):
        parts.append(f"--set {shlex.quote(f'{key}={json.dumps(value)}')}")
    return " ".join(parts)


# --------------------------------------------------------------------------- the command line

def add_arguments(parser: argparse.ArgumentParser, *, groups=None, per_variant: bool = False) -> None:
    """The options of ``groups`` (default: all) as flags, in sections; ``per_variant`` adds
    ``--blocks`` (``merlib train``; ``reproduce`` runs every variant)."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for name, o in OPTIONS.items():
        if (groups and o.group not in groups) or (o.per_variant and not per_variant):
            continue
        section = sections.setdefault(o.group, parser.add_argument_group(o.group))
        if name == "overrides":
            section.add_argument(o.cli_flag, dest=name, action="append", metavar="KEY=VALUE",
                                 help="any other setting by its dotted name in config.json's run "
                                      "section, e.g. train.lr=1e-3 (repeatable)")
        elif isinstance(o.default, bool):
            section.add_argument(o.cli_flag, dest=name, action="store_true", help=o.help)
        else:
            section.add_argument(o.cli_flag, dest=name, type=type(o.default), default=o.default,
                                 choices=o.choices or None, help=o.help)


def options_from_args(args: argparse.Namespace) -> dict:
    """The options a parsed command line gives, ``--set KEY=VALUE`` read into ``overrides``."""
    a = vars(args)
    out = {name: a[name] for name in OPTIONS if name in a and name != "overrides"}
    if "overrides" in a:
        out["overrides"] = dict(_setting(text) for text in a["overrides"] or [])
    return out


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes KEY=VALUE (a dotted setting, e.g. train.lr=1e-3), got {text!r}")
    return key.strip(), value.strip()


EXECUTOR_HELP = {
    "kind": "local: one after another here; dask: a LocalCluster (one worker per GPU, or "
            "--workers CPU workers) or --scheduler; slurm: submitit array jobs",
    "workers": "dask LocalCluster workers (0: per GPU, else cores)",
    "threads": "torch CPU threads per fold (0: cores / workers); byte-identical results across "
               "executors need the same count",
    "scheduler": "dask: address of an existing scheduler (tcp://host:8786)",
    "slurm_time": "minutes per fold task",
}


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """ExecutorConfig's fields as flags (``kind`` as ``--executor``), its defaults."""
    g = parser.add_argument_group("where the folds run (results do not depend on it)")
    for f in fields(ExecutorConfig):
        flag = "--executor" if f.name == "kind" else "--" + f.name.replace("_", "-")
        g.add_argument(flag, dest=f"executor_{f.name}", type=type(f.default), default=f.default,
                       choices=EXECUTORS if f.name == "kind" else None, help=EXECUTOR_HELP.get(f.name))


def executor_from_args(args: argparse.Namespace) -> ExecutorConfig:
    a = vars(args)
    return ExecutorConfig(**{f.name: a[f"executor_{f.name}"] for f in fields(ExecutorConfig)
                             if f"executor_{f.name}" in a})
