"""Training of the flow baselines under the reference's fixed schedule: Adam, cross-entropy,
a fixed number of epochs, the model after the last epoch predicts (no test-set selection)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_predict(make_net: Callable[[], nn.Module], X_train: np.ndarray, y_train: np.ndarray,
                  X_test: np.ndarray, *, epochs: int, lr: float, batch_size: int, seed: int,
                  device: str = "cpu", progress: bool = False, desc: str = "train") -> np.ndarray:
    """Train a fresh ``make_net()`` on (X_train, y_train) and return its softmax on X_test.

    Initial weights, the per-epoch shuffling and dropout all come from ``seed``; the caller's
    global RNG state is left as it was. Deterministic for a seed on CPU.
    X_* (N, C, H, W) float, y_train (N,) int label ids -> (n_test, num_classes) float64."""
    from tqdm.auto import tqdm

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if len(X_train) != len(y_train) or len(X_train) == 0:
        raise ValueError(f"X_train {np.shape(X_train)} and y_train {np.shape(y_train)} must be "
                         f"non-empty and of one length")
    dev = resolve_device(device)
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        net = make_net().to(dev)
        order_rng = torch.Generator().manual_seed(seed)
        x = torch.as_tensor(np.asarray(X_train), dtype=torch.float32, device=dev)
        y = torch.as_tensor(np.asarray(y_train), dtype=torch.long, device=dev)
        if int(y.min()) < 0 or int(y.max()) >= net.num_classes:
            raise ValueError(f"labels must be in [0, {net.num_classes}), got {sorted(set(y.tolist()))}")
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False):
            net.train()
            order = torch.randperm(len(x), generator=order_rng).to(dev)
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(net(x[idx]), y[idx]).backward()
                opt.step()
        net.eval()
        xt = torch.as_tensor(np.asarray(X_test), dtype=torch.float32)
        with torch.no_grad():
            logits = [net(xt[i:i + 1024].to(dev)).float().cpu() for i in range(0, len(xt), 1024)]
        logits = torch.cat(logits) if logits else torch.empty((0, net.num_classes))
    return torch.softmax(logits, 1).double().numpy()
