"""The streaming `paper` path (issue 12): frames from the cache files, fresh augmentation on the
device every step, trainable GIA convolutions, nothing per clip kept in memory."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from merlib.clips import clip_loader, load_clipset
from merlib.config import PROFILES, RunConfig
from merlib.loso import build_context, run_fold, run_loso
from merlib.train import StreamContext, stream_batch

from fakes import write_clip_cache

SUBJECTS = ["s1", "s2", "s3"]
T = 2  # frames per clip: the cache holds 10; two keep the CPU test to seconds


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Five usable cached clips of three subjects, and one the preprocessing excluded (c5)."""
    return write_clip_cache(tmp_path_factory.mktemp("cache"), t=T, subjects=SUBJECTS, excluded=(5,))


def _paper(blocks=10, **kw):
    """The paper profile on the CPU: random VGG16, 1 epoch, small batches, no loader workers."""
    p = PROFILES["paper"]
    base = dict(epochs=1, weights="random", batch_size=2, device="cpu", loader_workers=0)
    base.update(kw)
    return RunConfig(train=dataclasses.replace(p, model=dataclasses.replace(p.model, blocks=blocks),
                                               **base))


def test_the_paper_profile_streams_and_trains_the_gia_convolutions():
    p = PROFILES["paper"].train if hasattr(PROFILES["paper"], "train") else PROFILES["paper"]
    assert p.stream and p.inputs == "frames" and not p.model.freeze_gia_convs
    assert p.model.freeze_transfer and not p.checkpoints
    assert not PROFILES["quick"].stream  # quick keeps its cached maps


def test_streamed_clips_hold_no_frames_and_read_each_from_its_file(manifest):
    clips = load_clipset(manifest, 10, frames=False)
    assert clips.frames is None and len(clips) == 5
    with np.load(manifest["file"][3]) as z:
        np.testing.assert_array_equal(clips.read_frames(3), z["frames"])
        np.testing.assert_allclose(clips.centres[3], z["ip10"])
    in_memory = load_clipset(manifest, 10)
    np.testing.assert_array_equal(in_memory.frames[3], clips.read_frames(3))


@pytest.mark.parametrize("frames", [True, False])
def test_a_corrupt_cached_clip_is_named_before_training(manifest, tmp_path, frames):
    bad = manifest.copy()
    broken = tmp_path / "broken.npz"
    broken.write_bytes(open(manifest["file"][1], "rb").read()[:5000])  # truncated mid-frames
    bad.loc[1, "file"] = str(broken)
    with pytest.raises(ValueError, match=r"s1/c1: its preprocessed clip .*broken\.npz is missing or corrupt"):
        load_clipset(bad, 10, frames=frames)
    bad.loc[1, "file"] = str(tmp_path / "gone.npz")
    with pytest.raises(ValueError, match=r"s1/c1: .*gone\.npz is missing"):
        load_clipset(bad, 10, frames=frames)


def test_a_cached_clip_of_the_wrong_shape_is_named(manifest, tmp_path):
    bad = manifest.copy()
    small = tmp_path / "small.npz"
    np.savez(small, frames=np.zeros((T, 112, 112, 3), np.uint8), ip10=np.zeros((T, 10, 2)),
             side10=np.ones((T, 10)))
    bad.loc[0, "file"] = str(small)
    with pytest.raises(ValueError, match=r"s1/c0: .*small\.npz .*expected uint8 \(T, 224, 224, 3\)"):
        load_clipset(bad, 10, frames=False)


def test_every_step_draws_a_fresh_augmentation_per_clip_and_evaluation_none(manifest):
    config = _paper()
    ctx = build_context(config, clips=load_clipset(manifest, 10, frames=False))
    assert isinstance(ctx, StreamContext)
    frames, idx = next(iter(clip_loader(ctx.clips, np.array([0, 0, 1]), config.train, ctx.device)))
    gen = torch.Generator().manual_seed(0)
    x1, c1, _ = stream_batch(ctx, frames, idx, config.train, gen)
    x2, c2, _ = stream_batch(ctx, frames, idx, config.train, gen)
    assert not torch.equal(x1[0], x1[1])      # the same clip twice in a batch: two draws
    assert not torch.equal(x1[0], x2[0])      # the same clip at the next step: a new draw
    assert not torch.equal(c1[0], c2[0])      # its IPs move with it
    plain, c0, s0 = stream_batch(ctx, frames, idx, config.train, None)
    torch.testing.assert_close(plain[0], frames[0].permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(c0, torch.as_tensor(ctx.clips.centres[idx.numpy()]))


def test_paper_path_loso_one_epoch_one_prediction_per_usable_clip(manifest, tmp_path):
    """The CI test of the paper path: 1 epoch, random weights, trainable GIA convolutions,
    streaming augmentation, exactly one prediction per usable clip."""
    config = _paper()
    pred = run_loso(load_clipset(manifest, 10, frames=False), config, tmp_path / "run", progress=False)
    usable = manifest[manifest["status"] == "ok"]
    assert sorted(pred["clip"]) == sorted(usable["clip"])
    assert "c5" not in set(pred["clip"])
    assert pred.groupby("fold")["subject"].nunique().eq(1).all() and pred["fold"].nunique() == 3
    probs = pred[["p_negative", "p_positive", "p_surprise"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (pred["profile"] == "paper").all() and (pred["inputs"] == "frames").all()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["run"]["train"]["stream"] is True
    assert not list((tmp_path / "run").rglob("*.pt"))  # no checkpoints, no cached maps


def test_the_gia_convolutions_train_and_the_transfer_layer_does_not(manifest, tmp_path):
    config = _paper(blocks=0)
    ctx = build_context(config, clips=load_clipset(manifest, 0, frames=False))
    run_fold(config, 0, tmp_path, context=ctx)
    state = ctx.model.state_dict()
    gia = [k for k in state if k.startswith("gia.convs.") and k.endswith("weight")]
    transfer = [k for k in state if k.startswith("transfer_layer.") and k.endswith("weight")]
    assert gia and transfer
    assert all(not torch.equal(state[k], ctx.init_state[k]) for k in gia)
    assert all(torch.equal(state[k], ctx.init_state[k]) for k in transfer)


def test_same_seed_same_streamed_predictions_and_a_killed_fold_resumes_alone(manifest, tmp_path):
    config = _paper(blocks=24)
    clips = load_clipset(manifest, 24, frames=False)
    full = run_loso(clips, config, tmp_path / "b", progress=False)
    # as if killed inside fold 1: folds 0 and 2 finished, fold 1 left a partial folder; its rerun
    # must draw the same batches and augmentations, so it predicts what it did the first time
    folds = sorted((tmp_path / "b" / "folds").iterdir())
    (folds[1] / "predictions.csv").unlink()
    (tmp_path / "b" / "predictions.csv").unlink()
    before = {f: (f / "predictions.csv").stat().st_mtime_ns for f in (folds[0], folds[2])}
    again = run_loso(clips, config, tmp_path / "b", progress=False)
    assert {f: (f / "predictions.csv").stat().st_mtime_ns for f in before} == before
    pd.testing.assert_frame_equal(again, full)


def test_streaming_refuses_map_inputs():
    with pytest.raises(ValueError, match="streaming path"):
        _paper(inputs="onset_delta")


def test_a_worker_rebuilds_a_streaming_context_from_the_plan(manifest, tmp_path):
    from merlib.loso import PLAN_FILE, load_context
    file = tmp_path / "manifest.csv"
    manifest.assign(stage="preprocess", reason="", apex_source="annotated").to_csv(file, index=False)
    (tmp_path / PLAN_FILE).write_text(json.dumps({"manifest": str(file), "maps_file": "",
                                                  "features_dir": ""}))
    ctx = load_context(_paper(), tmp_path)
    assert isinstance(ctx, StreamContext) and ctx.clips.frames is None and len(ctx) == 5


def test_the_loader_reads_in_process_inside_a_daemonic_worker(manifest, monkeypatch):
    import types

    from merlib import clips as clips_module
    clips = load_clipset(manifest, 10, frames=False)
    cfg = _paper(loader_workers=2).train
    assert clip_loader(clips, np.arange(3), cfg, torch.device("cpu")).num_workers == 2
    monkeypatch.setattr(clips_module.multiprocessing, "current_process",
                        lambda: types.SimpleNamespace(daemon=True))  # as in a dask worker
    loader = clip_loader(clips, np.arange(3), cfg, torch.device("cpu"))
    assert loader.num_workers == 0
    assert sorted(int(i) for _, idx in loader for i in idx) == [0, 1, 2]


def test_loader_workers_do_not_change_what_a_fold_learns(manifest, tmp_path):
    """Worker count is a speed setting: the batches, the augmentation and the dropout stream
    (the global CPU RNG, which a loader must not draw from) stay the same."""
    clips = load_clipset(manifest, 10, frames=False)
    preds = []
    for workers in (0, 2):
        config = _paper(epochs=2, loader_workers=workers)
        run_fold(config, 1, tmp_path / f"w{workers}", context=build_context(config, clips=clips))
        preds.append(next((tmp_path / f"w{workers}" / "folds").iterdir()) / "predictions.csv")
    assert preds[0].read_bytes() == preds[1].read_bytes()
