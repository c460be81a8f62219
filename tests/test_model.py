"""GIA + BIA + Bi-LSTM: shapes, gates, gradients, per-block weights, block geometry, precomputed
crops and the analytic FLOP count (random weights throughout; no network; the weights loader is
tested in test_weights.py)."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from merlib.flops import analytic_flops
from merlib.model import (
    AttentionGate,
    BlockAttention,
    BlockLinear,
    MERNet,
    ModelConfig,
    TransferLayer,
)

FUSED = {0: 512, 10: 1152, 24: 2048}


@pytest.fixture(scope="module")
def vgg() -> nn.Sequential:
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).features


def make(vgg: nn.Sequential, **cfg) -> MERNet:
    torch.manual_seed(1)
    return MERNet(config=ModelConfig(**cfg), vgg_features=copy.deepcopy(vgg))


def blocks_for(b: int, t: int, k: int, side: float = 48.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(k)
    centres = 40 + torch.rand(b, t, k, 2, generator=g) * 144  # inside the face area
    return centres, torch.full((b, t, k), side)


# ---------------------------------------------------------------------------------------------
# architecture


def test_vgg_slices_are_conv4_1_and_conv5_2(vgg):
    m = make(vgg, blocks=0)
    convs = [l for l in m.transfer_layer if isinstance(l, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512]  # .. conv4_1
    assert isinstance(m.transfer_layer[-1], nn.ReLU)
    gia = list(m.gia.convs)
    assert [type(l).__name__ for l in gia] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
                                               "Conv2d", "ReLU", "Conv2d", "ReLU"]
    assert all(l.in_channels == l.out_channels == 512 for l in gia if isinstance(l, nn.Conv2d))
    # layers are the loaded VGG's, not re-initialised copies
    assert torch.equal(m.gia.convs[0].weight, vgg[19].weight)


@pytest.mark.parametrize("blocks", [0, 10, 24])
def test_shapes_from_maps(vgg, blocks):
    m = make(vgg, blocks=blocks).eval()
    assert m.config.fused_dim == FUSED[blocks]
    b, t = 2, 3
    f28, f14 = torch.rand(b, t, 512, 28, 28), torch.rand(b, t, 512, 14, 14)
    centres, sides = blocks_for(b, t, blocks)
    with torch.no_grad():
        feats, gates = m.forward_features_from_maps(f28, f14, centres, sides, return_gates=True)
        logits = m.forward_from_maps(f28, f14, centres, sides)
    assert feats.shape == (b, t, FUSED[blocks])
    assert logits.shape == (b, 3)
    assert torch.allclose(m.forward_head(feats), logits)
    # gates are scalars in (0, 1) per frame (global) and per frame and block
    assert gates["global"].shape == (b, t) and gates["blocks"].shape == (b, t, blocks)
    for p in gates.values():
        assert ((p > 0) & (p < 1)).all()
    if blocks:
        assert m.bia.tau.weight.shape == (blocks, 64, 512 * 6 * 6)
    else:
        assert m.bia is None


def test_blocks0_runs_from_cached_f14_alone(vgg):
    m = make(vgg, blocks=0).eval()
    with torch.no_grad():
        assert m.forward_from_maps(None, torch.rand(1, 2, 512, 14, 14)).shape == (1, 3)


def test_end_to_end_gradients_and_frozen_transfer(vgg):
    m = make(vgg, blocks=10).train()
    frames = torch.rand(1, 2, 3, 224, 224)
    centres, sides = blocks_for(1, 2, 10)
    assert m.transfer(frames).shape == (1, 2, 512, 28, 28)
    logits = m(frames, centres, sides)
    assert logits.shape == (1, 3)
    F.cross_entropy(logits, torch.tensor([2])).backward()
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in m.named_parameters() if not p.requires_grad}
    assert set(frozen) == {n for n, _ in m.named_parameters() if n.startswith("transfer_layer.")}
    assert all(p.grad is None for p in frozen.values())
    for name, p in trainable.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # every block gets its own gradient
    for param in (m.bia.tau.weight, m.bia.gate.conv.weight, m.bia.gate.fc2.bias):
        assert (param.grad.flatten(1).abs().sum(1) > 0).all()


def test_frames_and_cached_maps_give_the_same_logits(vgg):
    m = make(vgg, blocks=24).eval()
    frames = torch.rand(1, 1, 3, 224, 224)
    centres, sides = blocks_for(1, 1, 24)
    with torch.no_grad():
        f28 = m.transfer(frames)
        f14 = m.gia_convs(f28)
        assert f14.shape == (1, 1, 512, 14, 14)
        direct = m(frames, centres, sides)
        cached = m.forward_from_maps(f28, f14, centres, sides)
        recomputed = m.forward_from_maps(f28, None, centres, sides)
    torch.testing.assert_close(direct, cached)
    torch.testing.assert_close(direct, recomputed)


def test_frozen_convs_store_no_graph(vgg):
    m = make(vgg, blocks=10, freeze_gia_convs=True)
    assert not any(p.requires_grad for p in m.gia.convs.parameters())
    f14 = m.gia_convs(torch.rand(1, 1, 512, 28, 28))
    assert not f14.requires_grad  # frozen with a frozen input: run without autograd
    m2 = make(vgg, blocks=10, freeze_transfer=False)
    assert all(p.requires_grad for p in m2.transfer_layer.parameters())


def test_bad_inputs(vgg):
    m = make(vgg, blocks=10).eval()
    f28, f14 = torch.rand(1, 2, 512, 28, 28), torch.rand(1, 2, 512, 14, 14)
    centres, sides = blocks_for(1, 2, 10)
    with pytest.raises(ValueError, match="centres"):
        m.forward_from_maps(f28, f14, centres[:, :, :9], sides)
    with pytest.raises(ValueError, match="sides"):
        m.forward_from_maps(f28, f14, centres, sides[:, :1])
    with pytest.raises(ValueError, match="required"):
        m.forward_from_maps(f28, f14, None, None)
    with pytest.raises(ValueError, match="f28"):
        m.forward_from_maps(None, f14, centres, sides)
    with pytest.raises(TypeError, match="float"):
        m.transfer(torch.zeros(1, 2, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(ValueError, match="blocks"):
        ModelConfig(blocks=-1)
    with pytest.raises(ValueError, match="layers"):
        MERNet(config=ModelConfig(blocks=0), vgg_features=vgg[:19])


# ---------------------------------------------------------------------------------------------
# transfer layer

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's ImageNet preset


def test_transfer_layer_keeps_vgg_keys_and_indexing(vgg):
    m = make(vgg, blocks=0)
    assert isinstance(m.transfer_layer, TransferLayer)
    keys = {k for k in m.state_dict() if k.startswith("transfer_layer.")}
    # the VGG16 features indices of conv1_1 … conv4_1, as in a torchvision checkpoint
    assert keys == {f"transfer_layer.{i}.{p}" for i in (0, 2, 5, 7, 10, 12, 14, 17)
                    for p in ("weight", "bias")}
    assert len(m.transfer_layer) == 19
    head = m.transfer_layer[:5]
    assert type(head) is nn.Sequential and len(head) == 5
    assert torch.equal(m.transfer_layer[17].weight, vgg[17].weight)


def test_transfer_layer_normalizes_and_runs_per_frame(vgg):
    layers = copy.deepcopy(vgg[:19])
    raw = TransferLayer(layers=layers, normalize=False).eval()
    norm = TransferLayer(layers=layers, normalize=True).eval()
    frames = torch.rand(1, 2, 3, 32, 32)  # any size: stride 8
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET_MEAN_STD)
    with torch.no_grad():
        out = norm(frames)
        assert out.shape == (1, 2, 512, 4, 4)
        torch.testing.assert_close(out, raw((frames - mean) / std))
        # frame 1 alone through the plain VGG slice gives the same map
        torch.testing.assert_close(raw(frames)[0, 1], layers(frames[0, 1:2])[0])
    layers.requires_grad_(False)
    assert not raw(frames).requires_grad  # frozen: no autograd graph kept
    layers.requires_grad_(True)
    assert raw(frames).requires_grad


def test_a_frozen_transfer_layer_runs_in_chunks_of_frames_with_the_same_maps(vgg):
    """Issue 22: the frozen layer's peak memory must not scale with batch × frames, so it runs a
    chunk of frames at a time; the maps are those of one pass over all frames."""
    layers = copy.deepcopy(vgg[:19]).requires_grad_(False)
    whole = TransferLayer(layers=layers, chunk_frames=1000).eval()
    chunked = TransferLayer(layers=layers, chunk_frames=3).eval()
    seen = []
    hook = layers[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    frames = torch.rand(2, 4, 3, 32, 32)  # 8 frames
    with torch.no_grad():
        torch.testing.assert_close(chunked(frames), whole(frames), rtol=1e-5, atol=1e-6)
    assert seen == [3, 3, 2, 8]  # the chunked pass, then the whole one
    seen.clear()
    layers.requires_grad_(True)  # trained: one pass, its activations kept for the backward
    chunked(frames)
    assert seen == [8]
    hook.remove()


# ---------------------------------------------------------------------------------------------
# per-block weights


def test_block_linear_equals_separate_linears():
    torch.manual_seed(0)
    layer = BlockLinear(blocks=3, in_features=5, out_features=4)
    x = torch.randn(2, 3, 7, 5)  # (N, K, M, in)
    y = layer(x)
    for k in range(3):
        torch.testing.assert_close(y[:, k], F.linear(x[:, k], layer.weight[k], layer.bias[k]))


def test_block_linear_reads_block_major_memory_without_copying_and_gives_the_same_gradients():
    """FoldInputs stores windows block-major: the layer must give the same values and weight
    gradients from that memory as from a plain (N, K, ...) tensor, and read it in place."""
    torch.manual_seed(0)
    layer = BlockLinear(blocks=3, in_features=5, out_features=4)
    stored = torch.randn(3, 2, 5)  # (K, N, in) in memory
    x_major = stored.movedim(0, 1)  # (N, K, in) as the model reads it
    x_plain = x_major.contiguous()
    assert x_major.movedim(1, 0).reshape(3, -1, 5).data_ptr() == stored.data_ptr()  # no copy
    outs, grads = [], []
    for x in (x_major, x_plain):
        layer.zero_grad()
        y = layer(x)
        (y.square().sum()).backward()
        outs.append(y.detach())
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b)
    ref = torch.einsum("nki,koi->nko", x_plain, layer.weight) + layer.bias
    torch.testing.assert_close(outs[1], ref.detach())


def test_block_gate_is_gacnn_gate_per_block():
    torch.manual_seed(0)
    bia = BlockAttention(blocks=3, channels=16, crop=6, out_dim=8, gate_channels=12, gate_hidden=6)
    crops = torch.randn(2, 3, 16, 6, 6)
    p = bia.gate(crops)
    for k in range(3):
        ref = AttentionGate(in_channels=16, channels=12, hidden=6)
        with torch.no_grad():
            ref.conv.weight.copy_(bia.gate.conv.weight[k].view(12, 16, 1, 1))
            ref.conv.bias.copy_(bia.gate.conv.bias[k])
            for name in ("fc1", "fc2"):
                getattr(ref, name).weight.copy_(getattr(bia.gate, name).weight[k])
                getattr(ref, name).bias.copy_(getattr(bia.gate, name).bias[k])
        torch.testing.assert_close(p[:, k], ref(crops[:, k]))


def test_perturbing_one_block_changes_only_that_block():
    torch.manual_seed(0)
    k_blocks = 4
    bia = BlockAttention(blocks=k_blocks).eval()
    for p in bia.parameters():
        assert p.shape[0] == k_blocks  # every parameter tensor has a leading K dimension
    f28 = torch.rand(2, 512, 28, 28)
    centres = torch.tensor([[[60.0, 60.0], [150.0, 60.0], [112.0, 120.0], [112.0, 170.0]]] * 2)
    sides = torch.full((2, k_blocks), 48.0)
    with torch.no_grad():
        base, base_p = bia(f28, centres, sides)
        for k in range(k_blocks):
            moved = copy.deepcopy(bia)
            moved.tau.weight[k] += 0.01 * torch.randn_like(moved.tau.weight[k])
            moved.gate.fc2.bias[k] += 1.0
            out, p = moved(f28, centres, sides)
            others = [j for j in range(k_blocks) if j != k]
            assert torch.equal(out[:, others], base[:, others])
            assert torch.equal(p[:, others], base_p[:, others])
            assert not torch.allclose(out[:, k], base[:, k])
            assert not torch.allclose(p[:, k], base_p[:, k])


# ---------------------------------------------------------------------------------------------
# block geometry on the 28×28 map


def _bump_map() -> torch.Tensor:
    f28 = torch.zeros(1, 512, 28, 28)
    f28[0, 7, 10, 20] = 5.0  # channel 7, row (y) 10, column (x) 20 = pixels [160, 168) × [80, 88)
    return f28


BUMP_CENTRES = torch.tensor([[
    [160.0, 80.0],    # 0: 48-px block on a multiple of 8: exact crop of cells x 17..22, y 7..12
    [40.0, 40.0],     # 1: far away
    [-200.0, -200.0], # 2: entirely outside the image
    [164.0, 84.0],    # 3: small 10-IB-like block on the bump's cell centre, resampled to 6×6
    [200.0, 150.0],   # 4: window x 22..27: misses column 20
]])
BUMP_SIDES = torch.tensor([[48.0, 48.0, 48.0, 16.0, 48.0]])


def test_crop_windows_pick_up_a_planted_bump():
    bia = BlockAttention(blocks=5)
    crops = bia.crop(_bump_map(), BUMP_CENTRES, BUMP_SIDES)  # (1, 5, 512, 6, 6)
    assert crops.shape == (1, 5, 512, 6, 6)
    # block 0: the bump sits at window cell (10 - 7, 20 - 17) = (3, 3) with its exact value
    expected = torch.zeros(512, 6, 6)
    expected[7, 3, 3] = 5.0
    torch.testing.assert_close(crops[0, 0], expected)
    for k in (1, 2, 4):
        assert torch.count_nonzero(crops[0, k]) == 0, k
    # block 3: pixels 156..172 -> cells 19.0..21.0 (aligned); 6 bins of 1/3 cell, one bilinear
    # sample each at 19+1/6, 19.5, 19+5/6, 20+1/6, 20.5, 20+5/6; cell 20's weight is 1 - |s - 20|
    small = crops[0, 3]
    assert torch.count_nonzero(small[torch.arange(512) != 7]) == 0
    w = torch.tensor([1 / 6, 1 / 2, 5 / 6, 5 / 6, 1 / 2, 1 / 6])
    torch.testing.assert_close(small[7], 5.0 * torch.outer(w, w))


def test_bf16_maps_are_cut_from_the_right_frame_and_place():
    """Under autocast the maps are bf16, which holds integers exactly only up to 256: the boxes
    must stay float32 or a batch of 26+ clips × 10 frames cuts windows from the wrong frame."""
    bia = BlockAttention(blocks=1)
    n = 300
    f28 = torch.zeros(n, 512, 28, 28)
    f28[torch.arange(n), torch.arange(n)] = 1.0  # frame i: a map of ones in channel i only
    centres = torch.full((n, 1, 2), 100.3)  # sub-pixel, where bf16's step is 0.5 px
    sides = torch.full((n, 1), 48.0)
    low = bia.crop(f28.bfloat16(), centres, sides)  # (n, 1, 512, 6, 6)
    assert low.dtype == torch.bfloat16
    lit = low[:, 0].float().sum((2, 3)).argmax(1)  # the channel each window was cut from
    torch.testing.assert_close(lit, torch.arange(n))
    ramp = torch.arange(28, dtype=torch.float32).expand(1, 512, 28, 28)  # value = x cell
    x = bia.crop(ramp.bfloat16(), torch.tensor([[[100.3, 100.0]]]), torch.tensor([[48.0]]))
    y = bia.crop(ramp, torch.tensor([[[100.3, 100.0]]]), torch.tensor([[48.0]]))
    torch.testing.assert_close(x.float(), y.to(torch.bfloat16).float())


def test_only_covering_block_output_is_nonzero(vgg):
    m = make(vgg, blocks=5).eval()
    with torch.no_grad():
        for mod in (m.bia.tau, m.bia.gate.conv):
            mod.bias.zero_()  # zero input then gives τ_k = 0 exactly
        feats, gates = m.forward_features_from_maps(
            _bump_map().unsqueeze(0), torch.zeros(1, 1, 512, 14, 14),
            BUMP_CENTRES.unsqueeze(0), BUMP_SIDES.unsqueeze(0), return_gates=True)
    per_block = feats[0, 0, :5 * 64].view(5, 64)  # fused layout: blocks 1..K, then global
    assert per_block[0].abs().sum() > 0 and per_block[3].abs().sum() > 0
    for k in (1, 2, 4):
        assert torch.count_nonzero(per_block[k]) == 0
    assert ((gates["blocks"] > 0) & (gates["blocks"] < 1)).all()


# ---------------------------------------------------------------------------------------------
# precomputed block crops


def test_precomputed_crops_give_the_same_features(vgg):
    m = make(vgg, blocks=10).eval()
    b, t = 2, 3
    f28, f14 = torch.rand(b, t, 512, 28, 28), torch.rand(b, t, 512, 14, 14)
    centres, sides = blocks_for(b, t, 10, side=30.0)
    with torch.no_grad():
        crops = m.bia.crop(f28.flatten(0, 1), centres.flatten(0, 1), sides.flatten(0, 1))
        assert crops.shape == (b * t, 10, 512, 6, 6)
        a, p = m.bia(f28.flatten(0, 1), centres.flatten(0, 1), sides.flatten(0, 1))
        a2, p2 = m.bia.forward_crops(crops)
        assert torch.equal(a, a2) and torch.equal(p, p2)
        crops = crops.unflatten(0, (b, t))  # (B, T, K, 512, 6, 6)
        ref, ref_gates = m.forward_features_from_maps(f28, f14, centres, sides, return_gates=True)
        got, gates = m.forward_features_from_maps(None, f14, None, None, crops=crops, return_gates=True)
        assert torch.equal(got, ref)
        assert torch.equal(gates["blocks"], ref_gates["blocks"])
        assert torch.equal(m.forward_from_maps(None, f14, crops=crops), m.forward_head(ref))


def test_precomputed_crops_bad_inputs(vgg):
    m = make(vgg, blocks=10).eval()
    f14 = torch.rand(1, 2, 512, 14, 14)
    crops = torch.rand(1, 2, 10, 512, 6, 6)
    centres, sides = blocks_for(1, 2, 10)
    with pytest.raises(ValueError, match="crops"):
        m.forward_features_from_maps(None, f14, None, None, crops=crops[:, :, :9])
    with pytest.raises(ValueError, match="crops"):
        m.forward_features_from_maps(None, f14, None, None, crops=crops[..., :5, :5])
    with pytest.raises(ValueError, match="not both"):
        m.forward_features_from_maps(None, f14, centres, sides, crops=crops)
    with pytest.raises(ValueError, match="f28"):
        m.forward_features_from_maps(None, None, None, None, crops=crops)


# ---------------------------------------------------------------------------------------------
# analytic FLOPs


def test_flops_hand_count_first_conv():
    T = 10
    rows = {r["name"]: r for r in analytic_flops(ModelConfig(blocks=10), T=T)["layers"]}
    # conv1_1: 224×224 outputs × 64 out-channels × 3 in-channels × 3×3 kernel, per frame
    assert rows["conv1_1"]["macs"] == 224 * 224 * 64 * 3 * 9 * T == 867_041_280
    assert rows["conv1_1"]["forward"] == 2 * rows["conv1_1"]["macs"]
    # same count as FlopCounterMode on that very layer
    conv = nn.Conv2d(3, 64, 3, padding=1, device="meta")
    with FlopCounterMode(display=False) as fc:
        conv(torch.empty(T, 3, 224, 224, device="meta"))
    assert fc.get_total_flops() == rows["conv1_1"]["forward"]
    # frozen by default: no backward at all for the transfer layer
    assert rows["conv1_1"]["backward"] == 0 and rows["conv4_1"]["backward"] == 0
    # τ_k: 512·6·6 -> 64 per block and frame
    assert rows["tau_k"]["macs"] == 10 * 512 * 36 * 64 * T


def test_flops_backward_rule():
    cfg = ModelConfig(blocks=10, freeze_transfer=False)
    a = analytic_flops(cfg, T=4)
    rows = {r["name"]: r for r in a["layers"]}
    # a trainable transfer layer: weight + input gradients, except conv1_1's input gradient
    assert a["parts"]["transfer"]["backward"] == 2 * a["parts"]["transfer"]["forward"] - rows["conv1_1"]["forward"]
    frozen = analytic_flops(ModelConfig(blocks=10, freeze_gia_convs=True), T=4)
    assert frozen["parts"]["transfer"]["backward"] == frozen["parts"]["gia_convs"]["backward"] == 0
    assert analytic_flops(cfg, T=4, train=False)["backward"] == 0
    assert a["total"] == a["forward"] + a["backward"]


@pytest.mark.parametrize("cfg", [ModelConfig(blocks=0), ModelConfig(blocks=24),
                                 ModelConfig(blocks=10, freeze_transfer=False)],
                         ids=["blocks0", "blocks24", "blocks10-trainable-transfer"])
def test_flops_match_flop_counter(cfg):
    T = 3
    with torch.device("meta"):  # counts without computing
        m = MERNet(config=cfg, vgg_features=torchvision.models.vgg16().features)
        frames = torch.rand(1, T, 3, 224, 224)
        centres = torch.rand(1, T, cfg.blocks, 2) * 224
        sides = torch.full((1, T, cfg.blocks), 48.0)
    with FlopCounterMode(display=False) as fwd:
        logits = m(frames, centres, sides)
    with FlopCounterMode(display=False) as bwd:
        logits.sum().backward()
    a = analytic_flops(cfg, T=T)
    assert fwd.get_total_flops() == pytest.approx(a["forward"], rel=0.01)
    assert bwd.get_total_flops() == pytest.approx(a["backward"], rel=0.01)
