"""Does the streaming `paper` path's memory stay flat as the dataset grows? (issue 12)

    .venv/bin/python bench/memory.py [--preset tiny] [--repeat 4] [--folds 1] [--epochs 1]
                                     [--weights random] [--workers 0] [--batch 4]

Runs the paper path (frames streamed from the preprocessing cache, a fresh rotation + crop per
clip and step, frozen transfer layer, trainable GIA convolutions) on the CPU over SynthME twice:
once on the preset's N usable clips, once on ``repeat``·N clips made by repeating its subjects
under new names (the same cached files, so nothing is preprocessed again). Each size runs in a
fresh process that trains and predicts the first ``--folds`` LOSO folds; the parent samples the
whole process tree's resident memory (loader workers included) every 50 ms. It prints, per size,
the peak RSS, the disk the run wrote, and the time, then the ratios: memory and disk must agree
within 20% (the 4N folds train on about 4x the clips, so they take about 4x as long). The batch
size is small (4) so that both sizes train on full batches: peak memory follows the batch, and
a batch larger than the small run's training set would compare batch sizes, not dataset sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

TOLERANCE = 0.20


def _child(args: argparse.Namespace) -> None:
    import resource

    from merlib.config import RunConfig
    from merlib.clips import load_clipset
    from merlib.loso import build_context, run_fold

    config = RunConfig.from_dict(json.loads(Path(args.config).read_text()))
    manifest = pd.read_csv(args.manifest, dtype={"subject": str, "clip": str})
    clips = load_clipset(manifest, config.train.blocks, frames=not config.train.stream)
    ctx = build_context(config, clips=clips)
    for fold in range(args.folds):
        run_fold(config, fold, args.out, context=ctx)
    print(json.dumps({"clips": len(clips), "subjects": int(clips.meta["subject"].nunique()),
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _measure(cmd: list[str]) -> tuple[dict, float, float]:
    """Run ``cmd``; its JSON last line, the peak RSS of its process tree (bytes), seconds."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ps, peak, done = psutil.Process(proc.pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _tree_rss(ps))
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak[0], time.time() - t0


def _disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def repeat_subjects(manifest: pd.DataFrame, times: int) -> pd.DataFrame:
    """``times`` copies of the usable clips, copy k's subjects renamed ``<subject>r<k>``."""
    ok = manifest[manifest["status"] == "ok"]
    copies = [ok.assign(subject=ok["subject"].astype(str) + (f"r{k}" if k else "")) for k in range(times)]
    return pd.concat(copies, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeat", type=int, default=4, help="the larger size is this many times N")
    ap.add_argument("--folds", type=int, default=1, help="LOSO folds trained per size")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4,
                    help="clips per step; at most the smaller run's training clips, or its steps "
                         "are partial batches and the comparison measures batch size, not data")
    ap.add_argument("--weights", default="random", help="VGG16 weights (memory does not depend on them)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (counted in the RSS)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)

    from merlib.options import make_run_config
    from merlib.experiment import prepare

    config = make_run_config(synth_preset=args.preset, profile="paper", blocks=args.blocks,
                             epochs=args.epochs, weights=args.weights)
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, device="cpu", loader_workers=args.workers, batch_size=args.batch))
    prepared = prepare(config, progress=False)
    ok = prepared.manifest[prepared.manifest["status"] == "ok"]
    smallest = len(ok) - ok.groupby("subject").size().max()
    if args.batch > smallest:
        raise SystemExit(f"--batch {args.batch} exceeds the {smallest} training clips of the smaller "
                         f"run's largest held-out subject: its steps would be partial batches")
    print(f"{config.data.name}: paper path on the CPU ({config.train.weights} VGG16, "
          f"{config.train.epochs} epoch(s), {args.blocks} IBs, batch {config.train.batch_size}, "
          f"{args.workers} loader workers), the first {args.folds} LOSO fold(s) per size", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "config.json"
        cfg_file.write_text(json.dumps(config.to_dict()))
        for times in (1, args.repeat):
            manifest = Path(tmp) / f"manifest-x{times}.csv"
            repeat_subjects(prepared.manifest, times).to_csv(manifest, index=False)
            out = Path(tmp) / f"run-x{times}"
            child, peak, seconds = _measure(
                [sys.executable, __file__, "--child", "--config", str(cfg_file), "--manifest",
                 str(manifest), "--out", str(out), "--folds", str(args.folds)])
            rows.append({"size": "N" if times == 1 else f"{times}N", "clips": child["clips"],
                         "subjects": child["subjects"], "peak RSS, process tree (MB)": peak / 2**20,
                         "peak RSS, trainer (MB)": child["ru_maxrss_mb"],
                         "disk written (KB)": _disk(out) / 1024, "seconds": seconds})
            print(f"  {rows[-1]['size']}: {child['clips']} clips, peak RSS {peak / 2**20:.0f} MB, "
                  f"{rows[-1]['disk written (KB)']:.1f} KB written, {seconds:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    ok = True
    for col in ("peak RSS, process tree (MB)", "disk written (KB)"):
        ratio = table[col].iloc[1] / table[col].iloc[0]
        within = abs(ratio - 1) <= TOLERANCE
        ok &= within
        print(f"{col}: {args.repeat}N / N = {ratio:.3f} ({'within' if within else 'OUTSIDE'} "
              f"{TOLERANCE:.0%})")
    print("memory and disk stay flat" if ok else "memory or disk grows with the dataset")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
