"""LOSO folds as tasks on other engines (docs/DESIGN.md, "Where folds run"): ``dask.distributed``
and SLURM via submitit.

``merlib.loso.run_loso`` plans a run once on the driver (resume check, ``config.json``, the
frozen maps cache, ``plan.json``) and, for an executor other than ``local``, hands the unfinished
fold numbers and the task that runs one (``merlib.loso.fold_task``) to :func:`run_folds`. The
task writes the fold's files atomically (``predictions.csv`` last), so a retried or duplicated
fold is harmless; the driver pools from the files afterwards. This module knows nothing of
training: it places tasks, checks storage and reports failures.

- ``dask``: without a scheduler address, a cluster on this machine: one worker process per
  visible GPU (``CUDA_VISIBLE_DEVICES`` pinned per worker), or ``workers`` CPU workers with the
  cores split between them. With ``scheduler``, an existing cluster (``dask scheduler`` /
  ``dask worker`` started by the user). One task per fold, two retries; a worker keeps the loaded
  run across the folds it runs.
- ``slurm``: one submitit array job per call (one variant), a task per fold.

Workers never preprocess: they read the plan's manifest, clip files and maps cache, which must be
on storage every worker sees at the same path (checked before anything is submitted).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from merlib.config import ExecutorConfig, RunConfig
from merlib.devices import available_cores, cpu_threads, visible_gpus

# The submitit cluster a ``slurm`` executor submits to; tests use "debug" (runs in-process).
SUBMITIT_CLUSTER = "slurm"
SLURM_LOG_DIR = "slurm-logs"
# A fold task: (config dict, fold, run folder, threads, cache the loaded run) -> its status.
Task = Callable[..., dict]


class WorkersCannotSeeRun(RuntimeError):
    """A worker cannot read the run folder or the preprocessed data the plan names."""


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def visibility_error(missing: dict[str, list[str]]) -> str:
    """The message naming, per worker, the paths it cannot see."""
    lines = [f"  {worker}: {', '.join(paths)}" for worker, paths in sorted(missing.items())]
    return ("the run folder and the preprocessed data must be on storage every worker sees, at "
            "the same path (a shared filesystem): set MERLIB_OUT and MERLIB_CACHE to folders on "
            "it. Not visible:\n" + "\n".join(lines))


def check_visible(client, paths: list[str]) -> None:
    """Raise :class:`WorkersCannotSeeRun` unless every dask worker sees every path."""
    missing = {w: m for w, m in client.run(_missing, paths).items() if m}
    if missing:
        raise WorkersCannotSeeRun(visibility_error(missing))


# --------------------------------------------------------------------------- dask

def local_worker_plan(ex: ExecutorConfig, device: str, gpus: list[str], cores: int) -> dict:
    """How a LocalCluster is laid out: a worker per GPU (``workers`` > 0 caps the count), or
    ``workers`` CPU workers (0 = one per core); threads per worker split the cores.
    Returns {"gpus": [CUDA_VISIBLE_DEVICES per worker] or None, "n": workers, "threads": t}."""
    use_gpus = bool(gpus) and device != "cpu"
    if use_gpus:
        n = min(ex.workers, len(gpus)) if ex.workers > 0 else len(gpus)
        return {"gpus": gpus[:n], "n": n, "threads": cpu_threads(n, cores)}
    n = ex.workers if ex.workers > 0 else cores
    return {"gpus": None, "n": n, "threads": cpu_threads(n, cores)}


def gpu_worker_specs(gpus: list[str]) -> dict:
    """SpecCluster worker specs: one single-threaded worker process per GPU, each seeing only
    its own (``CUDA_VISIBLE_DEVICES`` is set in the spawned process before torch starts CUDA).
    No dask memory limit: a worker holds a whole run's maps by design, the OS is the limit."""
    from distributed import Nanny

    return {f"gpu{g}": {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": 0,
                                                   "env": {"CUDA_VISIBLE_DEVICES": g}}}
            for g in gpus}


def _start_local_cluster(layout: dict):
    from distributed import LocalCluster, Scheduler, SpecCluster

    if layout["gpus"] is None:
        return LocalCluster(n_workers=layout["n"], threads_per_worker=1, processes=True,
                            memory_limit=0, dashboard_address=None, host="127.0.0.1")
    return SpecCluster(workers=gpu_worker_specs(layout["gpus"]), scheduler={
        "cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}})


def _run_dask(task: Task, config: RunConfig, run_dir: Path, todo: list[int], *, shared: list[str],
              subjects: dict[int, str], progress: bool, timeout_s: float | None,
              threads: int | None, cleanup: Callable[[], None] | None) -> list[dict]:
    import dask
    from distributed import Client, as_completed

    ex = config.executor
    # Never fork a process that may have touched CUDA (the driver computed the maps on it).
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        cluster = None
        if ex.scheduler:
            client = Client(ex.scheduler, timeout="60s")
            # default: each worker splits its own cores between its task slots
        else:
            gpus = [] if config.train.device == "cpu" else visible_gpus()
            layout = local_worker_plan(ex, config.train.device, gpus, available_cores())
            cluster = _start_local_cluster(layout)
            client = Client(cluster)
            threads = threads or layout["threads"]
        try:
            client.wait_for_workers(layout["n"] if cluster is not None else 1, timeout=120)
            check_visible(client, shared)
            futures = {client.submit(task, config.to_dict(), fold, str(run_dir), threads,
                                     key=f"merlib-fold-{fold:03d}-{os.getpid()}-{time.time_ns()}",
                                     pure=False, retries=2): fold for fold in todo}
            statuses, failed = [], {}
            bar = tqdm(total=len(todo), disable=not progress,
                       desc=f"LOSO dask {config.run_name()}")
            try:
                for fut in as_completed(list(futures), timeout=timeout_s):
                    if fut.status == "finished":
                        statuses.append(fut.result())
                    elif fut.status == "error":
                        failed[futures[fut]] = repr(fut.exception())
                    else:
                        failed[futures[fut]] = fut.status
                    bar.update()
            finally:
                bar.close()
                for fut in futures:
                    fut.cancel()
            if failed:
                raise RuntimeError("LOSO folds failed on dask after retries: " + "; ".join(
                    f"fold {f} ({subjects.get(f, '?')}): {err}" for f, err in sorted(failed.items())))
            return sorted(statuses, key=lambda s: s["fold"])
        finally:
            try:  # free the workers' loaded run (a worker holding one also exits slowly)
                if cleanup is not None:
                    client.run(cleanup)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            client.close()
            if cluster is not None:
                cluster.close()


# --------------------------------------------------------------------------- slurm

def slurm_parameters(ex: ExecutorConfig, *, name: str = "merlib") -> dict:
    """``ExecutorConfig`` -> submitit ``AutoExecutor.update_parameters`` keywords: one task on
    one node per fold, ``slurm_gpus_per_task`` GPUs (0: a CPU job), ``slurm_time`` minutes, at
    most ``slurm_array_parallelism`` folds at once, the partition when one is named."""
    params = {"name": name, "nodes": 1, "tasks_per_node": 1, "timeout_min": int(ex.slurm_time),
              "slurm_array_parallelism": int(ex.slurm_array_parallelism)}
    if ex.slurm_gpus_per_task > 0:
        params["gpus_per_node"] = int(ex.slurm_gpus_per_task)
    if ex.slurm_partition:
        params["slurm_partition"] = ex.slurm_partition
    return params


def _run_slurm(task: Task, config: RunConfig, run_dir: Path, todo: list[int], *,
               subjects: dict[int, str], progress: bool, timeout_s: float | None,
               threads: int | None, cluster: str) -> list[dict]:
    import submitit

    executor = submitit.AutoExecutor(folder=run_dir / SLURM_LOG_DIR, cluster=cluster)
    executor.update_parameters(**slurm_parameters(
        config.executor, name=f"merlib-{config.data.name}-{config.run_name()}"[:120]))
    n = len(todo)
    jobs = executor.map_array(task, [config.to_dict()] * n, list(todo), [str(run_dir)] * n,
                              [threads] * n, [False] * n)
    pending = dict(zip(jobs, todo))
    statuses, failed = [], {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    bar = tqdm(total=n, disable=not progress,
               desc=f"LOSO slurm {config.run_name()}")
    try:
        while pending:
            for job in list(pending):
                if cluster == "debug":
                    job.exception()  # runs it in-process (done() would open pdb on an error)
                if not job.done():
                    continue
                fold = pending.pop(job)
                bar.update()
                err = job.exception()
                if err is None:
                    statuses.append(job.result())
                else:
                    failed[fold] = (job, err)
            if pending:
                if deadline is not None and time.monotonic() > deadline:
                    for job in pending:
                        job.cancel(check=False)
                    raise TimeoutError(f"SLURM folds {sorted(pending.values())} not done after "
                                       f"{timeout_s} s; cancelled")
                time.sleep(1.0 if cluster == "debug" else 15.0)
    finally:
        bar.close()
    if failed:
        raise RuntimeError("LOSO folds failed on SLURM: " + "; ".join(
            f"fold {f} ({subjects.get(f, '?')}): {_last_line(e)} (logs: {job.paths.stdout}, "
            f"{job.paths.stderr})" for f, (job, e) in sorted(failed.items())))
    return sorted(statuses, key=lambda s: s["fold"])


def _last_line(err: BaseException) -> str:
    """submitit wraps a job's traceback in the exception text: keep its last line."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1].strip() if lines else ''}"


# --------------------------------------------------------------------------- entry point

def run_folds(task: Task, config: RunConfig, run_dir: str | Path, todo: list[int], *,
              shared: list[str] = (), subjects: dict[int, str] | None = None,
              progress: bool = True, threads: int | None = None, timeout_s: float | None = None,
              cluster: str | None = None, cleanup: Callable[[], None] | None = None) -> list[dict]:
    """Run ``task(config_dict, fold, run_dir, threads, cache)`` for folds ``todo`` of the run
    planned in ``run_dir`` on ``config.executor``; their statuses ({fold, subject, state,
    seconds, host, pid}) in fold order.

    ``shared``: paths every worker must see (checked on dask before anything is submitted);
    ``subjects``: fold -> held-out subject, for messages. ``threads``: torch intra-op threads
    per CPU fold (default: a dask LocalCluster splits the cores, ``cpu_threads(workers)``; a
    worker of an existing scheduler or a SLURM job uses the cores it has). ``timeout_s`` bounds
    the wait for all folds (tests). ``cluster``: submitit's cluster for ``slurm`` (default
    :data:`SUBMITIT_CLUSTER`; "debug" runs jobs in this process). ``cleanup`` runs on every dask
    worker at the end (frees a loaded run). Raises naming the failed folds (and their SLURM
    logs) when any fails after its retries."""
    kind = config.executor.kind
    if kind == "local":
        raise ValueError("run_folds runs folds on dask or slurm; the local executor runs them "
                         "in-process in merlib.loso.run_loso")
    run_dir = Path(run_dir).resolve()
    if not todo:
        return []
    subjects = subjects or {}
    if kind == "dask":
        return _run_dask(task, config, run_dir, list(todo), shared=list(shared), subjects=subjects,
                         progress=progress, timeout_s=timeout_s, threads=threads, cleanup=cleanup)
    if kind == "slurm":
        return _run_slurm(task, config, run_dir, list(todo), subjects=subjects, progress=progress,
                          timeout_s=timeout_s, threads=threads, cluster=cluster or SUBMITIT_CLUSTER)
    raise ValueError(f"unknown executor {kind!r}")
