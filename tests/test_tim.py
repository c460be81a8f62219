import numpy as np
import pytest

import merlib.preprocess.tim as tim
from merlib.preprocess.tim import curve_embedding, path_laplacian, tim_interpolate, tim_weights


@pytest.mark.parametrize("n", [3, 7, 40])
def test_curve_samples_are_path_graph_laplacian_eigenvectors(n):
    lap = path_laplacian(n)
    assert lap.shape == (n, n) and lap[0, 0] == 1 and lap[1, 1] == 2 and lap[0, 1] == -1
    y = curve_embedding(n, np.arange(1, n + 1) / n)          # (n-1, n)
    eigenvalues = 2 - 2 * np.cos(np.pi * np.arange(1, n) / n)
    np.testing.assert_allclose(lap @ y.T, y.T * eigenvalues, atol=1e-10)
    # and they span everything but the constant vector
    np.testing.assert_allclose(y @ np.ones(n), 0, atol=1e-10)
    assert np.linalg.matrix_rank(y) == n - 1


@pytest.mark.parametrize("n", [3, 5, 10, 23])
def test_n_equally_spaced_outputs_return_the_input(n):
    rng = np.random.default_rng(n)
    frames = rng.integers(0, 256, size=(n, 6, 5, 3)).astype(np.uint8)
    np.testing.assert_array_equal(tim_interpolate(frames, n_out=n), frames)
    floats = rng.normal(size=(n, 4, 4))
    np.testing.assert_allclose(tim_interpolate(floats, n_out=n), floats, atol=1e-9)


@pytest.mark.parametrize("n, tol", [(3, 0.1), (5, 0.1), (17, 0.02), (30, 0.01), (120, 0.002)])
def test_linear_motion_is_followed(n, tol):
    # frame(s) = a + s b for s = 0..n-1; output j sits at s = j (n-1) / 9. TIM is a cosine-series
    # interpolant, exact at the inputs, close (not exact) in between: tol is in units of |b|.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5, 5))
    frames = a + np.arange(n)[:, None, None] * b
    out = tim_interpolate(frames, n_out=10)
    expected = a + np.linspace(0, n - 1, 10)[:, None, None] * b
    assert np.max(np.abs(out - expected) / np.abs(b).max()) < tol


@pytest.mark.parametrize("n", [1, 2, 4, 9, 10, 37, 150])
def test_shapes_dtype_and_endpoints(n):
    rng = np.random.default_rng(n)
    frames = rng.integers(0, 256, size=(n, 12, 8, 3)).astype(np.uint8)
    out = tim_interpolate(frames, n_out=10)
    assert out.shape == (10, 12, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], frames[0])
    np.testing.assert_array_equal(out[-1], frames[-1])


def test_one_frame_is_repeated():
    frame = np.arange(24, dtype=np.uint8).reshape(1, 4, 6)
    out = tim_interpolate(frame, n_out=10)
    assert out.shape == (10, 4, 6)
    assert np.all(out == frame[0])


def test_two_frames_are_interpolated_linearly():
    frames = np.stack([np.zeros((3, 3)), np.full((3, 3), 9.0)])
    out = tim_interpolate(frames, n_out=10)
    np.testing.assert_allclose(out[:, 0, 0], np.arange(10.0))


def test_smooth_uint8_clip_stays_in_range():
    # A slow ramp from 50 to 200: a sensible interpolant stays within the input's range (+/- 1
    # for rounding) and is monotone.
    n = 6
    frames = np.repeat(np.linspace(50, 200, n)[:, None, None], 16, axis=1).repeat(16, axis=2)
    out = tim_interpolate(frames.astype(np.uint8), n_out=10).astype(int)
    assert out.min() >= 49 and out.max() <= 201
    assert np.all(np.diff(out[:, 0, 0]) >= 0)


def test_uint8_saturation_is_clipped_not_wrapped():
    # An alternating clip makes the cosine interpolant overshoot [0, 255] between inputs.
    frames = np.array([0, 255, 0, 255, 0], dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    floats = tim_interpolate(frames.astype(np.float64), n_out=13)
    assert floats.max() > 255.5 or floats.min() < -0.5
    out = tim_interpolate(frames, n_out=13)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.clip(np.rint(floats), 0, 255))


def test_float32_keeps_dtype():
    frames = np.random.default_rng(3).normal(size=(7, 3, 3)).astype(np.float32)
    assert tim_interpolate(frames, n_out=4).dtype == np.float32


def test_weights_rows_sum_to_one():
    for n in (1, 2, 3, 11, 64):
        np.testing.assert_allclose(tim_weights(n, 10).sum(axis=1), 1.0, atol=1e-10)


def test_chunked_accumulation_matches_single_pass(monkeypatch):
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, size=(12, 40, 30, 3)).astype(np.uint8)
    whole = tim_interpolate(frames)
    monkeypatch.setattr(tim, "_CHUNK_VALUES", 1)  # forces the 4096-value minimum chunk
    np.testing.assert_array_equal(tim_interpolate(frames), whole)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        tim_interpolate(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError):
        tim_interpolate(np.zeros((3, 4, 4)), n_out=0)
