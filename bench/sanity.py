"""Does training learn, and only from the training subjects? (issue: sanity of LOSO training)

    .venv/bin/python bench/sanity.py [--preset demo] [--blocks 10] [--seeds 3]
                                     [--dataset megc-public --data-root DIR]
                                     [--epochs N] [--lr X] [--gia-fc-lr X]
                                     [--inputs frames|onset_delta|channel_norm]
                                     [--json FILE] [--no-table]

Trains one variant with LOSO on SynthME (or ``--dataset`` at ``--data-root``) ``--seeds`` times
with the true labels and as many times with the training labels permuted inside every fold (test
labels stay true). The seed draws the trainable part's initial weights, the batch order and, when
shuffled, the permutation. It prints pooled UF1 / UAR / Acc of every run, their mean and spread,
and the chance levels of label-blind guessing. With true labels UF1 should be far above chance.
With shuffled labels it should fall to chance, which shows that nothing about the held-out subject
leaks into training. One run is a noisy draw (73 clips, a few hundred steps): the means are the
figures to read.

The summary is also written as ``tables/<run>/sanity.{csv,md}`` with its provenance (the README
shows the demo's), unless ``--no-table``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import dataclasses

from merlib.config import Paths
from merlib.options import make_run_config
from merlib.registry import CLASSES, DATASETS, INPUTS
from merlib.experiment import Run, prepare, run_dir, train
from merlib.report.provenance import write_table
from merlib.synth.calibration import chance_uf1


def _sd(a: np.ndarray) -> str:
    return f"{a.std(ddof=1):.3f}" if len(a) > 1 else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synthme", choices=DATASETS)
    ap.add_argument("--data-root", default="", help="a real dataset's folder (not SynthME)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", type=int, default=3, help="runs per label kind (seeds 0..N-1)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--inputs", choices=INPUTS)
    ap.add_argument("--gia-fc-lr", type=float, help="learning rate of GIA's tau_g FC alone")
    ap.add_argument("--weights", help="VGG16 weights (default: the profile's)")
    ap.add_argument("--labels", choices=["both", "true", "shuffled"], default="both",
                    help="which label kinds to run (a screen of settings may skip the control)")
    ap.add_argument("--json", type=Path, help="also write every run's figures to this file")
    ap.add_argument("--no-table", action="store_true", help="do not write tables/<run>/sanity.*")
    ap.add_argument("--seed", type=int, default=0, help="SynthME's generation seed")
    ap.add_argument("--keep", action="store_true",
                    help="train into the standard run folders (runs/<run>/train/<name>) instead of a "
                         "temporary one: resumable, and the true-label seed-0 run is the one "
                         "`make reproduce` trained for Table 5 (make reproduce passes it)")
    args = ap.parse_args()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("inputs", args.inputs),
                                   ("weights", args.weights), ("gia_fc_lr", args.gia_fc_lr)) if v is not None}
    base = make_run_config(dataset=args.dataset, data_root=args.data_root, synth_preset=args.preset,
                           synth_seed=args.seed, profile=args.profile, blocks=args.blocks)
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, **overrides))
    prepared = prepare(base, progress=False)
    prov = Run(base).prov
    kinds = {"both": (False, True), "true": (False,), "shuffled": (True,)}[args.labels]
    runs = [(shuffle, s) for shuffle in kinds for s in range(args.seeds)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shuffle, seed in runs:
            t0 = time.time()
            config = dataclasses.replace(base, train=dataclasses.replace(
                base.train, shuffle_labels=shuffle, seed=seed))
            out_dir = run_dir(config) if args.keep else Path(tmp) / f"shuffle{int(shuffle)}-seed{seed}"
            pred, summary = train(config, prepared=prepared, progress=False, out_dir=out_dir)
            m = summary["pooled"]
            weights = json.loads((out_dir / "config.json").read_text())["weights_used"]
            rows.append({"labels": "shuffled" if shuffle else "true", "seed": seed,
                         "seconds": round(time.time() - t0, 1), "weights": weights, **m})
            print(f"{prepared.data.name} blocks={args.blocks} {args.profile} {overrides or ''} "
                  f"labels={rows[-1]['labels']} seed={seed}: UF1 {m['uf1']:.3f} UAR {m['uar']:.3f} "
                  f"Acc {m['acc']:.3f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    chance = chance_uf1(pred["y_true"].map(dict(enumerate(CLASSES))))
    print(f"chance UF1 of label-blind guessing: prior {chance['prior']:.3f}, uniform "
          f"{chance['uniform']:.3f}, majority {chance['majority']:.3f}")
    summary = []
    for kind, label in (("true", "true"), ("shuffled", "shuffled inside every fold")):
        runs_k = pd.DataFrame([r for r in rows if r["labels"] == kind])
        if runs_k.empty:
            continue
        summary.append({"training labels": label, "runs": len(runs_k),
                        "UF1 mean": runs_k["uf1"].mean(), "UF1 min": runs_k["uf1"].min(),
                        "UF1 max": runs_k["uf1"].max(), "UAR mean": runs_k["uar"].mean(),
                        "Acc mean": runs_k["acc"].mean()})
        print(f"{kind:>8} labels: UF1 mean {runs_k['uf1'].mean():.3f} (sd {_sd(runs_k['uf1'].to_numpy())}, "
              f"min {runs_k['uf1'].min():.3f}, max {runs_k['uf1'].max():.3f})  "
              f"UAR mean {runs_k['uar'].mean():.3f}  n={len(runs_k)}")
    summary.append({"training labels": "none: label-blind guessing at the class prior", "runs": 0,
                    "UF1 mean": chance["prior"]})
    if not args.no_table:
        out = write_table(pd.DataFrame(summary), Paths.from_env().tables_for(prepared.data.name),
                          "sanity", prov, runs=rows, chance_uf1=chance, seeds=args.seeds,
                          weights_used=sorted({r["weights"] for r in rows}))
        print(f"wrote {out['md']}")
    if args.json:
        args.json.write_text(json.dumps({"run": prepared.data.name, "blocks": args.blocks,
                                         "profile": args.profile, "overrides": overrides,
                                         "chance_uf1": chance, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
