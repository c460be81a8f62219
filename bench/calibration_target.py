"""Is SynthME as hard as real data? The flow baselines on SynthME's composite beside the same
baselines on the public MEGC2019 release (issue 21's calibration target: each within 0.15 UF1).

    .venv/bin/python bench/calibration_target.py [--preset megc] [--seed 0] [--profile quick]

Trains nothing. SynthME's side: the finished runs of ``merlib train --dataset synthme --preset
megc --layout megc --model {ststnet,off-apexnet} --profile quick`` (it prints the command of a
missing one). The release's side: the rows measured under the same profile in
``tables/megc-public/public_release.csv``, which ``bench/megc_public_results.py`` wrote from runs on
the release (the release itself is not needed here). Writes ``calibration_target.{md,csv}`` with
its provenance into SynthME's table folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from merlib import experiment, report
from merlib.config import Paths
from merlib.metrics import compute_metrics
from merlib.registry import BASELINES

NETS = ("ststnet", "off-apexnet")
TARGET = 0.15  # issue 21: |UF1 on SynthME - UF1 on real data| <= 0.15 for each method


def release_rows(table: Path, profile: str) -> pd.DataFrame:
    """The release's measured rows of ``NETS`` under ``profile`` (one per method)."""
    t = pd.read_csv(table)
    t = t[t["method"].isin(NETS) & t["origin"].str.startswith(f"measured here ({profile} profile")]
    return t.drop_duplicates("method").set_index("method")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="megc")
    ap.add_argument("--seed", type=int, default=0, help="SynthME's generation seed")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--release-table", type=Path,
                    default=Paths.from_env().tables / "megc-public" / "public_release.csv")
    args = ap.parse_args(argv)
    run = experiment.open_run(dataset="synthme", synth_preset=args.preset, synth_layout="megc",
                              synth_seed=args.seed, profile=args.profile)
    preds, missing = run.baseline_results()
    for net, command in missing.items():
        if net in NETS:
            print(f"not run: {net}: {command}")
    if not args.release_table.is_file():
        print(f"no {args.release_table}: run bench/megc_public_results.py on the release first")
        return 2
    real = release_rows(args.release_table, args.profile)
    rows = []
    for net in NETS:
        if net not in preds or net not in real.index:
            continue
        m = compute_metrics(preds[net]["y_true"], preds[net]["y_pred"])
        diff = m["uf1"] - float(real.loc[net, "UF1"])
        spec = BASELINES[net]
        epochs = spec.quick_epochs if args.profile == "quick" else spec.schedule["epochs"]
        rows.append({"method": net, "epochs": epochs,
                     "SynthME composite UF1": m["uf1"], "SynthME clips": len(preds[net]),
                     "release UF1": float(real.loc[net, "UF1"]),
                     "SynthME - release": diff, f"within {TARGET}": abs(diff) <= TARGET})
    if not rows:
        print("nothing to compare yet")
        return 1
    table = pd.DataFrame(rows)
    report.write_table(table, run.tables_dir, "calibration_target", run.prov,
                       release_table=str(args.release_table.name), target_uf1_gap=TARGET)
    print(table.to_markdown(index=False, floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
