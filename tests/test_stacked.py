"""All LOSO folds at once (merlib.baselines.stacked) against the fold-by-fold reference
``train_predict``: same initial weights, batches, dropout masks and Adam steps, so the same
probabilities within 1e-4, including folds whose last batches differ in size or number."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import merlib.baselines as bl
from merlib.baselines.nets import OFFApexNet, STSTNet
from merlib.baselines.stacked import train_predict_folds
from merlib.baselines.stacked.common import _Adam
from merlib.baselines.training import train_predict

TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _problem(chans: int, *, seed: int = 0, sizes=(9, 11, 10, 10)):
    """~40 samples in [0, 255], one subject per fold; with batch 15 the training sets (31, 29,
    30, 30) give fold 0 three steps an epoch (the last of one sample) and the others two."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    X = (rng.random((len(groups), chans, 28, 28)) * 255).astype(np.float32)
    y = rng.integers(0, 3, len(groups))
    folds = [(np.flatnonzero(groups != g), np.flatnonzero(groups == g)) for g in range(len(sizes))]
    return X, y, folds


def _reference(make_net, X, y, folds, seeds, **kw):
    return [train_predict(make_net, X[tr], y[tr], X[te], seed=s, **kw)
            for (tr, te), s in zip(folds, seeds)]


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [x.shape for x in b]
    return max(float(np.abs(x - z).max()) for x, z in zip(a, b))


NETS = {"ststnet": (STSTNet, 3), "off-apexnet": (OFFApexNet, 2)}


@pytest.mark.parametrize("name, drop_rate, lr", [
    ("ststnet", 0.0, 1e-3), ("ststnet", 0.5, 1e-3), ("ststnet", 0.5, 5e-5),
    # OFF-ApexNet on 0-255 inputs saturates its softmax within steps at lr 1e-3; Adam then turns
    # rounding-level gradient differences into ±lr steps, and with dropout on the runs part by
    # ~1e-3 by the third epoch (the per-step gradient itself agrees: test below). Its reference
    # lr (1e-4) stays within 1e-6.
    ("off-apexnet", 0.0, 1e-3), ("off-apexnet", 0.0, 1e-4), ("off-apexnet", 0.5, 1e-4)])
def test_stacked_equals_fold_by_fold(name, drop_rate, lr):
    cls, chans = NETS[name]
    X, y, folds = _problem(chans)
    seeds = [3, 4, 5, 6]
    make_net = lambda: cls(drop_rate=drop_rate)  # noqa: E731
    kw = dict(epochs=3, lr=lr, batch_size=15)
    ref = _reference(make_net, X, y, folds, seeds, **kw)
    got = train_predict_folds(make_net, X, y, folds, seeds=seeds, **kw)
    assert got.per_epoch is None
    assert _max_diff(ref, got.proba) < TOL
    for p in got.proba:
        assert p.dtype == np.float64
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    # The generic path is the reference's own arithmetic, fold after fold: bit for bit.
    generic = train_predict_folds(make_net, X, y, folds, seeds=seeds, fast=False, **kw)
    for p, q in zip(ref, generic.proba):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("name", list(NETS))
def test_one_step_gradient_is_the_modules(name):
    """The hand-written STSTNet backward and the functional OFF-ApexNet give the module's
    autograd gradient, dropout on (the same masks), in parameters() order."""
    from merlib.baselines.stacked.offapexnet import _OFFApexNetFolds
    from merlib.baselines.stacked.ststnet import _STSTNetFolds

    cls, chans = NETS[name]
    kind = {"ststnet": _STSTNetFolds, "off-apexnet": _OFFApexNetFolds}[name]
    X, y, _ = _problem(chans)
    x, labels = torch.as_tensor(X), torch.as_tensor(y)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        net = cls()
        state = torch.get_rng_state()
        trainer = kind(net, x, labels, 1, lr=1e-3, device=torch.device("cpu"))
        trainer.add_fold(0, net, state, None)
        trainer.begin(0)
        captured = []
        trainer.adam[0].step = lambda grads: captured.extend(g.clone() for g in grads)
        idx = torch.arange(3, 15)
        with torch.no_grad():
            trainer.train_step(0, idx, trainer.scratch())
        torch.set_rng_state(state)
        torch.nn.functional.cross_entropy(net.train()(x[idx]), labels[idx]).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    got = torch.cat([g.reshape(-1) for g in captured])
    assert got.shape == ref.shape and ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_stacked_ststnet_path_is_the_hand_written_one_and_by_name():
    from merlib.baselines.stacked.offapexnet import _OFFApexNetFolds
    from merlib.baselines.stacked.ststnet import _STSTNetFolds

    X, y, folds = _problem(3)
    assert _STSTNetFolds.supports(STSTNet(), torch.as_tensor(X))
    assert not _STSTNetFolds.supports(OFFApexNet(), torch.as_tensor(X[:, :2]))
    assert _OFFApexNetFolds.supports(OFFApexNet(), torch.as_tensor(X[:, :2]))
    assert not _OFFApexNetFolds.supports(STSTNet(), torch.as_tensor(X))
    seeds = [0, 1, 2, 3]
    kw = dict(epochs=2, lr=5e-5, batch_size=256)
    by_name = train_predict_folds("ststnet", X, y, folds, seeds=seeds, **kw)
    ref = [bl.fit_predict("ststnet", X[tr], y[tr], None, X[te], seed=s, epochs=2)
           for (tr, te), s in zip(folds, seeds)]
    assert _max_diff(ref, by_name.proba) < TOL


def test_every_epochs_record_is_that_epochs_model_and_leaves_training_alone():
    X, y, folds = _problem(3)
    seeds = [7, 8, 9, 10]
    kw = dict(lr=1e-3, batch_size=15)
    got = train_predict_folds("ststnet", X, y, folds, seeds=seeds, epochs=3, record_epochs=True, **kw)
    plain = train_predict_folds("ststnet", X, y, folds, seeds=seeds, epochs=3, **kw)
    for f, (tr, te) in enumerate(folds):
        assert got.per_epoch[f].shape == (3, len(te), 3)
        np.testing.assert_array_equal(got.per_epoch[f][-1], got.proba[f])
        np.testing.assert_array_equal(got.proba[f], plain.proba[f])
    for epochs in (1, 2):
        ref = _reference(STSTNet, X, y, folds, seeds, epochs=epochs, **kw)
        assert _max_diff(ref, [p[epochs - 1] for p in got.per_epoch]) < TOL


@pytest.mark.parametrize("name", list(NETS))
def test_per_fold_labels(name):
    """y (folds, N): fold f trains on y[f] (the LOSO runner's shuffled-label check)."""
    cls, chans = NETS[name]
    X, y, folds = _problem(chans)
    rng = np.random.default_rng(1)
    ys = np.stack([rng.permutation(y) for _ in folds])
    seeds = [3, 4, 5, 6]
    kw = dict(epochs=2, lr=1e-4, batch_size=15)
    ref = [train_predict(cls, X[tr], yf[tr], X[te], seed=s, **kw)
           for (tr, te), yf, s in zip(folds, ys, seeds)]
    got = train_predict_folds(cls, X, ys, folds, seeds=seeds, **kw)
    assert _max_diff(ref, got.proba) < TOL
    with pytest.raises(ValueError, match="folds, N"):
        train_predict_folds(cls, X, ys[:2], folds, seeds=seeds, **kw)


def test_dropout_is_per_fold_seeded_and_independent():
    """Fold masks come from the fold's seed alone: two folds with the same data and seed agree
    bit for bit, a different seed differs, and other folds do not disturb a fold."""
    X, y, folds = _problem(3)
    tr, te = folds[0]
    kw = dict(epochs=2, lr=1e-3, batch_size=15)
    same_data = [(tr, te)] * 3
    a = train_predict_folds("ststnet", X, y, same_data, seeds=[5, 5, 6], **kw).proba
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.allclose(a[0], a[2], atol=1e-3)
    alone = train_predict_folds("ststnet", X, y, [(tr, te)], seeds=[5], **kw).proba
    np.testing.assert_array_equal(alone[0], a[0])
    # Dropout does act: without it the same seed gives other probabilities.
    no_drop = train_predict_folds(lambda: STSTNet(drop_rate=0.0), X, y, [(tr, te)], seeds=[5], **kw)
    assert not np.allclose(no_drop.proba[0], a[0], atol=1e-3)


@pytest.mark.parametrize("name", list(NETS))
def test_worker_count_does_not_change_a_bit_and_rng_is_left_alone(name):
    X, y, folds = _problem(NETS[name][1], sizes=(5, 6, 7, 8, 9, 5))
    seeds = list(range(len(folds)))
    kw = dict(epochs=2, lr=1e-4, batch_size=16)
    torch.manual_seed(11)
    before = torch.rand(4)
    torch.manual_seed(11)
    one = train_predict_folds(name, X, y, folds, seeds=seeds, workers=1, **kw).proba
    after = torch.rand(4)
    torch.set_num_threads(2)  # the call runs single-threaded kernels, then restores this
    two = train_predict_folds(name, X, y, folds, seeds=seeds, workers=2, **kw).proba
    assert torch.equal(before, after)
    assert torch.get_num_threads() == 2
    for p, q in zip(one, two):
        np.testing.assert_array_equal(p, q)


def test_ties_at_the_pool_max_and_negative_bn_scales_match_the_reference():
    """Flat input regions give identical conv outputs inside a pool window (the reference routes
    the gradient to the first); a negative BN weight turns the max-pool into a min of r."""
    rng = np.random.default_rng(3)
    X, y, folds = _problem(3)
    # 7×7 blocks of a few grey levels: many exactly equal patches.
    blocks = rng.integers(0, 4, (len(X), 3, 4, 4)).astype(np.float32) * 85
    X = np.repeat(np.repeat(blocks, 7, axis=2), 7, axis=3)

    def flipped():
        net = STSTNet()
        with torch.no_grad():  # no RNG drawn: the initial weights stay the seed's
            net.branches[1][2].weight[1:4].neg_()
        return net

    seeds = [1, 2, 3, 4]
    kw = dict(epochs=3, lr=1e-3, batch_size=15)
    for make_net in (STSTNet, flipped):
        ref = _reference(make_net, X, y, folds, seeds, **kw)
        got = train_predict_folds(make_net, X, y, folds, seeds=seeds, **kw)
        assert _max_diff(ref, got.proba) < TOL


@pytest.mark.parametrize("fused", [False, True])
def test_adam_steps_as_torch_adam(fused):
    """Unfused: bit-identical to torch.optim.Adam's CPU path; fused: equal up to rounding."""
    torch.manual_seed(0)
    params = [torch.randn(40), torch.randn(3, 5)]
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    opt = torch.optim.Adam(ref, lr=1e-2)
    adam = _Adam(params, lr=1e-2, fused=fused)
    for _ in range(5):
        # The second gradient strided, as a channels-last conv weight's is.
        grads = [torch.randn_like(params[0]), torch.randn(5, 3).t()]
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        opt.step()
        adam.step(grads)
    assert adam.steps == 5
    for p, r in zip(params, ref):
        if fused:
            torch.testing.assert_close(p, r.detach(), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(p, r.detach())


def test_bad_arguments_are_refused():
    X, y, folds = _problem(3)
    with pytest.raises(ValueError, match="one seed per fold"):
        train_predict_folds("ststnet", X, y, folds, seeds=[1], epochs=1, lr=1e-3, batch_size=8)
    with pytest.raises(ValueError, match="not a network"):
        train_predict_folds("lbptop-svm", X, y, folds, seeds=[1] * 4, epochs=1, lr=1e-3, batch_size=8)
    with pytest.raises(ValueError, match="labels"):
        train_predict_folds("ststnet", X, y + 3, folds, seeds=[1] * 4, epochs=1, lr=1e-3, batch_size=8)
