"""Format writers: the real layout on disk, round trips through the loaders, determinism and
streaming."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest

from merlib.datasets import build_index, read_frames
from fixture_datasets import tiny_frames
from merlib.datasets.schema import ClipRecord, map_emotion
from merlib.datasets.writers import write_casme2, write_samm, write_smic


def records(source: str) -> list[ClipRecord]:
    """A handful of clips per source with varied numbering; SMIC has no apex."""
    if source == "casme2":
        spec = [("1", "EP02_01f", "happiness", 46, 5, 48),
                ("sub02", "EP09f", "repression", 1, 3, None),
                ("15", "EP06_02_01", "surprise", 120, 4, 121),
                ("15", "EP01_2", "others", 3, 2, 3)]
    elif source == "samm":
        spec = [("006", "006_1_2", "Anger", 5562, 4, 5564),
                ("7", "007_3_1", "Happiness", 90, 3, 91),
                ("28", "028_4_1", "Surprise", 10001, 3, 10002),
                ("28", "028_5_1", "Other", 1, 2, 2)]
    else:
        spec = [("s1", "s01_ne_01", "negative", 46210, 3, None),
                ("s01", "s01_po_02", "positive", 7, 2, None),
                ("s12", "s12_sur_01", "surprise", 1, 4, None)]
    return [ClipRecord(subject=s, clip=c, emotion=e, frames=tiny_frames(c, n), onset=first,
                       apex=apex, offset=first + n - 1, first_frame=first, action_units="AU12")
            for s, c, e, first, n, apex in spec]


WRITERS = {"casme2": write_casme2, "samm": write_samm, "smic": write_smic}


def write(source: str, root: Path, recs, **kw) -> Path:
    return WRITERS[source](root, recs, **kw)


@pytest.mark.parametrize("source,kw", [
    ("casme2", {}), ("casme2", {"sheet_layout": "revised", "cropped": True}),
    ("samm", {"pad": 4}), ("samm", {"pad": 5}),
    ("smic", {"subject_style": "s1"}), ("smic", {"subject_style": "s01", "cropped": True}),
])
def test_round_trip(tmp_path, source, kw):
    recs = records(source)
    index = build_index(source, write(source, tmp_path, recs, **kw))
    assert len(index) == len(recs)
    got = {r["clip"]: r for r in index.to_dict("records")}
    for rec in recs:
        row = got[rec.clip]
        n = len(list(rec.frames()))
        assert (row["onset"], row["offset"], row["n_frames"]) == (rec.onset, rec.offset, n)
        assert (None if pd.isna(row["apex"]) else row["apex"]) == rec.apex
        assert row["emotion"] == rec.emotion.lower()
        assert row["label"] == map_emotion(source, rec.emotion)
        assert row["status"] == ("ok" if row["label"] else "excluded")
        frames = read_frames(row["frames_dir"], range(rec.onset, rec.offset + 1))
        truth = np.stack(list(rec.frames()))
        tolerance = 0 if source == "smic" else 4  # BMP lossless, JPEG q95 of a smooth pattern
        assert np.abs(frames.astype(int) - truth.astype(int)).mean() <= tolerance


def test_casme2_sheet_cells(tmp_path):
    write_casme2(tmp_path, records("casme2"))
    ws = openpyxl.load_workbook(tmp_path / "CASME2-coding-20140508.xlsx").active
    assert [c.value for c in ws[1]] == ["Subject", "Filename", None, "OnsetFrame", "ApexFrame",
                                        "OffsetFrame", None, "Action Units", "Estimated Emotion"]
    second = [c.value for c in ws[3]]
    assert second[:2] == [2, "EP09f"] and isinstance(second[0], int)  # Subject as an integer
    assert second[4] == "/"  # apex None
    assert (tmp_path / "CASME2_RAW_selected" / "sub15" / "EP06_02_01" / "img120.jpg").is_file()
    write_casme2(tmp_path / "rev", records("casme2"), sheet_layout="revised")
    ws = openpyxl.load_workbook(tmp_path / "rev" / "CASME2-coding-20140508.xlsx").active
    assert [c.value for c in ws[1]] == ["Subject", "Filename", "Onset Frame", "Apex Frame",
                                        "Offset Frame", "Action Units", "Estimated Emotion"]


def test_samm_sheet_title_block_and_header_row(tmp_path):
    write_samm(tmp_path, records("samm"))
    ws = openpyxl.load_workbook(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx").active
    assert [c.value for c in ws[14]] == [
        "Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
        "Duration", "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"]
    assert ws.cell(1, 1).value and all(ws.cell(r, 2).value is None for r in range(1, 14))
    assert [ws.cell(15, c).value for c in (1, 2, 4, 5, 6, 7)] == [6, "006_1_2", 5562, 5564, 5565, 4]
    assert (tmp_path / "SAMM" / "028" / "028_4_1" / "028_10001.jpg").is_file()


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("source", ["casme2", "samm", "smic"])
def test_deterministic_bytes(tmp_path, source):
    a = _digest(write(source, tmp_path / "a", records(source)))
    b = _digest(write(source, tmp_path / "b", records(source)))
    assert a == b and len(a) > 5
    for sheet in (tmp_path / "a").glob("*.xlsx"):
        with zipfile.ZipFile(sheet) as z:
            assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
            core = z.read("docProps/core.xml").decode()
        assert core.count("2000-01-01T00:00:00Z") == 2  # created and modified


def test_frames_streamed_from_callable(tmp_path):
    calls, produced = [], []

    def frames():
        calls.append(1)
        for i in range(3):
            produced.append(i)
            yield np.full((24, 32, 3), 40 * i, np.uint8)

    record = ClipRecord("s2", "s02_ne_01", "negative", frames, 0, None, 2, first_frame=0)
    write_smic(tmp_path, [record])
    assert calls == [1] and produced == [0, 1, 2]
    folder = tmp_path / "HS" / "s2" / "micro" / "negative" / "s2_ne_01"
    assert sorted(p.name for p in folder.iterdir()) == \
        ["image000000.bmp", "image000001.bmp", "image000002.bmp"]


def test_bad_frame_array_rejected(tmp_path):
    bad = ClipRecord("1", "EP01_01", "disgust", [np.zeros((24, 32), np.float32)], 1, 1, 1)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        write_casme2(tmp_path, [bad])
    with pytest.raises(ValueError, match="sheet_layout"):
        write_casme2(tmp_path, [], sheet_layout="2099")
