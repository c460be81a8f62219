"""The clip pipeline (DESIGN §4), re-exported from where it lives (kept for existing importers):

- ``recipe``: ``PreprocessConfig`` (from ``merlib.config``), ``ClipFailed``, ``FAIL_CODES``,
  ``STEPS``, ``process_clip``: one index row -> the processed clip's arrays and record.
- ``cache``: cache folder and file names, atomic record I/O, ``write_manifest``,
  ``load_manifest``, ``summary``.
- ``workers``: ``run``, the worker pool that fills the cache and writes the manifest.
"""
from merlib.preprocess.cache import (MANIFEST_COLUMNS, cache_folder, clip_stem, load_manifest,
                                     manifest_path, row_key, summary, write_manifest)
from merlib.preprocess.recipe import FAIL_CODES, STEPS, ClipFailed, PreprocessConfig, process_clip
from merlib.preprocess.workers import run

__all__ = ["FAIL_CODES", "MANIFEST_COLUMNS", "STEPS", "ClipFailed", "PreprocessConfig",
           "cache_folder", "clip_stem", "load_manifest", "manifest_path", "process_clip",
           "row_key", "run", "summary", "write_manifest"]
