"""Benchmark of the preprocessing pipeline on the SynthME demo set (CASME II layout).

    .venv/bin/python bench/preprocess.py [--jobs 2] [--preset demo] [--keep]

Generates the SynthME demo once under MERLIB_DATA (reused afterwards), runs the clip pipeline
into a fresh temporary cache with ``--jobs`` workers, and prints throughput, the per-step time
breakdown summed from the per-clip records, a CASME II-scale (255 clips) extrapolation, and the
error of the detected apex (Eqs. 16-17) against SynthME's ground-truth apex.

Target: a CASME II-scale run (~255 clips of ~60 frames) in at most 3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from merlib import report
from merlib.config import DataConfig
from merlib.experiment import data_root, load_index
from merlib.preprocess.cache import summary
from merlib.preprocess.recipe import STEPS, PreprocessConfig
from merlib.preprocess.workers import run

CASME2_CLIPS = 255
TARGET_S = 180.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache")
    args = ap.parse_args()

    t0 = time.perf_counter()
    data = DataConfig(preset=args.preset, seed=args.seed, layout="casme2")
    root = data_root(data)
    t_data = time.perf_counter() - t0
    index = load_index(data, root)
    usable = int(index["status"].eq("ok").sum())
    print(f"data: {root} ({len(index)} clips, {usable} usable; ready in {t_data:.1f} s)")

    cache = Path(tempfile.mkdtemp(prefix="merlib-bench-"))
    try:
        t0 = time.perf_counter()
        manifest = run(index, PreprocessConfig(), cache, jobs=args.jobs, progress=False)
        total = time.perf_counter() - t0
    finally:
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    ok = manifest[manifest["status"].eq("ok")]
    done = manifest[manifest["stage"].eq("preprocess")]
    n, frames = len(done), int(ok["n_frames_span"].sum())
    cpu = os.cpu_count()

    print(f"\npipeline, jobs={args.jobs} on {cpu} CPU(s): {n} clips ({len(ok)} ok) in {total:.1f} s "
          f"(wall, worker start-up included)")
    print(f"  clips/s            {n / total:6.2f}")
    print(f"  frames read/s      {frames / total:6.1f}   ({frames} frames, "
          f"{frames / max(len(ok), 1):.1f} per clip)")
    print(f"  detector calls     {ok['detector_calls'].sum() / max(len(ok), 1):6.2f} per clip")
    print(f"  landmark fallbacks {int(ok['n_landmark_fallback'].sum())} frames in total")
    busy = ok["seconds"].sum()
    print(f"\nwhere the time goes (worker seconds summed over ok clips: {busy:.1f} s, "
          f"{busy / max(len(ok), 1):.3f} s per clip):")
    for step in STEPS:
        s = float(ok[f"t_{step}"].sum())
        print(f"  {step:10s} {s:7.2f} s  {100 * s / busy:5.1f} %   {s / max(len(ok), 1) * 1e3:7.1f} ms/clip")
    other = busy - sum(float(ok[f"t_{s}"].sum()) for s in STEPS)
    print(f"  {'other':10s} {other:7.2f} s  {100 * other / busy:5.1f} %")

    per_clip = total / max(n, 1)
    scale = CASME2_CLIPS / max(n, 1)
    print(f"\nCASME II scale ({CASME2_CLIPS} clips): extrapolated from {n} clips x {scale:.2f} "
          f"-> {per_clip * CASME2_CLIPS:.0f} s wall at jobs={args.jobs} "
          f"(target <= {TARGET_S:.0f} s on 2 cores: "
          f"{'met' if per_clip * CASME2_CLIPS <= TARGET_S else 'NOT met'})"
          + ("" if n >= CASME2_CLIPS else "; an extrapolation, not a measurement"))

    truth = report.usable(manifest, groundtruth_root=root)  # the apex report's scoring
    g = truth[truth["gt_abs_err"].notna()]
    if len(g):
        print(f"\ndetected apex vs SynthME ground truth over {len(g)} clips: mean |error| "
              f"{g['gt_abs_err'].mean():.2f} frames, median {g['gt_abs_err'].median():.1f}, "
              f"max {g['gt_abs_err'].max():.0f}; {100 * g['gt_rel_err'].mean():.1f} % of the clip "
              f"length on average; {100 * (g['gt_abs_err'] <= 3).mean():.0f} % within 3 frames")
    print("\n" + summary(manifest))


if __name__ == "__main__":
    main()
