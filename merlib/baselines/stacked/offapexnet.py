"""OFF-ApexNet's fold trainer for ``merlib.baselines.stacked``: its layers functionally with
autograd, both streams as one grouped channels-last convolution, fused Adam."""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from merlib.baselines.nets import OFFApexNet
from merlib.baselines.stacked.common import _FlatFolds



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

