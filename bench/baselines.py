"""Cost of the Table 6 baselines (merlib.baselines) on SynthME: features per clip, one LOSO pass.

    .venv/bin/python bench/baselines.py [--preset demo] [--jobs 0] [--threads 1]
                                        [--epochs-ststnet 100] [--epochs-off-apexnet 25]
                                        [--reference] [--seed 0]

For each of lbptop-svm, ststnet and off-apexnet it prints:
- features: wall seconds per clip to compute them from the preprocessing cache into a fresh
  feature cache (``--jobs`` worker processes; off-apexnet reads the flow ststnet just cached,
  so its figure is the cache read), and the clips that failed, with their reasons;
- training: one LOSO pass (LeaveOneGroupOut over subjects, the model after the last epoch),
  wall seconds in all, per fold and per clip, with the epochs used;
- pooled Acc / UF1 / UAR, for orientation only (a few epochs on a synthetic set).

The nets' reference schedules (800 and 3000 epochs) take many minutes on a CPU: by default the
bench runs fewer epochs, chosen to keep each baseline under a minute on 2 cores; ``--reference``
runs the reference counts. ``--threads`` sets torch's intra-op threads (1 is fastest for these
tiny nets on a shared 2-core machine).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from sklearn.model_selection import LeaveOneGroupOut

import merlib.baselines as bl
from merlib.options import make_run_config
from merlib.registry import CLASSES, label_ids
from merlib.experiment import prepare
from merlib.metrics import compute_metrics


def loso(name: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, seed: int,
         epochs: int | None) -> tuple[np.ndarray, float, int]:
    """Pooled probabilities of one LOSO pass, its wall seconds and its number of folds."""
    proba = np.zeros((len(y), len(CLASSES)))
    t0 = time.perf_counter()
    folds = list(LeaveOneGroupOut().split(X, y, groups))
    for train_idx, test_idx in folds:
        proba[test_idx] = bl.fit_predict(name, X[train_idx], y[train_idx], groups[train_idx],
                                         X[test_idx], seed=seed, epochs=epochs)
    return proba, time.perf_counter() - t0, len(folds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--jobs", type=int, default=0, help="feature worker processes (0: all cores)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--epochs-ststnet", type=int, default=100)
    ap.add_argument("--epochs-off-apexnet", type=int, default=25)
    ap.add_argument("--reference", action="store_true", help="the references' epoch counts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    prepared = prepare(make_run_config(synth_preset=args.preset), progress=False)
    manifest = prepared.manifest
    print(f"SynthME {args.preset}: {int((manifest['status'] == 'ok').sum())} usable clips, "
          f"prepare() {time.perf_counter() - t0:.1f} s (preprocessing cache {prepared.cache_dir})")
    epochs = {"lbptop-svm": None,
              "ststnet": None if args.reference else args.epochs_ststnet,
              "off-apexnet": None if args.reference else args.epochs_off_apexnet}

    rows = []
    with tempfile.TemporaryDirectory(prefix="merlib-baselines-") as cache_dir:
        for name in bl.NAMES:
            t0 = time.perf_counter()
            X, meta, failed = bl.build_features(name, manifest, cache_dir, jobs=args.jobs)
            t_feat = time.perf_counter() - t0
            for r in failed.itertuples():
                print(f"  FAILED {name} {r.subject}/{r.clip}: {r.reason}")
            y = label_ids(meta["label"]).to_numpy(np.int64)
            groups = meta["subject"].to_numpy()
            proba, t_fit, n_folds = loso(name, X, y, groups, seed=args.seed, epochs=epochs[name])
            scores = compute_metrics(y, proba.argmax(1))
            used = (bl.hyperparameters(name).get("training", {}).get("epochs")
                    if epochs[name] is None else epochs[name])
            rows.append((name, len(X), len(failed), t_feat, t_fit, n_folds, used, scores))

    print(f"\ntorch threads {args.threads}, feature jobs {args.jobs or 'all cores'}, seed {args.seed}")
    head = (f"{'baseline':<12} {'clips':>5} {'failed':>6} {'feat s/clip':>11} {'LOSO s':>7} "
            f"{'s/fold':>7} {'s/clip':>7} {'epochs':>6} {'Acc':>6} {'UF1':>6} {'UAR':>6}")
    print(head)
    print("-" * len(head))
    for name, n, n_failed, t_feat, t_fit, n_folds, used, s in rows:
        print(f"{name:<12} {n:>5} {n_failed:>6} {t_feat / max(n + n_failed, 1):>11.3f} "
              f"{t_fit:>7.1f} {t_fit / n_folds:>7.2f} {t_fit / max(n, 1):>7.3f} "
              f"{str(used if used is not None else '-'):>6} {s['acc']:>6.3f} {s['uf1']:>6.3f} "
              f"{s['uar']:>6.3f}")
    print("off-apexnet's feature time is a cache read: it shares the flow ststnet computed.")


if __name__ == "__main__":
    main()
