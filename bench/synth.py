"""SynthME generation time and size per preset/layout, the calibration figures, and the face
finder's verdict on every ORL photograph.

    .venv/bin/python bench/synth.py                       # tiny and demo, CASME II layout
    .venv/bin/python bench/synth.py --layouts casme2 samm smic --presets tiny
    .venv/bin/python bench/synth.py --presets megc --layouts megc
    .venv/bin/python bench/synth.py --calibrate           # + detection, LOSO baseline, amplitude,
                                                          #   identities against subjects
    .venv/bin/python bench/synth.py --people              # ORL: photographs found / left out

Targets: tiny in a few seconds; demo and megc about 1-2 min on 2 cores. Each dataset is
generated into a fresh temporary folder (removed afterwards), so the generation cache never
answers. The people (ORL faces: fetched once into MERLIB_CACHE, landmarks found once per process)
are loaded before the clock starts.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from merlib import synth


def _size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "demo"], choices=sorted(synth.PRESETS))
    ap.add_argument("--layouts", nargs="+", default=["casme2"], choices=synth.LAYOUTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate", action="store_true", help="run the calibration checks too")
    ap.add_argument("--detection-step", type=int, default=10)
    ap.add_argument("--people", action="store_true",
                    help="run the face finder on all 400 ORL photographs and list what it rejects")
    args = ap.parse_args(argv)

    if args.people:
        from merlib.synth.faces import people_report

        report = people_report()
        usable = report.groupby("person")["usable"].sum()
        print(f"ORL: {int(report['usable'].sum())} of {len(report)} photographs usable; "
              f"{int((usable > 0).sum())} of {len(usable)} people usable "
              f"(fewest photographs: {int(usable.min())})")
        for row in report[~report["usable"]].itertuples():
            print(f"  {row.person} photo {row.photo}: {row.reason}")
    # one-off landmark detection on the photographs, not part of the timing
    synth.base_faces()
    if any(synth.get_preset(p).people == "orl" for p in args.presets):
        from merlib.synth.faces import people

        people()
    print(f"cpus available: {len(os.sched_getaffinity(0))}, load: {os.getloadavg()[0]:.1f}")
    print(f"{'preset':7s}{'layout':8s}{'clips':>6s}{'frames':>8s}{'seconds':>9s}{'ms/frame':>9s}"
          f"{'files':>7s}{'MB':>9s}")
    for preset in args.presets:
        for layout in args.layouts:
            with tempfile.TemporaryDirectory(prefix="synthme-bench-") as tmp:
                root = Path(tmp) / "data"
                t0 = time.perf_counter()
                synth.generate(root, layout=layout, preset=preset, seed=args.seed)
                dt = time.perf_counter() - t0
                gt = synth.load_groundtruth(root)
                n_files, size = _size(root)
                frames = int(gt["n_frames"].sum())
                print(f"{preset:7s}{layout:8s}{len(gt):6d}{frames:8d}{dt:9.1f}"
                      f"{1000 * dt / frames:9.2f}{n_files:7d}{size / 1e6:9.1f}", flush=True)
                if args.calibrate:
                    from merlib.synth.calibration import calibrate

                    t0 = time.perf_counter()
                    figures = calibrate(root, detection_step=args.detection_step)
                    figures["calibration_seconds"] = time.perf_counter() - t0
                    for k, v in figures.items():
                        value = f"{v:.4f}" if isinstance(v, float) else str(v)
                        print(f"    {k:24s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
