"""Training cost of the `paper` profile: analytic FLOPs, measured throughput, projected Table 5 time.

    .venv/bin/python bench/train.py [--steps 3] [--batch 2]

Prints, per variant (0 / 24 / 10 IBs):
- the analytic FLOPs per clip of one training step (forward + backward; frozen parts counted
  with no weight gradient, see merlib.flops.analytic_flops), split into the once-per-view transfer
  layer and the per-step trainable part;
- measured clips/s of a training step from cached transfer maps (what `paper` runs every step),
  and the achieved TFLOP/s;
- the projected wall time of the full Table 5 (3 variants x 4 datasets, LOSO, 100 epochs),
  using the clip and subject counts of the official MEGC2019 list shipped with merlib.
On CUDA it also measures the bf16 matmul peak in the same run and reports the ratio.
"""
from __future__ import annotations

import argparse
import time
from importlib import resources

import pandas as pd
import torch

from merlib.config import PROFILES
from merlib.flops import analytic_flops
from merlib.model import MERNet, ModelConfig
from merlib.train import make_optimizer
from merlib.weights import vgg16_features


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


def step_throughput(blocks: int, *, batch: int, steps: int, device: torch.device, T: int = 10) -> dict:
    """Clips/s of `paper` training steps (GIA convolutions + heads trained) from transfer maps,
    and of the once-per-view transfer layer."""
    cfg = ModelConfig(blocks=blocks, freeze_transfer=True, freeze_gia_convs=False)
    model = MERNet(config=cfg, vgg_features=vgg16_features("random")[0]).to(device)
    bf16 = device.type == "cuda"
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    k = max(blocks, 1)
    f28 = torch.randn(batch, T, 512, 28, 28, device=device)
    centres = torch.rand(batch, T, k, 2, device=device) * 180 + 20
    sides = torch.full((batch, T, k), 48.0, device=device)
    y = torch.randint(0, 3, (batch,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, PROFILES["paper"])  # fused Adam, L2 as coupled weight decay

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model.forward_from_maps(f28, None, centres if blocks else None,
                                             sides if blocks else None)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    train_cps = batch * steps / (time.perf_counter() - t0)

    frames = torch.rand(batch, T, 3, 224, 224, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model.transfer(frames)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.transfer(frames)
        _sync(device)
    transfer_cps = batch * steps / (time.perf_counter() - t0)
    return {"train_clips_per_s": train_cps, "transfer_clips_per_s": transfer_cps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2, help="clips per step (the paper uses 16)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    paper = PROFILES["paper"]
    print(f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'})"
          f", batch {args.batch}, {args.steps} timed steps, paper profile: {paper.epochs} epochs, "
          f"{paper.views} views per clip")
    peak = matmul_peak(device) if device.type == "cuda" else None
    if peak:
        print(f"bf16 matmul peak measured: {peak / 1e12:.1f} TFLOP/s")
    sizes = dataset_sizes()
    rows = []
    for blocks in (0, 24, 10):
        fl = analytic_flops(ModelConfig(blocks=blocks, freeze_transfer=True, freeze_gia_convs=False))
        transfer = fl["parts"]["transfer"]["forward"]
        per_step = fl["total"] - transfer  # trainable part: forward + backward, per clip
        t = step_throughput(blocks, batch=args.batch, steps=args.steps, device=device)
        achieved = per_step * t["train_clips_per_s"]
        # Table 5 for this variant: every LOSO fold trains on the other subjects' clips
        clip_epochs = sum(paper.epochs * n * (s - 1) for n, s in sizes.values())
        view_maps = sum(paper.views * n for n, _ in sizes.values())
        seconds = clip_epochs / t["train_clips_per_s"] + view_maps / t["transfer_clips_per_s"]
        rows.append({
            "variant": {0: "Without IBs", 24: "24 IBs", 10: "10 IBs"}[blocks],
            "GFLOP/clip fwd": fl["forward"] / 1e9, "GFLOP/clip bwd": fl["backward"] / 1e9,
            "GFLOP/clip per step": per_step / 1e9,
            "train clips/s": t["train_clips_per_s"], "transfer clips/s": t["transfer_clips_per_s"],
            "achieved TFLOP/s": achieved / 1e12,
            **({"% of bf16 peak": 100 * achieved / peak} if peak else {}),
            "Table 5 column (4 datasets), hours": seconds / 3600,
        })
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"projected full Table 5 (3 variants x 4 datasets, LOSO, {paper.epochs} epochs): "
          f"{table['Table 5 column (4 datasets), hours'].sum():.1f} h on this device")
    print("datasets (clips, subjects): " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
