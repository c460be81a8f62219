"""Small stand-ins the tests write themselves: a preprocessing cache of random clips."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from merlib.registry import CLASSES


def write_clip_cache(root: Path, *, n: int = 6, t: int = 2, subjects=("s1", "s2", "s3"),
                     excluded=(), seed: int = 0) -> pd.DataFrame:
    """``n`` clips as ``merlib.preprocess`` writes them (npz: frames (t, 224, 224, 3) uint8, ip /
    side 10 and 24) and the manifest listing them, saved as ``root/manifest.csv`` and returned.
    Clip ``c{i}`` belongs to ``subjects[i // 2]`` (two clips per subject), label ``CLASSES[i % 3]``;
    the clips numbered in ``excluded`` are listed as excluded by preprocessing."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        subject = subjects[(i // 2) % len(subjects)]
        f = root / f"{subject}__c{i}.npz"
        np.savez(f, frames=rng.integers(0, 255, (t, 224, 224, 3), dtype=np.uint8),
                 ip10=rng.uniform(40, 180, (t, 10, 2)).astype(np.float32),
                 side10=np.full((t, 10), 30.0, np.float32),
                 ip24=rng.uniform(40, 180, (t, 24, 2)).astype(np.float32),
                 side24=np.full((t, 24), 30.0, np.float32))
        rows.append({"dataset": "synthme", "source": "casme2", "subject": subject, "clip": f"c{i}",
                     "label": CLASSES[i % 3], "stage": "preprocess",
                     "status": "excluded" if i in excluded else "ok", "reason": "",
                     "file": str(f), "apex_source": "annotated"})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    return manifest
