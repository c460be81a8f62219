"""The GPU check (bench/device_check.py) must start on the GPU machine, which has torch and the
scientific stack but no face_recognition, dlib, papermill, dask, submitit or Jupyter. Its full run
on the CPU is `make device-check-dry` (part of `make test`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("face_recognition", "face_recognition_models", "dlib", "papermill", "dask",
          "distributed", "submitit", "nbformat", "nbclient", "jupyterlab", "playwright", "openpyxl")

BLOCKER = f"""
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
sys.meta_path.insert(0, Absent())
"""


def test_the_device_check_and_its_training_path_need_nothing_the_gpu_machine_lacks():
    code = BLOCKER + f"""
sys.argv = ["device_check.py", "--help"]
import runpy
try:
    runpy.run_path({str(ROOT / "bench" / "device_check.py")!r}, run_name="__main__")
except SystemExit as exit:
    assert exit.code == 0, exit.code
sys.path.insert(0, {str(ROOT / "bench")!r})
import train, merlib.loso, merlib.train, merlib.maps, merlib.baselines.context  # what the check runs
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: device_check.py" in done.stdout


def test_the_blocker_itself_blocks():
    done = subprocess.run([sys.executable, "-c", BLOCKER + "import face_recognition"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "not installed on the GPU machine" in done.stderr
