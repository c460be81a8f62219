"""How fast could the flow baselines' reference schedules run on this CPU at best?

    .venv/bin/python bench/cpu_floor.py [--threads 2] [--seconds 5]

A lower bound, not a projection: it counts the floating-point work of one LOSO run of STSTNet
(800 epochs) and OFF-ApexNet (3000 epochs) on the MEGC 2019 composite (442 samples, 68 folds,
every fold training on all samples but its subject's) with ``torch.utils.flop_counter`` (forward
and backward of the nets at their reference batch sizes), and divides it by the best rate this
CPU reaches at all: a large float32 matrix product (``torch.mm``, 2048 x 2048) on ``--threads``
threads, held for ``--seconds``. No real training step gets near that rate (the nets' layers have
3-16 channels), so the true time is longer; issue 20's target for STSTNet was 10 minutes.

Run it with the cores to itself: another process on them lowers the measured rate and so
raises the bound. It prints the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import merlib.baselines.nets as nets
from merlib.datasets.megc import megc_list
from merlib.registry import BASELINES


def matmul_rate(threads: int, seconds: float, n: int = 2048) -> float:
    """Best GFLOP/s of an n x n float32 matrix product over repeated timed bursts."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def step_flops(name: str) -> float:
    """FLOPs of one training sample: forward + backward of a batch at the reference batch size,
    divided by the batch."""
    spec = BASELINES[name]
    net = getattr(nets, spec.net)(**spec.net_kwargs)
    batch = spec.schedule["batch_size"]
    x = torch.randn(batch, len(spec.channels), 28, 28)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops() / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    rows = megc_list()
    subjects = rows["dataset"].astype(str) + "/" + rows["subject"].astype(str)
    n, counts = len(subjects), subjects.value_counts()
    # every fold trains on the samples of the other subjects: sum over folds of (n - n_subject)
    train_samples = int(sum(n - c for c in counts))
    print(f"load average before: {os.getloadavg()[0]:.2f}; cpu: {torch.backends.cpu.get_cpu_capability()}")
    rate = matmul_rate(args.threads, args.seconds)
    print(f"best float32 matmul rate on {args.threads} threads: {rate:.1f} GFLOP/s")
    for name in ("ststnet", "off-apexnet"):
        epochs = BASELINES[name].schedule["epochs"]
        per_sample = step_flops(name)
        total = per_sample * train_samples * epochs
        print(f"{name}: {per_sample / 1e6:.2f} MFLOP per training sample (forward + backward); "
              f"{len(counts)} folds x {epochs} epochs = {train_samples * epochs / 1e6:.1f} M sample "
              f"steps = {total / 1e12:.1f} TFLOP; at the matmul rate at least "
              f"{total / rate / 1e9 / 60:.1f} min")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
