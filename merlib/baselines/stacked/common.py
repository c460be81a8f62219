"""What every fast fold trainer shares: the trainer interface, the reference's dropout draws,
Adam over tensors updated in place, folds as rows of one parameter tensor, and the generic path
(any net, fold after fold, bit for bit). See ``merlib.baselines.stacked``."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn




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


