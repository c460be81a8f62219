"""Baselines of Table 6 (merlib.baselines): LBP-TOP against a brute-force loop, TV-L1 against a
known shift, optical strain against the analytic value, the nets' shapes and sizes, the SVM's
training-fold-only fitting, and the feature cache's failure reporting and resume."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from skimage.feature import local_binary_pattern

import merlib.baselines as bl
from merlib.baselines import features as feat
from merlib.baselines import flow as bflow
from merlib.baselines import nets, svm
from merlib.baselines.lbptop import block_edges, block_histograms, lbp_top_codes, lbp_top_histograms


# --------------------------------------------------------------------------- LBP-TOP

def _brute_lbptop(vol: np.ndarray, radii: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """LBP-TOP codes by a loop over voxels. P = 4 on each plane, scikit-image's sampling order
    (bit p at angle 2πp/P counter-clockwise from +col: +col, −row, −col, +row; bit set when
    neighbour >= centre). Plane (rows, cols): XY (y, x), XT (t, x), YT (t, y)."""
    rx, ry, rt = radii
    t_n, h, w = vol.shape
    out = {p: np.zeros((t_n - 2 * rt, h - 2 * ry, w - 2 * rx), dtype=int) for p in ("XY", "XT", "YT")}

    def code(centre, neighbours):
        return sum(1 << p for p, v in enumerate(neighbours) if v >= centre)

    for t in range(rt, t_n - rt):
        for y in range(ry, h - ry):
            for x in range(rx, w - rx):
                c = vol[t, y, x]
                i = (t - rt, y - ry, x - rx)
                out["XY"][i] = code(c, [vol[t, y, x + rx], vol[t, y - ry, x], vol[t, y, x - rx], vol[t, y + ry, x]])
                out["XT"][i] = code(c, [vol[t, y, x + rx], vol[t - rt, y, x], vol[t, y, x - rx], vol[t + rt, y, x]])
                out["YT"][i] = code(c, [vol[t, y + ry, x], vol[t - rt, y, x], vol[t, y - ry, x], vol[t + rt, y, x]])
    return out


@pytest.mark.parametrize("radii", [(1, 1, 4), (2, 1, 3), (1, 3, 2)])
def test_lbptop_codes_match_a_brute_force_loop(radii):
    vol = np.random.default_rng(7).integers(0, 5, size=(10, 9, 11)).astype(np.uint8)  # many ties
    got = lbp_top_codes(vol, radii=radii, points=4)
    want = _brute_lbptop(vol, radii)
    for plane in ("XY", "XT", "YT"):
        np.testing.assert_array_equal(got[plane], want[plane], err_msg=plane)


def test_lbptop_xy_codes_equal_skimage_on_the_whole_frame():
    vol = np.random.default_rng(3).integers(0, 256, size=(10, 12, 13)).astype(np.uint8)
    got = lbp_top_codes(vol, radii=(1, 1, 4), points=4)["XY"]
    for k, t in enumerate(range(4, 6)):
        np.testing.assert_array_equal(got[k], local_binary_pattern(vol[t], 4, 1)[1:-1, 1:-1])


def test_lbptop_of_a_constant_volume_puts_every_code_in_one_bin():
    hist = lbp_top_histograms(np.full((10, 40, 40), 77, np.uint8), radii=(1, 1, 4), points=4,
                              blocks=(5, 5))
    assert hist.shape == (25, 3, 16)
    want = np.zeros(16)
    want[15] = 1.0  # every neighbour >= the centre: all four bits set
    np.testing.assert_array_equal(hist, np.broadcast_to(want, hist.shape))


def test_block_histograms_count_centres_in_their_blocks():
    # frame 6×6, centres are its interior 4×4 (offset 1), blocks 2×2 with edges [0, 3, 6]
    codes = np.array([[[0, 1, 2, 3],
                       [0, 0, 2, 2],
                       [1, 1, 3, 3],
                       [1, 1, 3, 0]]])
    hist = block_histograms(codes, bins=4, blocks=(2, 2), frame=(6, 6), offset=(1, 1))
    # block (0,0): rows 1-2, cols 1-2 of the frame -> codes [0,1],[0,0] = 3×0, 1×1
    # block (0,1): cols 3-4 -> [2,3],[2,2]; block (1,0): [1,1],[1,1]; block (1,1): [3,3],[3,0]
    want = np.array([[3, 1, 0, 0], [0, 0, 3, 1], [0, 4, 0, 0], [1, 0, 0, 3]]) / 4
    np.testing.assert_allclose(hist, want)
    np.testing.assert_array_equal(block_edges(224, 5), [0, 45, 90, 134, 179, 224])


def test_lbptop_refuses_other_point_counts():
    with pytest.raises(ValueError, match="P = 4"):
        lbp_top_codes(np.zeros((10, 8, 8), np.uint8), radii=(1, 1, 4), points=8)


# --------------------------------------------------------------------------- flow and strain

def _texture(size: int = 96, seed: int = 0) -> np.ndarray:
    img = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 3)
    return (img - img.min()) / (img.max() - img.min()) * 255


def test_tvl1_recovers_a_known_subpixel_shift():
    img = _texture()
    dy, dx = -0.6, 1.3  # content moves 0.6 px up and 1.3 px right
    moved = ndimage.shift(img, (dy, dx), order=3, mode="reflect")
    flow = bflow.tvl1_flow(img.round().astype(np.uint8), moved.round().clip(0, 255).astype(np.uint8))
    inner = flow[16:-16, 16:-16]
    assert abs(np.median(inner[..., 0]) - dx) < 0.2
    assert abs(np.median(inner[..., 1]) - dy) < 0.2


def test_optical_strain_of_a_linear_flow_is_the_analytic_constant():
    a, b, c, d = 0.03, -0.02, 0.05, 0.01
    y, x = np.mgrid[0:20, 0:30].astype(float)
    strain = bflow.optical_strain(a * x + b * y, c * x + d * y)
    # u_x = a, u_y = b, v_x = c, v_y = d: sqrt(a² + d² + (b + c)²/2)
    np.testing.assert_allclose(strain, np.sqrt(a ** 2 + d ** 2 + 0.5 * (b + c) ** 2))
    rotation = bflow.optical_strain(-0.04 * y, 0.04 * x)  # a rigid rotation does not strain
    np.testing.assert_allclose(rotation, 0.0, atol=1e-12)


def test_onset_apex_flow_refuses_identical_frames_and_measures_motion():
    img = _texture(64)
    still = np.repeat(np.repeat(img.astype(np.uint8)[None, :, :, None], 3, 3), 4, 0)
    with pytest.raises(bflow.FlowFailed, match="identical"):
        bflow.onset_apex_flow(still)
    moving = still.copy()
    moving[-1] = np.repeat(ndimage.shift(img, (0, 1.0), mode="reflect").round().astype(np.uint8)[..., None], 3, 2)
    out = bflow.onset_apex_flow(moving, size=16)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    assert abs(np.median(out[0, 4:-4, 4:-4]) - 1.0) < 0.2  # u, area-averaged
    assert np.abs(np.median(out[1, 4:-4, 4:-4])) < 0.2      # v


def test_minmax_scale_per_clip_and_channel():
    x = np.stack([np.arange(8.0).reshape(2, 2, 2), np.full((2, 2, 2), 3.0)])  # (2, 2, 2, 2)
    out = bflow.minmax_scale(x, scale=255.0)
    np.testing.assert_allclose(out[0, 0], [[0, 85], [170, 255]])
    np.testing.assert_allclose(out[0, 1], [[0, 85], [170, 255]])
    np.testing.assert_array_equal(out[1], 0.0)  # constant channels


# --------------------------------------------------------------------------- nets

def test_ststnet_shapes_and_size_follow_the_reference():
    net = nets.STSTNet()
    x = torch.zeros(2, 3, 28, 28)
    assert net.forward_features(x).shape == (2, 16, 5, 5)
    assert net(x).shape == (2, 3)
    # 3×3 convs 3->3, 3->5, 3->8 with biases, BatchNorm affine (16·2), FC 400->3
    want = (27 * 3 + 3) + (27 * 5 + 5) + (27 * 8 + 8) + 2 * 16 + (400 * 3 + 3)
    assert sum(p.numel() for p in net.parameters()) == want == 1683


def test_off_apexnet_shapes_and_size():
    net = nets.OFFApexNet()
    x = torch.zeros(2, 2, 28, 28)
    assert net.forward_features(x).shape == (2, 32, 7, 7)
    assert net.forward_head(net.forward_features(x), pre_logits=True).shape == (2, 1024)
    assert net(x).shape == (2, 3)
    stream = (25 * 6 + 6) + (25 * 6 * 16 + 16)
    want = 2 * stream + (1568 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 3 + 3)
    assert sum(p.numel() for p in net.parameters()) == want


def test_off_apexnet_streams_do_not_share_weights():
    net = nets.OFFApexNet().eval()
    x = torch.rand(1, 2, 28, 28)
    swapped = x.flip(1)
    assert not torch.allclose(net.forward_features(x), net.forward_features(swapped).roll(16, 1))


@pytest.mark.parametrize("name, chans", [("ststnet", 3), ("off-apexnet", 2)])
def test_net_fit_predict_is_deterministic_and_leaves_the_global_rng_alone(name, chans):
    rng = np.random.default_rng(0)
    X = (rng.random((12, chans, 28, 28)) * 255).astype(np.float32)
    y = np.arange(12) % 3
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    p1 = bl.fit_predict(name, X, y, None, X[:5], seed=4, epochs=2)
    after = torch.rand(3)
    p2 = bl.fit_predict(name, X, y, None, X[:5], seed=4, epochs=2)
    p3 = bl.fit_predict(name, X, y, None, X[:5], seed=5, epochs=2)
    assert p1.shape == (5, 3)
    np.testing.assert_allclose(p1.sum(1), 1.0)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)
    assert torch.equal(before, after)


# --------------------------------------------------------------------------- SVM

def _svm_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], 12)
    X = rng.normal(size=(36, 20)) + 3.0 * np.eye(3, 20)[y]  # separable along features 0-2
    groups = np.tile(np.arange(6), 6)  # 6 subjects, each with every class
    return X, y, groups


def test_svm_scaler_sees_the_training_fold_only():
    X, y, groups = _svm_data()
    X_test = np.random.default_rng(1).normal(size=(5, 20)) + 1e6  # a huge offset
    model = svm.fit_svm(X, y, groups, seed=0)
    np.testing.assert_allclose(model.named_steps["scale"].mean_, X.mean(0))
    np.testing.assert_allclose(model.named_steps["scale"].scale_, X.std(0))
    # each test row's output depends on that row only: no statistic is taken from the test set
    full = bl.fit_predict("lbptop-svm", X, y, groups, X_test, seed=0)
    part = bl.fit_predict("lbptop-svm", X, y, groups, X_test[:2], seed=0)
    np.testing.assert_array_equal(full[:2], part)


def test_svm_probabilities_are_the_softmax_of_its_scores_and_agree_with_predict():
    X, y, groups = _svm_data()
    model = svm.fit_svm(X, y, groups, seed=0)
    proba = svm.svm_proba(model, X)
    scores = model.decision_function(X)
    want = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    np.testing.assert_allclose(proba, want)
    np.testing.assert_array_equal(proba.argmax(1), model.predict(X))
    assert (proba.argmax(1) == y).mean() > 0.9  # separable data


def test_svm_fold_without_a_class_gives_it_probability_zero():
    X, y, groups = _svm_data()
    keep = y != 2
    proba = bl.fit_predict("lbptop-svm", X[keep], y[keep], groups[keep], X[:4], seed=0)
    assert proba.shape == (4, 3)
    np.testing.assert_array_equal(proba[:, 2], 0.0)
    np.testing.assert_allclose(proba.sum(1), 1.0)


# --------------------------------------------------------------------------- features and cache

def _clip_frames(shift: float, size: int = 48) -> np.ndarray:
    img = _texture(size, seed=2)
    frames = []
    for k in range(10):
        moved = ndimage.shift(img, (0, shift * k / 9), mode="reflect").round().astype(np.uint8)
        frames.append(np.repeat(moved[..., None], 3, 2))
    return np.stack(frames)


@pytest.fixture
def small_cache(tmp_path):
    """A preprocessing-cache-like folder with four usable clips: one moving, one whose frames
    never change, one whose npz is missing, one whose npz is corrupt."""
    clips = tmp_path / "prep" / "synthme-abc123" / "clips"
    clips.mkdir(parents=True)
    rows = []
    for subject, clip, kind in [("s1", "moving", "ok"), ("s1", "still", "still"),
                                ("s2", "gone", "missing"), ("s2", "broken", "corrupt")]:
        path = clips / f"{subject}__{clip}.npz"
        if kind == "ok":
            np.savez(path, frames=_clip_frames(1.5))
        elif kind == "still":
            np.savez(path, frames=_clip_frames(0.0))
        elif kind == "corrupt":
            path.write_bytes(b"not an npz")
        rows.append({"dataset": "synthme", "source": "casme2", "subject": subject, "clip": clip,
                     "label": "positive", "status": "ok", "reason": "", "file": str(path)})
    rows.append({"dataset": "synthme", "source": "casme2", "subject": "s3", "clip": "excluded",
                 "label": "others", "status": "excluded", "reason": "not a class", "file": ""})
    return pd.DataFrame(rows), tmp_path / "features"


def test_flow_features_report_failed_clips_by_name_and_keep_the_others(small_cache):
    manifest, cache_dir = small_cache
    X, meta, failed = bl.build_features("ststnet", manifest, cache_dir, jobs=1)
    assert X.shape == (1, 3, 28, 28)
    assert list(meta.columns) == ["dataset", "source", "subject", "clip", "label"]
    assert meta["clip"].tolist() == ["moving"]
    assert list(failed.columns) == ["subject", "clip", "reason"]
    reasons = dict(zip(failed["clip"], failed["reason"]))
    assert set(reasons) == {"still", "gone", "broken"}
    assert "s1/still" in reasons["still"] and "identical" in reasons["still"]
    assert "s2/gone" in reasons["gone"] and "missing" in reasons["gone"]
    assert "s2/broken" in reasons["broken"] and "unreadable" in reasons["broken"]
    assert X.min() == 0.0 and X.max() == 255.0
    X2, _, _ = bl.build_features("off-apexnet", manifest, cache_dir, jobs=1)
    np.testing.assert_array_equal(X2, X[:, :2])  # the same cached flow, its u and v


def test_lbptop_features_need_no_motion(small_cache):
    manifest, cache_dir = small_cache
    X, meta, failed = bl.build_features("lbptop-svm", manifest, cache_dir, jobs=1)
    assert X.shape == (2, 1200)
    assert meta["clip"].tolist() == ["moving", "still"]  # manifest order
    assert sorted(failed["clip"]) == ["broken", "gone"]
    np.testing.assert_allclose(X.reshape(2, 75, 16).sum(-1), 1.0, rtol=1e-6)


def test_feature_cache_resumes_and_recomputes_a_changed_source(small_cache, monkeypatch):
    manifest, cache_dir = small_cache
    X, _, _ = bl.build_features("lbptop-svm", manifest, cache_dir, jobs=1)
    folder = feat.feature_folder(cache_dir, "lbptop")
    assert json.loads((folder / "settings.json").read_text()) == feat.SETTINGS["lbptop"]
    assert sorted(p.name for p in (folder / "synthme-abc123").iterdir()) == [
        "s1__moving.npz", "s1__still.npz"]  # no temporary file left

    def refuse(kind, frames):
        raise AssertionError("recomputed a cached clip")

    monkeypatch.setattr(feat, "compute", refuse)
    X_again, _, _ = bl.build_features("lbptop-svm", manifest, cache_dir, jobs=1)
    np.testing.assert_array_equal(X_again, X)

    calls = []
    monkeypatch.setattr(feat, "compute", lambda kind, frames: calls.append(kind) or np.zeros(1200, np.float32))
    src = manifest.loc[manifest["clip"] == "still", "file"].item()
    os.utime(src, ns=(0, 0))  # the preprocessed clip changed: its cached features are stale
    X_new, _, _ = bl.build_features("lbptop-svm", manifest, cache_dir, jobs=1)
    assert calls == ["lbptop"]
    np.testing.assert_array_equal(X_new[0], X[0])
    np.testing.assert_array_equal(X_new[1], 0.0)


def test_hyperparameters_are_json_and_cite_their_source():
    for name in bl.NAMES:
        hp = json.loads(json.dumps(bl.hyperparameters(name)))
        assert hp["name"] == name and hp["source"] and hp["unverified"]
    training = bl.hyperparameters("ststnet")["training"]
    assert (training["epochs"], training["lr"], training["batch_size"]) == (800, 5e-5, 256)
    assert training["selection"] == "last epoch"
    with pytest.raises(ValueError, match="unknown baseline"):
        bl.hyperparameters("mernet")


def test_worker_pool_gives_the_same_features_in_manifest_order(small_cache, tmp_path):
    manifest, cache_dir = small_cache
    X1, meta1, failed1 = bl.build_features("lbptop-svm", manifest, cache_dir, jobs=1)
    X2, meta2, failed2 = bl.build_features("lbptop-svm", manifest, tmp_path / "pool", jobs=2)
    np.testing.assert_array_equal(X1, X2)
    pd.testing.assert_frame_equal(meta1, meta2)
    pd.testing.assert_frame_equal(failed1, failed2)
