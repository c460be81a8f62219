"""Analytic FLOP count of one training clip, layer by layer (``bench/train.py``; checked against
``torch.utils.flop_counter.FlopCounterMode`` in tests/test_model.py)."""
from __future__ import annotations

from typing import Any

from torch import nn

from merlib.model import (
    GIA_SLICE,
    IMAGE_SIZE,
    MAP_CHANNELS,
    TRANSFER_SLICE,
    ModelConfig,
)
from merlib.weights import vgg16_features_skeleton


def analytic_flops(config: ModelConfig, *, T: int = 10, train: bool = True) -> dict[str, Any]:
    """Multiply-accumulates of one clip (T frames at 224×224), layer by layer.

    Counting rule: only conv / linear / LSTM matrix products count (as FlopCounterMode does);
    FLOPs = 2·MACs; ReLU, pooling, sigmoid, roi_align and the gating products are ignored.
    Backward of a layer = its forward MACs for the weight gradient if it trains, plus its forward
    MACs again for the input gradient if anything upstream of it trains. So frozen layers cost
    nothing backward unless a trainable layer lies before them, and the very first layer
    (conv1_1, fed by images) never computes an input gradient. ``train=False``: backward = 0.

    Returns {"layers": [{name, part, macs, forward, backward}], "parts": {part: {forward,
    backward}}, "forward", "backward", "total"} with FLOP counts per clip.
    """
    rows: list[tuple[str, str, int, bool, bool]] = []  # name, part, macs, trains, input_grad
    upstream = False  # does anything before the current layer train?

    # VGG layers, walked on a meta copy so the sizes come from torchvision's own definition.
    conv_names = iter(["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                       "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2"])
    size = IMAGE_SIZE
    for i, layer in enumerate(vgg16_features_skeleton()[:GIA_SLICE.stop]):
        part = "transfer" if i < TRANSFER_SLICE.stop else "gia_convs"
        trains = not (config.freeze_transfer if part == "transfer" else config.freeze_gia_convs)
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            macs = size * size * layer.out_channels * layer.in_channels * kh * kw * T
            rows.append((next(conv_names), part, macs, trains, upstream))
            upstream = upstream or trains
        elif isinstance(layer, nn.MaxPool2d):
            size //= 2
    after_transfer = not config.freeze_transfer  # input of the BIA crops carries a gradient
    after_convs = upstream  # input of the GIA head carries a gradient

    c, g, gh = MAP_CHANNELS, config.gate_channels, config.gate_hidden
    rows += [
        ("tau_g", "gia_head", size * size * c * config.global_dim * T, True, after_convs),
        ("phi_g.conv", "gia_head", size * size * c * g * T, True, after_convs),
        ("phi_g.fc1", "gia_head", g * gh * T, True, True),
        ("phi_g.fc2", "gia_head", gh * T, True, True),
    ]
    k, s = config.blocks, config.crop * config.crop
    if k:
        rows += [
            ("tau_k", "bia", k * c * s * config.block_dim * T, True, after_transfer),
            ("phi_k.conv", "bia", k * s * c * g * T, True, after_transfer),
            ("phi_k.fc1", "bia", k * g * gh * T, True, True),
            ("phi_k.fc2", "bia", k * gh * T, True, True),
        ]
    h = config.lstm_hidden
    rows += [
        ("lstm.input", "lstm", 2 * T * 4 * h * config.fused_dim, True, True),
        ("lstm.recurrent", "lstm", 2 * T * 4 * h * h, True, True),
    ]
    width = 2 * h
    for j, hidden in enumerate((*config.head_hidden, config.num_classes)):
        rows.append((f"fc{j + 1}", "classifier", width * hidden, True, True))
        width = hidden

    layers, parts = [], {}
    for name, part, macs, trains, input_grad in rows:
        fwd = 2 * macs
        bwd = (fwd * trains + fwd * input_grad) if train else 0
        layers.append({"name": name, "part": part, "macs": macs, "forward": fwd, "backward": bwd})
        acc = parts.setdefault(part, {"forward": 0, "backward": 0})
        acc["forward"] += fwd
        acc["backward"] += bwd
    forward = sum(p["forward"] for p in parts.values())
    backward = sum(p["backward"] for p in parts.values())
    return {"layers": layers, "parts": parts, "forward": forward, "backward": backward,
            "total": forward + backward, "T": T, "blocks": k}
