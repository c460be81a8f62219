"""The paper's reported numbers, as data, for side-by-side views.

These values are transcribed from the paper (CMC 2023, Tables 1-6) into CSV files under
``merlib/data/paper/``, with ``literature_megc.csv``: other methods' numbers on the MEGC2019
composite as their own papers report them. They are never used as results. Anything merlib shows
as *ours* is computed.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

from merlib.registry import CLASSES



def _read(name: str) -> pd.DataFrame:
    with resources.files("merlib.data.paper").joinpath(name).open("r") as fh:
        return pd.read_csv(fh, keep_default_na=False, na_values=[""])


@lru_cache(maxsize=None)
def _division() -> pd.DataFrame:
    return _read("division.csv")


def division(dataset: str) -> pd.DataFrame:
    """Paper Tables 1-3 (casme2, samm, smic): label, count, emotions."""
    df = _division()
    out = df[(df["dataset"] == dataset) & (df["table"] < 4)]
    if out.empty:
        raise KeyError(f"the paper has no division table for {dataset!r}")
    return out[["table", "label", "count", "emotions"]].reset_index(drop=True)


def megc_division() -> pd.DataFrame:
    """Paper Table 4 as a wide table: rows casme2/samm/smic/Fused, columns classes and Total."""
    df = _division()
    t4 = df[df["table"] == 4].rename(columns={"emotions": "source"})
    wide = t4.pivot(index="source", columns="label", values="count").reindex(
        index=["casme2", "samm", "smic"], columns=list(CLASSES))
    wide.loc["fused"] = wide.sum()
    wide["total"] = wide.sum(axis=1)
    wide.index.name = "source"
    wide.columns.name = None
    return wide.astype(int)


def table5() -> pd.DataFrame:
    """Paper Table 5 in long form: variant, blocks, dataset, metric, value."""
    return _read("table5.csv")


def table6() -> pd.DataFrame:
    """Paper Table 6 in long form: method, ref, dataset, metric, value (NaN where '—')."""
    return _read("table6.csv")


def literature_megc() -> pd.DataFrame:
    """UF1 and UAR that other papers report on the MEGC2019 composite (all 442 clips, LOSO),
    with the input each method used, who reported it (its authors, or a rerun) and the source:
    method, uf1, uar, input, origin, source. A method may have several rows."""
    return _read("literature_megc.csv")
