"""Wall time of one LOSO run on the local executor and on dask (merlib.executors).

    .venv/bin/python bench/executor.py [--workers 2] [--blocks 10] [--preset demo]

Runs the demo SynthME's 10-IB variant (``quick`` profile, CPU) twice into fresh run folders under
a temporary directory, reusing the preprocessing cache and the frozen maps cache (warmed first,
outside the timings): once with the local executor (every core in this process) and once on a
dask LocalCluster of ``--workers`` CPU workers (the cores split between them). Prints the wall
time of each (planning, cluster start and pooling included), the summed fold time, and whether
the pooled predictions are byte-identical. With CUDA, the same run on a LocalCluster of 1 and of
all visible GPUs (one worker each); without, per-GPU scaling is "not measured (no GPU)".
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from merlib.clips import load_clipset
from merlib.config import ExecutorConfig, Paths
from merlib.devices import available_cores, cpu_threads, visible_gpus
from merlib.experiment import prepare, train
from merlib.loso import PROB_COLUMNS, build_context
from merlib.options import make_run_config


def timed_run(config, prepared, out: Path, paths: Paths) -> dict:
    t0 = time.perf_counter()
    train(config, prepared=prepared, out_dir=out, paths=paths, progress=False)
    wall = time.perf_counter() - t0
    folds = [json.loads(f.read_text()) for f in sorted(out.glob("folds/*/fold.json"))]
    return {"wall_s": wall, "fold_s": sum(f["seconds"] for f in folds), "n_folds": len(folds),
            "pred": (out / "predictions.csv").read_bytes()}


def _difference(a: bytes, b: bytes) -> str:
    """How far two pooled predictions.csv files are apart."""
    x, y = (pd.read_csv(io.BytesIO(v)) for v in (a, b))
    dp = (x[PROB_COLUMNS].to_numpy() - y[PROB_COLUMNS].to_numpy())
    return (f"max |p difference| {abs(dp).max():.1e}, {int((x['y_pred'] != y['y_pred']).sum())} "
            f"of {len(x)} predicted classes differ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="dask CPU workers (default 2)")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--preset", default="demo")
    args = ap.parse_args()

    paths = Paths.from_env()
    base = make_run_config(synth_preset=args.preset, profile="quick", blocks=args.blocks,
                           overrides={"train.device": "cpu"})
    prepared = prepare(base, paths=paths, progress=False)
    clips = load_clipset(prepared.manifest, args.blocks)
    t0 = time.perf_counter()
    build_context(base, clips=clips, maps_dir=prepared.cache_dir / "maps",
                  prep_key=prepared.prep.key())  # warm the frozen maps cache: not part of either timing
    print(f"{base.data.name}, {base.run_name()}: {len(clips)} clips, "
          f"{clips.meta['subject'].nunique()} LOSO folds; maps cache ready in "
          f"{time.perf_counter() - t0:.0f} s; {available_cores()} cores, torch "
          f"{torch.__version__}")

    runs = {"local": ExecutorConfig(),
            f"dask, {args.workers} CPU workers": ExecutorConfig(kind="dask", workers=args.workers)}
    threads = {"local": torch.get_num_threads(),
               f"dask, {args.workers} CPU workers": cpu_threads(args.workers)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="merlib-bench-executor-") as tmp:
        for label, ex in runs.items():
            results[label] = timed_run(dataclasses.replace(base, executor=ex), prepared,
                                       Path(tmp) / label.split(",")[0], paths)
        print(f"\n{'executor':<24} {'threads/fold':>12} {'wall s':>8} {'sum of folds s':>15}")
        for label, r in results.items():
            print(f"{label:<24} {threads[label]:>12} {r['wall_s']:>8.1f} {r['fold_s']:>15.1f}")
        local, dask_run = results.values()
        print(f"dask / local wall time: {dask_run['wall_s'] / local['wall_s']:.2f}; pooled "
              f"predictions byte-identical: {local['pred'] == dask_run['pred']}"
              + ("" if local["pred"] == dask_run["pred"] else
                 f" ({_difference(local['pred'], dask_run['pred'])}; the thread counts differ)"))

        print("\nper-GPU scaling: ", end="")
        gpus = visible_gpus() if torch.cuda.is_available() else []
        if not gpus:
            print("not measured (no GPU)")
            return
        print()
        gpu_base = dataclasses.replace(base, train=dataclasses.replace(base.train, device="cuda"))
        for n in sorted({1, len(gpus)}):
            r = timed_run(dataclasses.replace(gpu_base, executor=ExecutorConfig(kind="dask",
                                                                                workers=n)),
                          prepared, Path(tmp) / f"gpu{n}", paths)
            print(f"  dask, {n} GPU worker(s): wall {r['wall_s']:.1f} s, sum of folds "
                  f"{r['fold_s']:.1f} s")


if __name__ == "__main__":  # dask spawns its workers: they import this file without running it
    main()
