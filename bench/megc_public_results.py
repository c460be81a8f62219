"""The public MEGC2019 release (issue 20): every run finished on it, under both profiles, beside
what the paper and the methods' own authors report, and the oracle diagnostic.

    .venv/bin/python bench/megc_public_results.py --data-root ../shared/data/megc2019_public

Trains nothing. It reads the runs that ``merlib train --dataset megc-public ...`` (or ``merlib
reproduce --dataset megc-public``) finished, prints the command of each missing one, and writes
into ``tables/megc-public/``:

- ``public_release.{md,csv}``: Table 6's rows on the composite as reported (the paper's megc
  column and ``merlib/data/paper/literature_megc.csv``), each followed by the same method measured
  here, ``quick`` then ``paper`` profile, last epoch;
- ``public_release_oracle.{md,csv}``: for each measured run that recorded its epochs, the last
  epoch beside the epoch chosen on the test subject (not a valid result; it shows how much such
  selection inflates a number).

Each table has its ``.provenance.json`` (commit, data, settings). No image is written: the release
holds research participants' faces.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from merlib import experiment, report  # noqa: E402
from merlib.config import PROFILE_NAMES  # noqa: E402

DATASET = "megc-public"


def groups(t6: pd.DataFrame) -> dict[str, dict[str, list[dict]]]:
    """Table 6's rows grouped under the reported method they follow."""
    out: dict[str, dict[str, list[dict]]] = {}
    current = ""
    for rec in t6.to_dict(orient="records"):
        reported = str(rec["origin"]).startswith("reported")
        if reported:
            current = rec["method"]
        out.setdefault(current, {"reported": [], "measured": []})["reported" if reported else "measured"].append(rec)
    return out


def merged(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """One Table 6: the reported rows once, then each profile's measured rows under them."""
    parts = [groups(t) for t in tables]
    rows = []
    for key, g in parts[0].items():
        rows += g["reported"]
        for p in parts:
            rows += p.get(key, {"measured": []})["measured"]
    return pd.DataFrame(rows, columns=tables[0].columns)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True, help="the public release's folder (HTNet layout)")
    args = ap.parse_args(argv)
    tables, oracles, prov, out_dir = [], [], None, None
    for profile in PROFILE_NAMES:
        run = experiment.open_run(dataset=DATASET, data_root=args.data_root, profile=profile)
        (preds, missing), (bpreds, bmissing) = run.results(), run.baseline_results()
        for what, command in {**{report.VARIANTS[k]: c for k, c in missing.items()}, **bmissing}.items():
            print(f"not run ({profile}): {what}: {command}")
        tables.append(report.table6(preds.get(10), dataset=DATASET, source="megc", profile=profile,
                                    baselines=bpreds))
        if preds or bpreds:
            o = run.oracle(preds, bpreds)
            if len(o):
                oracles.append(o.assign(profile=profile))
        prov, out_dir = prov or run.prov, out_dir or run.tables_dir
    table = merged(tables)
    report.write_table(table, out_dir, "public_release", prov)
    print(table.to_markdown(index=False, floatfmt=".4f", missingval="—"))
    if oracles:
        oracle = pd.concat(oracles, ignore_index=True)
        report.write_table(oracle, out_dir, "public_release_oracle", prov)
        print(oracle.to_markdown(index=False, floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
