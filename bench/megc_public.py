"""The public MEGC2019 release through merlib: index counts, faces found per route, landmark
plausibility, on your own copy of the release (a clone of wangzhifengharrison/HTNet).

    .venv/bin/python bench/megc_public.py --data-root DIR [--jobs 2] [--cache DIR]
                                          [--all-routes] [--montage /tmp/DIR]

Prints:
- the index: rows per source and status, and every bad row with its reason;
- preprocessing (single-frame recipe, ``megc_public.preprocess_config()``) into ``--cache``
  (default: a fresh temporary folder): clips ok / failed, and the faces per ``face_route``;
- landmark plausibility per route: on the source frame, ``landmarks_ok``, the share of the 68
  points inside the frame and the inter-ocular distance as a share of the frame width; on the
  aligned frame, every one of the 72 points inside and the mean distance of the 68 points to the
  template face as a share of the template's eye distance (``residual``, the measure by which the
  recipe accepts a fallback route's box); a clip is *usable* when all hold and the residual is at
  most ``recipe.FALLBACK_MAX_RESIDUAL``;
- with ``--all-routes``: how many faces each detector route finds on its own, and how far the
  landmarks from the whole-frame box and the padded route's box lie from the detector's where the
  detector finds the face (mean point distance / inter-ocular distance);
- with ``--montage DIR``: PNG sheets of aligned faces with their landmarks, for looking at (the
  faces of research participants: keep them out of the repository).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from merlib.datasets import megc_public, read_frame
from merlib.faces import FACE_ROUTES, detect_face, landmarks68, pad_image
from merlib.preprocess.align import template68
from merlib.preprocess.cache import summary
from merlib.preprocess.landmarks import landmarks_ok, to68
from merlib.preprocess.recipe import FALLBACK_MAX_RESIDUAL
from merlib.preprocess.workers import run


def eye_distance(points68: np.ndarray) -> float:
    return float(np.linalg.norm(points68[36:42].mean(axis=0) - points68[42:48].mean(axis=0)))


def plausibility(manifest: pd.DataFrame, index: pd.DataFrame, size: int) -> pd.DataFrame:
    """One row per processed clip: route and the landmark checks (see the module docstring)."""
    files = dict(zip(index["subject"] + "/" + index["clip"], index["frame_file"]))
    template = template68(size)
    eyes = eye_distance(template)
    out = []
    for r in manifest[manifest["status"].eq("ok")].itertuples():
        with np.load(r.file) as z:
            src, aligned = z["landmarks68_source"].astype(np.float64), z["landmarks"][0]
            n_fallback = int(z["n_fallback"])
        h, w = read_frame(files[f"{r.subject}/{r.clip}"]).shape[:2]
        inside = ((src[:, 0] >= 0) & (src[:, 0] < w) & (src[:, 1] >= 0) & (src[:, 1] < h)).mean()
        out.append({"clip": f"{r.subject}/{r.clip}", "source": r.source, "route": r.face_route,
                    "landmarks_ok": landmarks_ok(src, (h, w)), "inside": float(inside),
                    "iod_frac": eye_distance(src) / w,
                    "aligned_inside": bool(np.all((aligned >= 0) & (aligned < size))),
                    "residual": float(np.linalg.norm(to68(aligned) - template, axis=1).mean()
                                      / eyes),
                    "n_fallback": n_fallback})
    return pd.DataFrame(out)


def manifest_rejections(cache: Path, index: pd.DataFrame, cfg) -> dict[str, str]:
    """subject/clip -> the routes whose box the recipe turned down, from the clips' records."""
    from merlib.preprocess.cache import cache_folder, read_record, record_path

    folder = cache_folder(cache, str(index["dataset"].iloc[0]), cfg)
    out = {}
    for row in index.to_dict("records"):
        rec = read_record(record_path(folder, row)) or {}
        if rec.get("face_rejected"):
            out[f"{row['subject']}/{row['clip']}"] = (f"{rec['face_rejected']} turned down, "
                                                     f"{rec.get('face_route') or 'none'} used")
    return out


def all_routes(index: pd.DataFrame) -> None:
    """Each detector route alone on every usable row, and the landmark agreement of the fallback
    boxes with the detector's box where the detector finds the face."""
    found = {"detector": 0, "padded": 0, "upsampled": 0}
    nme = {"whole_frame": [], "padded": []}
    rows = index[index["status"].eq("ok")]
    for path in rows["frame_file"]:
        img = read_frame(path)
        h, w = img.shape[:2]
        pad = int(round(0.25 * max(h, w)))
        box = detect_face(img)
        padded = detect_face(pad_image(img, pad))
        found["detector"] += box is not None
        found["padded"] += padded is not None
        found["upsampled"] += detect_face(img, upsample=2) is not None
        if box is None:
            continue
        ref = landmarks68(img, box)
        scale = eye_distance(ref)
        nme["whole_frame"].append(np.linalg.norm(landmarks68(img, (0, w, h, 0)) - ref, axis=1)
                                  .mean() / scale)
        if padded is not None:
            shifted = tuple(v - pad for v in padded)
            nme["padded"].append(np.linalg.norm(landmarks68(img, shifted) - ref, axis=1)
                                 .mean() / scale)
    print(f"\neach detector route alone, of {len(rows)} usable rows: "
          + ", ".join(f"{k} {v}" for k, v in found.items()))
    for k, v in nme.items():
        v = np.asarray(v)
        print(f"  landmarks from the {k} box vs the detector box ({len(v)} faces): mean point "
              f"distance / inter-ocular distance median {np.median(v):.3f}, "
              f"90th pct {np.percentile(v, 90):.3f}, max {v.max():.3f}")


def montage(plaus: pd.DataFrame, manifest: pd.DataFrame, folder: Path, seed: int = 0) -> None:
    """Sheets of aligned faces with their 72 landmarks: every fallback-route face, the eight
    farthest from the template, eight random detector faces."""
    import cv2
    from PIL import Image

    files = dict(zip(manifest["subject"] + "/" + manifest["clip"], manifest["file"]))
    picks = {
        "fallback_routes": plaus[plaus["route"] != "detector"]["clip"].tolist(),
        "farthest_from_template": plaus.nlargest(8, "residual")["clip"].tolist(),
        "random_detector": plaus[plaus["route"] == "detector"].sample(
            min(8, int((plaus["route"] == "detector").sum())), random_state=seed)["clip"].tolist(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, clips in picks.items():
        tiles = []
        for clip in clips:
            with np.load(files[clip]) as z:
                tile = np.ascontiguousarray(z["frames"][0])
                for x, y in z["landmarks"][0]:
                    cv2.circle(tile, (int(round(x)), int(round(y))), 2, (0, 255, 0), -1)
            cv2.putText(tile, clip, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1)
            tiles.append(tile)
        if not tiles:
            continue
        tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 6)
        sheet = np.vstack([np.hstack(tiles[i:i + 6]) for i in range(0, len(tiles), 6)])
        Image.fromarray(sheet).save(folder / f"{name}.png")
        print(f"  {folder / (name + '.png')}: {len(clips)} faces")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cache", help="preprocessing cache (default: a fresh temporary folder)")
    ap.add_argument("--all-routes", action="store_true")
    ap.add_argument("--montage", type=Path, help="write PNG sheets of aligned faces here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    index = megc_public.build_index(args.data_root)
    print(f"index: {len(index)} rows in {time.perf_counter() - t0:.1f} s")
    print(index.groupby(["source", "status"]).size().unstack(fill_value=0).to_string())
    print("labels (usable rows):", index[index["status"].eq("ok")]["label"].value_counts()
          .to_dict())
    bad = index[index["status"].ne("ok") | index["flags"].ne("")]
    print(f"bad or flagged rows: {len(bad)}")
    for r in bad.itertuples():
        print(f"  {r.subject}/{r.clip}: {r.status} [{r.flags}] {r.reason}")

    cfg = megc_public.preprocess_config()
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="merlib-megc-"))
    try:
        t0 = time.perf_counter()
        manifest = run(index, cfg, cache, jobs=args.jobs, progress=False)
        print(f"\npreprocess (n_frames=1, jobs={args.jobs}): {time.perf_counter() - t0:.1f} s")
        print(summary(manifest))
        routes = manifest[manifest["status"].eq("ok")]["face_route"].value_counts()
        print("faces per route: " + ", ".join(f"{k} {int(routes.get(k, 0))}"
                                                for k in FACE_ROUTES))
        plaus = plausibility(manifest, index, cfg.size)
        plaus["usable"] = (plaus["landmarks_ok"] & plaus["aligned_inside"]
                           & (plaus["residual"] <= FALLBACK_MAX_RESIDUAL))
        agg = plaus.groupby("route").agg(
            clips=("clip", "size"), landmarks_ok=("landmarks_ok", "sum"),
            inside_min=("inside", "min"), iod_frac_min=("iod_frac", "min"),
            iod_frac_median=("iod_frac", "median"), iod_frac_max=("iod_frac", "max"),
            aligned_inside=("aligned_inside", "sum"), residual_median=("residual", "median"),
            residual_max=("residual", "max"), fallback_frames=("n_fallback", "sum"),
            usable=("usable", "sum"))
        print("\nlandmark plausibility per route:\n" + agg.round(3).to_string())
        print(f"usable: {int(plaus['usable'].sum())} of {len(index)} rows")
        worst = plaus.nlargest(5, "residual")
        print("farthest from the template: " + ", ".join(
            f"{r.clip} ({r.route}) {r.residual:.3f}" for r in worst.itertuples()))
        rejected = manifest_rejections(cache, index, cfg)
        print(f"fallback boxes turned down: {len(rejected)}" + "".join(
            f"\n  {k}: {v}" for k, v in rejected.items()))
        if args.all_routes:
            all_routes(index)
        if args.montage:
            print("\nmontage:")
            montage(plaus, manifest, args.montage)
    finally:
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
