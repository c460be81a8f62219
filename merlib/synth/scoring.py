"""SynthME's ground truth against what preprocessing found: the detected apex (Eqs. 16-17)
scored against the generator's true apex.

The preprocessing cache records only what preprocessing computed, so the scoring happens here,
beside the generator that knows the truth. Layer: above preprocess (it reads preprocessing's
output); nothing else in ``merlib.synth`` imports it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from merlib.preprocess.apex import apex_error
from merlib.synth.write import MARKER, groundtruth_path


def with_groundtruth(ok: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """Processed clips ``ok`` (manifest rows) with ``gt_apex``, the generator's true apex, and
    ``gt_abs_err`` / ``gt_rel_err``, the detected apex's error against it (frames, fraction of
    the onset-offset span; NaN where the folder has no ground truth for the clip)."""
    root = Path(root)
    if not (root / MARKER).is_file():
        raise ValueError(f"{root} is not a SynthME folder (no {MARKER}): it has no ground truth")
    gt = {"gt_apex": [], "gt_abs_err": [], "gt_rel_err": []}
    for row in ok.itertuples():
        path = groundtruth_path(root, row.subject, row.clip)
        true_apex = err = None
        if path.is_file() and pd.notna(row.apex_detected):
            with np.load(path) as z:
                true_apex = int(z["apex"])
            err = apex_error(true_apex, int(row.apex_detected), int(row.n_frames_span))
        gt["gt_apex"].append(true_apex)
        gt["gt_abs_err"].append(np.nan if err is None else float(err.frames))
        gt["gt_rel_err"].append(np.nan if err is None else float(err.fraction))
    return ok.assign(gt_apex=pd.array(gt["gt_apex"], dtype="Int64"),
                     gt_abs_err=gt["gt_abs_err"], gt_rel_err=gt["gt_rel_err"])
