"""Training cost of the streaming `paper` profile: throughput, memory, disk, projected Table 5 time.

    .venv/bin/python bench/train.py [--clips 256] [--batch 16] [--epochs 2] [--workers 4]
                                    [--device cuda|cpu]

Times the real training path of `paper` (merlib.train.train_one_epoch_stream): clips read from
.npz cache files through the DataLoader, a fresh rotation + crop per clip on the device, the
frozen transfer layer without autograd, GIA's convolutions + BIA + Bi-LSTM trained with fused
Adam, bf16 autocast and channels_last on CUDA. The clips are random frames of the cache's shape
(T=10, 224x224): speed does not depend on the pixels. The first epoch is a warm-up.

Prints, per variant (Without / 24 / 10 IBs):
- analytic GFLOP per clip and step (merlib.flops: transfer forward, trainable forward + backward);
- measured training clips/s and the achieved TFLOP/s;
- on CUDA: the ratio to the bf16 dense matmul peak measured in the same run (an 8192^3 matmul),
  with the datasheet's dense bf16 figure printed beside it;
- peak GPU memory, peak host RSS and the disk one fold writes (one 1-epoch fold, run for real);
- the projected wall time of its column of Table 5: LOSO on CASME II, SAMM, SMIC and the
  MEGC2019 composite at the profile's epochs, from the official MEGC2019 list's clip and subject
  counts (each LOSO run trains n·(s−1) clip-epochs per epoch; evaluation counted too).
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from merlib.config import PROFILES, RunConfig
from merlib.flops import analytic_flops
from merlib.clips import ClipSet, clip_loader
from merlib.loso import build_context, run_fold
from merlib.train import evaluate_stream, make_optimizer, param_groups, train_one_epoch_stream

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s.
DATASHEET_BF16 = {"H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.5, "H100": 989.4,
                  "A100": 312.0, "L40S": 362.1}


def datasheet_peak(name: str) -> tuple[str, float] | None:
    for key, tflops in DATASHEET_BF16.items():  # the first key contained in the name
        if key in name:
            return key, tflops
    return None


def dataset_sizes() -> dict[str, tuple[int, int]]:
    """(clips, subjects) per dataset, from the MEGC2019 list (MEGC = all three sources)."""
    with resources.files("merlib.data").joinpath("megc2019_composite_3class.csv").open() as fh:
        megc = pd.read_csv(fh, dtype=str)
    sizes = {src: (len(g), g["subject"].nunique()) for src, g in megc.groupby("dataset")}
    sizes["megc"] = (len(megc), megc.groupby(["dataset", "subject"]).ngroups)
    return sizes


def matmul_peak(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fake_cache(root: Path, n: int, T: int = 10, subjects: int = 4) -> ClipSet:
    """``n`` clips of random frames written as cache .npz files, read back streaming."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        files.append(root / f"clip{i:04d}.npz")
        np.savez(files[-1], frames=rng.integers(0, 255, (T, 224, 224, 3), dtype=np.uint8))
    meta = pd.DataFrame({"dataset": "bench", "source": "bench",
                         "subject": [f"s{i % subjects}" for i in range(n)],
                         "clip": [f"clip{i:04d}" for i in range(n)]})
    return ClipSet(None, rng.uniform(40, 180, (n, T, 24, 2)).astype(np.float32),
                   np.full((n, T, 24), 48.0, np.float32), rng.integers(0, 3, n), meta,
                   tuple(map(str, files)))


def measure(blocks: int, clips: ClipSet, args: argparse.Namespace, device: torch.device,
            workdir: Path) -> dict:
    paper = PROFILES["paper"]
    train = dataclasses.replace(paper, model=dataclasses.replace(paper.model, blocks=blocks),
                                weights="random", device=device.type, batch_size=args.batch,
                                loader_workers=args.workers, epochs=1)
    config = RunConfig(train=train)
    k = max(blocks, 1)
    sub = dataclasses.replace(clips, centres=clips.centres[:, :, :k], sides=clips.sides[:, :, :k])
    ctx = build_context(config, clips=sub)
    idx = np.arange(len(sub))
    opt = make_optimizer(param_groups(ctx.model, train), train)
    loader = clip_loader(sub, idx, train, device, np.random.default_rng(0))
    gen = torch.Generator(device=device).manual_seed(0)
    y = torch.as_tensor(sub.labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.epochs):  # the first is the warm-up
        _sync(device)
        t0 = time.perf_counter()
        train_one_epoch_stream(ctx, opt, y, loader, train, gen)
        _sync(device)
        times.append(time.perf_counter() - t0)
    del loader
    train_cps = len(idx) / np.mean(times[1:] if len(times) > 1 else times)
    _sync(device)
    t0 = time.perf_counter()
    evaluate_stream(ctx, idx, train)
    _sync(device)
    eval_cps = len(idx) / (time.perf_counter() - t0)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    out = workdir / f"fold-blocks{blocks}"
    run_fold(config, 0, out, context=ctx)  # one real 1-epoch fold: what it writes to disk
    disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"train_cps": train_cps, "eval_cps": eval_cps, "gpu_peak_gib": gpu_peak,
            "disk_kib": disk / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=256,
                    help="clips per timed epoch (enough steps that the first batch's latency is small)")
    ap.add_argument("--batch", type=int, default=PROFILES["paper"].batch_size)
    ap.add_argument("--epochs", type=int, default=2, help="timed passes; the first is a warm-up")
    ap.add_argument("--workers", type=int, default=PROFILES["paper"].loader_workers)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default="0,24,10")
    args = ap.parse_args()
    device = torch.device(args.device)
    paper = PROFILES["paper"]
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); streaming paper path, {args.clips} clips x {args.epochs} "
          f"epochs (first = warm-up), batch {args.batch}, {args.workers} loader workers; "
          f"torch {torch.__version__}", flush=True)
    peak = sheet = None
    if device.type == "cuda":
        peak = matmul_peak(device)
        sheet = datasheet_peak(name)
        print(f"bf16 dense matmul peak measured here: {peak / 1e12:.1f} TFLOP/s; datasheet: "
              + (f"{sheet[1]:.1f} TFLOP/s ({sheet[0]})" if sheet else "unknown for this device"))
    else:
        print("no GPU: CPU figures only; no GPU figure is measured or claimed by this run")
    sizes = dataset_sizes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = fake_cache(Path(tmp), args.clips)
        for blocks in map(int, args.variants.split(",")):
            fl = analytic_flops(dataclasses.replace(paper.model, blocks=blocks))
            per_clip = fl["total"]  # transfer forward + trainable forward and backward
            m = measure(blocks, clips, args, device, Path(tmp))
            achieved = per_clip * m["train_cps"]
            clip_epochs = sum(paper.epochs * n * (s - 1) for n, s in sizes.values())
            evals = sum(n for n, _ in sizes.values())
            hours = (clip_epochs / m["train_cps"] + evals / m["eval_cps"]) / 3600
            rows.append({
                "variant": {0: "Without IBs", 24: "24 IBs", 10: "10 IBs"}[blocks],
                "GFLOP/clip step": per_clip / 1e9,
                "train clips/s": m["train_cps"], "achieved TFLOP/s": achieved / 1e12,
                **({"% of measured bf16 peak": 100 * achieved / peak} if peak else {}),
                **({"peak GPU GiB": m["gpu_peak_gib"]} if m["gpu_peak_gib"] is not None else {}),
                "peak host RSS so far GiB": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                      + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 2**20,
                "disk per fold KiB": m["disk_kib"],
                "Table 5 column, h": hours,
            })
            print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3g}"),
                  flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"projected full Table 5 (3 variants x 4 datasets, LOSO, {paper.epochs} epochs): "
          f"{table['Table 5 column, h'].sum():.1f} h on this device")
    print("datasets (clips, subjects): " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    print("peak host RSS: this process's peak plus its largest finished child's (loader workers)")


if __name__ == "__main__":
    main()
