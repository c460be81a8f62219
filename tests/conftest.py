"""Shared fixtures. Dataset fixtures are written once per session with the format writers
(tiny 32x24 frames); tests that change files copy them first."""
from __future__ import annotations

import pytest

from fixture_datasets import write_fixture_dataset


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    """A callable: layout (casme2 | samm | smic | megc) -> a read-only fixture dataset root."""
    roots = {}

    def get(layout: str):
        if layout not in roots:
            roots[layout] = write_fixture_dataset(tmp_path_factory.mktemp(layout), layout)
        return roots[layout]

    return get


@pytest.fixture(scope="session")
def face_crops():
    """224x224 face crops of the bundled grace_hopper photograph, like the public MEGC2019
    release's apex frames: 'tight' (brow line to below the mouth, cheeks cut; the HOG detector
    misses it) and 'loose' (the whole face with a margin; the detector finds it)."""
    import cv2
    import numpy as np

    from merlib.faces import photograph

    photo = photograph("grace_hopper")

    def crop(top, bottom, left, right):
        return cv2.resize(np.ascontiguousarray(photo[top:bottom, left:right]), (224, 224),
                          interpolation=cv2.INTER_AREA)

    return {"tight": crop(178, 324, 195, 337), "loose": crop(120, 360, 160, 380)}
