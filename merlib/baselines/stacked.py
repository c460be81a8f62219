"""Every LOSO fold of a flow baseline trained in one pass: ``train_predict_folds``.

The fold-by-fold reference is ``merlib.baselines.training.train_predict`` (Adam, cross-entropy,
fixed epochs, the last epoch's model predicts). This module gives the same result for all folds
at once, fold f being exactly what ``train_predict(make_net, X[tr_f], y[tr_f], X[te_f],
seed=seeds[f])`` computes:

- initial weights: ``torch.manual_seed(seeds[f]); make_net()``;
- batches: each epoch ``torch.randperm(n_f, generator=torch.Generator().manual_seed(seeds[f]))``
  (one generator per fold, drawn once per epoch), cut into ``batch_size`` pieces, the last one
  short; folds of different sizes have different last batches and, when their sizes straddle a
  multiple of the batch size, different numbers of steps;
- Adam: one state per fold, with its own step count, the same update as ``torch.optim.Adam``'s
  single-tensor CPU path; a fold with no batch at a step takes no step;
- dropout: **the reference's masks, bit for bit, on CPU.** After ``make_net()`` the reference's
  global CPU generator is touched only by dropout (the batch order has its own generator), and a
  dropout layer draws exactly one ``bernoulli_(1 - p)`` on a fresh tensor of its input's shape.
  Each fold keeps a ``torch.Generator`` in the state the global one had after its ``make_net()``
  and draws the same-shaped ``bernoulli_`` from it in the same layer order, so its masks are the
  reference's whatever the kernel (MKL's seeded streams on Intel, the per-element default
  elsewhere). Folds therefore differ (their seeds differ) and a seed gives the same masks on every
  run. On CUDA the masks are still drawn on the CPU: they are the CPU reference's, not those a
  CUDA ``train_predict`` would draw.

What is not bit-for-bit: the floating-point order of sums (GEMMs instead of convolution kernels,
batch-norm statistics from the conv GEMM, see below). ``tests/test_stacked.py`` holds the stacked
probabilities to the fold-by-fold ones within 1e-4, dropout on. One difference in kind, never
met in practice: a batch-norm weight exactly 0 sends its max-pool gradient to a different (tied)
window element than PyTorch's max-pool, which changes only that channel's weight gradient.

Why it is fast (measured in ``bench/stacked.py``): the fold-by-fold time is not per-step
overhead but slow kernels on tiny channel counts (max-pool, batch-norm and 3-channel
convolutions), so stacking the folds into bigger tensors alone would not help; on the contrary,
stacked activations spill out of the caches. STSTNet therefore has a hand-written forward and
backward:

- the three branches are one convolution with 16 output channels, a GEMM of precomputed input
  patches (the inputs never need a gradient, so the patches are cut once per run);
- the conv output positions are ordered window-slot-major for the 3×3/3 max-pool, so the pool is
  a max over 9 contiguous blocks;
- batch-norm sits between ReLU and the max-pool with one positive scale per channel, so
  max-pool(BN(r)) = BN(max-pool(r)): normalisation, dropout, average pool and the FC run at the
  pooled 10×10 size, and the batch-norm backward reduces to two per-channel constants applied
  at full size, its statistics coming from the same GEMM (r · patches) that the weight gradient
  needs;
- each fold runs its step on its own rows (no padding rows to mask), in cache, and all folds'
  parameters, gradients and Adam states live in one (folds, parameters) tensor.

Other networks (OFF-ApexNet, or any ``make_net``) run the generic path: one module per fold,
stepped in turn with the global generator swapped to the fold's, Adam per fold — the reference's
own arithmetic, interleaved.
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
    """Train one fresh net per fold on X[train_idx] and predict X[test_idx], all folds together.

    ``name_or_factory``: a net baseline's name (``"ststnet"``, ``"off-apexnet"``: the nets of
    ``merlib.baselines.NET_KWARGS``) or a ``make_net`` callable. X (N, C, H, W) float, y (N,) int
    label ids, ``folds`` a list of (train_idx, test_idx) index arrays into X, ``seeds[f]`` fold f's
    seed. Fold f equals ``train_predict(make_net, X[tr], y[tr], X[te], seed=seeds[f], ...)``
    (module docstring). The caller's global RNG state is left as it was.

    STSTNet runs the hand-written path on ``workers`` threads (None: ``torch.get_num_threads()``),
    each taking whole folds with single-threaded kernels (intra-op threads are set to 1 for the
    call and restored), so the result does not depend on the worker count. Other nets, or
    ``fast=False``, run the generic path on one thread with torch's own thread setting."""
    from tqdm.auto import tqdm

    make_net = net_factory(name_or_factory) if isinstance(name_or_factory, str) else name_or_factory
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if len(seeds) != len(folds) or not folds:
        raise ValueError(f"need one seed per fold and at least one fold, got {len(seeds)} seeds "
                         f"for {len(folds)} folds")
    X = np.asarray(X)
    y = np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X {X.shape} and y {y.shape} must be of one length")
    folds = [(np.asarray(tr, dtype=np.int64).reshape(-1), np.asarray(te, dtype=np.int64).reshape(-1))
             for tr, te in folds]
    for f, (tr, te) in enumerate(folds):
        if len(tr) == 0:
            raise ValueError(f"fold {f} has an empty training set")
        if np.any((tr < 0) | (tr >= len(X))) or np.any((te < 0) | (te >= len(X))):
            raise ValueError(f"fold {f}'s indices fall outside X (N = {len(X)})")
    dev = resolve_device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []

    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        nets, rng_states, cuda_states = [], [], []
        for seed in seeds:  # as train_predict: the fold's seed, then make_net() draws the init
            torch.manual_seed(int(seed))
            nets.append(make_net())
            rng_states.append(torch.get_rng_state())
            cuda_states.append(torch.cuda.get_rng_state(dev) if cuda else None)
        num_classes = nets[0].num_classes
        if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got {sorted(set(y.tolist()))}")
        x_all = torch.as_tensor(X, dtype=torch.float32)
        y_all = torch.as_tensor(y, dtype=torch.long)
        trainer: _Trainer
        if fast and _STSTNetFolds.supports(nets[0], x_all):
            trainer = _STSTNetFolds(nets, rng_states, x_all, y_all, lr=lr, device=dev)
            n_workers = max(1, min(threads if workers is None else workers, len(folds)))
        else:
            # One thread: dropout draws from the global generator, swapped per fold.
            trainer = _ModuleFolds(nets, rng_states, cuda_states, x_all, y_all, lr=lr, device=dev)
            n_workers = 0
        del nets

        train_idx = [torch.as_tensor(tr) for tr, _ in folds]
        test_idx = [torch.as_tensor(te) for _, te in folds]
        per_epoch = [np.zeros((epochs, len(te), num_classes)) for te in test_idx] if record_epochs else None
        bar = tqdm(total=epochs * len(folds), desc="folds", unit="fold-epoch", disable=not progress,
                   leave=False)

        def run(fold_ids: list[int]) -> None:
            scratch = trainer.scratch()
            order_rngs = {f: torch.Generator().manual_seed(int(seeds[f])) for f in fold_ids}
            for epoch in range(epochs):
                # One randperm per fold and epoch, as the reference draws it; step s of the
                # epoch is batch s of every fold that has one.
                batches = {f: _batches(train_idx[f], torch.randperm(len(train_idx[f]),
                                                                    generator=order_rngs[f]),
                                       batch_size) for f in fold_ids}
                for step in range(max(len(b) for b in batches.values())):
                    for f in fold_ids:
                        if step < len(batches[f]):
                            trainer.train_step(f, batches[f][step], scratch)
                if record_epochs:
                    for f in fold_ids:
                        per_epoch[f][epoch] = trainer.predict(f, test_idx[f])
                bar.update(len(fold_ids))

        try:
            if n_workers == 0:
                run(list(range(len(folds))))
            else:
                torch.set_num_threads(1)
                parts = [list(range(w, len(folds), n_workers)) for w in range(n_workers)]
                if n_workers == 1:
                    run(parts[0])
                else:
                    with ThreadPoolExecutor(n_workers) as pool:
                        for done in [pool.submit(run, part) for part in parts]:
                            done.result()
            proba = [per_epoch[f][-1].copy() if record_epochs else trainer.predict(f, te)
                     for f, te in enumerate(test_idx)]
        finally:
            torch.set_num_threads(threads)
            bar.close()
    return FoldPredictions(proba, per_epoch)


def _batches(train_idx: torch.Tensor, order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The fold's batches of one epoch as indices into X (the reference's x[order[a:b]])."""
    picked = train_idx[order]
    return [picked[a:a + batch_size] for a in range(0, len(picked), batch_size)]


class _Trainer:
    """Training state of all folds. ``train_step(f, idx, scratch)`` runs one Adam step of fold f
    on X[idx]; ``predict(f, idx)`` is its eval-mode softmax on X[idx], (n, num_classes) float64.
    Calls for different folds may run in different threads, each with its own ``scratch()``."""

    def scratch(self) -> object:
        return None

    def train_step(self, f: int, idx: torch.Tensor, scratch: object) -> None:
        raise NotImplementedError

    def predict(self, f: int, idx: torch.Tensor) -> np.ndarray:
        raise NotImplementedError


# --------------------------------------------------------------------------- dropout

_RAND_IS_BERNOULLI: bool | None = None


def _bernoulli(shape: tuple[int, ...], p: float, generator: torch.Generator) -> torch.Tensor:
    """``torch.empty(shape).bernoulli_(p, generator=generator)``, the same bits and the same
    generator advance, about 2.5× faster where PyTorch's CPU bernoulli_ is its default kernel
    (one 53-bit uniform double per element, ``u < p``): that kernel is serial, this one is the
    uniform_ kernel on the same stream. Checked once per process against bernoulli_ itself; where
    they differ (an MKL build drawing seeded streams), bernoulli_ is used."""
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
        return (torch.rand(shape, dtype=torch.float64, generator=generator) < p).float()
    return torch.empty(shape).bernoulli_(p, generator=generator)


# --------------------------------------------------------------------------- Adam

class _FoldAdam:
    """Adam over the rows of a (folds, n) parameter tensor, one state and step count per row:
    the arithmetic of ``torch.optim.Adam``'s single-tensor path (default betas, eps, no weight
    decay), so a row steps exactly as the reference's per-parameter update does."""

    def __init__(self, params: torch.Tensor, *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.steps = [0] * params.shape[0]

    def step(self, f: int, grad: torch.Tensor, denom: torch.Tensor) -> None:
        """Fold f's update from its gradient row; ``denom``: a scratch row."""
        beta1, beta2 = self.betas
        self.steps[f] += 1
        t = float(self.steps[f])
        exp_avg, exp_avg_sq = self.exp_avg[f], self.exp_avg_sq[f]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1 ** t)
        bias_correction2_sqrt = (1 - beta2 ** t) ** 0.5
        denom = torch.sqrt(exp_avg_sq, out=denom).div_(bias_correction2_sqrt).add_(self.eps)
        self.params[f].addcdiv_(exp_avg, denom, value=-step_size)


# --------------------------------------------------------------------------- generic path

class _ModuleFolds(_Trainer):
    """Any net: one module and one ``torch.optim.Adam`` per fold, stepped in turn, the global
    generator swapped to the fold's around each training forward (dropout's draws). This is the
    reference's arithmetic, interleaved; it is the path for nets without a hand-written one."""

    def __init__(self, nets: list[nn.Module], rng_states: list[torch.Tensor],
                 cuda_states: list[torch.Tensor | None], x: torch.Tensor, y: torch.Tensor, *,
                 lr: float, device: torch.device) -> None:
        self.device = device
        self.nets = [net.to(device) for net in nets]
        self.opts = [torch.optim.Adam(net.parameters(), lr=lr) for net in self.nets]
        self.rng = list(rng_states)
        # On CUDA dropout draws from the CUDA generator, which the reference's manual_seed set.
        self.cuda_rng = list(cuda_states) if device.type == "cuda" else None
        self.x, self.y = x.to(device), y.to(device)
        self.loss = nn.CrossEntropyLoss()

    @contextmanager
    def _fold_rng(self, f: int) -> Iterator[None]:
        torch.set_rng_state(self.rng[f])
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng[f], self.device)
        yield
        self.rng[f] = torch.get_rng_state()
        if self.cuda_rng is not None:
            self.cuda_rng[f] = torch.cuda.get_rng_state(self.device)

    def train_step(self, f: int, idx: torch.Tensor, scratch: object) -> None:
        net, opt = self.nets[f], self.opts[f]
        idx = idx.to(self.device)
        net.train()
        with torch.enable_grad(), self._fold_rng(f):
            opt.zero_grad(set_to_none=True)
            self.loss(net(self.x[idx]), self.y[idx]).backward()
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
    """One worker's full-size work tensors, reused across steps (prefix views for smaller
    batches): fresh tensors of this size cost page faults every step."""

    def __init__(self, rows: int, layout: _PoolLayout, k: int, c: int, device: torch.device) -> None:
        self.capacity = rows
        n = layout.positions.numel()
        self.patches = torch.empty(rows, n, k, device=device)
        self.z = torch.empty(rows * n, c, device=device)
        self.dz = torch.empty(rows * n, c, device=device)
        self.at_max = torch.empty(rows, layout.slots, layout.windows, c, device=device)


class _Scratch:
    """A worker's reusable tensors: full-size buffers (grown on demand), a gradient row and
    Adam's denominator row."""

    def __init__(self, n_params: int, device: torch.device) -> None:
        self.buffers: _Buffers | None = None
        self.grad = torch.zeros(n_params, device=device)
        self.denom = torch.empty(n_params, device=device)


class _STSTNetFolds(_Trainer):
    """STSTNet folds with the hand-written forward and backward of the module docstring.

    Per fold and step, with B samples, K = in_chans·k² + 1 patch columns (the 1 for the bias),
    C = 16 channels, n rows per sample (``_PoolLayout``), W windows (10×10), A×A = 5×5:
    z = patches @ W_conv (B·n, C); q = relu(max over slots) (B, W, C); BN at pooled size,
    dropout, average pool (B, A·A·C), FC. Backward: the pooled gradient of BN's output, routed
    to each window's first max; the full-size dz = 1[z > 0]·(routed − k1) − k2·r, applied as
    dW = (routed − k1·1[z > 0])ᵀ patches − k2·(rᵀ patches)."""

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

    def __init__(self, nets: list[nn.Module], rng_states: list[torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, *, lr: float, device: torch.device) -> None:
        net = nets[0]
        conv0, bn0 = net.branches[0][0], net.branches[0][2]
        self.device = device
        self.branch_channels = [b[0].out_channels for b in net.branches]
        self.C = sum(self.branch_channels)
        self.num_classes = net.num_classes
        self.drop = float(net.branches[0][4].p)
        self.eps, self.momentum = float(bn0.eps), float(bn0.momentum)
        kernel, pad = conv0.kernel_size[0], conv0.padding[0]
        self.conv_side = x.shape[2] + 2 * pad - kernel + 1
        self.layout = _pool_layout(self.conv_side, 3, 1)
        self.avg_side = self.layout.side // 2
        self.k_in = x.shape[1] * kernel * kernel
        self.K = self.k_in + 1

        # Every fold's parameters as one row of a (folds, n) tensor, in parameters() order.
        self.shapes = {name: p.shape for name, p in net.named_parameters()}
        self.offsets, n = {}, 0
        for name, shape in self.shapes.items():
            self.offsets[name] = n
            n += math.prod(shape)
        self.params = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()])
                                   for m in nets]).to(device)
        self.n_params = n
        self.adam = _FoldAdam(self.params, lr=lr)
        running = [torch.cat([b[2].running_mean for b in m.branches]) for m in nets]
        self.running_mean = torch.stack(running).to(device, torch.float32)
        running = [torch.cat([b[2].running_var for b in m.branches]) for m in nets]
        self.running_var = torch.stack(running).to(device, torch.float32)
        self.dropout_rng = []
        for state in rng_states:
            g = torch.Generator()
            g.set_state(state)
            self.dropout_rng.append(g)

        # Patches of every sample once, rows in the layout's order, a ones column for the bias;
        # padding slots are all-zero rows, so their z is exactly 0.
        cols = F.unfold(F.pad(x, (pad,) * 4), kernel)  # (N, k_in, conv_side²)
        cols = torch.cat([cols.transpose(1, 2), torch.ones(len(x), cols.shape[2], 1)], 2)
        cols = torch.cat([cols, torch.zeros(len(x), 1, self.K)], 1)  # row -1: the padding slot
        self.patches = cols[:, self.layout.positions].contiguous().to(device)  # (N, n, K)
        self.y = y.to(device)
        self.pad_slots = (self.layout.positions[:self.layout.pool_rows] < 0).view(
            1, self.layout.slots, self.layout.windows, 1).to(device)

    def scratch(self) -> _Scratch:
        return _Scratch(self.n_params, self.device)

    # ------------------------------------------------------------------ parameters

    def _param(self, row: torch.Tensor, name: str) -> torch.Tensor:
        off = self.offsets[name]
        return row[off:off + math.prod(self.shapes[name])].view(self.shapes[name])

    def _unpack(self, f: int) -> tuple[torch.Tensor, ...]:
        """Fold f's weights: the conv as (K, C) with the bias as last row, BN gamma and beta (C,),
        the FC weight permuted to the pooled layout's (A·A·C, classes) and its bias."""
        row = self.params[f]
        nb = len(self.branch_channels)
        w = torch.cat([self._param(row, f"branches.{b}.0.weight").reshape(-1, self.k_in)
                       for b in range(nb)])  # (C, k_in)
        bias = torch.cat([self._param(row, f"branches.{b}.0.bias") for b in range(nb)])
        conv = torch.cat([w, bias[:, None]], 1).t().contiguous()  # (K, C)
        gamma = torch.cat([self._param(row, f"branches.{b}.2.weight") for b in range(nb)])
        beta = torch.cat([self._param(row, f"branches.{b}.2.bias") for b in range(nb)])
        a = self.avg_side
        # The reference flattens (C, A, A); the pooled tensors here are (A, A, C).
        fc_w = self._param(row, "fc.weight").view(self.num_classes, self.C, a, a)
        fc_w = fc_w.permute(2, 3, 1, 0).reshape(a * a * self.C, self.num_classes)
        return conv, gamma, beta, fc_w, self._param(row, "fc.bias")

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
        a = self.avg_side
        self._param(g, "fc.weight").view(self.num_classes, self.C, a, a).copy_(
            d_fc_w.view(self.num_classes, a, a, self.C).permute(0, 3, 1, 2))
        self._param(g, "fc.bias").copy_(d_fc_b)
        return g

    # ------------------------------------------------------------------ shared pieces

    def _pooled(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """relu(z) max-pooled through BN's sign: (B, W, C) from z (B, n, C). BN's scale has
        gamma's sign; where it is negative, BN(max-pool) is the min of r, padding excluded."""
        lay = self.layout
        z9 = z[:, :lay.pool_rows].view(z.shape[0], lay.slots, lay.windows, self.C)
        if bool((gamma >= 0).all()):
            # Padding slots hold z = 0, harmless here: relu(max(z, 0)) = relu(max z).
            return z9.amax(1).relu_()
        sign = torch.where(gamma < 0, -1.0, 1.0)
        signed = (z9 * sign).masked_fill_(self.pad_slots, -math.inf)
        return (signed.amax(1) * sign).relu_()

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Average pool 2/2 of pooled (B, W, C) -> (B, A·A·C) in (A, A, C) order."""
        b, side, a = h.shape[0], self.layout.side, self.avg_side
        h = h.view(b, side, side, self.C)[:, :2 * a, :2 * a]
        return h.reshape(b, a, 2, a, 2, self.C).mean((2, 4)).reshape(b, a * a * self.C)

    def _noise(self, f: int, batch: int) -> torch.Tensor:
        """Fold f's dropout multipliers (mask / (1 - p)) for one training forward, (B, W, C) (a
        transposed view): per branch, the reference's bernoulli_ draw on its (B, c, side, side)
        input, in branch order."""
        if self.drop == 1:  # the reference multiplies by zero without drawing
            return torch.zeros(batch, self.layout.windows, self.C, device=self.device)
        w = self.layout.windows
        masks = [_bernoulli((batch, c, w), 1 - self.drop, self.dropout_rng[f])
                 for c in self.branch_channels]
        noise = torch.cat(masks, 1).div_(1 - self.drop)  # (B, C, W)
        return noise.to(self.device).transpose(1, 2)

    def _work(self, scratch: _Scratch, batch: int) -> _Buffers:
        if scratch.buffers is None or scratch.buffers.capacity < batch:
            scratch.buffers = None  # free first: the old and new ones need not coexist
            scratch.buffers = _Buffers(batch, self.layout, self.K, self.C, self.device)
        return scratch.buffers

    # ------------------------------------------------------------------ train / predict

    def train_step(self, f: int, idx: torch.Tensor, scratch: _Scratch) -> None:
        lay, C, K = self.layout, self.C, self.K
        B = len(idx)
        n = lay.positions.numel()
        N = B * self.conv_side ** 2  # BN's count: every conv output position of the batch
        buf = self._work(scratch, B)
        conv, gamma, beta, fc_w, fc_b = self._unpack(f)

        # forward
        patches = torch.index_select(self.patches, 0, idx.to(self.device), out=buf.patches[:B])
        patches = patches.view(B * n, K)
        z = torch.mm(patches, conv, out=buf.z[:B * n])  # (B·n, C)
        q = self._pooled(z.view(B, n, C), gamma)  # (B, W, C)
        r = z.relu_()
        r_patches = torch.mm(r.t(), patches)  # (C, K): Σ r·patch, for BN and the weight gradient
        # BN statistics from it: Σr is the bias column, Σr² = Σ r·z = r_patches · conv.
        rp = r_patches.double()
        mean = rp[:, -1] / N
        var = ((rp * conv.t().double()).sum(1) / N - mean * mean).clamp_min(0)
        invstd = (var + self.eps).rsqrt()
        alpha = gamma.double() * invstd
        shift = beta.double() - mean * alpha
        mom = self.momentum
        self.running_mean[f].mul_(1 - mom).add_((mom * mean).float())
        self.running_var[f].mul_(1 - mom).add_((mom * var * N / max(N - 1, 1)).float())

        h = torch.addcmul(shift.float(), q, alpha.float())  # BN of the pooled r
        noise = self._noise(f, B) if self.drop > 0 else None
        if noise is not None:
            h = h * noise
        feat = self._head(h)  # (B, A·A·C)
        logits = torch.addmm(fc_b, feat, fc_w)

        # backward: cross-entropy (mean over the batch) through the FC and the average pool
        dlogits = torch.softmax(logits, 1)
        dlogits[torch.arange(B, device=self.device), self.y[idx.to(self.device)]] -= 1
        dlogits /= B
        d_fc_w = dlogits.t() @ feat  # (classes, A·A·C)
        d_fc_b = dlogits.sum(0)
        a, side = self.avg_side, lay.side
        dfeat = (dlogits @ fc_w.t()).mul_(0.25).view(B, a, 1, a, 1, C)
        dh = torch.zeros(B, side, side, C, device=self.device)
        dh[:, :2 * a, :2 * a] = dfeat.expand(B, a, 2, a, 2, C).reshape(B, 2 * a, 2 * a, C)
        dh = dh.view(B, lay.windows, C)
        if noise is not None:
            dh.mul_(noise)
        # BN backward: dL/dr = alpha·(G − mean(G) − x̂·mean(G·x̂)) over all N positions, where G
        # (the gradient of BN's output) is nonzero only at each window's max; so
        # dL/dz = 1[z > 0]·(alpha·G − k1) − k2·r.
        xq = (q - mean.float()) * invstd.float()
        d_beta = dh.sum((0, 1))
        d_gamma = (dh * xq).sum((0, 1))
        mean_g, mean_gx = d_beta.double() / N, d_gamma.double() / N
        k1 = alpha * (mean_g - mean_gx * invstd * mean)
        k2 = alpha * mean_gx * invstd
        routed = dh.mul_(alpha.float()).unsqueeze(1)  # alpha·G at each window's max

        dz = torch.sign(r, out=buf.dz[:B * n]).mul_(-k1.float())  # r >= 0: sign is 1[z > 0]
        r9 = r.view(B, n, C)[:, :lay.pool_rows].view(B, lay.slots, lay.windows, C)
        dz9 = dz.view(B, n, C)[:, :lay.pool_rows].view(B, lay.slots, lay.windows, C)
        # The max's slot, where the max is positive (NaN matches nothing): where it is r = 0, the
        # routed gradient meets 1[z > 0] = 0 anyway.
        positive = q > 0
        at_max = torch.eq(r9, torch.where(positive, q, math.nan).unsqueeze(1), out=buf.at_max[:B])
        if at_max.sum() != positive.sum():
            # A tie at a positive max: PyTorch's max-pool takes the first slot only.
            at_max.mul_(at_max.cumsum(1) == 1)
        dz9.addcmul_(at_max, routed)
        d_conv = torch.mm(dz.t(), patches).double().sub_(k2[:, None] * rp).float()  # (C, K)

        grad = self._pack_grads(scratch.grad, d_conv, d_gamma, d_beta, d_fc_w, d_fc_b)
        self.adam.step(f, grad, scratch.denom)

    def predict(self, f: int, idx: torch.Tensor) -> np.ndarray:
        if len(idx) == 0:
            return np.zeros((0, self.num_classes))
        conv, gamma, beta, fc_w, fc_b = self._unpack(f)
        n, C = self.layout.positions.numel(), self.C
        out = []
        for i in range(0, len(idx), 256):
            patches = self.patches[idx[i:i + 256].to(self.device)]
            z = (patches.view(-1, self.K) @ conv).view(-1, n, C)
            q = self._pooled(z, gamma)
            scale = gamma / (self.running_var[f] + self.eps).sqrt()
            h = torch.addcmul(beta - self.running_mean[f] * scale, q, scale)
            out.append(torch.addmm(fc_b, self._head(h), fc_w).float().cpu())
        return torch.softmax(torch.cat(out), 1).double().numpy()
