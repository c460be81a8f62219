"""The pinned set is described three times (requirements.txt, requirements.lock, environment.yml)
and installed once (.venv). These tests keep them in agreement."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"not an exact pin: {line!r}"
        pins[_norm(name)] = version.strip()
    return pins


def _requirements() -> dict[str, str]:
    return _pins((ROOT / "requirements.txt").read_text().splitlines())


def _lock() -> dict[str, str]:
    return _pins((ROOT / "requirements.lock").read_text().splitlines())


def _conda() -> tuple[dict, dict[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return env, _pins(pip_section)


def test_conda_pip_section_equals_requirements():
    _, conda_pins = _conda()
    assert conda_pins == _requirements()


def test_conda_python_matches_pyproject():
    env, _ = _conda()
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]
    assert 'requires-python = ">=3.11,<3.12"' in (ROOT / "pyproject.toml").read_text()


def test_every_direct_pin_is_in_the_lock_with_the_same_version():
    lock = _lock()
    for name, version in _requirements().items():
        assert lock.get(name) == version, f"{name}: requirements.txt {version}, lock {lock.get(name)}"


def test_torch_pins_are_the_known_good_pair():
    req = _requirements()
    assert (req["torch"], req["torchvision"]) == ("2.14.1", "0.29.1")
    # one OpenCV: the headless contrib build (TV-L1 flow for the baselines), never the GUI one
    assert [n for n in req if n.startswith("opencv")] == ["opencv-contrib-python-headless"]


def test_makefile_installs_the_locked_face_recognition_without_deps():
    makefile = (ROOT / "Makefile").read_text()
    version = _lock()["face-recognition"]
    assert f"--no-deps face_recognition=={version}" in makefile


def test_installed_versions_match_the_lock():
    mismatched = {}
    for name, version in _lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            mismatched[name] = (version, None)
            continue
        if installed.split("+")[0] != version.split("+")[0]:
            mismatched[name] = (version, installed)
    assert not mismatched, f"(locked, installed): {mismatched}"


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="only meaningful inside the project venv")
def test_pip_check_reports_only_the_two_known_names():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems = [line for line in out.stdout.splitlines() if line.strip()]
    missing = sorted(re.findall(r"requires ([\w.-]+), which is not installed", out.stdout))
    assert len(problems) == 2, out.stdout
    assert [_norm(m) for m in missing] == ["dlib", "face-recognition-models"]
