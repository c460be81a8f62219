"""The one sample-index schema every source returns, the status codes, and the 3-class mapping.

One row per clip. A row that cannot be used stays in the index with a ``status`` other than
``ok`` and a human-readable ``reason``: bad rows are reported, never dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


# Column order of every index CSV.
INDEX_COLUMNS = [
    "dataset",     # casme2 | samm | smic | megc | megc-public | synthme: the index's dataset
    "source",      # casme2 | samm | smic: whose on-disk format the row came from
    "subject",     # canonical: casme2 'sub01', samm '006', smic 's01' (the MEGC list's spelling)
    "clip",        # canonical: 'EP02_01f', '006_1_2', 's01_ne_01'
    "emotion",     # the source's own emotion word, lower-case ('repression', 'anger', ...)
    "label",       # negative | positive | surprise; empty when the emotion is excluded
    "onset",       # frame numbers in the dataset's own numbering (Int64, may be missing)
    "apex",
    "offset",
    "n_frames",    # frame files found in frames_dir (0 when the folder is missing)
    "fps",
    "status",      # 'ok' or one of STATUS_CODES
    "reason",      # empty for clean rows; a sentence naming the problem otherwise
    "flags",       # ';'-joined warnings on usable rows: apex_missing, apex_outside
    "frames_dir",  # absolute folder holding the clip's frames
]

# Short status codes; the reason column says the specifics.
STATUS_CODES = {
    "ok": "usable",
    "excluded": "emotion outside the 3-class MEGC2019 mapping (counted, not used)",
    "missing_folder": "the clip's frame folder is not on disk",
    "no_frames": "the frame folder holds no frame files",
    "bad_frame_names": "frame file names whose frame number cannot be parsed",
    "bad_annotation": "onset/offset in the sheet cannot be parsed as frame numbers",
    "frames_out_of_range": "onset/offset do not fall among the frames on disk",
    "not_in_source": "listed by MEGC2019 but absent from the source dataset's index",
    "not_in_list": "in a MEGC2019 release but not in the official 442-sample list (not used)",
    "missing_file": "a file the clip needs (its one frame, its flow image) is not on disk",
    "unreadable_file": "a file the clip needs is truncated, not an image, or of the wrong size",
}

# MEGC2019 3-class rules. Keys are lower-case source emotion words.
EMOTION_TO_LABEL = {
    "casme2": {"repression": "negative", "disgust": "negative",
               "happiness": "positive", "surprise": "surprise"},
    "samm": {"anger": "negative", "contempt": "negative", "disgust": "negative",
             "fear": "negative", "sadness": "negative",
             "happiness": "positive", "surprise": "surprise"},
    "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
}


def map_emotion(source: str, emotion: str) -> str:
    """The 3-class label of a source emotion, or '' when MEGC2019 excludes it."""
    return EMOTION_TO_LABEL[source].get(str(emotion).strip().lower(), "")


_FRAME_NUMBER = re.compile(r"(\d+)$")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def frame_number(path: str | Path) -> int | None:
    """Frame number from a frame file name: 'img46.jpg', 'reg_img46.jpg' -> 46;
    '006_05562.jpg' -> 5562; 'image000123.bmp', 'reg_image000123.bmp' -> 123. None if absent."""
    m = _FRAME_NUMBER.search(Path(path).stem)
    return int(m.group(1)) if m else None


@dataclass
class ClipRecord:
    """One clip to be written by a format writer (tests' fixtures and SynthME).

    ``frames[i]`` is an RGB uint8 (H, W, 3) array whose frame number is
    ``first_frame + i``; onset/apex/offset are frame numbers in that numbering.
    ``frames`` may also be a callable returning that sequence, so writers can stream.
    """

    subject: str
    clip: str
    emotion: str
    frames: Sequence[np.ndarray] | Callable[[], Sequence[np.ndarray]]
    onset: int
    apex: int | None
    offset: int
    first_frame: int = 1
    action_units: str = ""
    extra: dict = field(default_factory=dict)
