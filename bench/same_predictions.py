"""Do two checkouts predict the same? Byte-level digests of a fixed set of tiny runs.

    .venv/bin/python bench/same_predictions.py OUT [--skip-paper] [--threads 2]
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/same_predictions.py OUT2
    diff OUT/digests.txt OUT2/digests.txt

Trains, through the command line only (so any checkout of merlib runs it), on tiny SynthME:
the paper's model in its three variants (``quick``), the three Table 6 baselines (``quick``),
and the streaming ``paper`` path (1 epoch, batch 4, 10 IBs). Every run writes to ``OUT`` (data,
cache and runs fresh there unless they exist) with the same seed and thread count, then the
SHA-256 of each pooled ``predictions.csv`` is printed and written to ``OUT/digests.txt``.
Equal digests on one machine mean byte-identical predictions. A refactoring that claims "no
behaviour change" shows two equal files.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = [
    ("quick-blocks0", ["--profile", "quick", "--blocks", "0"]),
    ("quick-blocks24", ["--profile", "quick", "--blocks", "24"]),
    ("quick-blocks10", ["--profile", "quick", "--blocks", "10"]),
    ("lbptop-svm", ["--profile", "quick", "--model", "lbptop-svm"]),
    ("ststnet", ["--profile", "quick", "--model", "ststnet"]),
    ("off-apexnet", ["--profile", "quick", "--model", "off-apexnet"]),
    ("paper-blocks10", ["--profile", "paper", "--blocks", "10", "--epochs", "1",
                        "--set", "train.batch_size=4", "--set", "train.loader_workers=2"]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--skip-paper", action="store_true", help="leave out the streaming paper run")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per fold (same on both sides)")
    args = ap.parse_args()
    out = args.out.resolve()
    env = {**os.environ, "MERLIB_DATA": str(out / "data"), "MERLIB_CACHE": str(out / "cache"),
           "MERLIB_OUT": str(out)}
    lines = []
    for name, flags in RUNS:
        if args.skip_paper and name.startswith("paper"):
            continue
        run_out = out / "runs-bench" / name
        t0 = time.time()
        cmd = [sys.executable, "-m", "merlib", "train", "--dataset", "synthme", "--preset", "tiny",
               *flags, "--threads", str(args.threads), "--out", str(run_out)]
        subprocess.run(cmd, env=env, check=True)
        digest = hashlib.sha256((run_out / "predictions.csv").read_bytes()).hexdigest()
        lines.append(f"{name} {digest}")
        print(f"{name}: {digest[:16]} ({time.time() - t0:.0f} s)", flush=True)
    (out / "digests.txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'digests.txt'}")


if __name__ == "__main__":
    main()
