"""Small fixture datasets in the real formats, written on demand by the tests.

``write_fixture_dataset(root, layout)`` writes a CASME II-, SAMM- or SMIC-like dataset of a dozen
clips with tiny frames (32x24), mixing the formats' quirks and a couple of bad rows, or
(``layout="megc"``) the three sources holding every clip of the MEGC2019 442-sample list plus a
few clips of excluded emotions. The clip tables below are the fixtures' ground truth.
"""
from __future__ import annotations

import zlib
from itertools import cycle
from pathlib import Path

import numpy as np

from merlib.datasets.schema import ClipRecord
from merlib.datasets.writers import write_casme2, write_samm, write_smic

FRAME_SIZE = (24, 32)  # (H, W)

# (subject, clip, emotion, first frame, n frames, onset, apex, offset); apex None is '/';
# n frames None: no folder; onset as text: an unparseable sheet cell.
CASME2_CLIPS = [
    (1, "EP02_01f", "happiness", 46, 5, 46, 48, 50),
    (1, "EP19_05f", "repression", 1, 4, 1, 2, 4),
    (1, "EP19_06f", "disgust", 10, 4, 10, 12, 13),
    (1, "EP01_2", "others", 1, 3, 1, 2, 3),                # excluded emotion
    (2, "EP09f", "surprise", 1, 4, 1, None, 4),            # ApexFrame '/'
    (2, "EP06_02_01", "disgust", 1, 3, 1, 2, 3),
    (2, "EP01_11f", "fear", 1, 3, 1, 2, 3),                # excluded emotion
    (2, "EP03_02", "happiness", 1, 3, 1, 2, 3),
    (3, "EP04_02", "repression", 5, 3, 5, 6, 7),
    (3, "EP12_02f", "surprise", 1, None, 1, 2, 3),         # bad: missing folder
    (3, "EP13_01", "disgust", 1, 3, "abc", 2, 3),          # bad: unparseable onset
]
SAMM_CLIPS = [
    (6, "006_1_2", "Anger", 5562, 4, 5562, 5564, 5565),
    (6, "006_1_3", "Happiness", 1210, 3, 1210, 1211, 1212),
    (6, "006_1_4", "Others", 300, 3, 300, 301, 302),       # excluded emotion
    (7, "007_3_1", "Contempt", 9870, 4, 9870, 9871, 9873),
    (7, "007_5_2", "Surprise", 44, 3, 44, 45, 46),
    (28, "028_4_1", "Anger", 100, 4, 100, 110, 103),       # apex outside: usable, flagged
    (28, "028_4_2", "Fear", 1, 3, "1a", 2, 3),             # bad: unparseable onset
    (28, "028_5_1", "Sadness", 1, None, 1, 2, 3),          # bad: missing folder
]
# (subject, clip, label folder, first frame, n frames); n frames 0: empty folder
SMIC_CLIPS = [
    ("s1", "s1_ne_01", "negative", 1000, 4),
    ("s1", "s1_ne_02", "negative", 2000, 3),
    ("s1", "s1_po_01", "positive", 3000, 3),
    ("s1", "s1_sur_01", "surprise", 4000, 3),
    ("s2", "s2_ne_01", "negative", 10, 3),
    ("s2", "s2_po_01", "positive", 20, 3),
    ("s2", "s2_po_02", "positive", 30, 3),
    ("s3", "s3_ne_01", "negative", 1, 0),                  # bad: empty folder
    ("s3", "s3_sur_01", "surprise", 1, 3),                 # bad: a frame name without a number
]


def tiny_frames(key: str, n: int, first: int = 0):
    """A callable giving ``n`` deterministic (24, 32, 3) uint8 frames for clip ``key``."""
    def make():
        # a smooth per-clip pattern (so JPEG keeps it close), brightening a little per frame
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        phase = rng.uniform(0, 2 * np.pi, size=3)
        y, x = np.mgrid[0:FRAME_SIZE[0], 0:FRAME_SIZE[1]]
        base = np.stack([128 + 50 * np.sin(x / 6 + p) * np.cos(y / 5 + p) for p in phase], -1)
        for i in range(n):
            yield np.clip(base + 3 * i, 0, 255).astype(np.uint8)  # (H, W, 3)
    return make


def _records(table, onset_header: str) -> list[ClipRecord]:
    return [ClipRecord(subject=str(s), clip=c, emotion=e,
                       frames=None if n is None else tiny_frames(c, n),
                       onset=on if isinstance(on, int) else 0, apex=ap,
                       offset=off, first_frame=first, action_units="AU4",
                       extra={} if isinstance(on, int) else {"sheet": {onset_header: on}})
            for s, c, e, first, n, on, ap, off in table]


def write_fixture_dataset(root, layout: str) -> Path:
    """Write the ``layout`` fixture (casme2 | samm | smic | megc) under ``root``; returns the
    folder to pass as ``data_root``."""
    root = Path(root)
    if layout == "casme2":
        return write_casme2(root, _records(CASME2_CLIPS, "OnsetFrame"))
    if layout == "samm":
        return write_samm(root, _records(SAMM_CLIPS, "Onset Frame"))
    if layout == "smic":
        clips = [ClipRecord(subject=s, clip=c, emotion=e, frames=tiny_frames(c, n), onset=first,
                            apex=None, offset=first + n - 1, first_frame=first)
                 for s, c, e, first, n in SMIC_CLIPS]
        write_smic(root, clips)
        stray = root / "HS" / "s3" / "micro" / "surprise" / "s3_sur_01" / "image.bmp"
        stray.write_bytes((stray.parent / "image000001.bmp").read_bytes())
        return root
    if layout == "megc":
        return write_megc_fixture(root)
    raise ValueError(f"unknown fixture layout {layout!r}; expected casme2, samm, smic or megc")


def write_megc_fixture(root, *, max_frames: int = 2) -> Path:
    """``root/{casme2,samm,smic}`` holding every clip of the MEGC2019 list with 1-2 tiny frames
    and an emotion its source maps to the listed label, plus excluded-emotion clips in CASME II
    (3) and SAMM (2). Returns ``root``."""
    from merlib.datasets.megc import megc_list

    root = Path(root)
    listed = megc_list()
    emotions = {
        "casme2": {"negative": cycle(["repression", "disgust"]), "positive": cycle(["happiness"]),
                   "surprise": cycle(["surprise"])},
        "samm": {"negative": cycle(["Anger", "Contempt", "Disgust", "Fear", "Sadness"]),
                 "positive": cycle(["Happiness"]), "surprise": cycle(["Surprise"])},
        "smic": {k: cycle([k]) for k in ("negative", "positive", "surprise")},
    }
    records: dict[str, list[ClipRecord]] = {"casme2": [], "samm": [], "smic": []}
    for i, item in enumerate(listed.itertuples()):
        n = 1 + i % max_frames
        first = 1 + 7 * (i % 5)
        records[item.dataset].append(ClipRecord(
            subject=item.subject, clip=item.clip,
            emotion=next(emotions[item.dataset][item.label]),
            frames=tiny_frames(f"{item.dataset}/{item.clip}", n), onset=first,
            apex=first + n - 1, offset=first + n - 1, first_frame=first))
    extra = [("casme2", "1", "EP90_01", "others"), ("casme2", "2", "EP90_02", "sadness"),
             ("casme2", "4", "EP90_03", "fear"), ("samm", "6", "006_9_1", "Other"),
             ("samm", "7", "007_9_1", "Others")]
    for source, subject, clip, emotion in extra:
        records[source].append(ClipRecord(subject=subject, clip=clip, emotion=emotion,
                                          frames=tiny_frames(clip, 2), onset=1, apex=1, offset=2))
    write_casme2(root / "casme2", records["casme2"])
    write_samm(root / "samm", records["samm"])
    write_smic(root / "smic", records["smic"])
    return root
