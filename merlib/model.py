"""GIA + BIA + Bi-LSTM micro-expression classifier (paper Sec. 3, Fig. 1; docs/DESIGN.md, "Model").

Shapes for one clip of T frames at 224×224 (B clips, K blocks):

- transfer layer: VGG16 ``features[:19]`` (conv1_1 … conv4_1 + ReLU)        -> (B, T, 512, 28, 28)
- GIA convs:      VGG16 ``features[19:28]`` (conv4_2, conv4_3, pool4, conv5_1,
                  conv5_2, each conv with its ReLU)                           -> (B, T, 512, 14, 14)
- GIA head:       τ_g = FC(512·14·14 -> 512) + ReLU, p_g = φ_g(map)           -> p_g·τ_g (B, T, 512)
- BIA (Eqs. 1–3): K windows cut from the 28×28 map by ``roi_align`` (6×6),
                  own τ_k = FC(512·6·6 -> 64) + ReLU and gate φ_k per block   -> p_k·τ_k (B, T, K, 64)
- fusion:         [α_1 … α_K, global]                                        -> (B, T, 64·K + 512)
- Bi-LSTM:        1 layer, 128 per direction, final states of both directions -> (B, 256)
- classifier:     dropout, FC 256->128, ReLU, FC 128->64, ReLU, FC 64->3      -> (B, 3)

torchvision's ``vgg16().features`` indices: 0 conv1_1, 2 conv1_2, 4 pool1, 5 conv2_1, 7 conv2_2,
9 pool2, 10 conv3_1, 12 conv3_2, 14 conv3_3, 16 pool3, 17 conv4_1, 19 conv4_2, 21 conv4_3,
23 pool4, 24 conv5_1, 26 conv5_2, 28 conv5_3, 30 pool5 (odd indices between convs are ReLUs).
Hence ``[:19]`` ends with conv4_1's ReLU at stride 8 and ``[19:28]`` ends with conv5_2's ReLU at
stride 16.

The gate φ (gACNN's attention net) is: 1×1 conv to 128 channels, ReLU, global average pool,
FC 64, ReLU, FC 1, sigmoid; so every gate value lies in (0, 1).

Frames enter as float RGB in [0, 1]; with ``ModelConfig.normalize_input`` the model applies the
ImageNet mean/std of the VGG16 weights itself. The VGG16 layers come from
``merlib.weights.vgg16_features`` (this module does no I/O).

Block geometry: block centres are (x, y) in 224×224 pixel coordinates and sides in pixels. The
window is ``roi_align(output_size=6, spatial_scale=1/8, aligned=True)``: feature cell i covers
pixels [8i, 8i+8). A 48-px block centred on a multiple of 8 is an exact 6×6 cut of the map; other
centres and sides are sampled bilinearly (sampling_ratio adaptive, so a wide 10-IB side averages
several samples per bin). Samples more than one cell outside the map are zero; within one cell
roi_align repeats the border cell.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torchvision
from torch import nn
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from merlib.config import ModelConfig  # defined with the run configs; re-exported here

TRANSFER_SLICE = slice(0, 19)  # conv1_1 … conv4_1 + ReLU
GIA_SLICE = slice(19, 28)  # conv4_2 … conv5_2 + ReLU
FEATURE_STRIDE = 8  # 224 -> 28
IMAGE_SIZE = 224
MAP_CHANNELS = 512
# The mean/std the ImageNet VGG16 weights were trained with (torchvision's preset; no I/O).
_IMAGENET_PRESET = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()
IMAGENET_MEAN = tuple(_IMAGENET_PRESET.mean)
IMAGENET_STD = tuple(_IMAGENET_PRESET.std)


# ---------------------------------------------------------------------------------------------
# building blocks


def _grad_for(module: nn.Module, x: torch.Tensor | None = None) -> torch.set_grad_enabled:
    """Track gradients through ``module`` only if it trains or its input carries a gradient, so
    frozen leading parts run without storing activations."""
    needed = any(p.requires_grad for p in module.parameters()) or (x is not None and x.requires_grad)
    return torch.set_grad_enabled(torch.is_grad_enabled() and needed)


class AttentionGate(nn.Module):
    """φ of Eq. (1) for one map (gACNN): 1×1 conv, ReLU, GAP, FC, ReLU, FC, sigmoid -> scalar."""

    def __init__(self, *, in_channels: int, channels: int = 128, hidden: int = 64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))  # (N, 128, H, W)
        x = self.pool(x).flatten(1)  # (N, 128)
        x = torch.relu(self.fc1(x))  # (N, 64)
        return torch.sigmoid(self.fc2(x)).squeeze(1)  # (N,)


class BlockLinear(nn.Module):
    """K independent linear layers applied block-wise in one einsum: (N, K, …, in) -> (N, K, …, out).
    Weight (K, out, in), bias (K, out); each slice initialised like ``nn.Linear``."""

    def __init__(self, *, blocks: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(blocks, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(blocks, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)  # nn.Linear's kaiming_uniform(a=√5) bound
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[0]
        xk = x.movedim(1, 0)  # (K, N, …, in): a view, and contiguous when x is stored block-major
        lead = xk.shape[1:-1]
        # One batched matmul with the bias fused in; reshape copies only when x's memory is not
        # block-major (the quick profile stores its cached windows so, merlib.maps.FoldInputs).
        y = torch.baddbmm(self.bias.unsqueeze(1), xk.reshape(k, -1, self.in_features),
                          self.weight.transpose(1, 2))  # (K, M, out)
        return y.view(k, *lead, self.out_features).movedim(0, 1)  # (N, K, …, out), a view


class BlockGate(nn.Module):
    """The gate φ_k of every block at once, each block with its own weights (Eq. 1)."""

    def __init__(self, *, blocks: int, in_channels: int, channels: int = 128, hidden: int = 64) -> None:
        super().__init__()
        self.conv = BlockLinear(blocks=blocks, in_features=in_channels, out_features=channels)  # 1×1 conv
        self.fc1 = BlockLinear(blocks=blocks, in_features=channels, out_features=hidden)
        self.fc2 = BlockLinear(blocks=blocks, in_features=hidden, out_features=1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        # (N, K, 36, 512): pixels × channels; a view when the windows are stored channels-last
        x = crops.permute(0, 1, 3, 4, 2).flatten(2, 3)
        x = torch.relu(self.conv(x)).mean(2)  # (N, K, 128): 1×1 conv, ReLU, GAP
        x = torch.relu(self.fc1(x))  # (N, K, 64)
        return torch.sigmoid(self.fc2(x)).squeeze(2)  # (N, K)


class TransferLayer(nn.Sequential):
    """The transfer layer (Sec. 3.1): VGG16 ``features[:19]``, conv1_1 … conv4_1 + ReLU, per frame.

    An ``nn.Sequential`` of the given layers under their own indices, so state_dict keys stay
    ``<i>.weight``; the VGG layers are shared with ``layers``, not copied. Runs without autograd
    when frozen (no stored activations)."""

    def __init__(self, *, layers: nn.Sequential, normalize: bool = True, chunk_frames: int = 16) -> None:
        super().__init__(OrderedDict(layers.named_children()))
        self.normalize = normalize  # plain attributes: not children, so not iterated or indexed
        # Frozen, the layer runs this many frames at a time: conv1's 64×224×224 activations of a
        # whole batch (16 clips × 10 frames: 2 GB in float32) would otherwise set the peak memory.
        self.chunk_frames = chunk_frames

    def __getitem__(self, idx: int | slice) -> nn.Module:
        if isinstance(idx, slice):  # nn.Sequential would call our keyword-only constructor
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, 224, 224) float RGB in [0, 1] -> (B, T, 512, 28, 28)."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (B, T, 3, H, W), got {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise TypeError(f"frames must be float RGB in [0, 1], got {frames.dtype}")
        b, t = frames.shape[:2]
        x = frames.flatten(0, 1)  # (B·T, 3, 224, 224)
        with _grad_for(self):
            if torch.is_grad_enabled() or len(x) <= self.chunk_frames:
                out = super().forward(self._normalized(x))  # (B·T, 512, 28, 28)
            else:  # nothing to keep for a backward pass: a chunk of frames at a time
                out = torch.cat([super(TransferLayer, self).forward(self._normalized(x[i:i + self.chunk_frames]))
                                 for i in range(0, len(x), self.chunk_frames)])
        return out.unflatten(0, (b, t))  # (B, T, 512, 28, 28)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            return TF.normalize(x, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
        return x


class GlobalAttention(nn.Module):
    """GIA (Sec. 3.3): VGG16 conv4_2 … conv5_2, then p_g·τ_g."""

    def __init__(self, *, convs: nn.Sequential, channels: int = MAP_CHANNELS, map_size: int = 14,
                 out_dim: int = 512, gate_channels: int = 128, gate_hidden: int = 64) -> None:
        super().__init__()
        self.convs = convs
        self.tau = nn.Linear(channels * map_size * map_size, out_dim)
        self.gate = AttentionGate(in_channels=channels, channels=gate_channels, hidden=gate_hidden)

    def forward_convs(self, f28: torch.Tensor) -> torch.Tensor:
        with _grad_for(self.convs, f28):
            return self.convs(f28)  # (N, 512, 28, 28) -> (N, 512, 14, 14)

    def forward(self, f14: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tau = torch.relu(self.tau(f14.flatten(1)))  # (N, 512)  τ_g
        p = self.gate(f14)  # (N,)  p_g
        return p.unsqueeze(1) * tau, p  # (N, 512), (N,)


class BlockAttention(nn.Module):
    """BIA (Sec. 3.2, Eqs. 1–3): K windows of the 28×28 map, each with its own τ_k and φ_k."""

    def __init__(self, *, blocks: int, channels: int = MAP_CHANNELS, crop: int = 6, out_dim: int = 64,
                 gate_channels: int = 128, gate_hidden: int = 64,
                 stride: int = FEATURE_STRIDE) -> None:
        super().__init__()
        self.blocks = blocks
        self.crop_size = crop
        self.stride = stride
        self.tau = BlockLinear(blocks=blocks, in_features=channels * crop * crop, out_features=out_dim)
        self.gate = BlockGate(blocks=blocks, in_channels=channels, channels=gate_channels,
                              hidden=gate_hidden)

    def crop(self, f28: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
        """c_k of Eq. (1): (N, C, 28, 28), centres (N, K, 2) as (x, y) px, sides (N, K) px
        -> (N, K, C, 6, 6)."""
        n, k = centres.shape[:2]
        # Boxes stay float32 whatever the maps are: in bf16 (autocast) frame indices above 256 and
        # sub-pixel centres would round, cutting windows from the wrong frame or place.
        half = sides.float().unsqueeze(-1) / 2  # (N, K, 1)
        xy = centres.float()
        frame = torch.arange(n, device=f28.device, dtype=torch.float32).repeat_interleave(k)
        boxes = torch.cat([frame.unsqueeze(1), (xy - half).reshape(-1, 2), (xy + half).reshape(-1, 2)], 1)
        out = roi_align(f28.float(), boxes, output_size=self.crop_size, spatial_scale=1.0 / self.stride,
                        sampling_ratio=-1, aligned=True)  # (N·K, C, 6, 6)
        return out.to(f28.dtype).unflatten(0, (n, k))

    def forward_crops(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. (1)–(3) on windows already cut: (N, K, 512, 6, 6) -> α (N, K, 64), p (N, K).

        τ_k reads a window row by row, each cell's 512 channels together (6·6·512, channels
        last): the FC of Eq. (2) is the same whatever order its inputs are listed in, and this
        one lets windows stored channels-last (merlib.maps) reach τ_k and the gate without a
        copy."""
        tau = torch.relu(self.tau(crops.permute(0, 1, 3, 4, 2).flatten(2)))  # (N, K, 64)  τ_k, Eq. (2)
        p = self.gate(crops)  # (N, K)  p_k, Eq. (1)
        return p.unsqueeze(2) * tau, p  # α_k = p_k·τ_k, Eq. (3)

    def forward(self, f28: torch.Tensor, centres: torch.Tensor,
                sides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_crops(self.crop(f28, centres, sides))  # crops (N, K, 512, 6, 6)


class TemporalHead(nn.Module):
    """Bi-LSTM over the frames (Sec. 3.4), dropout, then the three FC layers."""

    def __init__(self, *, in_dim: int, hidden: int = 128, dropout: float = 0.5,
                 fc_hidden: tuple[int, ...] = (128, 64), num_classes: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        layers: list[nn.Module] = []
        width = 2 * hidden
        for h in fc_hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.fc = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)  # h: (2, B, 128), final forward and backward states
        z = torch.cat([h[0], h[1]], dim=1)  # (B, 256)
        return self.fc(self.dropout(z))  # (B, classes)


# ---------------------------------------------------------------------------------------------
# the network


class MERNet(nn.Module):
    """Transfer layer + GIA + BIA + Bi-LSTM (Fig. 1). ``vgg_features``: a VGG16 ``features``
    module (see ``merlib.weights.vgg16_features``); its layers are shared, not copied."""

    def __init__(self, *, config: ModelConfig, vgg_features: nn.Sequential) -> None:
        super().__init__()
        if len(vgg_features) < GIA_SLICE.stop:
            raise ValueError(f"vgg_features has {len(vgg_features)} layers; need VGG16 features "
                             f"(at least {GIA_SLICE.stop})")
        self.config = config
        self.transfer_layer = TransferLayer(layers=vgg_features[TRANSFER_SLICE],
                                            normalize=config.normalize_input)
        self.gia = GlobalAttention(convs=vgg_features[GIA_SLICE], out_dim=config.global_dim,
                                   gate_channels=config.gate_channels, gate_hidden=config.gate_hidden)
        self.bia = (BlockAttention(blocks=config.blocks, crop=config.crop, out_dim=config.block_dim,
                                   gate_channels=config.gate_channels, gate_hidden=config.gate_hidden)
                    if config.blocks else None)
        self.head = TemporalHead(in_dim=config.fused_dim, hidden=config.lstm_hidden,
                                 dropout=config.dropout, fc_hidden=config.head_hidden,
                                 num_classes=config.num_classes)
        self.transfer_layer.requires_grad_(not config.freeze_transfer)
        self.gia.convs.requires_grad_(not config.freeze_gia_convs)

    # -- convolution stages (what the 'quick' profile caches) --------------------------------
    def transfer(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, 224, 224) float RGB in [0, 1] -> (B, T, 512, 28, 28)."""
        return self.transfer_layer(frames)

    def gia_convs(self, f28: torch.Tensor) -> torch.Tensor:
        """(B, T, 512, 28, 28) -> (B, T, 512, 14, 14)."""
        b, t = f28.shape[:2]
        return self.gia.forward_convs(f28.flatten(0, 1)).unflatten(0, (b, t))

    # -- features and head ----------------------------------------------------------------------
    def _check_blocks(self, centres: torch.Tensor | None, sides: torch.Tensor | None,
                      b: int, t: int) -> None:
        k = self.config.blocks
        if k == 0:
            return
        if centres is None or sides is None:
            raise ValueError(f"blocks={k}: centres (B, T, K, 2) and sides (B, T, K) are required")
        if tuple(centres.shape) != (b, t, k, 2):
            raise ValueError(f"centres must be (B, T, K, 2) = {(b, t, k, 2)}, got {tuple(centres.shape)}")
        if tuple(sides.shape) != (b, t, k):
            raise ValueError(f"sides must be (B, T, K) = {(b, t, k)}, got {tuple(sides.shape)}")

    def _check_crops(self, crops: torch.Tensor, centres: torch.Tensor | None,
                     sides: torch.Tensor | None, b: int, t: int) -> None:
        if centres is not None or sides is not None:
            raise ValueError("pass crops or centres/sides, not both (crops are already cut)")
        c, s = MAP_CHANNELS, self.config.crop
        expected = (b, t, self.config.blocks, c, s, s)
        if tuple(crops.shape) != expected:
            raise ValueError(f"crops must be (B, T, K, 512, {s}, {s}) = {expected}, "
                             f"got {tuple(crops.shape)}")

    def forward_features_from_maps(
        self, f28: torch.Tensor | None, f14: torch.Tensor | None, centres: torch.Tensor | None,
        sides: torch.Tensor | None, *, crops: torch.Tensor | None = None, return_gates: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Fused per-frame features (B, T, 64·K + 512) from the 28×28 maps (needed when K > 0 or
        f14 is None) and optionally the 14×14 maps. ``crops`` (B, T, K, 512, 6, 6): the block
        windows already cut (``bia.crop``), in place of f28 + centres + sides for BIA, so cached
        maps can be cropped once. With ``return_gates`` also
        {"global": p_g (B, T), "blocks": p_k (B, T, K)}."""
        if f14 is None:
            if f28 is None:
                raise ValueError("forward_features_from_maps needs f28, or f14 when blocks=0")
            f14 = self.gia_convs(f28)  # (B, T, 512, 14, 14)
        b, t = f14.shape[:2]
        g, p_g = self.gia(f14.flatten(0, 1))  # (B·T, 512), (B·T,)
        parts = [g]
        p_k = g.new_zeros(b * t, 0)
        if self.bia is not None:
            if crops is not None:
                self._check_crops(crops, centres, sides, b, t)
                a, p_k = self.bia.forward_crops(crops.flatten(0, 1))  # (B·T, K, 64)
            else:
                if f28 is None:
                    raise ValueError(f"blocks={self.config.blocks}: f28 (B, T, 512, 28, 28) or "
                                     f"crops is required")
                self._check_blocks(centres, sides, b, t)
                a, p_k = self.bia(f28.flatten(0, 1), centres.flatten(0, 1), sides.flatten(0, 1))  # (B·T, K, 64)
            parts.insert(0, a.flatten(1))  # blocks first, then global (Fig. 1)
        fused = torch.cat(parts, dim=1).unflatten(0, (b, t))  # (B, T, D)
        if return_gates:
            return fused, {"global": p_g.view(b, t), "blocks": p_k.view(b, t, -1)}
        return fused

    def forward_features(
        self, frames: torch.Tensor, centres: torch.Tensor | None = None,
        sides: torch.Tensor | None = None, *, return_gates: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, T, 3, 224, 224) -> fused per-frame features (B, T, D)."""
        if self.config.blocks:
            self._check_blocks(centres, sides, *frames.shape[:2])
        f28 = self.transfer(frames)  # (B, T, 512, 28, 28)
        return self.forward_features_from_maps(f28, None, centres, sides, return_gates=return_gates)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> logits (B, classes)."""
        return self.head(features)

    def forward_from_maps(self, f28: torch.Tensor | None, f14: torch.Tensor | None,
                          centres: torch.Tensor | None = None, sides: torch.Tensor | None = None,
                          *, crops: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features_from_maps(f28, f14, centres, sides, crops=crops))

    def forward(self, frames: torch.Tensor, centres: torch.Tensor | None = None,
                sides: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(frames, centres, sides))
