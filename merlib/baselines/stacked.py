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

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from merlib.baselines.nets import OFFApexNet, STSTNet
from merlib.baselines.training import resolve_device


class FoldPredictions(NamedTuple):
    """``proba[f]``: fold f's test softmax after the last epoch, (n_test_f, num_classes) float64.
    ``per_epoch[f]``: with ``record_epochs``, every epoch's test softmax, (epochs, n_test_f,
    num_classes) float64; else None. ``per_epoch`` is an oracle diagnostic (the epoch would be
    chosen on the test subject): it is read after each epoch and never feeds back into training."""
    proba: list[np.ndarray]
    per_epoch: list[np.ndarray] | None


def net_factory(name: str) -> Callable[[], nn.Module]:
    """The factory ``merlib.baselines.fit_predict`` uses for a net baseline's name."""
    from merlib.baselines import NET_CLASS, NET_KWARGS  # late: merlib.baselines imports this module's deps

    if name not in NET_CLASS:
        raise ValueError(f"unknown net baseline {name!r}; one of {tuple(NET_CLASS)}")
    return lambda: NET_CLASS[name](**NET_KWARGS[name])


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


class _Trainer:
    """Training state of all folds of one architecture. ``add_fold`` takes fold f's freshly made
    net and the generator states after making it; ``begin(f)`` / ``end(f)`` bracket its training
    (optimiser state lives in between); ``train_step(f, idx, scratch)`` is one Adam step on
    X[idx]; ``predict(f, idx)`` the eval-mode softmax on X[idx], (n, num_classes) float64. With
    ``threadsafe``, calls for different folds may run in different threads, each with its own
    ``scratch()``."""

    threadsafe = False
    num_classes: int

    def add_fold(self, f: int, net: nn.Module, rng_state: torch.Tensor,
                 cuda_state: torch.Tensor | None) -> None:
        raise NotImplementedError

    def begin(self, f: int) -> None:
        pass

    def end(self, f: int) -> None:
        pass

    def scratch(self) -> object:
        return None

    def train_step(self, f: int, idx: torch.Tensor, scratch: object) -> None:
        raise NotImplementedError

    def predict(self, f: int, idx: torch.Tensor) -> np.ndarray:
        raise NotImplementedError


# --------------------------------------------------------------------------- dropout

_RAND_IS_BERNOULLI: bool | None = None


def _bernoulli(shape: tuple[int, ...], p: float, generator: torch.Generator,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.empty(shape).bernoulli_(p, generator=generator)``, the same bits and the same
    generator advance, about 2.5× faster where PyTorch's CPU bernoulli_ is its default kernel
    (one 53-bit uniform double per element, ``u < p``): that kernel is serial, this one is the
    uniform_ kernel on the same stream. Checked once per process against bernoulli_ itself; where
    they differ (an MKL build drawing seeded streams), bernoulli_ is used. ``out``: a float
    tensor (any strides) of ``shape`` to write the 0/1 mask into."""
    global _RAND_IS_BERNOULLI
    if _RAND_IS_BERNOULLI is None:
        g1, g2 = torch.Generator().manual_seed(12345), torch.Generator().manual_seed(12345)
        same = True
        for size, prob in (((3, 1000), 0.5), ((7, 33), 0.3), ((5000,), 0.9)):
            a = torch.empty(size).bernoulli_(prob, generator=g1)
            b = (torch.rand(size, dtype=torch.float64, generator=g2) < prob).float()
            same &= torch.equal(a, b)
        _RAND_IS_BERNOULLI = same and torch.equal(g1.get_state(), g2.get_state())
    if _RAND_IS_BERNOULLI:
        u = torch.rand(shape, dtype=torch.float64, generator=generator)
        return torch.lt(u, p, out=out) if out is not None else (u < p).float()
    mask = torch.empty(shape).bernoulli_(p, generator=generator)
    return out.copy_(mask) if out is not None else mask


# --------------------------------------------------------------------------- Adam

class _Adam:
    """``torch.optim.Adam`` (default betas and eps, no weight decay) over tensors updated in
    place. Unfused, it is the single-tensor CPU path's arithmetic op for op, with a reused
    denominator (fresh big temporaries page-fault): bit-identical updates. Fused, it is
    ``torch._fused_adam_``, one pass over parameter, gradient and moments instead of seven — what
    OFF-ApexNet's 2.7 M parameters need — equal up to rounding."""

    def __init__(self, params: list[torch.Tensor], *, lr: float, fused: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = 0
        self.fused = fused and hasattr(torch, "_fused_adam_")
        if self.fused:
            self._step = torch.zeros((), device=params[0].device)
        else:
            self._denom = [torch.empty_like(p) for p in params]

    def step(self, grads: list[torch.Tensor]) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        if self.fused:
            self._step.fill_(self.steps)
            # The fused kernel walks raw memory: a strided gradient (a channels-last conv
            # weight's) would be read in the wrong order.
            grads = [g.contiguous() for g in grads]
            torch._fused_adam_(self.params, grads, self.exp_avg, self.exp_avg_sq, [],
                               [self._step] * len(self.params), lr=self.lr, beta1=beta1,
                               beta2=beta2, weight_decay=0.0, eps=self.eps, amsgrad=False,
                               maximize=False)
            return
        t = float(self.steps)
        step_size = self.lr / (1 - beta1 ** t)
        bias_correction2_sqrt = (1 - beta2 ** t) ** 0.5
        for p, g, m, v, d in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, self._denom):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            torch.sqrt(v, out=d).div_(bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(m, d, value=-step_size)


# --------------------------------------------------------------------------- folds as rows

class _FlatFolds(_Trainer):
    """Folds of one architecture as rows of a (folds, n) parameter tensor, in the template's
    parameters() order; each fold's dropout draws from its own generator, left in the state the
    global one had after the fold's ``make_net()`` (module docstring)."""

    threadsafe = True
    fused_adam = False

    def __init__(self, template: nn.Module, n_folds: int, *, lr: float, device: torch.device) -> None:
        self.device, self.lr = device, lr
        self.num_classes = template.num_classes
        self.shapes = {name: p.shape for name, p in template.named_parameters()}
        self.offsets, n = {}, 0
        for name, shape in self.shapes.items():
            self.offsets[name] = n
            n += math.prod(shape)
        self.n_params = n
        self.params = torch.empty(n_folds, n, device=device)
        self.dropout_rng: list[torch.Generator | None] = [None] * n_folds
        self.adam: dict[int, _Adam] = {}

    def add_fold(self, f: int, net: nn.Module, rng_state: torch.Tensor,
                 cuda_state: torch.Tensor | None) -> None:
        self.params[f] = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        self.dropout_rng[f] = torch.Generator()
        self.dropout_rng[f].set_state(rng_state)

    def _param(self, row: torch.Tensor, name: str) -> torch.Tensor:
        off = self.offsets[name]
        return row[off:off + math.prod(self.shapes[name])].view(self.shapes[name])

    def begin(self, f: int) -> None:
        params = ([self._param(self.params[f], name) for name in self.shapes] if self.fused_adam
                  else [self.params[f]])
        self.adam[f] = _Adam(params, lr=self.lr, fused=self.fused_adam)

    def end(self, f: int) -> None:
        del self.adam[f]

    def _noise(self, f: int, shape: tuple[int, ...], p: float) -> torch.Tensor:
        """Fold f's dropout multipliers (mask / (1 - p)) for an input of ``shape``: the
        reference's one bernoulli_ draw on a fresh tensor of that shape."""
        if p == 1:  # the reference multiplies by zero without drawing
            return torch.zeros(shape, device=self.device)
        return _bernoulli(shape, 1 - p, self.dropout_rng[f]).div_(1 - p).to(self.device)


# --------------------------------------------------------------------------- generic path

class _ModuleFolds(_Trainer):
    """Any net: one module and one ``torch.optim.Adam`` per fold, the global generator swapped to
    the fold's around each training step (dropout's draws). This is the reference's arithmetic,
    fold after fold; one thread, as the global generator is shared."""

    def __init__(self, template: nn.Module, x: torch.Tensor, y: torch.Tensor, n_folds: int, *,
                 lr: float, device: torch.device) -> None:
        self.device, self.lr = device, lr
        self.num_classes = template.num_classes
        self.nets: list[nn.Module | None] = [None] * n_folds
        self.opts: dict[int, torch.optim.Adam] = {}
        self.rng: list[torch.Tensor | None] = [None] * n_folds
        self.cuda_rng: list[torch.Tensor | None] = [None] * n_folds
        self.x, self.y = x.to(device), y.to(device).view(-1, len(x))  # y: (1 or folds, N)
        self.loss = nn.CrossEntropyLoss()

    def add_fold(self, f: int, net: nn.Module, rng_state: torch.Tensor,
                 cuda_state: torch.Tensor | None) -> None:
        self.nets[f] = net.to(self.device)
        # On CUDA dropout draws from the CUDA generator, which the reference's manual_seed set.
        self.rng[f], self.cuda_rng[f] = rng_state, cuda_state

    def begin(self, f: int) -> None:
        self.opts[f] = torch.optim.Adam(self.nets[f].parameters(), lr=self.lr)

    def end(self, f: int) -> None:
        del self.opts[f]
        self.nets[f] = None  # its predictions are taken

    @contextmanager
    def _fold_rng(self, f: int) -> Iterator[None]:
        torch.set_rng_state(self.rng[f])
        if self.cuda_rng[f] is not None:
            torch.cuda.set_rng_state(self.cuda_rng[f], self.device)
        yield
        self.rng[f] = torch.get_rng_state()
        if self.cuda_rng[f] is not None:
            self.cuda_rng[f] = torch.cuda.get_rng_state(self.device)

    def train_step(self, f: int, idx: torch.Tensor, scratch: object) -> None:
        net, opt = self.nets[f], self.opts[f]
        idx = idx.to(self.device)
        net.train()
        with torch.enable_grad(), self._fold_rng(f):
            opt.zero_grad(set_to_none=True)
            self.loss(net(self.x[idx]), self.y[f % len(self.y)][idx]).backward()
        opt.step()

    def predict(self, f: int, idx: torch.Tensor) -> np.ndarray:
        net = self.nets[f].eval()
        logits = [net(self.x[idx[i:i + 1024].to(self.device)]).float().cpu()
                  for i in range(0, len(idx), 1024)]
        logits = torch.cat(logits) if logits else torch.empty((0, net.num_classes))
        return torch.softmax(logits, 1).double().numpy()


# --------------------------------------------------------------------------- STSTNet

@dataclass(frozen=True)
class _PoolLayout:
    """Row order of the conv output for a non-overlapping k×k / stride k max-pool with padding.

    Rows [0, slots·windows) are slot-major — row s·windows + w is slot s (row-major in the
    window, PyTorch's tie order) of pooled output w — so the pool is a max over ``slots``
    contiguous blocks. A slot on the pool's padding gets row position -1 (an all-zero patch). The
    rows after them are the conv positions no window reads: they count in batch-norm only."""
    positions: torch.Tensor  # (rows,) conv-output position (row-major) of each row, -1: padding
    slots: int
    side: int  # pooled side
    pool_rows: int  # slots · side²

    @property
    def windows(self) -> int:
        return self.side * self.side


def _pool_layout(conv_side: int, kernel: int, padding: int) -> _PoolLayout:
    side = (conv_side + 2 * padding - kernel) // kernel + 1
    positions = []
    for di in range(kernel):
        for dj in range(kernel):
            for i in range(side):
                for j in range(side):
                    r, c = kernel * i - padding + di, kernel * j - padding + dj
                    inside = 0 <= r < conv_side and 0 <= c < conv_side
                    positions.append(r * conv_side + c if inside else -1)
    read = set(positions)
    positions += [p for p in range(conv_side * conv_side) if p not in read]
    return _PoolLayout(torch.tensor(positions), kernel * kernel, side, kernel * kernel * side * side)


class _Buffers:
    """One worker's full-size work tensors for one chunk of samples, reused across steps (fresh
    tensors of these sizes cost page faults every step) and small enough to stay in cache
    through the passes over them."""

    def __init__(self, chunk: int, layout: _PoolLayout, k: int, c: int, device: torch.device) -> None:
        n = layout.positions.numel()
        self.patches = torch.empty(chunk, n, k, device=device)
        self.z = torch.empty(chunk * n, c, device=device)
        self.dz = torch.empty(chunk * n, c, device=device)
        # float 0/1, not bool: comparisons and products into float run 4-7× faster
        self.at_max = torch.empty(chunk, layout.slots, layout.windows, c, device=device)


class _Scratch:
    """A worker's reusable tensors: the chunk buffers (made on first use) and a gradient row."""

    def __init__(self, n_params: int, device: torch.device) -> None:
        self.buffers: _Buffers | None = None
        self.grad = torch.zeros(n_params, device=device)


class _STSTNetFolds(_FlatFolds):
    """STSTNet folds with the hand-written forward and backward of the module docstring.

    Per step, with B samples, K = in_chans·k² + 1 patch columns (the 1 for the bias), C = 16
    channels, n rows per sample (``_PoolLayout``), W = 10×10 windows. Forward, chunk by chunk:
    z = patches @ W_conv (rows, C), q = relu(max over slots) (B, W, C), BN's Σr and Σr². Then at
    pooled size: BN, dropout, the FC over (W·C) with the 2×2 average pool folded into its weight,
    cross-entropy and their backward down to G, the gradient of BN's output. Backward, chunk by
    chunk, z recomputed: dz = 1[z > 0]·(alpha·G at the window's first max − k1) − k2·r and
    dW += dzᵀ patches."""

    @staticmethod
    def supports(net: nn.Module, x: torch.Tensor) -> bool:
        if type(net) is not STSTNet or x.ndim != 4 or x.shape[2] != x.shape[3]:
            return False
        convs, bns, pools, drops = [], [], [], []
        for branch in net.branches:
            if [type(m) for m in branch] != [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.MaxPool2d, nn.Dropout]:
                return False
            conv, _, bn, pool, drop = branch
            convs.append(conv), bns.append(bn), pools.append(pool), drops.append(drop)
        conv0, bn0, pool0 = convs[0], bns[0], pools[0]
        ok = all((c.kernel_size, c.padding, c.stride, c.dilation, c.groups, c.in_channels,
                  c.bias is not None, c.padding_mode) ==
                 (conv0.kernel_size, conv0.padding, (1, 1), (1, 1), 1, x.shape[1], True, "zeros")
                 for c in convs)
        ok &= conv0.kernel_size[0] == conv0.kernel_size[1] and conv0.padding[0] == conv0.padding[1]
        ok &= all(b.affine and b.track_running_stats and b.momentum is not None
                  and (b.eps, b.momentum) == (bn0.eps, bn0.momentum) for b in bns)
        ok &= all((p.kernel_size, p.stride, p.padding, p.dilation, p.ceil_mode) ==
                  (3, 3, 1, 1, False) for p in pools)  # non-overlapping windows: one max each
        ok &= len({d.p for d in drops}) == 1 and not any(d.inplace for d in drops)
        avg = net.pool
        ok &= (type(avg) is nn.AvgPool2d and avg.kernel_size == 2 and avg.stride == 2
               and avg.padding == 0 and not avg.ceil_mode)
        conv_side = x.shape[2] + 2 * conv0.padding[0] - conv0.kernel_size[0] + 1
        side = _pool_layout(conv_side, 3, 1).side if conv_side > 0 else 0
        ok &= side >= 2 and net.fc.in_features == sum(c.out_channels for c in convs) * (side // 2) ** 2
        return bool(ok)

    def __init__(self, template: nn.Module, x: torch.Tensor, y: torch.Tensor, n_folds: int, *,
                 lr: float, device: torch.device) -> None:
        super().__init__(template, n_folds, lr=lr, device=device)
        conv0, bn0 = template.branches[0][0], template.branches[0][2]
        self.branch_channels = [b[0].out_channels for b in template.branches]
        self.C = sum(self.branch_channels)
        self.drop = float(template.branches[0][4].p)
        self.eps, self.momentum = float(bn0.eps), float(bn0.momentum)
        kernel, pad = conv0.kernel_size[0], conv0.padding[0]
        self.conv_side = x.shape[2] + 2 * pad - kernel + 1
        self.layout = _pool_layout(self.conv_side, 3, 1)
        self.avg_side = self.layout.side // 2
        self.k_in = x.shape[1] * kernel * kernel
        self.K = self.k_in + 1
        self.running_mean = torch.empty(n_folds, self.C, device=device)
        self.running_var = torch.empty(n_folds, self.C, device=device)

        # Patches of every sample once, rows in the layout's order, a ones column for the bias;
        # padding slots are all-zero rows, so their z is exactly 0.
        cols = F.unfold(F.pad(x, (pad,) * 4), kernel)  # (N, k_in, conv_side²)
        cols = torch.cat([cols.transpose(1, 2), torch.ones(len(x), cols.shape[2], 1)], 2)
        cols = torch.cat([cols, torch.zeros(len(x), 1, self.K)], 1)  # row -1: the padding slot
        self.patches = cols[:, self.layout.positions].contiguous().to(device)  # (N, n, K)
        self.y = y.to(device).view(-1, len(x))  # (1 or folds, N)
        self.chunk = 16  # samples per pass over full-size tensors
        self.pad_slots = (self.layout.positions[:self.layout.pool_rows] < 0).view(
            1, self.layout.slots, self.layout.windows, 1).to(device)

    def add_fold(self, f: int, net: nn.Module, rng_state: torch.Tensor,
                 cuda_state: torch.Tensor | None) -> None:
        super().add_fold(f, net, rng_state, cuda_state)
        self.running_mean[f] = torch.cat([b[2].running_mean for b in net.branches])
        self.running_var[f] = torch.cat([b[2].running_var for b in net.branches])

    def scratch(self) -> _Scratch:
        return _Scratch(self.n_params, self.device)

    # ------------------------------------------------------------------ parameters

    def _unpack(self, f: int) -> tuple[torch.Tensor, ...]:
        """Fold f's weights: the conv as (K, C) with the bias as last row, BN gamma and beta (C,),
        the FC weight on the pooled layout, (W·C, classes), and its bias."""
        row = self.params[f]
        nb = len(self.branch_channels)
        w = torch.cat([self._param(row, f"branches.{b}.0.weight").reshape(-1, self.k_in)
                       for b in range(nb)])  # (C, k_in)
        bias = torch.cat([self._param(row, f"branches.{b}.0.bias") for b in range(nb)])
        conv = torch.cat([w, bias[:, None]], 1).t().contiguous()  # (K, C)
        gamma = torch.cat([self._param(row, f"branches.{b}.2.weight") for b in range(nb)])
        beta = torch.cat([self._param(row, f"branches.{b}.2.bias") for b in range(nb)])
        # The reference average-pools 2×2 and flattens (C, A, A); here the FC reads the pooled
        # (W, C) directly, each weight spread over its 2×2 windows / 4 (0 past the pool's crop).
        a, side = self.avg_side, self.layout.side
        fc_w = self._param(row, "fc.weight").view(self.num_classes, self.C, a, a)
        fc_w = fc_w.permute(2, 3, 1, 0)[:, None, :, None].expand(a, 2, a, 2, self.C, self.num_classes)
        spread = torch.zeros(side, side, self.C, self.num_classes, device=self.device)
        spread[:2 * a, :2 * a] = fc_w.reshape(2 * a, 2 * a, self.C, self.num_classes) * 0.25
        return conv, gamma, beta, spread.view(-1, self.num_classes), self._param(row, "fc.bias")

    def _pack_grads(self, g: torch.Tensor, d_conv: torch.Tensor, d_gamma: torch.Tensor,
                    d_beta: torch.Tensor, d_fc_w: torch.Tensor, d_fc_b: torch.Tensor) -> torch.Tensor:
        """The fold's gradient into row g, parameters() order (the inverse of ``_unpack``)."""
        start = 0
        for b, c in enumerate(self.branch_channels):
            sl = slice(start, start + c)
            self._param(g, f"branches.{b}.0.weight").copy_(d_conv[sl, :self.k_in].reshape(
                self.shapes[f"branches.{b}.0.weight"]))
            self._param(g, f"branches.{b}.0.bias").copy_(d_conv[sl, self.k_in])
            self._param(g, f"branches.{b}.2.weight").copy_(d_gamma[sl])
            self._param(g, f"branches.{b}.2.bias").copy_(d_beta[sl])
            start += c
        a, side = self.avg_side, self.layout.side
        d_fc_w = d_fc_w.view(self.num_classes, side, side, self.C)[:, :2 * a, :2 * a]
        d_fc_w = d_fc_w.reshape(self.num_classes, a, 2, a, 2, self.C).sum((2, 4)).mul_(0.25)
        self._param(g, "fc.weight").view(self.num_classes, self.C, a, a).copy_(d_fc_w.permute(0, 3, 1, 2))
        self._param(g, "fc.bias").copy_(d_fc_b)
        return g

    # ------------------------------------------------------------------ shared pieces

    def _pooled(self, z: torch.Tensor, gamma: torch.Tensor, no_negative_gamma: bool,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """relu(z) max-pooled through BN's sign: (B, W, C) from z (B, n, C). BN's scale has
        gamma's sign; where it is negative, BN(max-pool) is the min of r, padding excluded."""
        lay = self.layout
        z9 = z[:, :lay.pool_rows].view(z.shape[0], lay.slots, lay.windows, self.C)
        if no_negative_gamma:
            # Padding slots hold z = 0, harmless here: relu(max(z, 0)) = relu(max z).
            return torch.amax(z9, 1, out=out).relu_()
        sign = torch.where(gamma < 0, -1.0, 1.0)
        signed = (z9 * sign).masked_fill_(self.pad_slots, -math.inf)
        return torch.mul(signed.amax(1), sign, out=out).relu_()

    def _pooled_noise(self, f: int, batch: int) -> torch.Tensor:
        """Fold f's dropout multipliers for one training forward, (B, W, C): per branch, in
        branch order, the draw of the reference's dropout on its (B, c, side, side) input."""
        if self.drop == 1:  # the reference multiplies by zero without drawing
            return torch.zeros(batch, self.layout.windows, self.C, device=self.device)
        w = self.layout.windows
        masks = [_bernoulli((batch, c, w), 1 - self.drop, self.dropout_rng[f])
                 for c in self.branch_channels]  # drawn on the CPU, as the reference
        noise = torch.cat(masks, 1).div_(1 - self.drop)  # (B, C, W)
        return noise.transpose(1, 2).contiguous().to(self.device)

    def _chunks(self, idx: torch.Tensor, buf: _Buffers) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(b0, b1, patches of samples idx[b0:b1] as (rows, K)), chunk after chunk."""
        for b0 in range(0, len(idx), self.chunk):
            b1 = min(len(idx), b0 + self.chunk)
            patches = torch.index_select(self.patches, 0, idx[b0:b1], out=buf.patches[:b1 - b0])
            yield b0, b1, patches.view(-1, self.K)

    def _work(self, scratch: _Scratch) -> _Buffers:
        if scratch.buffers is None:
            scratch.buffers = _Buffers(self.chunk, self.layout, self.K, self.C, self.device)
        return scratch.buffers

    # ------------------------------------------------------------------ train / predict

    def train_step(self, f: int, idx: torch.Tensor, scratch: _Scratch) -> None:
        lay, C, K = self.layout, self.C, self.K
        B = len(idx)
        n = lay.positions.numel()
        N = B * self.conv_side ** 2  # BN's count: every conv output position of the batch
        buf = self._work(scratch)
        conv, gamma, beta, fc_w, fc_b = self._unpack(f)

        # forward, a chunk of samples at a time (its full-size tensors stay in cache): the pooled
        # max of r = relu(z) and BN's sums Σr, Σr².
        idx = idx.to(self.device)
        q = torch.empty(B, lay.windows, C, device=self.device)
        r_sum = torch.zeros(C, dtype=torch.float64, device=self.device)
        r_sq = torch.zeros(C, dtype=torch.float64, device=self.device)
        no_negative_gamma = bool((gamma >= 0).all())
        for b0, b1, patches in self._chunks(idx, buf):
            z = torch.mm(patches, conv, out=buf.z[:len(patches)])  # (rows, C)
            self._pooled(z.view(b1 - b0, -1, C), gamma, no_negative_gamma, out=q[b0:b1])
            r = z.relu_()
            r_sum += r.sum(0)
            r_sq += torch.linalg.vecdot(r, r, dim=0)
        mean = r_sum / N
        var = (r_sq / N - mean * mean).clamp_min(0)
        invstd = (var + self.eps).rsqrt()
        alpha = gamma.double() * invstd
        shift = beta.double() - mean * alpha
        mom = self.momentum
        self.running_mean[f].mul_(1 - mom).add_((mom * mean).float())
        self.running_var[f].mul_(1 - mom).add_((mom * var * N / max(N - 1, 1)).float())

        h = torch.addcmul(shift.float(), q, alpha.float())  # BN of the pooled r, (B, W, C)
        noise = self._pooled_noise(f, B) if self.drop > 0 else None
        if noise is not None:
            h.mul_(noise)
        logits = torch.addmm(fc_b, h.view(B, -1), fc_w)

        # backward: cross-entropy (mean over the batch) through the FC (and the average pool)
        dlogits = torch.softmax(logits, 1)
        dlogits[torch.arange(B, device=self.device), self.y[f % len(self.y)][idx]] -= 1
        dlogits /= B
        d_fc_w = dlogits.t() @ h.view(B, -1)  # (classes, W·C)
        d_fc_b = dlogits.sum(0)
        dh = (dlogits @ fc_w.t()).view(B, lay.windows, C)
        if noise is not None:
            dh.mul_(noise)
        # BN backward: dL/dr = alpha·(G − mean(G) − x̂·mean(G·x̂)) over all N positions, where G
        # (the gradient of BN's output) is nonzero only at each window's max; so
        # dL/dz = 1[z > 0]·(alpha·G − k1) − k2·r. Σ G·x̂ = invstd·(Σ G·q − mean·Σ G).
        flat = dh.view(-1, C)
        d_beta = flat.sum(0)
        d_gamma = (torch.linalg.vecdot(flat, q.view(-1, C), dim=0).double()
                   - mean * d_beta.double()) * invstd
        mean_g, mean_gx = d_beta.double() / N, d_gamma / N
        d_gamma = d_gamma.float()
        k1 = alpha * (mean_g - mean_gx * invstd * mean)
        k2 = alpha * mean_gx * invstd
        routed = dh.mul_(alpha.float())  # alpha·G, to each window's max
        positive = torch.sign(q)  # q >= 0: 1 where the max is positive, else 0
        q_max = q / positive  # 0/0 = NaN where it is not: NaN matches nothing (see below)
        n_positive = torch.count_nonzero(positive.view(B, -1), dim=1).cumsum(0).tolist()
        neg_k1, neg_k2 = (-k1).float(), (-k2).float()

        # dW = Σ dz·patch, chunk by chunk; z is recomputed (cheaper than keeping it in memory).
        d_conv = torch.zeros(C, K, device=self.device)
        for b0, b1, patches in self._chunks(idx, buf):
            rows = len(patches)
            r = torch.mm(patches, conv, out=buf.z[:rows]).relu_()
            dz = torch.sign(r, out=buf.dz[:rows]).mul_(neg_k1)  # r >= 0: sign(r) = 1[z > 0]
            dz.addcmul_(r, neg_k2)
            # The max's slot, where the max is positive; where it is r = 0, the routed gradient
            # meets 1[z > 0] = 0 anyway.
            r9 = r.view(b1 - b0, -1, C)[:, :lay.pool_rows].view(b1 - b0, lay.slots, lay.windows, C)
            at_max = torch.eq(r9, q_max[b0:b1].unsqueeze(1), out=buf.at_max[:b1 - b0])
            if at_max.sum().item() != n_positive[b1 - 1] - (n_positive[b0 - 1] if b0 else 0):
                # A tie at a positive max: PyTorch's max-pool takes the first slot only.
                at_max.mul_(at_max.cumsum(1) == 1)
            dz9 = dz.view(b1 - b0, -1, C)[:, :lay.pool_rows].view(b1 - b0, lay.slots, lay.windows, C)
            dz9.addcmul_(at_max, routed[b0:b1].unsqueeze(1))
            d_conv.addmm_(dz.t(), patches)

        grad = self._pack_grads(scratch.grad, d_conv, d_gamma, d_beta, d_fc_w, d_fc_b)
        self.adam[f].step([grad])

    def predict(self, f: int, idx: torch.Tensor) -> np.ndarray:
        if len(idx) == 0:
            return np.zeros((0, self.num_classes))
        conv, gamma, beta, fc_w, fc_b = self._unpack(f)
        n, C = self.layout.positions.numel(), self.C
        out = []
        for i in range(0, len(idx), 256):
            patches = self.patches[idx[i:i + 256].to(self.device)]
            z = (patches.view(-1, self.K) @ conv).view(-1, n, C)
            q = self._pooled(z, gamma, bool((gamma >= 0).all()))
            scale = gamma / (self.running_var[f] + self.eps).sqrt()
            h = torch.addcmul(beta - self.running_mean[f] * scale, q, scale)
            out.append(torch.addmm(fc_b, h.view(len(q), -1), fc_w).float().cpu())
        return torch.softmax(torch.cat(out), 1).double().numpy()


# --------------------------------------------------------------------------- OFF-ApexNet

class _OFFApexNetFolds(_FlatFolds):
    """OFF-ApexNet folds: the reference's layers run functionally on the fold's parameter row,
    autograd for the backward. What differs from the module: the streams are one grouped
    convolution per layer in channels-last memory (stream s is group s; the reference
    concatenates the streams in this order), dropout masks come from the fold's generator, and
    Adam is fused (the 2.7 M parameters make Adam's seven passes the biggest cost of a step)."""

    fused_adam = True

    @staticmethod
    def supports(net: nn.Module, x: torch.Tensor) -> bool:
        if type(net) is not OFFApexNet or x.ndim != 4 or x.shape[1] != len(net.streams):
            return False
        kinds = [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d]
        if any([type(m) for m in s] != kinds for s in net.streams):
            return False
        first = net.streams[0]

        def config(m: nn.Module) -> tuple:
            if isinstance(m, nn.Conv2d):
                return (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                        m.dilation, m.groups, m.bias is not None, m.padding_mode)
            if isinstance(m, nn.MaxPool2d):
                return m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
            return ()

        ok = all(config(m) == config(m0) for s in net.streams for m, m0 in zip(s, first))
        ok &= first[0].in_channels == 1 and first[0].groups == 1 and first[3].groups == 1
        ok &= first[0].bias is not None and first[3].bias is not None
        ok &= first[0].padding_mode == "zeros" and first[3].padding_mode == "zeros"
        ok &= not first[2].return_indices
        layers = list(net.pre_logits)
        ok &= len(layers) % 3 == 0 and all(
            [type(m) for m in layers[i:i + 3]] == [nn.Linear, nn.ReLU, nn.Dropout]
            and not layers[i + 2].inplace for i in range(0, len(layers), 3))
        return bool(ok)

    def __init__(self, template: nn.Module, x: torch.Tensor, y: torch.Tensor, n_folds: int, *,
                 lr: float, device: torch.device) -> None:
        super().__init__(template, n_folds, lr=lr, device=device)
        s0 = template.streams[0]
        self.n_streams = len(template.streams)
        self.convs = [(i, s0[i].stride, s0[i].padding, s0[i].dilation) for i in (0, 3)]
        self.pools = [(s0[i].kernel_size, s0[i].stride, s0[i].padding, s0[i].dilation, s0[i].ceil_mode)
                      for i in (2, 5)]
        layers = list(template.pre_logits)
        self.hidden = [(f"pre_logits.{i}", float(layers[i + 2].p)) for i in range(0, len(layers), 3)]
        self.x = x.to(device)
        self.y = y.to(device).view(-1, len(x))  # (1 or folds, N)

    def _logits(self, w: dict[str, torch.Tensor], x: torch.Tensor, f: int | None) -> torch.Tensor:
        """Logits (B, classes) from parameters ``w`` (name -> tensor); dropout drawn from fold
        f's generator when f is given (training), none when None (eval)."""
        h = x.contiguous(memory_format=torch.channels_last)  # (B, streams, H, W)
        for (i, stride, padding, dilation), pool in zip(self.convs, self.pools):
            weight = torch.cat([w[f"streams.{s}.{i}.weight"] for s in range(self.n_streams)])
            bias = torch.cat([w[f"streams.{s}.{i}.bias"] for s in range(self.n_streams)])
            h = F.conv2d(h, weight, bias, stride, padding, dilation, groups=self.n_streams).relu_()
            h = F.max_pool2d(h, *pool)  # (B, streams·c, H', W')
        h = h.flatten(1)  # the reference's (streams·c, H', W') order
        for name, p in self.hidden:
            h = F.linear(h, w[f"{name}.weight"], w[f"{name}.bias"]).relu_()
            if f is not None and p > 0:
                h = h * self._noise(f, tuple(h.shape), p)
        return F.linear(h, w["fc.weight"], w["fc.bias"])

    def train_step(self, f: int, idx: torch.Tensor, scratch: object) -> None:
        row = self.params[f]
        leaves = {name: self._param(row, name).detach().requires_grad_() for name in self.shapes}
        idx = idx.to(self.device)
        with torch.enable_grad():
            loss = F.cross_entropy(self._logits(leaves, self.x[idx], f), self.y[f % len(self.y)][idx])
            grads = torch.autograd.grad(loss, list(leaves.values()))
        self.adam[f].step(list(grads))

    def predict(self, f: int, idx: torch.Tensor) -> np.ndarray:
        w = {name: self._param(self.params[f], name) for name in self.shapes}
        logits = [self._logits(w, self.x[idx[i:i + 1024].to(self.device)], None).float().cpu()
                  for i in range(0, len(idx), 1024)]
        logits = torch.cat(logits) if logits else torch.empty((0, self.num_classes))
        return torch.softmax(logits, 1).double().numpy()
