"""Preprocessing runs: every usable index row through the recipe, in worker processes, into the
cache (``cache``), then the manifest.

``run`` resumes: a clip recorded for the same index row (ok or failed) is not redone. Clips run in
a pool of spawned processes, one thread each; a worker that dies takes only its own clip with it
(recorded as ``worker_crashed``). A clip that fails is recorded with its reason; the run goes on.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pandas as pd

from merlib.config import PreprocessConfig
from merlib.preprocess import align
from merlib.preprocess.cache import (ROW_FIELDS, cache_folder, clip_path, clip_stem,
                                     current_record, index_rows, open_folder, read_record,
                                     record_path, row_key, write_manifest, write_npz,
                                     write_record)
from merlib.preprocess.recipe import ClipFailed, clip_name, process_clip

# Set in the workers before anything is imported: one process per core, no nested threading.
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _init_worker(size: int) -> None:
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)        # one process per core: no nested threading
    threadpool_limits(1)
    align.template_box(size)    # build the template face once per worker, before its first clip


def _work(row: dict, cfg: PreprocessConfig, folder: Path) -> dict:
    """Process, write the clip file then its record; never raises for a bad clip."""
    t0 = time.perf_counter()
    base = {k: row.get(k, "") for k in ROW_FIELDS}
    base["row_key"] = row_key(row)
    try:
        out = process_clip(row, cfg)
        t_write = time.perf_counter()
        path = clip_path(folder, row)
        write_npz(path, out["arrays"])
        rec = {**base, **out["record"], "status": "ok", "reason": "", "file": str(path.resolve()),
               "t_write": round(time.perf_counter() - t_write, 4)}
    except ClipFailed as exc:
        rec = {**base, "status": exc.status, "reason": exc.reason, "file": ""}
    except Exception as exc:  # noqa: BLE001 - one clip's bug must not stop the run; the reason says what broke
        rec = {**base, "status": "error", "file": "",
               "reason": f"{clip_name(row)}: {type(exc).__name__}: {exc}"}
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    write_record(record_path(folder, row), rec)
    return rec


def _crashed(row: dict, folder: Path, message: str) -> dict:
    rec = {**{k: row.get(k, "") for k in ROW_FIELDS},
           "row_key": row_key(row), "status": "worker_crashed", "file": "",
           "reason": f"{clip_name(row)}: {message}"}
    write_record(record_path(folder, row), rec)
    return rec


def _pool_round(rows: list[dict], workers: int, cfg, folder, bar) -> str | None:
    """Submit ``rows`` to a reusable pool of ``workers`` processes; the message of the error
    that broke the pool (a worker died), or None."""
    from joblib.externals.loky import get_reusable_executor

    pool = get_reusable_executor(max_workers=workers, timeout=60, initializer=_init_worker,
                                 initargs=(cfg.size,), env=_ONE_THREAD)
    try:
        for fut in as_completed([pool.submit(_work, row, cfg, folder) for row in rows]):
            fut.result()
            bar.update(1)
    except BrokenProcessPool as exc:
        return f"worker process died ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    return None


def _run_pool(todo: list[dict], cfg, folder, jobs: int, bar) -> None:
    """Run ``todo`` on ``jobs`` worker processes (loky: spawned, not forked, and without re-running
    the caller's script, so it works from scripts without a main guard and from notebooks).

    A worker that dies (segfault, out of memory) breaks the pool and every clip in flight with
    it. The clips without a record are then retried: the first of them (it was in flight) alone
    in one process, so the one that kills its worker is recorded as worker_crashed, and the
    others in a fresh pool again."""
    def unrecorded(rows):
        return [r for r in rows if read_record(record_path(folder, r)) is None]

    pending = list(todo)
    while pending:
        error = _pool_round(pending, min(jobs, len(pending)), cfg, folder, bar)
        pending = unrecorded(pending)
        if error is None or not pending:
            continue
        head = pending[0]
        error = _pool_round([head], 1, cfg, folder, bar)
        if error is not None and unrecorded([head]):
            _crashed(head, folder, error)
            bar.update(1)
        pending = unrecorded(pending)


def run(index: pd.DataFrame, cfg: PreprocessConfig, cache_dir: str | Path, *, jobs: int = 0,
        progress: bool = True) -> pd.DataFrame:
    """Process every ``status == ok`` row of ``index`` into the cache and return the manifest.

    ``jobs``: worker processes (0: ``os.cpu_count()``; 1: in this process, no pool).
    Clips already recorded in the cache for the same index row are not redone."""
    from tqdm.auto import tqdm

    if index.empty:
        raise ValueError("the index has no rows")
    datasets = index["dataset"].unique()
    if len(datasets) != 1:
        raise ValueError(f"one dataset per run, the index has {list(datasets)}")
    rows = index_rows(index)
    stems = [clip_stem(r) for r in rows]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"index rows share a cache name (subject__clip): {dupes[:5]}")
    folder = cache_folder(cache_dir, str(datasets[0]), cfg)
    open_folder(folder, cfg)
    todo = [row for row in rows if row["status"] == "ok" and current_record(folder, row) is None]

    jobs = (os.cpu_count() or 1) if jobs <= 0 else jobs
    with tqdm(total=len(todo), desc=f"preprocess {datasets[0]}", unit="clip",
              disable=not progress or not todo) as bar:  # no bar when nothing to do
        if jobs == 1 or len(todo) <= 1:
            for row in todo:
                _work(row, cfg, folder)
                bar.update(1)
        else:
            _run_pool(todo, cfg, folder, jobs, bar)
    return write_manifest(index, folder)
