"""Every LOSO fold of a flow baseline trained in one call: ``train_predict_folds``.

The fold-by-fold reference is ``merlib.baselines.training.train_predict`` (Adam, cross-entropy,
fixed epochs, the last epoch's model predicts); it stays the reference implementation. Fold f
here is what ``train_predict(make_net, X[tr_f], y[tr_f], X[te_f], seed=seeds[f])`` computes:

- initial weights: ``torch.manual_seed(seeds[f]); make_net()``;
- batches: each epoch one ``torch.randperm(n_f, generator=<Generator seeded seeds[f]>)``, cut
  into ``batch_size`` pieces, the last one short. Folds of different sizes have different last
  batches and, when their sizes straddle a multiple of the batch size, different numbers of
  steps: every fold steps on its own batches only, so padding rows never exist;
- Adam: one state and one step count per fold (bias corrections count the fold's own steps);
  STSTNet's is the arithmetic of ``torch.optim.Adam``'s single-tensor CPU path op for op,
  OFF-ApexNet's the fused kernel (equal up to rounding);
- dropout: **the reference's masks, bit for bit** (on CPU). After ``make_net()`` the reference's
  global generator is touched by dropout only (the batch order has its own generator), and each
  dropout call draws one ``bernoulli_(1 - p)`` on a fresh tensor of its input's shape. Each
  fold keeps a ``torch.Generator`` in the state the global one had after its ``make_net()`` and
  makes the same draws from it in the same order, so a fold's masks depend on its seed alone:
  folds differ, reruns repeat. On CUDA the masks are still drawn on the CPU (the CPU
  reference's, not those a CUDA ``train_predict`` would draw); the CUDA path is untested.

Not bit for bit: the order of floating-point sums. ``tests/test_stacked.py`` holds the
probabilities to the fold-by-fold ones within 1e-4 (dropout on and off, folds with extra steps,
ties inside max-pool windows, negative batch-norm weights) and one step's gradient to autograd's.
One difference in kind, not met in practice: a batch-norm weight of exactly 0 routes its
max-pool gradient to another (tied) window element than PyTorch's max-pool, which changes only
that weight's own gradient.

Why not one tensor for all folds: the fold-by-fold time is not per-step overhead. A 256-sample
STSTNet step spends its time inside kernels that are slow on tiny channel counts (max-pool,
batch-norm, 3-channel convolutions); OFF-ApexNet's inside its FC GEMMs, its convolutions and
Adam's seven passes over 2.7 M parameters. Stacking 68 folds would multiply the activations by
68 and push them out of the caches without removing any of that work. What is done instead:

- STSTNet has a hand-written forward and backward (``_STSTNetFolds``): the three branches are one
  16-channel convolution, a GEMM of input patches cut once per run (inputs need no gradient),
  with rows ordered window-slot-major so the 3×3/3 max-pool is a max over 9 blocks; batch-norm
  (after the ReLU, before the pool) is monotone per channel, so max-pool(BN(r)) = BN(extreme of
  r) and normalisation, dropout, average pool and FC run at the pooled 10×10 size, the
  batch-norm backward becoming two per-channel constants at full size; full-size tensors are
  made 16 samples at a time, so that they stay in cache, and recomputed in the backward.
- OFF-ApexNet (``_OFFApexNetFolds``) runs its layers functionally with autograd: both streams
  as one grouped channels-last convolution per layer, and fused Adam.
- Folds run on worker threads (one per core), fold after fold, every kernel single-threaded,
  so the result does not depend on the number of workers.

Any other net runs the generic path (``_ModuleFolds``): one module and ``torch.optim.Adam`` per
fold, the global generator swapped to the fold's around each step — the reference's own
arithmetic, bit for bit, on one thread.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from merlib.baselines import nets
from merlib.baselines.stacked.common import _ModuleFolds, _Trainer
from merlib.baselines.stacked.offapexnet import _OFFApexNetFolds
from merlib.baselines.stacked.ststnet import _STSTNetFolds
from merlib.devices import resolve_device



class FoldPredictions(NamedTuple):
    """``proba[f]``: fold f's test softmax after the last epoch, (n_test_f, num_classes) float64.
    ``per_epoch[f]``: with ``record_epochs``, every epoch's test softmax, (epochs, n_test_f,
    num_classes) float64; else None. ``per_epoch`` is an oracle diagnostic (the epoch would be
    chosen on the test subject): it is read after each epoch and never feeds back into training."""
    proba: list[np.ndarray]
    per_epoch: list[np.ndarray] | None


def net_factory(name: str) -> Callable[[], nn.Module]:
    """The factory ``merlib.baselines.fit_predict`` uses for a net baseline's name."""
    from merlib.registry import baseline

    if not baseline(name).net:
        raise ValueError(f"baseline {name!r} is not a network")
    return lambda: getattr(nets, baseline(name).net)(**baseline(name).net_kwargs)


def train_predict_folds(name_or_factory: str | Callable[[], nn.Module], X: np.ndarray,
                        y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]], *,
                        epochs: int, lr: float, batch_size: int, seeds: Sequence[int],
                        device: str = "cpu", record_epochs: bool = False,
                        progress: bool = False, workers: int | None = None,
                        fast: bool = True) -> FoldPredictions:
    """Train one fresh net per fold on X[train_idx] and predict X[test_idx], all folds in one call.

    ``name_or_factory``: a net baseline's name (``"ststnet"``, ``"off-apexnet"``: the nets of
    ``merlib.baselines.NET_KWARGS``) or a ``make_net`` callable. X (N, C, H, W) float; y (N,) int
    label ids, or (folds, N) when folds train on different labels (fold f reads y[f], e.g.
    shuffled training labels); ``folds`` a list of (train_idx, test_idx) index arrays into X;
    ``seeds[f]`` fold f's seed. Fold f equals ``train_predict(make_net, X[tr], y[tr], X[te],
    seed=seeds[f], ...)`` (module docstring). The caller's global RNG state is left as it was.

    STSTNet and OFF-ApexNet run their own paths on ``workers`` threads (None:
    ``torch.get_num_threads()``), each thread training whole folds with single-threaded kernels
    (torch's intra-op threads are 1 during the call, then restored), so the result does not depend
    on the worker count. Other nets, or ``fast=False``, run the generic path: one thread, torch's
    own thread setting."""
    make_net = net_factory(name_or_factory) if isinstance(name_or_factory, str) else name_or_factory
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if len(seeds) != len(folds) or not folds:
        raise ValueError(f"need one seed per fold and at least one fold, got {len(seeds)} seeds "
                         f"for {len(folds)} folds")
    X = np.asarray(X)
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[None]
    if y.ndim != 2 or y.shape[1] != len(X) or len(y) not in (1, len(folds)):
        raise ValueError(f"y {y.shape} must be (N,) or (folds, N) for X {X.shape} and "
                         f"{len(folds)} folds")
    folds = [(np.asarray(tr, dtype=np.int64).reshape(-1), np.asarray(te, dtype=np.int64).reshape(-1))
             for tr, te in folds]
    for f, (tr, te) in enumerate(folds):
        if len(tr) == 0:
            raise ValueError(f"fold {f} has an empty training set")
        if np.any((tr < 0) | (tr >= len(X))) or np.any((te < 0) | (te >= len(X))):
            raise ValueError(f"fold {f}'s indices fall outside X (N = {len(X)})")
    dev = resolve_device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    x_all = torch.tensor(X, dtype=torch.float32)  # copies: the caller's arrays may be read-only
    y_all = torch.tensor(y, dtype=torch.long)  # (1 or folds, N)

    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        try:
            return _run(make_net, x_all, y_all, folds, seeds, epochs=epochs, lr=lr,
                        batch_size=batch_size, device=dev, record_epochs=record_epochs,
                        progress=progress, workers=workers, fast=fast)
        finally:
            torch.set_num_threads(threads)


def _run(make_net: Callable[[], nn.Module], x_all: torch.Tensor, y_all: torch.Tensor,
         folds: list[tuple[np.ndarray, np.ndarray]], seeds: Sequence[int], *, epochs: int,
         lr: float, batch_size: int, device: torch.device, record_epochs: bool, progress: bool,
         workers: int | None, fast: bool) -> FoldPredictions:
    """``train_predict_folds`` after its checks, inside its RNG fork; may change torch's
    intra-op threads (the caller restores them)."""
    from tqdm.auto import tqdm

    n_folds, threads = len(folds), torch.get_num_threads()
    cuda = device.type == "cuda"
    trainer: _Trainer | None = None
    for f, seed in enumerate(seeds):
        torch.manual_seed(int(seed))  # as train_predict: the fold's seed, then make_net()
        net = make_net()
        if trainer is None:
            if int(y_all.min()) < 0 or int(y_all.max()) >= net.num_classes:
                raise ValueError(f"labels must be in [0, {net.num_classes}), got "
                                 f"{torch.unique(y_all).tolist()}")
            kinds = [_STSTNetFolds, _OFFApexNetFolds] if fast else []
            kind = next((k for k in kinds if k.supports(net, x_all)), _ModuleFolds)
            if kind.threadsafe:
                # From here on single-threaded kernels: in worker threads, one per core (an
                # intra-op pool on a busy machine stalls), and identical bits whatever the
                # worker count. Initial weights do not depend on threads (serial RNG kernels).
                torch.set_num_threads(1)
            trainer = kind(net, x_all, y_all, n_folds, lr=lr, device=device)
        trainer.add_fold(f, net, torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)
        del net
    num_classes = trainer.num_classes

    train_idx = [torch.as_tensor(tr) for tr, _ in folds]
    test_idx = [torch.as_tensor(te) for _, te in folds]
    per_epoch = [np.zeros((epochs, len(te), num_classes)) for te in test_idx] if record_epochs else None
    proba: list[np.ndarray] = [np.empty(0)] * n_folds

    def run(fold_ids: list[int]) -> None:
        # Fold after fold, as the reference: folds are independent, so the order changes no
        # bit, and only one fold's optimiser state is alive per worker.
        with torch.no_grad():  # grad mode is per thread
            scratch = trainer.scratch()
            for f in fold_ids:
                trainer.begin(f)
                order_rng = torch.Generator().manual_seed(int(seeds[f]))
                for epoch in range(epochs):
                    order = torch.randperm(len(train_idx[f]), generator=order_rng)  # the reference's draw
                    picked = train_idx[f][order]
                    for start in range(0, len(picked), batch_size):
                        trainer.train_step(f, picked[start:start + batch_size], scratch)
                    if record_epochs:
                        per_epoch[f][epoch] = trainer.predict(f, test_idx[f])
                    bar.update(1)
                proba[f] = per_epoch[f][-1].copy() if record_epochs else trainer.predict(f, test_idx[f])
                trainer.end(f)

    with tqdm(total=epochs * n_folds, desc="folds", unit="fold-epoch", disable=not progress,
              leave=False) as bar:
        if not trainer.threadsafe:  # dropout draws from the global generator, swapped per fold
            run(list(range(n_folds)))
        else:
            default = 1 if cuda else threads
            n_workers = max(1, min(default if workers is None else workers, n_folds))
            parts = [list(range(w, n_folds, n_workers)) for w in range(n_workers)]
            if n_workers == 1:
                run(parts[0])
            else:
                with ThreadPoolExecutor(n_workers) as pool:
                    for done in [pool.submit(run, part) for part in parts]:
                        done.result()
    return FoldPredictions(proba, per_epoch)


