"""The GPU check (issue 22): one command that turns a short device window into the missing figures.

    python3 bench/device_check.py --pack build/device-pack --out OUT [--budget-s 480]
    .venv/bin/python bench/device_check.py --dry-run --out OUT      # CPU, tiny, in make test

Runs with what the GPU machine has (torch, torchvision, numpy, pandas, scikit-learn, OpenCV; no
face_recognition, papermill or network) from a pack ``bench/device_pack.py`` made on the CPU
machine, and writes into OUT:

1. the device, driver, torch and CUDA versions and a measured bf16 matmul peak;
2. ``bench/train.py``'s measurement of the streaming ``paper`` step at batch 16 for the three
   variants: clips/s, achieved TFLOP/s and its share of the measured peak, peak GPU memory, and
   the projected time of the full Table 5 (3 variants x 4 datasets, LOSO, 100 epochs);
3. the ``paper`` profile on the pack's SynthME (demo), 10 IBs, LOSO, ImageNet VGG16, streaming
   augmentation, with as many epochs as fit in what is left of ``--budget-s`` (at most 100):
   pooled Acc / UF1 / UAR, the mean training loss per epoch, and the same with the training
   labels shuffled when time allows; the oracle diagnostic beside it, labelled invalid;
4. ``device_check.json`` and ``device_check.md`` with the provenance (commit of the pack, device,
   versions, epochs, wall time) - commit them under ``bench/results/device-check/``, where the
   README and notebook 04 read them - plus the per-variant step figures, predictions and losses.

``--dry-run`` exercises every step but the CUDA-only measurements on the CPU in under a minute:
a pack of 6 clips (3 subjects) of tiny SynthME with 1 frame each, one variant's step figures,
one epoch of LOSO.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # merlib and bench/train.py, not installed there

from merlib import metrics  # noqa: E402
from merlib.config import PROFILES, RunConfig  # noqa: E402
from merlib.loso import EPOCHS_FILE, run_loso  # noqa: E402
from merlib.clips import load_clipset  # noqa: E402
from merlib.flops import analytic_flops  # noqa: E402
from merlib.registry import VARIANTS  # noqa: E402

MAX_EPOCHS = 100
LOSO_OVERHEAD = 1.6  # measured LOSO time / step-rate estimate (H100, 2026-12-05)


def log(msg: str) -> None:
    print(f"[device-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def unpack(pack: Path, cache: Path) -> tuple[pd.DataFrame, dict]:
    """The pack's clips decoded into a preprocessing-cache folder; its manifest and record."""
    record = json.loads((pack / "pack.json").read_text())
    rows = []
    for clip in record["clips"]:
        with np.load(pack / clip["file"]) as z:
            jpeg, offsets = z["jpeg"], z["offsets"]
            frames = np.stack([cv2.cvtColor(cv2.imdecode(jpeg[a:b], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                               for a, b in zip(offsets[:-1], offsets[1:])])
            arrays = {k: z[k] for k in ("ip10", "side10", "ip24", "side24")}
        file = cache / Path(clip["file"]).name
        np.savez(file, frames=frames, **arrays)
        rows.append({**{k: clip[k] for k in ("dataset", "source", "subject", "clip", "label")},
                     "status": "ok", "file": str(file)})
    return pd.DataFrame(rows), record


def device_weights(pack: Path, record: dict, tmp: Path) -> str:
    """A full VGG16 ``features`` state file from the pack's layers (conv5_3, which the model never
    reads, zero) for ``TrainConfig.weights``; "random" when the pack has none."""
    if not record.get("weights"):
        return "random"
    state = {k: v.float() for k, v in torch.load(pack / record["weights"]["file"],
                                                 weights_only=True).items()}
    state["28.weight"] = torch.zeros(512, 512, 3, 3)
    state["28.bias"] = torch.zeros(512)
    path = tmp / "vgg16_features_from_pack.pth"
    torch.save(state, path)
    return str(path)


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "host": platform.platform(),
           "device": torch.cuda.get_device_name(0) if device.type == "cuda" else
           f"CPU ({torch.get_num_threads()} threads)"}
    if device.type == "cuda":
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            env["driver"] = f"unknown ({type(exc).__name__})"
    return env


def step_figures(device: torch.device, dry: bool, tmp: Path) -> tuple[pd.DataFrame, float | None]:
    """bench/train.py's measurement of the paper step per variant, and the matmul peak."""
    import train as bench_train  # bench/train.py

    peak = bench_train.matmul_peak(device) if device.type == "cuda" else None
    args = argparse.Namespace(batch=2 if dry else 16, epochs=1 if dry else 2,
                              workers=0 if dry else 4, clips=2 if dry else 128)
    (tmp / "bench-clips").mkdir()
    clips = bench_train.fake_cache(tmp / "bench-clips", args.clips, T=1 if dry else 10)
    sizes = bench_train.dataset_sizes()
    paper = PROFILES["paper"]
    rows = []
    for blocks in (10,) if dry else (0, 24, 10):  # the dry run: the same code, one variant
        m = bench_train.measure(blocks, clips, args, device, tmp / "bench")
        per_clip = analytic_flops(dataclasses.replace(paper.model, blocks=blocks), T=1 if dry else 10)["total"]
        clip_epochs = sum(paper.epochs * n * (s - 1) for n, s in sizes.values())
        hours = (clip_epochs / m["train_cps"] + sum(n for n, _ in sizes.values()) / m["eval_cps"]) / 3600
        rows.append({"variant": VARIANTS[blocks], "batch": args.batch,
                     "train clips/s": m["train_cps"], "eval clips/s": m["eval_cps"],
                     "GFLOP per clip step": per_clip / 1e9,
                     "achieved TFLOP/s": per_clip * m["train_cps"] / 1e12,
                     "% of measured bf16 peak": 100 * per_clip * m["train_cps"] / peak if peak else None,
                     "peak GPU GiB": m["gpu_peak_gib"],
                     "peak host RSS GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                     "Table 5 column on this device, h": hours})
        log(f"{VARIANTS[blocks]}: {m['train_cps']:.2f} train clips/s")
    return pd.DataFrame(rows), peak


def loso(manifest: pd.DataFrame, weights: str, device: torch.device, epochs: int, shuffled: bool,
         out: Path, dry: bool) -> tuple[pd.DataFrame, dict]:
    paper = PROFILES["paper"]
    train = dataclasses.replace(paper, epochs=epochs, weights=weights, device=device.type,
                                shuffle_labels=shuffled, batch_size=4 if dry else paper.batch_size,
                                loader_workers=0 if dry else paper.loader_workers)
    config = RunConfig(train=train)
    clips = load_clipset(manifest, 10, frames=False)
    pred = run_loso(clips, config, out, progress=False)
    losses = np.array([json.loads((d / "fold.json").read_text())["losses"]
                       for d in sorted((out / "folds").iterdir())])
    epoch_probs = {int(d.name.split("_")[0]): np.load(d / EPOCHS_FILE)["probs"]
                   for d in sorted((out / "folds").iterdir())}
    pooled = metrics.compute_metrics(pred["y_true"], pred["y_pred"])
    return pred, {"pooled": pooled, "mean_loss_per_epoch": losses.mean(0).round(4).tolist(),
                  "oracle (not a valid result)": metrics.oracle_metrics(pred, epoch_probs),
                  "majority_class_share": float(pred["y_true"].value_counts(normalize=True).max())}


def markdown(result: dict, steps: pd.DataFrame) -> str:
    env, prov = result["environment"], result["provenance"]
    lines = [f"# GPU check ({'DRY RUN on the CPU: no GPU figure' if result['dry_run'] else env['device']})",
             "", f"- device: {env['device']}; driver {env.get('driver', '-')}; torch {env['torch']}, "
             f"CUDA {env['cuda']}; Python {env['python']}",
             f"- pack: commit {prov['commit']}, {prov['dataset']}, frames JPEG q{prov['jpeg_quality']} "
             f"(mean abs pixel error {prov['mean_abs_pixel_error']:.2f}), weights "
             f"{prov['weights']}", f"- wall time {result['wall_s']:.0f} s of a {result['budget_s']} s budget"]
    if result["bf16_peak_tflops"]:
        lines.append(f"- measured bf16 dense matmul peak: {result['bf16_peak_tflops']:.1f} TFLOP/s")
    lines += ["", f"## The paper step (bench/train.py), batch {int(steps['batch'].iloc[0])}", "",
              steps.to_markdown(index=False, floatfmt=".3g"), "",
              f"Projected full Table 5 (3 variants x 4 datasets, LOSO, 100 epochs) on this device: "
              f"{steps['Table 5 column on this device, h'].sum():.1f} h", "",
              f"## The paper profile on {prov['dataset']}, 10 IBs, LOSO, {result['epochs']} epochs", ""]
    for kind, run in result["loso"].items():
        p, o = run["pooled"], run["oracle (not a valid result)"]
        lines.append(f"- {kind} labels: Acc {p['acc']:.3f}, UF1 {p['uf1']:.3f}, UAR {p['uar']:.3f} "
                     f"(majority class {run['majority_class_share']:.3f} of clips); "
                     f"{metrics.ORACLE_LABEL}: UF1 {o['uf1']:.3f}")
        lines.append(f"  mean training loss per epoch: {', '.join(f'{v:.3f}' for v in run['mean_loss_per_epoch'])}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, default=ROOT / "build" / "device-pack")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall time for the whole check")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny pack, one epoch (make test)")
    args = ap.parse_args()
    t0 = time.time()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type != "cuda" and not args.dry_run:
        log("no CUDA device: nothing to measure (use --dry-run to exercise the script on the CPU)")
        return 2
    with tempfile.TemporaryDirectory(prefix="merlib-device-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "cache").mkdir()
        manifest, pack = unpack(args.pack, tmp / "cache")
        weights = device_weights(args.pack, pack, tmp)
        env = environment(device)
        log(f"{env['device']}; {len(manifest)} clips unpacked; weights {weights}")
        steps, peak = step_figures(device, args.dry_run, tmp)
        steps.to_csv(out / "step_figures.csv", index=False)
        cps = float(steps.loc[steps["variant"] == VARIANTS[10], "train clips/s"].iloc[0])
        n, folds = len(manifest), manifest["subject"].nunique()
        fold_epoch_s = n * (folds - 1) / folds / cps  # training clips of a fold, at the measured rate
        left = args.budget_s - (time.time() - t0) - 30  # room for writing, evaluation overheads
        # Both runs (true and shuffled labels) must fit. LOSO costs more than its training steps
        # (per-fold setup, evaluation): on an H100, 100 epochs x 10 folds took 309 s against 200 s
        # from the step rate alone, hence the overhead factor.
        per_run_epoch = folds * fold_epoch_s * LOSO_OVERHEAD
        epochs = 1 if args.dry_run else int(max(1, min(MAX_EPOCHS, 0.45 * left / per_run_epoch)))
        log(f"{folds} folds x {fold_epoch_s:.1f} s per fold-epoch (x{LOSO_OVERHEAD} for LOSO): {epochs} epochs")
        runs, run_s = {}, 0.0
        for shuffled in (False, True):
            spent = time.time() - t0
            if shuffled and not args.dry_run and spent + run_s > args.budget_s - 20:
                log(f"no time left for the shuffled-label control (the true-label run took {run_s:.0f} s)")
                break
            started = time.time()
            kind = "shuffled" if shuffled else "true"
            pred, runs[kind] = loso(manifest, weights, device, epochs, shuffled, tmp / f"loso-{kind}",
                                    args.dry_run)
            pred.to_csv(out / f"predictions_{kind}.csv", index=False)
            run_s = time.time() - started
            log(f"{kind} labels: UF1 {runs[kind]['pooled']['uf1']:.3f} in {run_s:.0f} s")
    result = {"dry_run": args.dry_run, "environment": env, "budget_s": args.budget_s,
              "bf16_peak_tflops": peak / 1e12 if peak else None,
              "provenance": {k: pack.get(k) for k in ("commit", "created", "dataset", "frames_per_clip",
                                                      "jpeg_quality", "mean_abs_pixel_error")}
              | {"weights": (pack.get("weights") or {}).get("layers", "random")},
              "step_figures": steps.to_dict(orient="records"), "epochs": epochs, "loso": runs,
              "wall_s": time.time() - t0}
    (out / "device_check.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (out / "device_check.md").write_text(markdown(result, steps))
    log(f"done in {result['wall_s']:.0f} s: {out / 'device_check.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
