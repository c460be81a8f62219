"""Does training learn, and only from the training subjects? (issue: sanity of LOSO training)

    .venv/bin/python bench/sanity.py [--preset demo] [--blocks 10] [--seeds 3]
                                     [--epochs N] [--lr X] [--inputs frames|onset_delta]
                                     [--json FILE]

Trains one variant with LOSO on SynthME ``--seeds`` times with the true labels and as many times
with the training labels permuted inside every fold (test labels stay true). The seed draws the
trainable part's initial weights, the batch order and, when shuffled, the permutation. It prints
pooled UF1 / UAR / Acc of every run, their mean and spread, and the chance levels of label-blind
guessing. With true labels UF1 should be far above chance. With shuffled labels it should fall to
chance, which shows that nothing about the held-out subject leaks into training. One run is a
noisy draw (73 clips, a few hundred steps): the means are the figures to read.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from merlib.config import CLASSES, SynthConfig
from merlib.datasets.synth_calibration import chance_uf1
from merlib.experiment import prepare, train_variant


def _sd(a: np.ndarray) -> str:
    return f"{a.std(ddof=1):.3f}" if len(a) > 1 else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seeds", type=int, default=3, help="runs per label kind (seeds 0..N-1)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--inputs", choices=["frames", "onset_delta"])
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("inputs", args.inputs))
                 if v is not None}
    prepared = prepare("synthme", synth=SynthConfig(preset=args.preset), progress=False)
    runs = [(shuffle, s) for shuffle in (False, True) for s in range(args.seeds)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shuffle, seed in runs:
            t0 = time.time()
            pred, summary = train_variant(prepared, blocks=args.blocks, profile=args.profile,
                                          out_dir=Path(tmp) / f"shuffle{int(shuffle)}-seed{seed}",
                                          progress=False, shuffle_labels=shuffle, seed=seed,
                                          **overrides)
            m = summary["pooled"]
            rows.append({"labels": "shuffled" if shuffle else "true", "seed": seed,
                         "seconds": round(time.time() - t0, 1), **m})
            print(f"{prepared.spec.name} blocks={args.blocks} {args.profile} {overrides or ''} "
                  f"labels={rows[-1]['labels']} seed={seed}: UF1 {m['uf1']:.3f} UAR {m['uar']:.3f} "
                  f"Acc {m['acc']:.3f} ({rows[-1]['seconds']:.0f} s)", flush=True)
    chance = chance_uf1(pred["y_true"].map(dict(enumerate(CLASSES))))
    print(f"chance UF1 of label-blind guessing: prior {chance['prior']:.3f}, uniform "
          f"{chance['uniform']:.3f}, majority {chance['majority']:.3f}")
    for kind in ("true", "shuffled"):
        uf1 = np.array([r["uf1"] for r in rows if r["labels"] == kind])
        uar = np.array([r["uar"] for r in rows if r["labels"] == kind])
        print(f"{kind:>8} labels: UF1 mean {uf1.mean():.3f} (sd {_sd(uf1)}, min {uf1.min():.3f}, "
              f"max {uf1.max():.3f})  UAR mean {uar.mean():.3f} (sd {_sd(uar)})  n={len(uf1)}")
    if args.json:
        args.json.write_text(json.dumps({"run": prepared.spec.name, "blocks": args.blocks,
                                         "profile": args.profile, "overrides": overrides,
                                         "chance_uf1": chance, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
