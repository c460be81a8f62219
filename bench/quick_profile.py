"""Where the CPU `quick` profile's training time goes: one LOSO fold of a finished run, profiled.

    .venv/bin/python bench/quick_profile.py RUN_DIR [RUN_DIR ...] [--fold 0] [--rows 12] [--threads N]

RUN_DIR: a training run of the paper's model under ``quick`` (``runs/<data>/train/quick-blocks10``,
written by ``merlib train`` or notebook 04); its plan names the cached maps, so nothing is
recomputed. Prints per run: the time to load the context (maps, windows), the wall time of one
fold (training from the initial weights and the per-epoch evaluation, as ``merlib train`` runs
it, after ``--warmup`` other folds of the same context, since later folds reuse memory the
first allocates), and torch.profiler's table of the operators with the most self CPU time.
``--threads``: torch threads per fold (default: all cores, as a local run); ``--threads 1`` is a
fold of a 2-worker dask run. Run it on quiet cores: it measures speed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from merlib.config import RunConfig
from merlib.loso import load_context, plan_folds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per fold (0: all cores)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="folds run first, unprofiled: a run's later folds reuse memory the first allocates")
    args = ap.parse_args()
    for run in args.runs:
        saved = json.loads((run / "config.json").read_text())
        config = RunConfig.from_dict(saved.get("run", saved))
        config = dataclasses.replace(config, executor=dataclasses.replace(config.executor,
                                                                          threads=args.threads))
        t0 = time.perf_counter()
        ctx = load_context(config, run)
        load_s = time.perf_counter() - t0
        folds = plan_folds(ctx)
        for k in range(1, args.warmup + 1):
            tr, te = folds[(args.fold + k) % len(folds)]
            ctx.fit_predict(ctx.labels, tr, te, seed=config.train.seed)
        train_idx, test_idx = folds[args.fold]
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ctx.fit_predict(ctx.labels, train_idx, test_idx, seed=config.train.seed)
        fold_s = time.perf_counter() - t0
        print(f"== {run}  (blocks={config.train.blocks}, {torch.get_num_threads()} threads, "
              f"{len(train_idx)} training clips, {config.train.epochs} epochs)")
        print(f"load {load_s:.1f} s, one fold {fold_s:.1f} s (after {args.warmup} warm-up fold(s))")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
