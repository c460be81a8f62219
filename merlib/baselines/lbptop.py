"""LBP-TOP (Zhao & Pietikäinen, TPAMI 2007): LBP codes on the XY, XT and YT planes of a clip,
block histograms, concatenated (the MEGC 2019 baseline's descriptor; docs/DECISIONS.md,
"Baselines").

The codes come from ``skimage.feature.local_binary_pattern``; only the plane slicing and the
block histograms are written here.

Planes and sampling. A volume is (T, H, W). Each plane is an image with (rows, cols):
XY = (y, x), XT = (t, x), YT = (t, y). LBP-TOP samples an ellipse on each plane with the radii
of its two axes, (R_X, R_Y, R_T) = (1, 1, 4) in the MEGC setting. scikit-image samples a circle,
so for P = 4 — the MEGC setting, whose four neighbours lie on the plane's axes — each plane is
cut into three-row strips (rows i − R_row, i, i + R_row) and, for a column radius above 1, into
column phases (every R_col-th column); skimage's P = 4, R = 1 operator on such a strip samples
exactly the neighbours (i, c ± R_col) and (i ± R_row, c). With scikit-image's angle order,
bit p of a code is the neighbour at angle 2πp/P counter-clockwise from +col:
p = 0: +col, 1: −row, 2: −col, 3: +row; a bit is 1 when neighbour >= centre ("default" codes,
0 … 2^P − 1).

Only voxels whose whole neighbourhood lies inside the volume are centres (Zhao's LBPTOP.m does
the same): t in [R_T, T − R_T), y in [R_Y, H − R_Y), x in [R_X, W − R_X); with T = 10 and
R_T = 4 that is frames 4 and 5. Every plane uses the same centres.
"""
from __future__ import annotations

import numpy as np
from skimage.feature import local_binary_pattern

PLANES = ("XY", "XT", "YT")


def n_bins(points: int) -> int:
    """Bins of a "default" LBP histogram: 2^P."""
    return 2 ** points


def _check(volume: np.ndarray, radii: tuple[int, int, int], points: int) -> None:
    if points != 4:
        raise ValueError(f"only P = 4 is supported (neighbours on the plane's axes, so the elliptic "
                         f"XT/YT sampling is exact with skimage's circular operator), got P = {points}")
    if volume.ndim != 3:
        raise ValueError(f"volume must be (T, H, W), got {volume.shape}")
    if any(int(r) != r or r < 1 for r in radii):
        raise ValueError(f"radii must be positive integers (R_X, R_Y, R_T), got {radii}")
    rx, ry, rt = radii
    t, h, w = volume.shape
    if t <= 2 * rt or h <= 2 * ry or w <= 2 * rx:
        raise ValueError(f"volume {volume.shape} has no interior voxel for radii (x, y, t) = {radii}")


def _plane_codes(planes: np.ndarray, r_row: int, r_col: int, points: int) -> np.ndarray:
    """Codes of the interior pixels of a stack of plane images.

    planes (N, R, C) -> (N, R − 2·r_row, C − 2·r_col): the code of pixel (i, c) compares it with
    (i, c ± r_col) and (i ± r_row, c)."""
    n, rows, cols = planes.shape
    centres = np.arange(r_row, rows - r_row)
    strips = planes[:, np.stack([centres - r_row, centres, centres + r_row], 1), :]  # (N, R', 3, C)
    strips = strips.reshape(-1, cols)  # three-row strips one above the other: (N·R'·3, C)
    codes = np.zeros((n * len(centres), cols), dtype=np.int64)
    for phase in range(r_col):  # columns phase, phase + r_col, …: neighbours ±1 there are ±r_col here
        lbp = local_binary_pattern(strips[:, phase::r_col], points, 1, method="default")
        codes[:, phase::r_col] = lbp[1::3]  # each strip's middle row: its ±row neighbours are inside it
    return codes.reshape(n, len(centres), cols)[:, :, r_col:cols - r_col]


def lbp_top_codes(volume: np.ndarray, *, radii: tuple[int, int, int] = (1, 1, 4),
                  points: int = 4) -> dict[str, np.ndarray]:
    """LBP codes of every interior voxel on each plane.

    volume (T, H, W) integer grayscale; radii (R_X, R_Y, R_T) -> {"XY", "XT", "YT"}: each
    (T − 2R_T, H − 2R_Y, W − 2R_X) int64 codes in [0, 2^P)."""
    volume = np.asarray(volume)
    _check(volume, radii, points)
    rx, ry, rt = (int(r) for r in radii)
    t, h, w = volume.shape
    xy = _plane_codes(volume[rt:t - rt], ry, rx, points)  # (T', H', W'): rows y, cols x
    xt = _plane_codes(volume.transpose(1, 0, 2)[ry:h - ry], rt, rx, points)  # (H', T', W'): rows t, cols x
    yt = _plane_codes(volume.transpose(2, 0, 1)[rx:w - rx], rt, ry, points)  # (W', T', H'): rows t, cols y
    return {"XY": xy, "XT": xt.transpose(1, 0, 2), "YT": yt.transpose(1, 2, 0)}


def block_edges(size: int, blocks: int) -> np.ndarray:
    """Pixel edges of ``blocks`` equal blocks over ``size`` pixels, rounded: 224, 5 ->
    [0, 45, 90, 134, 179, 224]."""
    return np.round(np.linspace(0, size, blocks + 1)).astype(int)


def block_histograms(codes: np.ndarray, *, bins: int, blocks: tuple[int, int],
                     frame: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """Normalised code histograms of a grid of spatial blocks.

    codes (T', H', W') of the centres whose first row/column sits at ``offset`` (y, x) in a
    ``frame`` (H, W) split into ``blocks`` (rows, cols) equal blocks; each centre counts in the
    block holding it -> (rows·cols, bins), each row summing to 1 (0 for a block with no centre)."""
    (by, bx), (h, w), (oy, ox) = blocks, frame, offset
    row_block = np.searchsorted(block_edges(h, by), oy + np.arange(codes.shape[1]), side="right") - 1
    col_block = np.searchsorted(block_edges(w, bx), ox + np.arange(codes.shape[2]), side="right") - 1
    block = (row_block[:, None] * bx + col_block[None, :])  # (H', W')
    flat = (np.broadcast_to(block, codes.shape) * bins + codes).ravel()
    hist = np.bincount(flat, minlength=by * bx * bins).reshape(by * bx, bins).astype(np.float64)
    total = hist.sum(1, keepdims=True)
    return np.divide(hist, total, out=np.zeros_like(hist), where=total > 0)


def lbp_top_histograms(volume: np.ndarray, *, radii: tuple[int, int, int] = (1, 1, 4),
                       points: int = 4, blocks: tuple[int, int] = (5, 5)) -> np.ndarray:
    """LBP-TOP descriptor of a grayscale clip.

    volume (T, H, W) -> (rows·cols, 3, 2^P): per spatial block (row-major), the XY, XT and YT
    histograms, each normalised to sum 1. Flattened, the MEGC setting gives 25·3·16 = 1200."""
    codes = lbp_top_codes(volume, radii=radii, points=points)
    rx, ry, _ = radii
    frame = np.asarray(volume).shape[1:]
    return np.stack([block_histograms(codes[p], bins=n_bins(points), blocks=blocks, frame=frame,
                                      offset=(ry, rx)) for p in PLANES], 1)
