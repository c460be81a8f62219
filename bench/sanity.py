"""Does training learn, and only from the training subjects? (issue: sanity of LOSO training)

    .venv/bin/python bench/sanity.py [--preset demo] [--blocks 10] [--epochs N] [--lr X]

Trains one variant with LOSO twice on SynthME, once with the true labels and once with the
training labels shuffled inside every fold (test labels stay true), and prints pooled UF1 / UAR
beside the chance level. With true labels UF1 should be far above chance. With shuffled labels
it should fall to chance, which shows that nothing about the held-out subject leaks into
training.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from merlib.config import CLASSES, SynthConfig
from merlib.datasets.synth_calibration import chance_uf1
from merlib.experiment import prepare, train_variant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float)
    args = ap.parse_args()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    prepared = prepare("synthme", synth=SynthConfig(preset=args.preset), progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        for shuffle in (False, True):
            t0 = time.time()
            pred, summary = train_variant(prepared, blocks=args.blocks, profile=args.profile,
                                          out_dir=Path(tmp) / f"shuffle{int(shuffle)}",
                                          progress=False, shuffle_labels=shuffle, **overrides)
            m = summary["pooled"]
            chance = max(chance_uf1(pred["y_true"].map(dict(enumerate(CLASSES)))).values())
            print(f"{prepared.spec.name} blocks={args.blocks} {args.profile} {overrides or ''} "
                  f"labels={'shuffled' if shuffle else 'true'}: UF1 {m['uf1']:.3f} UAR {m['uar']:.3f} "
                  f"Acc {m['acc']:.3f} (chance UF1 {chance:.3f}; {time.time() - t0:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
