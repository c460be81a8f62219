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
