"""Wall time of the flow baselines' LOSO training: fold by fold (``train_predict``) against all
folds in one call (``merlib.baselines.stacked.train_predict_folds``).

    .venv/bin/python bench/stacked.py [--nets ststnet off-apexnet] [--threads 2] [--workers N]
                                      [--ref-threads N] [--ref-folds 2] [--ref-epochs 2]
                                      [--epochs 3] [--seed 0]

The data: the MEGC 2019 composite's 442 samples with their real subjects (68 LOSO folds:
CASME II 24 subjects / 145 clips, SAMM 28 / 133, SMIC 16 / 164, from the package's official
list) and labels, each sample a random (C, 28, 28) image in [0, 255] (the nets' cost does not
depend on the values). For each net at its reference schedule (STSTNet 800 epochs, batch 256;
OFF-ApexNet 3000 epochs, batch 64):

- fold by fold: ``--ref-folds`` folds × ``--ref-epochs`` epochs of ``train_predict`` (torch at
  ``--ref-threads`` intra-op threads, default ``--threads``), extrapolated to 68 folds × the
  reference epochs;
- stacked: ``train_predict_folds`` on all 68 folds for 1 and for 1 + ``--epochs`` epochs
  (``--workers`` threads, default ``--threads``); the difference gives the time per epoch, the
  1-epoch run the setup; projected total = setup + reference epochs × per epoch.

Prints torch's thread count and the load average at each measurement, wall and CPU time: on a
shared machine the wall clock also counts other processes' work, so a projection from the
process's CPU time over its threads (what the run would take with its cores to itself) is
printed too.
"""
from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np
import torch

import merlib.baselines as bl
from merlib.baselines.stacked import train_predict_folds
from merlib.baselines.training import train_predict
from merlib.datasets.megc import megc_list
from merlib.registry import BASELINES


def composite(chans: int, seed: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Random images with the composite's labels and LOSO folds (one per subject)."""
    rows = megc_list()
    subject = (rows["dataset"] + "/" + rows["subject"]).to_numpy()
    y = rows["label_id"].astype(int).to_numpy()
    X = (np.random.default_rng(seed).random((len(rows), chans, 28, 28)) * 255).astype(np.float32)
    folds = [(np.flatnonzero(subject != s), np.flatnonzero(subject == s))
             for s in dict.fromkeys(subject)]
    return X, y, folds


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def fmt(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", nargs="+", default=["ststnet", "off-apexnet"],
                    choices=[n for n, b in BASELINES.items() if b.net])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--ref-threads", type=int, default=None,
                    help="torch threads for the fold-by-fold runs (default --threads)")
    ap.add_argument("--ref-folds", type=int, default=2)
    ap.add_argument("--ref-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    workers = args.threads if args.workers is None else args.workers
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"stacked workers = {workers}, {os.cpu_count()} CPUs; {load()}")

    for name in args.nets:
        schedule = BASELINES[name].schedule
        chans = len(bl.CHANNELS[name])
        X, y, folds = composite(chans, args.seed)
        seeds = list(range(len(folds)))
        make_net = functools.partial(bl.make_net, name)
        kw = dict(lr=schedule["lr"], batch_size=schedule["batch_size"])
        sizes = [len(tr) for tr, _ in folds]
        print(f"\n{name}: {len(folds)} folds, training sets {min(sizes)}-{max(sizes)} samples, "
              f"reference {schedule['epochs']} epochs, batch {schedule['batch_size']}, lr {schedule['lr']}")

        torch.set_num_threads(args.threads if args.ref_threads is None else args.ref_threads)
        (tr, te), s = folds[-1], seeds[-1]  # warm-up, untimed: first calls build kernels
        train_predict(make_net, X[tr], y[tr], X[te], epochs=1, seed=s, **kw)
        train_predict_folds(name, X, y, folds[-1:], epochs=1, seeds=seeds[-1:], workers=1, **kw)
        t0, c0 = time.perf_counter(), time.process_time()
        for (tr, te), s in list(zip(folds, seeds))[:args.ref_folds]:
            train_predict(make_net, X[tr], y[tr], X[te], epochs=args.ref_epochs, seed=s, **kw)
        n = args.ref_folds * args.ref_epochs
        per_fold_epoch, ref_cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
        ref_total = per_fold_epoch * len(folds) * schedule["epochs"]
        print(f"  fold by fold: {per_fold_epoch * 1e3:.1f} ms per fold-epoch, CPU {ref_cpu * 1e3:.1f} ms "
              f"({args.ref_folds} folds × {args.ref_epochs} epochs, {torch.get_num_threads()} threads) "
              f"-> {len(folds)} folds × {schedule['epochs']} epochs: {fmt(ref_total)}   [{load()}]")
        torch.set_num_threads(args.threads)

        t0, c0 = time.perf_counter(), time.process_time()
        train_predict_folds(name, X, y, folds, epochs=1, seeds=seeds, workers=workers, **kw)
        one, one_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        train_predict_folds(name, X, y, folds, epochs=1 + args.epochs, seeds=seeds, workers=workers, **kw)
        more, more_cpu = time.perf_counter() - t0, time.process_time() - c0
        per_epoch = (more - one) / args.epochs
        cpu = (more_cpu - one_cpu) / args.epochs
        setup = max(one - per_epoch, 0.0)
        total = setup + per_epoch * schedule["epochs"]
        print(f"  stacked:      {per_epoch:.2f} s per epoch of all {len(folds)} folds "
              f"({per_epoch / len(folds) * 1e3:.1f} ms per fold-epoch, CPU {cpu / len(folds) * 1e3:.1f} "
              f"ms over {workers} workers), setup {setup:.1f} s -> {schedule['epochs']} epochs: "
              f"{fmt(total)}   [{load()}]")
        # On a shared machine the wall clock counts other people's work too; the process's CPU
        # time over its threads is what the run would take with its cores to itself.
        ref_threads = args.threads if args.ref_threads is None else args.ref_threads
        ref_free = ref_cpu * len(folds) * schedule["epochs"] / ref_threads
        free = setup + cpu * schedule["epochs"] / workers
        print(f"  speed-up {ref_total / total:.1f}× (wall); from CPU time, about, with free cores: fold by "
              f"fold {fmt(ref_free)}, stacked {fmt(free)} ({ref_free / free:.1f}×)")


if __name__ == "__main__":
    main()
