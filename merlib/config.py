"""Paths and run settings.

Every path merlib reads or writes is resolved here, from environment variables with defaults
inside the project folder. Nothing else in the package hard-codes a location.

- ``MERLIB_DATA``: where datasets live (real ones unpacked by the user, SynthME generated).
  Default: ``<project>/data``.
- ``MERLIB_CACHE``: preprocessing cache. Default: ``<project>/.cache/merlib``.
- ``MERLIB_OUT``: where ``tables/``, ``figures/`` and ``runs/`` are written. Default: ``<project>``.
- ``MERLIB_PROJECT``: the project folder itself, when merlib is not run from a checkout.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

DATASETS = ("casme2", "samm", "smic", "megc", "synthme")
SOURCES = ("casme2", "samm", "smic")
CLASSES = ("negative", "positive", "surprise")


def project_root() -> Path:
    """The checkout merlib runs from: ``MERLIB_PROJECT``, else the folder holding pyproject.toml
    above this package, else the current directory."""
    env = os.environ.get("MERLIB_PROJECT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd().resolve()


@dataclass(frozen=True)
class Paths:
    data: Path
    cache: Path
    out: Path

    @property
    def tables(self) -> Path:
        return self.out / "tables"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def tables_for(self, dataset: str) -> Path:
        return self.tables / dataset

    def figures_for(self, dataset: str) -> Path:
        return self.figures / dataset

    def runs_for(self, dataset: str) -> Path:
        return self.runs / dataset

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Paths":
        env = os.environ if environ is None else environ
        root = project_root()

        def pick(name: str, default: Path) -> Path:
            value = env.get(name)
            return Path(value).expanduser().resolve() if value else default

        return cls(
            data=pick("MERLIB_DATA", root / "data"),
            cache=pick("MERLIB_CACHE", root / ".cache" / "merlib"),
            out=pick("MERLIB_OUT", root),
        )


@dataclass(frozen=True)
class SynthConfig:
    """Which SynthME a run uses when ``dataset == "synthme"``."""

    preset: str = "tiny"  # tiny (CI) | demo (make reproduce)
    seed: int = 0
    layout: str = "casme2"  # on-disk format it is written in: casme2 | samm | smic

    def folder_name(self) -> str:
        return f"synthme-{self.preset}-{self.layout}-seed{self.seed}"


def git_commit(root: Path | None = None) -> str:
    """The commit of the checkout, with ``+dirty`` when it has uncommitted changes; ``unknown``
    outside git."""
    root = root or project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def to_jsonable(obj):
    """Dataclasses, paths and tuples as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and a rename, so a killed run
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def save_config(path: Path, **configs) -> Path:
    """Write the resolved configs with the git commit and host, next to a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "host": platform.platform(),
        **{name: to_jsonable(cfg) for name, cfg in configs.items()},
    }
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
