import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from merlib.train import ClipSet, profile_config, run_loso

SUBJECTS = ["s1", "s2", "s3"]


def _clips(k):
    rng = np.random.default_rng(0)
    n, t = 6, 2
    frames = rng.integers(0, 255, (n, t, 224, 224, 3), dtype=np.uint8)
    centres = rng.uniform(40, 180, (n, t, k, 2)).astype(np.float32)
    sides = np.full((n, t, k), 30.0, np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    meta = pd.DataFrame({"dataset": "synthme", "source": "casme2",
                         "subject": [SUBJECTS[i // 2] for i in range(n)],
                         "clip": [f"c{i}" for i in range(n)]})
    return ClipSet(frames, centres, sides, labels, meta)


@pytest.fixture(scope="module")
def clips():
    return _clips(10)


def _cfg(**kw):
    base = dict(epochs=1, views=1, weights="random", batch_size=4, device="cpu")
    base.update(kw)
    return profile_config("quick", **base)


def test_loso_predicts_every_clip_once_with_its_own_subject_held_out(clips, tmp_path):
    pred = run_loso(clips, _cfg(), tmp_path, progress=False)
    assert sorted(pred["clip"]) == sorted(clips.meta["clip"])
    assert pred.groupby("fold")["subject"].nunique().eq(1).all()
    assert pred["fold"].nunique() == len(SUBJECTS)
    probs = pred[["p_negative", "p_positive", "p_surprise"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (pred["y_pred"] == probs.argmax(1)).all()
    assert (pred["profile"] == "quick").all()
    assert (tmp_path / "config.json").exists()


def test_same_seed_same_predictions(clips, tmp_path):
    a = run_loso(clips, _cfg(), tmp_path / "a", progress=False)
    b = run_loso(clips, _cfg(), tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(a, b)


def test_killed_run_resumes_at_the_first_unfinished_fold(clips, tmp_path):
    full = run_loso(clips, _cfg(), tmp_path, progress=False)
    folds = sorted((tmp_path / "folds").iterdir())
    kept = folds[0] / "predictions.csv"
    stamp = os.stat(kept).st_mtime_ns
    # a kill during fold 1: its predictions were never written (checkpoint may be half there)
    (folds[1] / "predictions.csv").unlink()
    (folds[2] / "predictions.csv").unlink()
    (folds[1] / "checkpoint.pt.tmp").write_bytes(b"truncated")  # killed while saving
    resumed = run_loso(clips, _cfg(), tmp_path, progress=False)
    assert os.stat(kept).st_mtime_ns == stamp  # finished fold not redone
    pd.testing.assert_frame_equal(resumed, full)


def test_quick_profile_keeps_no_checkpoints(clips, tmp_path):
    run_loso(clips, _cfg(), tmp_path, progress=False)
    assert not list(tmp_path.glob("folds/*/checkpoint.pt"))
    assert all(json.loads(f.read_text())["checkpoint"] is False for f in tmp_path.glob("folds/*/fold.json"))


def test_checkpoints_load_weights_only(tmp_path):
    run_loso(_clips(24), _cfg(blocks=24, checkpoints=True), tmp_path, progress=False)
    ckpt = next((tmp_path / "folds").iterdir()) / "checkpoint.pt"
    blob = torch.load(ckpt, weights_only=True)
    assert blob["epochs"] == 1 and len(blob["losses"]) == 1
    assert any(name.startswith("bia.") for name in blob["model"])
    assert not any(name.startswith("transfer_layer.") for name in blob["model"])  # frozen: not saved


def test_shuffled_labels_leave_test_labels_true(clips, tmp_path):
    pred = run_loso(clips, _cfg(shuffle_labels=True), tmp_path, progress=False)
    truth = dict(zip(clips.meta["clip"], clips.labels))
    assert all(truth[c] == y for c, y in zip(pred["clip"], pred["y_true"]))


def test_strict_imagenet_weights_fail_with_the_looked_for_path(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=str(tmp_path / "hub")):
        run_loso(clips, _cfg(weights="imagenet"), tmp_path / "out", progress=False)
    # auto falls back to random init and says so in the saved config
    run_loso(clips, _cfg(weights="auto"), tmp_path / "auto", progress=False)
    assert '"weights_used": "random (auto:' in (tmp_path / "auto" / "config.json").read_text()


def test_variants_share_one_frozen_map_cache(tmp_path):
    c10, c24 = _clips(10), _clips(24)
    run_loso(c10, _cfg(blocks=10), tmp_path / "b10", maps_dir=tmp_path / "maps", progress=False)
    run_loso(c24, _cfg(blocks=24), tmp_path / "b24", maps_dir=tmp_path / "maps", progress=False)
    assert len(list((tmp_path / "maps").glob("maps-*.pt"))) == 1
    blob = torch.load(next((tmp_path / "maps").glob("maps-*.pt")), weights_only=True)
    assert tuple(blob["affines"].shape) == (6, 1, 2, 3)
    np.testing.assert_allclose(blob["affines"][:, 0].numpy(), np.tile(np.eye(3)[:2], (6, 1, 1)))


def test_resuming_with_another_configuration_is_refused(clips, tmp_path):
    run_loso(clips, _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="differs in: epochs"):
        run_loso(clips, _cfg(epochs=2), tmp_path, progress=False)
