"""STSTNet and OFF-ApexNet, the two optical-flow baselines of Table 6 (docs/DECISIONS.md,
"Baselines"). Model code only: no I/O, no training loop (``merlib.baselines.training``).

STSTNet (Liong et al., FG 2019; reference ``christy1206/STSTNet`` main.py), input
(B, 3, 28, 28) = u, v, optical strain:

- three parallel branches, 3, 5 and 8 channels, each: conv 3×3 padding 2 -> (B, c, 30, 30),
  ReLU, BatchNorm, max-pool 3 stride 3 padding 1 -> (B, c, 10, 10), dropout 0.5
- concatenation                                         -> (B, 16, 10, 10)
- average pool 2 stride 2                               -> (B, 16, 5, 5)   (forward_features)
- flatten, FC 400 -> 3                                  -> (B, 3)          (forward_head)

OFF-ApexNet (Gan et al., Signal Processing: Image Communication 2019), input (B, 2, 28, 28) =
u, v, one stream each (no shared weights):

- conv 5×5 padding 2, 6 ch, ReLU -> (B, 6, 28, 28); max-pool 2 -> (B, 6, 14, 14)
- conv 5×5 padding 2, 16 ch, ReLU -> (B, 16, 14, 14); max-pool 2 -> (B, 16, 7, 7)
- the two streams concatenated                          -> (B, 32, 7, 7)   (forward_features)
- flatten 1568, FC 1024, ReLU, dropout 0.5, FC 1024, ReLU, dropout 0.5, FC 3 -> (B, 3)
"""
from __future__ import annotations

import torch
from torch import nn


class STSTNet(nn.Module):
    """Shallow Triple Stream Three-dimensional CNN. Logits (B, num_classes)."""

    def __init__(self, *, in_chans: int = 3, num_classes: int = 3,
                 branch_channels: tuple[int, ...] = (3, 5, 8), kernel_size: int = 3,
                 padding: int = 2, drop_rate: float = 0.5, img_size: int = 28) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_chans, c, kernel_size=kernel_size, padding=padding),
                nn.ReLU(),
                nn.BatchNorm2d(c),  # after the ReLU, as in the reference
                nn.MaxPool2d(kernel_size=3, stride=3, padding=1),
                nn.Dropout(drop_rate),
            ) for c in branch_channels)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        conv = img_size + 2 * padding - kernel_size + 1  # 30
        side = ((conv + 2 - 3) // 3 + 1) // 2  # max-pool 3/3/1: 10, avg-pool 2: 5
        self.num_features = sum(branch_channels) * side * side  # 400
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([branch(x) for branch in self.branches], 1)  # (B, 16, 10, 10)
        return self.pool(x)  # (B, 16, 5, 5)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = x.flatten(1)  # (B, 400)
        return x if pre_logits else self.fc(x)  # (B, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class OFFApexNet(nn.Module):
    """Optical Flow Features from Apex frame Network: one LeNet-like stream per flow component.
    Logits (B, num_classes)."""

    def __init__(self, *, in_chans: int = 2, num_classes: int = 3,
                 stream_channels: tuple[int, int] = (6, 16), kernel_size: int = 5,
                 hidden: tuple[int, ...] = (1024, 1024), drop_rate: float = 0.5,
                 img_size: int = 28) -> None:
        super().__init__()
        self.num_classes = num_classes
        c1, c2 = stream_channels
        pad = kernel_size // 2
        self.streams = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(1, c1, kernel_size=kernel_size, padding=pad), nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(c1, c2, kernel_size=kernel_size, padding=pad), nn.ReLU(),
                nn.MaxPool2d(2),
            ) for _ in range(in_chans))
        side = img_size // 4
        self.num_features = in_chans * c2 * side * side  # 2·16·7·7 = 1568
        layers: list[nn.Module] = []
        width = self.num_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(drop_rate)]
            width = h
        self.pre_logits = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        streams = [s(x[:, i:i + 1]) for i, s in enumerate(self.streams)]  # each (B, 16, 7, 7)
        return torch.cat(streams, 1)  # (B, 32, 7, 7)

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x.flatten(1))  # (B, 1568) -> (B, 1024)
        return x if pre_logits else self.fc(x)  # (B, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
