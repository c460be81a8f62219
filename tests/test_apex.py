import numpy as np
import pytest

from merlib.preprocess.apex import apex_error, detect_apex, difference_curve, to_gray


def _bump_clip(n=15, peak=9, amplitude=40.0, seed=0):
    """Gray frames: a fixed random face plus a patch whose intensity rises to `peak` then decays.

    Eq. 16 divides by the change from the previous frame, so the rise is made slower than the
    decay: the frame after the peak then changes more than the peak did and cannot win."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 180, size=(16, 16))
    ramp = np.concatenate([np.linspace(0, 1, peak + 1), np.linspace(1, 0, n - peak)[1:]])
    frames = np.repeat(base[None], n, axis=0)
    frames[:, 4:10, 4:10] += amplitude * ramp[:, None, None]
    return frames + rng.normal(0, 0.5, frames.shape)


def test_known_peak_is_found():
    frames = _bump_clip(n=15, peak=9)
    res = detect_apex(frames)
    assert res.index == 9
    assert not res.fallback
    assert res.dif.shape == (15,)
    assert np.isnan(res.dif[0]) and np.isnan(res.dif[-1])
    assert np.all(np.isfinite(res.dif[1:-1]))


def test_uint8_rgb_peak_is_found():
    gray = np.clip(_bump_clip(n=12, peak=7), 0, 255)
    rgb = np.repeat(np.rint(gray)[..., None], 3, axis=-1).astype(np.uint8)
    assert detect_apex(rgb).index == 7


def test_constant_brightness_offset_changes_nothing():
    rng = np.random.default_rng(1)
    frames = rng.integers(20, 200, size=(9, 12, 10, 3)).astype(np.uint8)
    brighter = frames + np.uint8(30)  # no overflow: max 229
    a, b = detect_apex(frames), detect_apex(brighter)
    assert a.index == b.index
    np.testing.assert_allclose(a.dif, b.dif, rtol=1e-12, equal_nan=True)


def test_four_frame_toy_matches_hand_computation():
    # Two-pixel gray frames. Hand computation, onset 0, offset 3:
    # i=1: |x1-x0| = mean(2,4) = 3, |x1-x3| = mean(1,3) = 2, |x1-x0| = 3
    #      dif1 = (3+1)/(3+1) + (2+1)/(3+1) = 1.75
    # i=2: |x2-x0| = mean(8,1) = 4.5, |x2-x3| = mean(7,0) = 3.5, |x2-x1| = mean(6,3) = 4.5
    #      dif2 = 5.5/5.5 + 4.5/5.5 = 20/11
    frames = np.array([[[0, 0]], [[2, 4]], [[8, 1]], [[1, 1]]], dtype=float)
    res = detect_apex(frames)
    np.testing.assert_allclose(res.dif, [np.nan, 1.75, 20 / 11, np.nan], equal_nan=True)
    assert res.index == 2


def test_grayscale_uses_bt601_weights():
    rgb = np.zeros((1, 1, 1, 3))
    rgb[0, 0, 0] = (100, 50, 200)
    assert to_gray(rgb)[0, 0, 0] == pytest.approx(0.299 * 100 + 0.587 * 50 + 0.114 * 200)


def test_onset_offset_restrict_the_search():
    frames = _bump_clip(n=20, peak=4)
    res = detect_apex(frames, onset=8, offset=19)
    assert 8 < res.index < 19
    assert np.all(np.isnan(res.dif[:9])) and np.isnan(res.dif[19])


@pytest.mark.parametrize("n", [1, 2])
def test_clips_without_inner_frame_fall_back_to_onset(n):
    frames = np.zeros((n, 4, 4), dtype=np.uint8)
    res = detect_apex(frames)
    assert res.index == 0
    assert res.fallback
    assert np.all(np.isnan(res.dif))


def test_adjacent_onset_offset_inside_longer_clip_takes_middle():
    frames = _bump_clip(n=10, peak=5)
    assert detect_apex(frames, onset=3, offset=4).index == 3
    assert detect_apex(frames, onset=6, offset=6).index == 6


@pytest.mark.parametrize("kwargs", [dict(onset=5, offset=2), dict(onset=-1), dict(offset=10)])
def test_bad_onset_offset_raises(kwargs):
    with pytest.raises(ValueError, match="onset"):
        difference_curve(np.zeros((10, 4, 4)), **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        detect_apex(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError):
        detect_apex(np.zeros((5, 4)))


def test_apex_error_scalars_and_arrays():
    err = apex_error(10, 13, 30)
    assert err.frames == 3 and err.fraction == pytest.approx(0.1)
    err = apex_error([5, 20], [7, 20], [40, 10])
    np.testing.assert_allclose(err.frames, [2, 0])
    np.testing.assert_allclose(err.fraction, [0.05, 0.0])
    with pytest.raises(ValueError):
        apex_error(1, 2, 0)
