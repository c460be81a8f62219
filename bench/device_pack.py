"""Prepare, on the CPU machine, the folder a GPU check travels with (issue 22; `make device-pack`).

    .venv/bin/python bench/device_pack.py [OUT] [--preset demo] [--frames 0] [--quality 95]

The GPU machine has torch but no face_recognition, no papermill and no network, and at most
64 MiB may travel with the working tree. So the check trains from what is prepared here:

- ``clips/<subject>__<clip>.npz``: every usable clip of the SynthME preset's preprocessing cache
  (``paper`` profile, the demo by default), its aligned frames as JPEG (quality ``--quality``;
  the mean absolute pixel error against the cache is measured and recorded) and its 10 and 24
  IPs as they are;
- ``vgg16_conv1_1-conv5_2_fp16.pth``: the ImageNet VGG16 layers the model uses (features[:28]) in
  half precision, cut from the hash-checked file ``merlib weights`` fetched;
- ``pack.json``: what the pack holds and where it came from (commit, preset, sizes, errors).

Prints the pack's size, the tracked files' size, and the one command line that runs the check on
the GPU machine (``bench/device_check.sh``). ``--frames N`` keeps N frames per clip (first, last
and evenly between) and ``--subjects N`` the first two clips of N subjects: the dry run's pack
(``--preset tiny --frames 1 --subjects 3``), never a measured one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from merlib.config import git_commit, project_root
from merlib.experiment import prepare
from merlib.files import atomic_write_text
from merlib.options import make_run_config
from merlib.weights import WeightsUnavailable

WEIGHTS_NAME = "vgg16_conv1_1-conv5_2_fp16.pth"
USED_LAYERS = 28  # MERNet reads features[:28] (transfer layer and GIA convolutions)
CARRY_LIMIT = 64 * 2**20


def encode_frames(frames: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(T, H, W, 3) uint8 RGB -> concatenated JPEG bytes, per-frame offsets, mean |error|."""
    blobs, errors = [], []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        back = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        errors.append(np.abs(back.astype(np.int16) - f).mean())
        blobs.append(buf.ravel())
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    return np.concatenate(blobs), offsets, float(np.mean(errors))


def keep_frames(n: int, keep: int) -> np.ndarray:
    """Indices of ``keep`` frames of ``n``: first, last and evenly between (all when 0)."""
    if keep <= 0 or keep >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, keep).round().astype(int))


def pack_weights(out: Path) -> dict:
    """features[:28] of the ImageNet VGG16 in float16; what it was cut from."""
    from merlib.weights import fetch_imagenet, load_state_file

    path, route = fetch_imagenet(routes=("cache",))
    state = load_state_file(path)
    used = {k: v.to(torch.float16) for k, v in state.items() if int(k.split(".")[0]) < USED_LAYERS}
    torch.save(used, out / WEIGHTS_NAME)
    return {"file": WEIGHTS_NAME, "layers": f"features[:{USED_LAYERS}] (conv1_1 ... conv5_2)",
            "dtype": "float16", "from": str(path.name), "route": route,
            "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def tracked_bytes(root: Path) -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                           check=True).stdout.split(b"\0")
    return sum((root / f.decode()).stat().st_size for f in files if f and (root / f.decode()).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=project_root() / "build" / "device-pack")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--frames", type=int, default=0, help="frames kept per clip (0: all; dry run: 2)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality of the frames")
    ap.add_argument("--subjects", type=int, default=0,
                    help="keep the first 2 clips of this many subjects (0: every clip; dry run: 3)")
    ap.add_argument("--require-weights", action="store_true",
                    help="stop when the ImageNet VGG16 file is missing (`make weights` fetches it); "
                         "without it such a pack holds none and the check uses random weights")
    args = ap.parse_args()
    t0 = time.time()
    config = make_run_config(synth_preset=args.preset, profile="paper", blocks=10)
    prepared = prepare(config, progress=False)
    ok = prepared.manifest[prepared.manifest["status"] == "ok"]
    if args.subjects:
        keep = sorted(ok["subject"].unique())[:args.subjects]
        ok = ok[ok["subject"].isin(keep)].groupby("subject").head(2)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "clips").mkdir(parents=True)
    rows, errors = [], []
    for row in ok.itertuples():
        with np.load(row.file) as z:
            arrays = {k: z[k] for k in ("frames", "ip10", "side10", "ip24", "side24")}
        keep = keep_frames(len(arrays["frames"]), args.frames)
        jpeg, offsets, err = encode_frames(arrays["frames"][keep], args.quality)
        errors.append(err)
        name = f"{Path(row.file).stem}.npz"
        np.savez(out / "clips" / name, jpeg=jpeg, offsets=offsets,
                 **{k: v[keep] for k, v in arrays.items() if k != "frames"})
        rows.append({"dataset": row.dataset, "source": row.source, "subject": row.subject,
                     "clip": row.clip, "label": row.label, "file": f"clips/{name}"})
    try:
        weights = pack_weights(out)
    except WeightsUnavailable as exc:
        if args.require_weights:
            raise SystemExit(f"no ImageNet VGG16 weights to pack ({exc}); run `make weights`")
        print("no ImageNet VGG16 weights here: the pack holds none (the check uses random VGG16)")
        weights = None
    record = {"commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "dataset": config.data.name, "clips": rows, "frames_per_clip": args.frames or "all",
              "dry_run_subset": args.subjects or None,
              "jpeg_quality": args.quality, "mean_abs_pixel_error": float(np.mean(errors)),
              "weights": weights, "dry_run_pack": bool(args.frames or args.subjects)}
    atomic_write_text(out / "pack.json", json.dumps(record, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    root = project_root()
    tracked = tracked_bytes(root)
    rel = out.relative_to(root) if out.is_relative_to(root) else out
    print(f"pack {rel}: {len(rows)} clips of {config.data.name}, frames JPEG q{args.quality} "
          f"(mean |pixel error| {record['mean_abs_pixel_error']:.2f} of 255), weights "
          f"{'ImageNet conv1_1-conv5_2 fp16' if weights else 'none (random on the device)'}; "
          f"{size / 2**20:.1f} MiB + tracked files {tracked / 2**20:.1f} MiB = "
          f"{(size + tracked) / 2**20:.1f} MiB of the 64 MiB that may travel; {time.time() - t0:.0f} s")
    if size + tracked > CARRY_LIMIT:
        raise SystemExit("too large to travel: lower --quality or the preset")
    print("run on the GPU machine (device tool: carry ['" + str(rel) + "'], timeout_s 600):")
    print(f"  bash bench/device_check.sh --pack {rel} --out $OUT")


if __name__ == "__main__":
    main()
