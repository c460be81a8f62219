import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import dataclasses

from merlib.clips import ClipSet
from merlib.config import PROFILES, RunConfig
from merlib.loso import ResumeRefused, build_context, run_loso

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


def _train(blocks=10, gia_frozen=True, **kw):
    base = dict(epochs=1, views=1, weights="random", batch_size=4, device="cpu")
    base.update(kw)
    q = PROFILES["quick"]
    model = dataclasses.replace(q.model, blocks=blocks, freeze_gia_convs=gia_frozen)
    return dataclasses.replace(q, model=model, **base)


def _cfg(**kw):
    return RunConfig(train=_train(**kw))


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


def test_shuffled_labels_are_a_permutation_of_the_training_labels_only():
    from merlib.loso import fold_labels
    labels = np.arange(20) % 3
    train, test = np.arange(4, 20), np.arange(4)
    shuffled = fold_labels(labels, train, _train(shuffle_labels=True), fold=0)
    np.testing.assert_array_equal(shuffled[test], labels[test])
    assert sorted(shuffled[train]) == sorted(labels[train])
    assert (shuffled[train] != labels[train]).any()  # a no-op shuffle fails here
    np.testing.assert_array_equal(fold_labels(labels, train, _train(), fold=0), labels)


def test_shuffled_labels_change_what_the_model_learns(clips, tmp_path):
    """Same seed, same data: only the training labels differ, so the predicted probabilities
    must differ. If shuffling were a no-op the two runs would be identical."""
    true = run_loso(clips, _cfg(epochs=3), tmp_path / "true", progress=False)
    shuffled = run_loso(clips, _cfg(epochs=3, shuffle_labels=True), tmp_path / "shuffled",
                        progress=False)
    cols = ["p_negative", "p_positive", "p_surprise"]
    assert not np.allclose(true[cols].to_numpy(), shuffled[cols].to_numpy(), atol=1e-6)


def test_strict_imagenet_weights_fail_with_the_looked_for_path(clips, tmp_path, monkeypatch):
    import urllib.request

    from merlib.weights import WeightsUnavailable
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(WeightsUnavailable, match=str(tmp_path / "hub")):
        run_loso(clips, _cfg(weights="imagenet"), tmp_path / "out", progress=False)
    # auto falls back to the fixed random draw and says so in the saved config
    run_loso(clips, _cfg(weights="auto"), tmp_path / "auto", progress=False)
    assert '"weights_used": "random (no ImageNet weights found' in (tmp_path / "auto" / "config.json").read_text()


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
    with pytest.raises(ResumeRefused, match=r"train\.epochs: 1 -> 2.*--restart"):
        run_loso(clips, _cfg(epochs=2), tmp_path, progress=False)


def test_resuming_with_another_index_is_refused_and_restart_starts_over(clips, tmp_path):
    run_loso(clips, _cfg(), tmp_path, index_hash="aaaa", progress=False)
    stale = next((tmp_path / "folds").iterdir()) / "predictions.csv"
    with pytest.raises(ResumeRefused, match="index"):
        run_loso(clips, _cfg(), tmp_path, index_hash="bbbb", progress=False)
    stamp = os.stat(stale).st_mtime_ns
    run_loso(clips, _cfg(), tmp_path, index_hash="bbbb", restart=True, progress=False)
    assert os.stat(stale).st_mtime_ns != stamp  # the old fold was recomputed, not pooled
    assert json.loads((tmp_path / "config.json").read_text())["index_hash"] == "bbbb"


def test_run_fold_alone_equals_the_fold_inside_run_loso(clips, tmp_path):
    """What a worker does: run_fold with its own context built from the clips gives the fold
    run_loso wrote."""
    from merlib.loso import run_fold
    full = run_loso(clips, _cfg(), tmp_path / "loso", progress=False)
    ctx = build_context(_cfg(), clips=clips)
    status = run_fold(_cfg(), 1, tmp_path / "alone", context=ctx)
    assert status["state"] == "done" and status["fold"] == 1
    alone = pd.read_csv(next((tmp_path / "alone" / "folds").iterdir()) / "predictions.csv",
                        dtype={"subject": str, "clip": str})
    pd.testing.assert_frame_equal(alone, full[full["fold"] == 1].reset_index(drop=True))
    assert run_fold(_cfg(), 1, tmp_path / "alone", context=ctx)["state"] == "skipped"


def test_precomputed_windows_equal_cutting_the_maps_every_step(tmp_path):
    """quick cuts the BIA windows once; the logits must equal cutting the (scaled) maps."""
    from merlib.maps import MapInputs, make_batch
    c24 = _clips(24)
    c24.centres[0, :, :3] = [[2.0, 3.0], [221.0, 5.0], [110.0, 223.0]]  # windows off the map's edge
    cfg = _cfg(blocks=24)
    ctx = build_context(cfg, clips=c24)
    assert ctx.crops is not None and not ctx.need_f28
    idx, views = np.array([0, 3]), np.zeros(2, dtype=np.int64)
    ctx.model.eval()
    for inputs in (MapInputs("onset_delta", scale28=3.0, scale14=2.0),
                   MapInputs("channel_norm", mean28=tuple(np.linspace(-1, 2, 512)),
                             inv_std28=tuple(np.linspace(0.5, 3, 512)),
                             mean14=(0.3,) * 512, inv_std14=(2.0,) * 512)):
        ctx_in = build_context(_cfg(blocks=24, inputs=inputs.inputs), clips=c24)
        fast = make_batch(ctx_in.maps, c24, idx, views, ctx.device, inputs, need_f28=False,
                          crops=ctx_in.crops)
        slow = make_batch(ctx_in.maps, c24, idx, views, ctx.device, inputs, need_f28=True)
        ctx_in.model.eval()
        assert fast.centres is None and slow.crops is None
        with torch.no_grad():
            torch.testing.assert_close(
                ctx_in.model.forward_from_maps(fast.f28, fast.f14, crops=fast.crops),
                ctx_in.model.forward_from_maps(slow.f28, slow.f14, slow.centres, slow.sides),
                rtol=1e-4, atol=1e-5)


def test_fold_inputs_give_the_batches_make_batch_gives_bit_for_bit(tmp_path):
    """quick builds a fold's inputs once (FoldInputs); every batch must be exactly what
    make_batch builds step by step, for each kind of map inputs, with and without blocks."""
    from merlib.maps import FoldInputs, MapInputs, make_batch
    for blocks in (0, 24):
        c = _clips(blocks)
        for inputs in (MapInputs("frames"), MapInputs("onset_delta", scale28=3.0, scale14=2.0),
                       MapInputs("channel_norm", mean28=tuple(np.linspace(-1, 2, 512)),
                                 inv_std28=tuple(np.linspace(0.5, 3, 512)),
                                 mean14=(0.3,) * 512, inv_std14=(2.0,) * 512)):
            ctx = build_context(_cfg(blocks=blocks, inputs=inputs.inputs), clips=c)
            assert FoldInputs.applies(ctx.maps, ctx.crops, blocks)
            fold = FoldInputs.build(ctx.maps, ctx.crops, inputs, ctx.device, chunk=2)
            fold = FoldInputs.build(ctx.maps, ctx.crops, inputs, ctx.device, reuse=fold, chunk=3)
            idx = np.array([3, 0, 2])
            want = make_batch(ctx.maps, c, idx, np.zeros(3, dtype=np.int64), ctx.device, inputs,
                              need_f28=False, crops=ctx.crops)
            got = fold.batch(idx)
            assert torch.equal(got.f14, want.f14)
            if blocks:
                assert got.crops.shape == want.crops.shape and torch.equal(got.crops, want.crops)
            else:
                assert got.crops is None and want.crops is None
            # the context uses them only for the inputs they were built with, on view 0
            ctx.fold_inputs = fold
            assert ctx.batch(idx, np.zeros(3, dtype=np.int64), inputs) is not None
            other = MapInputs("onset_delta", scale28=5.0, scale14=5.0)
            fallback = ctx.batch(idx, np.zeros(3, dtype=np.int64), other)
            assert torch.equal(fallback.f14, make_batch(ctx.maps, c, idx, np.zeros(3, dtype=np.int64),
                                                        ctx.device, other, need_f28=False,
                                                        crops=ctx.crops).f14)


def test_keep_freed_memory_is_set_on_glibc():
    import platform

    from merlib.devices import keep_freed_memory
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


# --------------------------------------------------------------------------- onset-delta inputs

def _maps(seed=0, n=4, v=2, t=3):
    from merlib.maps import Maps
    g = torch.Generator().manual_seed(seed)
    f28 = torch.rand((n, v, t, 2, 4, 4), generator=g).half()
    f14 = torch.rand((n, v, t, 2, 2, 2), generator=g).half()
    return Maps(f28, f14, torch.zeros((n, v, 2, 3), dtype=torch.float64))


def test_onset_delta_scale_is_one_over_the_training_clips_delta_std():
    from merlib.maps import MapInputs, input_moments
    maps = _maps()
    train = np.array([0, 2, 3])
    fit = MapInputs.fit(input_moments(maps, "onset_delta"), train, "onset_delta")
    for f, scale in ((maps.f28, fit.scale28), (maps.f14, fit.scale14)):
        d = f[train].double()
        d = (d[:, :, 1:] - d[:, :, :1]).numpy()
        assert scale == pytest.approx(1 / d.std(), rel=1e-9)


def test_onset_delta_fit_ignores_the_held_out_clips():
    from merlib.maps import MapInputs, input_moments
    a, b = _maps(0), _maps(0)
    b.f28[1] = b.f28[1] * 7  # only the held-out clip differs
    b.f14[1] = 0
    train = np.array([0, 2, 3])
    for inputs in ("onset_delta", "channel_norm"):
        assert MapInputs.fit(input_moments(a, inputs), train, inputs) == \
            MapInputs.fit(input_moments(b, inputs), train, inputs)


def test_channel_norm_standardises_each_channel_over_the_training_clips():
    from merlib.maps import MapInputs, input_moments
    maps = _maps(3)
    train = np.array([0, 1, 3])
    fit = MapInputs.fit(input_moments(maps, "channel_norm"), train, "channel_norm")
    for f, level in ((maps.f28, 28), (maps.f14, 14)):
        out = fit.transform(f[train].float().flatten(0, 1), level)  # (n·V, T, C, H, W) as (B, T, ...)
        per_channel = out.transpose(0, 2).flatten(1).double()     # (C, everything else)
        torch.testing.assert_close(per_channel.mean(1), torch.zeros(2, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(per_channel.std(1, unbiased=False),
                                   torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)


def test_onset_delta_transform_subtracts_the_onset_of_the_same_clip_and_view():
    from merlib.maps import MapInputs
    f = torch.rand(2, 3, 2, 4, 4)  # (B, T, C, H, W)
    out = MapInputs("onset_delta", scale28=2.0, scale14=5.0).transform(f, 28)
    assert torch.count_nonzero(out[:, 0]) == 0
    torch.testing.assert_close(out[1, 2], 2.0 * (f[1, 2] - f[1, 0]))
    assert MapInputs("frames").transform(f, 28) is f  # the paper's inputs are left as they are


def test_unknown_inputs_are_refused():
    with pytest.raises(ValueError, match="inputs"):
        _train(inputs="optical_flow")


def test_adam_weight_decay_equals_the_l2_term_of_the_loss():
    """Coupled weight decay 2λ gives exactly the gradient of CE + λ·Σ‖w‖² (Sec. 4.3's loss)."""
    from merlib.train import make_optimizer
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    cfg = _train(lr=1e-2, l2=0.05)
    nets = [torch.nn.Linear(5, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    explicit = torch.optim.Adam(nets[0].parameters(), lr=cfg.lr)
    fused = make_optimizer(list(nets[1].parameters()), cfg)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(nets[0](x), y)
        loss = loss + cfg.l2 * sum(p.pow(2).sum() for p in nets[0].parameters())
        explicit.zero_grad()
        loss.backward()
        explicit.step()
        fused.zero_grad()
        torch.nn.functional.cross_entropy(nets[1](x), y).backward()
        fused.step()
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_random_vgg_weights_are_one_draw_and_the_seed_draws_only_the_trainable_part():
    from merlib.config import ModelConfig
    from merlib.train import make_model
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(make_model(ModelConfig(blocks=10, freeze_gia_convs=True), "random")[0])
    a, b = (dict(m.named_parameters()) for m in models)
    for name, p in a.items():
        same = torch.equal(p, b[name])
        assert same == (not p.requires_grad), name  # frozen VGG equal, trainable parts differ


def test_maps_cache_key_depends_on_the_seed_only_through_augmented_views(clips):
    from merlib.maps import maps_key
    key = lambda **kw: maps_key("prep", clips, _train(**kw), "random")  # noqa: E731
    assert key(seed=0) == key(seed=1)                       # one view: the clip itself
    assert key(seed=0, views=4) != key(seed=1, views=4)     # views 1.. are drawn from the seed
    assert key(views=1) != key(views=4)


@pytest.mark.parametrize("net,shape", [("lbptop-svm", (1200,)), ("ststnet", (3, 28, 28))])
def test_a_baseline_runs_the_same_loso_and_writes_the_same_files(net, shape, tmp_path):
    from merlib.baselines.context import BaselineContext
    rng = np.random.default_rng(0)
    n = 12
    labels = np.arange(n) % 3
    meta = pd.DataFrame({"dataset": "synthme", "source": "casme2",
                         "subject": [f"s{i // 4}" for i in range(n)], "clip": [f"c{i}" for i in range(n)]})
    X = rng.normal(size=(n, *shape)).astype(np.float32) + labels.reshape(-1, *[1] * len(shape))
    cfg = RunConfig(train=dataclasses.replace(_train(), net=net, baseline_epochs=2))
    ctx = BaselineContext(net, X, meta, labels, pd.DataFrame(), torch.device("cpu"), tmp_path,
                          cfg.train)
    pred = run_loso(ctx, cfg, tmp_path / "run", progress=False)
    assert sorted(pred["clip"]) == sorted(meta["clip"]) and pred["fold"].nunique() == 3
    assert (pred["net"] == net).all()
    np.testing.assert_allclose(pred[["p_negative", "p_positive", "p_surprise"]].sum(axis=1), 1.0, atol=1e-5)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["run"]["train"]["net"] == net and saved["weights_used"] == "none (baseline)"
    again = run_loso(ctx, cfg, tmp_path / "run", progress=False)  # finished: pooled, not redone
    pd.testing.assert_frame_equal(again, pred)


def test_a_flow_nets_folds_trained_at_once_equal_each_fold_trained_alone(tmp_path):
    """run_loso trains a network baseline's folds together (merlib.baselines.stacked); a fold
    rerun alone, as a dask or SLURM task runs it, writes the same bytes, and every fold keeps
    its epochs' held-out probabilities for the oracle diagnostic."""
    from merlib.baselines.context import BaselineContext
    from merlib.loso import EPOCHS_FILE, run_fold
    rng = np.random.default_rng(1)
    n = 15
    labels = np.arange(n) % 3
    meta = pd.DataFrame({"dataset": "synthme", "source": "casme2",
                         "subject": [f"s{i // 3}" for i in range(n)], "clip": [f"c{i}" for i in range(n)]})
    X = rng.normal(size=(n, 3, 28, 28)).astype(np.float32)
    cfg = RunConfig(train=dataclasses.replace(_train(), net="ststnet", baseline_epochs=3))
    ctx = BaselineContext("ststnet", X, meta, labels, pd.DataFrame(), torch.device("cpu"), tmp_path,
                          cfg.train)
    run_loso(ctx, cfg, tmp_path / "together", progress=False)
    for fold in range(5):
        run_fold(cfg, fold, tmp_path / "alone", context=ctx)
    together = sorted((tmp_path / "together" / "folds").iterdir())
    alone = sorted((tmp_path / "alone" / "folds").iterdir())
    assert [d.name for d in together] == [d.name for d in alone] and len(together) == 5
    for a, b in zip(together, alone):
        assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
        assert np.load(a / EPOCHS_FILE)["probs"].shape == (3, 3, 3)  # epochs, held-out clips, classes


def test_a_corrupt_preprocessed_clip_is_named_before_training(tmp_path):
    from merlib.clips import load_clipset
    good = tmp_path / "good.npz"
    np.savez(good, frames=np.zeros((2, 224, 224, 3), np.uint8), ip10=np.zeros((2, 10, 2)),
             side10=np.ones((2, 10)))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[:100])  # truncated
    manifest = pd.DataFrame({"status": "ok", "file": [str(good), str(bad)], "label": "positive",
                             "dataset": "synthme", "source": "casme2", "subject": ["s1", "s2"],
                             "clip": ["c1", "c2"]})
    with pytest.raises(ValueError, match=r"s2/c2: its preprocessed clip .*bad\.npz is missing or corrupt"):
        load_clipset(manifest, 10)


def test_profiles_keep_no_checkpoints_unless_asked():
    from merlib.options import make_run_config
    assert not make_run_config(profile="paper").train.checkpoints
    assert make_run_config(profile="paper", keep_checkpoints=True).train.checkpoints


def test_clip_maps_are_shared_by_content_between_runs_and_equal_computing_them(tmp_path):
    """A per-source run and the composite hold the same clips: the second run takes each clip's
    frozen maps from the first (by the frames' bytes) and gets exactly what computing gives."""
    from merlib.maps import clip_maps_file, compute_maps
    c = _clips(10)
    cfg = _cfg(blocks=10)
    ctx = build_context(cfg, clips=c)
    plain = compute_maps(ctx.model, c, cfg.train, ctx.device, progress=False)
    first = compute_maps(ctx.model, c, cfg.train, ctx.device, progress=False,
                         clip_dir=tmp_path, weights_tag=ctx.weights_tag)
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == len(c)
    # a "composite": the same clips in another order plus one the first run never saw
    order = np.array([3, 1, 0, 5, 2, 4])
    other = ClipSet(c.frames[order].copy(), c.centres[order], c.sides[order], c.labels[order],
                    c.meta.iloc[order].reset_index(drop=True))
    other.frames[5] = 255 - other.frames[5]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    second = compute_maps(ctx.model, other, cfg.train, ctx.device, progress=False,
                          clip_dir=tmp_path, weights_tag=ctx.weights_tag)
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())  # read, not rewritten
    assert len(list(tmp_path.glob("*.pt"))) == len(c) + 1
    assert torch.equal(first.f28, plain.f28) and torch.equal(first.f14, plain.f14)
    assert torch.equal(second.f28[:5], plain.f28[order[:5]]) and torch.equal(second.f14[:5], plain.f14[order[:5]])
    # another weights tag is another file
    assert clip_maps_file(tmp_path, c.read_frames(0), cfg.train, "x") != \
        clip_maps_file(tmp_path, c.read_frames(0), cfg.train, ctx.weights_tag)
