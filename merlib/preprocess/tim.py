"""Temporal interpolation model, TIM (Zhou, Zhao & Pietikäinen 2011; Pfister et al. 2011).

The n input frames are the nodes of the path graph P_n. The eigenvectors of its Laplacian,
except the constant one, are samples of continuous curves

    y_k(t) = sin(pi k t + pi (n - k) / (2 n)),  k = 1 .. n-1,  t in {1/n, 2/n, ..., 1}

so frame j (1-based) sits at y(j/n) in an (n-1)-dim embedding. TIM learns the linear map M from
that embedding to the mean-centred frames, M Y = X - mean (Y the (n-1, n) eigenvector matrix,
X the (D, n) frame matrix), and synthesises frames at new positions t as ``mean + M y(t)``.

Implementation note (memory): Y has full row rank and the centred frames are orthogonal to the
constant vector, so M = (X - mean) pinv(Y) is the unique solution and equals the map TIM obtains
via the SVD of the frame matrix. A new frame is then ``X (1/n + pinv(Y) y(t))``: a weighted sum of
the input frames with (n_out, n) weights computed from n x n matrices only, so nothing of size
D x D, or even D x n in float64, is ever built (frames are accumulated chunk by chunk).

The result is a trigonometric (cosine-series) interpolant: it passes through every input frame
and through the first and last frame exactly, and follows smooth motion closely, but it is not
piecewise linear. Two frames are interpolated linearly (the one-eigenvector curve is a sine arc);
one frame is repeated.
"""
from __future__ import annotations

import numpy as np

_CHUNK_VALUES = 1 << 22  # float64 values of the input per accumulation chunk (32 MiB)


def path_laplacian(n: int) -> np.ndarray:
    """Graph Laplacian L = D - A of the path graph on n nodes, (n, n) float64."""
    a = np.eye(n, k=1) + np.eye(n, k=-1)
    return np.diag(a.sum(axis=1)) - a


def curve_embedding(n: int, t: np.ndarray) -> np.ndarray:
    """(n-1, len(t)) values y_k(t) of the TIM curve, k = 1 .. n-1; at t = j/n they are the
    Laplacian eigenvectors of P_n (eigenvalue 2 - 2 cos(pi k / n))."""
    k = np.arange(1, n)[:, None]
    return np.sin(np.pi * k * np.asarray(t, dtype=np.float64)[None, :] + np.pi * (n - k) / (2 * n))


def tim_weights(n: int, n_out: int) -> np.ndarray:
    """(n_out, n) weights: output frame = weights @ input frames, at n_out positions equally
    spaced over t in [1/n, 1]."""
    if n < 1 or n_out < 1:
        raise ValueError(f"need at least one input and one output frame, got n={n}, n_out={n_out}")
    if n == 1:
        return np.ones((n_out, 1))
    if n == 2:  # linear between the two frames
        s = np.linspace(0.0, 1.0, n_out) if n_out > 1 else np.zeros(1)
        return np.stack([1.0 - s, s], axis=1)
    t_in = np.arange(1, n + 1) / n
    t_out = np.linspace(1.0 / n, 1.0, n_out) if n_out > 1 else t_in[:1]
    y = curve_embedding(n, t_in)                             # (n-1, n)
    coef = np.linalg.pinv(y) @ curve_embedding(n, t_out)     # (n, n_out): mean-centred part
    return (coef + 1.0 / n).T                                # + mean: sum_j X_j / n


def tim_interpolate(frames: np.ndarray, n_out: int = 10) -> np.ndarray:
    """Resample a clip (N, H, W[, C]) to (n_out, H, W[, C]) frames with TIM, same dtype.

    Computed in float64; integer dtypes are rounded and clipped to their range.
    """
    frames = np.asarray(frames)
    if frames.ndim < 2 or frames.shape[0] == 0:
        raise ValueError(f"tim_interpolate needs a non-empty frame stack, got shape {frames.shape}")
    n = frames.shape[0]
    w = tim_weights(n, n_out)                                # (n_out, n)
    flat = frames.reshape(n, -1)
    out = np.empty((n_out, flat.shape[1]), dtype=frames.dtype)
    integer = np.issubdtype(frames.dtype, np.integer)
    lo, hi = (np.iinfo(frames.dtype).min, np.iinfo(frames.dtype).max) if integer else (None, None)
    chunk = max(4096, _CHUNK_VALUES // max(n, n_out))  # bounded by the larger of in/out
    for start in range(0, flat.shape[1], chunk):
        part = w @ flat[:, start:start + chunk].astype(np.float64)    # (n_out, chunk)
        if integer:
            part = np.clip(np.rint(part), lo, hi)
        out[:, start:start + chunk] = part
    return out.reshape((n_out,) + frames.shape[1:])
