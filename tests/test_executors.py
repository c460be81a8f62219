"""Folds as tasks (docs/DESIGN.md, "Where folds run"): dask and submitit give the local run's
predictions, survive a worker dying mid-fold, refuse folders the workers cannot see. Tiny data written here in the
preprocessing cache's format (manifest.csv + one npz per clip), random VGG16, one epoch, CPU."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from merlib import executors, loso
from merlib.clips import load_clipset
from merlib.config import PROFILES, ExecutorConfig, RunConfig
from merlib.devices import cpu_threads
from merlib.loso import run_loso
from merlib.preprocess.cache import load_manifest

from fakes import write_clip_cache

SUBJECTS = ("s1", "s2", "s3")
WORKERS = 2
THREADS = cpu_threads(WORKERS)  # what each of 2 dask CPU workers uses here
TIMEOUT_S = 240


def write_tiny_cache(root: Path) -> Path:
    """Six random clips of three subjects in the preprocessing cache's format; the manifest."""
    write_clip_cache(root, subjects=SUBJECTS)
    return root / "manifest.csv"


def _cfg(**executor) -> RunConfig:
    q = PROFILES["quick"]
    train = dataclasses.replace(q, epochs=1, views=1, weights="random", batch_size=4, device="cpu")
    return RunConfig(train=train, executor=ExecutorConfig(**executor))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny cache, its clips, and the reference run: the local executor with the thread
    count a 2-worker dask LocalCluster gives each worker."""
    root = tmp_path_factory.mktemp("executors")
    manifest = write_tiny_cache(root)
    clips = load_clipset(load_manifest(manifest), 10)
    run_loso(clips, _cfg(threads=THREADS), root / "local", maps_dir=root / "maps", prep_key="t",
             manifest_file=manifest, progress=False)
    return {"root": root, "manifest": manifest, "clips": clips, "local": root / "local"}


def _loso(tiny, config: RunConfig, name: str) -> Path:
    out = tiny["root"] / name
    run_loso(tiny["clips"], config, out, maps_dir=tiny["root"] / "maps", prep_key="t",
             manifest_file=tiny["manifest"], progress=False)
    return out


def _same_files(a: Path, b: Path, pooled: bool = True) -> None:
    """Every fold's predictions.csv (and the pooled one) of run ``a`` byte-equal to ``b``'s."""
    names = sorted(p.relative_to(a) for p in a.glob("folds/*/predictions.csv"))
    assert len(names) == len(SUBJECTS)
    assert names == sorted(p.relative_to(b) for p in b.glob("folds/*/predictions.csv"))
    for rel in [Path("predictions.csv")] * pooled + names:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def scheduler():
    """An existing dask cluster (2 single-threaded worker processes, spawned) by address."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                               memory_limit=0, dashboard_address=None, host="127.0.0.1")
        yield cluster.scheduler_address
        cluster.close()


# --------------------------------------------------------------------------- dask

def test_dask_local_cluster_gives_the_local_runs_bytes(tiny, monkeypatch):
    seen = []
    real = executors.run_folds

    def recording(*a, **k):
        seen.extend(real(*a, timeout_s=TIMEOUT_S, **k))
        return seen

    monkeypatch.setattr(executors, "run_folds", recording)
    out = _loso(tiny, _cfg(kind="dask", workers=WORKERS), "dask")
    assert sorted(s["fold"] for s in seen) == [0, 1, 2]
    assert {s["state"] for s in seen} == {"done"}
    assert all(s["pid"] != os.getpid() for s in seen)  # ran in the workers, not here
    _same_files(out, tiny["local"])


def _dies_mid_fold(config_dict, fold, run_dir, threads=None, cache=True, *, marker, crash_fold):
    """The fold task, except that the first attempt at ``crash_fold`` kills its worker process
    in the middle of training (after the fold folder exists, before any result is written)."""
    import merlib.train

    if fold == crash_fold and not os.path.exists(marker):
        def die(*a, **k):
            Path(marker).write_text(f"worker {os.getpid()} died in fold {fold}\n")
            os._exit(1)

        merlib.train.train_one_epoch = die
    return loso.fold_task(config_dict, fold, run_dir, THREADS, cache)


def test_a_worker_dying_mid_fold_loses_nothing(tiny, scheduler, monkeypatch):
    marker = tiny["root"] / "died"
    monkeypatch.setattr(loso, "fold_task", functools.partial(
        _dies_mid_fold, marker=str(marker), crash_fold=1))
    monkeypatch.setattr(executors, "run_folds", functools.partial(executors.run_folds,
                                                                  timeout_s=TIMEOUT_S))
    out = _loso(tiny, _cfg(kind="dask", scheduler=scheduler), "crash")
    assert marker.exists(), "the failure was not injected"
    _same_files(out, tiny["local"])
    assert not list(out.glob("folds/*/*.tmp"))


def test_workers_keep_the_loaded_run_across_folds(tiny, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny["local"], run)
    for f in run.glob("folds/*/predictions.csv"):
        f.unlink()
    loads = []
    real = loso.load_context
    monkeypatch.setattr(loso, "load_context", lambda *a, **k: loads.append(1) or real(*a, **k))
    monkeypatch.setattr(loso, "_CONTEXTS", {})
    config = _cfg(kind="dask").to_dict()
    states = [loso.fold_task(config, fold, str(run), THREADS)["state"] for fold in (0, 1, 2)]
    assert states == ["done"] * 3 and len(loads) == 1
    assert len(loso._CONTEXTS) == 1
    _same_files(run, tiny["local"], pooled=False)


def test_workers_that_cannot_see_the_run_are_refused_before_anything_runs(tiny, scheduler, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny["local"], run)
    for f in run.glob("folds/*/predictions.csv"):
        f.unlink()
    plan = json.loads((run / "plan.json").read_text())
    plan["maps_file"] = str(tmp_path / "only-on-the-driver" / "maps.pt")
    (run / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(executors.WorkersCannotSeeRun) as err:
        executors.run_folds(loso.fold_task, _cfg(kind="dask", scheduler=scheduler), run,
                            [0, 1, 2], shared=loso.shared_paths(run, plan), progress=False,
                            timeout_s=60)
    message = str(err.value)
    assert "storage every worker sees" in message and plan["maps_file"] in message
    assert "MERLIB_CACHE" in message
    assert not list(run.glob("folds/*/predictions.csv"))


# --------------------------------------------------------------------------- slurm

def test_submitit_debug_cluster_completes_the_run(tiny, monkeypatch):
    monkeypatch.setattr(executors, "SUBMITIT_CLUSTER", "debug")
    out = _loso(tiny, _cfg(kind="slurm", slurm_partition="gpu", slurm_time=5), "slurm")
    ours = pd.read_csv(out / "predictions.csv")
    ref = pd.read_csv(tiny["local"] / "predictions.csv")
    pd.testing.assert_frame_equal(ours, ref, rtol=1e-6)  # threads: the job's own cores


def test_slurm_options_map_to_submitit_parameters():
    ex = ExecutorConfig(kind="slurm", slurm_partition="gpu", slurm_gpus_per_task=2, slurm_time=90,
                        slurm_array_parallelism=4)
    assert executors.slurm_parameters(ex, name="merlib-x") == {
        "name": "merlib-x", "nodes": 1, "tasks_per_node": 1, "timeout_min": 90,
        "gpus_per_node": 2, "slurm_partition": "gpu", "slurm_array_parallelism": 4}
    cpu = executors.slurm_parameters(ExecutorConfig(kind="slurm", slurm_gpus_per_task=0))
    assert "gpus_per_node" not in cpu and "slurm_partition" not in cpu
    assert cpu["timeout_min"] == 240 and cpu["slurm_array_parallelism"] == 16


def test_slurm_parameters_make_the_expected_sbatch_lines(tmp_path, monkeypatch):
    import submitit
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    ex.update_parameters(**executors.slurm_parameters(ExecutorConfig(
        kind="slurm", slurm_partition="gpu", slurm_gpus_per_task=1), name="merlib-x"))
    sbatch = slurm._make_sbatch_string(command="python -u x", folder=tmp_path, map_count=30,
                                       **ex._executor.parameters)
    for line in ("--array=0-29%16", "--gpus-per-node=1", "--job-name=merlib-x", "--nodes=1",
                 "--ntasks-per-node=1", "--partition=gpu", "--time=240"):
        assert f"#SBATCH {line}\n" in sbatch


# --------------------------------------------------------------------------- layout and refusals

def test_local_cluster_layout():
    ex = ExecutorConfig(kind="dask")
    assert executors.local_worker_plan(ex, "auto", ["0", "1"], 16) == {
        "gpus": ["0", "1"], "n": 2, "threads": 8}
    assert executors.local_worker_plan(ex, "cpu", ["0", "1"], 16)["gpus"] is None
    assert executors.local_worker_plan(ex, "auto", [], 4) == {"gpus": None, "n": 4, "threads": 1}
    two = ExecutorConfig(kind="dask", workers=2)
    assert executors.local_worker_plan(two, "auto", [], 5) == {"gpus": None, "n": 2, "threads": 2}
    assert executors.local_worker_plan(two, "auto", list("0123"), 8)["gpus"] == ["0", "1"]
    specs = executors.gpu_worker_specs(["2", "5"])
    assert [s["options"]["env"] for s in specs.values()] == [{"CUDA_VISIBLE_DEVICES": "2"},
                                                              {"CUDA_VISIBLE_DEVICES": "5"}]
    assert {s["options"]["nthreads"] for s in specs.values()} == {1}


def test_local_executor_and_in_memory_plans_are_refused(tmp_path):
    with pytest.raises(ValueError, match="local"):
        executors.run_folds(loso.fold_task, _cfg(kind="local"), tmp_path, [0], progress=False)
    (tmp_path / "plan.json").write_text(json.dumps({"manifest": "", "maps_file": "", "folds": []}))
    with pytest.raises(ValueError, match="no preprocessing manifest"):
        loso.read_plan(tmp_path)
    assert executors.run_folds(loso.fold_task, _cfg(kind="dask"), tmp_path, [], progress=False) == []


def test_the_streaming_paper_path_runs_its_folds_on_dask_workers(tiny, scheduler, monkeypatch):
    """dask workers are daemonic processes: the paper path's DataLoader must read in-process
    there instead of failing to start its own workers."""
    monkeypatch.setattr(executors, "run_folds", functools.partial(executors.run_folds,
                                                                  timeout_s=TIMEOUT_S))
    p = PROFILES["paper"]
    train = dataclasses.replace(p, epochs=1, weights="random", batch_size=2, device="cpu",
                                loader_workers=2)
    config = RunConfig(train=train, executor=ExecutorConfig(kind="dask", scheduler=scheduler))
    clips = load_clipset(load_manifest(tiny["manifest"]), 10, frames=False)
    out = tiny["root"] / "paper-dask"
    pred = run_loso(clips, config, out, manifest_file=tiny["manifest"], progress=False)
    assert sorted(pred["clip"]) == sorted(clips.meta["clip"]) and pred["fold"].nunique() == 3
    assert (pred["profile"] == "paper").all()
    assert json.loads((out / "config.json").read_text())["run"]["train"]["stream"] is True
