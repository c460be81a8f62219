"""Real-format loaders: each format's quirks, exact counts, bad rows, discovery, frame reading,
and the MEGC2019 composite through the CLI. Fixtures are written by merlib.datasets.writers."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest

from merlib.cli import main as cli_main
from merlib.datasets import (DatasetNotFound, FrameReadError, build_index, frame_paths,
                             read_frames)
from fixture_datasets import tiny_frames, write_megc_fixture
from merlib.datasets.schema import INDEX_COLUMNS, STATUS_CODES, ClipRecord
from merlib.datasets.writers import write_casme2, write_samm, write_smic

ROOT = Path(__file__).resolve().parents[1]


def rows(index: pd.DataFrame) -> dict[str, dict]:
    return {r["clip"]: r for r in index.to_dict("records")}


def ok_counts(index: pd.DataFrame) -> dict[str, int]:
    return index[index.status == "ok"].label.value_counts().to_dict()


def clip(subject, name, emotion, n=3, first=1, onset=None, apex=2, offset=None, **kw):
    return ClipRecord(subject=subject, clip=name, emotion=emotion,
                      frames=tiny_frames(name, n), first_frame=first,
                      onset=first if onset is None else onset, apex=apex,
                      offset=first + n - 1 if offset is None else offset, **kw)


# --------------------------------------------------------------------------- CASME II

def test_casme2_fixture_counts_and_quirks(fixture_root):
    index = build_index("casme2", fixture_root("casme2"))
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == 11
    # fixtures.CASME2_CLIPS: 4 repression/disgust, 2 happiness, 1 surprise usable
    assert ok_counts(index) == {"negative": 4, "positive": 2, "surprise": 1}
    assert sorted(index[index.status == "excluded"]["clip"]) == ["EP01_11f", "EP01_2"]
    assert (index[index.status == "excluded"].label == "").all()
    assert set(index.subject) == {"sub01", "sub02", "sub03"}  # Subject is an int in the sheet
    assert set(index.status) <= set(STATUS_CODES)
    assert (index.fps == 200).all() and (index.dataset == "casme2").all()
    r = rows(index)
    # irregular names, taken literally
    assert {"EP01_2", "EP09f", "EP06_02_01"} <= set(r)
    assert r["EP09f"]["status"] == "ok" and pd.isna(r["EP09f"]["apex"])  # ApexFrame '/'
    assert r["EP09f"]["flags"] == "apex_missing"
    assert (r["EP02_01f"]["onset"], r["EP02_01f"]["apex"], r["EP02_01f"]["offset"]) == (46, 48, 50)
    assert r["EP02_01f"]["n_frames"] == 5 and r["EP02_01f"]["emotion"] == "happiness"
    assert Path(r["EP02_01f"]["frames_dir"]).parts[-3:] == ("CASME2_RAW_selected", "sub01",
                                                           "EP02_01f")
    assert str(index.onset.dtype) == "Int64" and str(index.apex.dtype) == "Int64"


def test_casme2_bad_rows_named(fixture_root):
    r = rows(build_index("casme2", fixture_root("casme2")))
    assert r["EP12_02f"]["status"] == "missing_folder"
    missing = r["EP12_02f"]["reason"]
    assert "sub03/EP12_02f" in missing and "does not exist" in missing
    assert r["EP12_02f"]["n_frames"] == 0
    assert r["EP13_01"]["status"] == "bad_annotation"
    assert "'abc'" in r["EP13_01"]["reason"] and "sub03/EP13_01" in r["EP13_01"]["reason"]
    assert pd.isna(r["EP13_01"]["onset"])


def test_casme2_revised_layout_and_cropped(tmp_path):
    clips = [clip("1", "EP02_01f", "Happiness", n=4, first=46, apex=47),
             clip("12", "EP06_02_01", "disgust", apex=None)]
    write_casme2(tmp_path / "CASME2", clips, cropped=True, sheet_layout="revised",
                 sheet_name="CASME2-coding-20160101.xlsx")
    sheet = openpyxl.load_workbook(tmp_path / "CASME2" / "CASME2-coding-20160101.xlsx").active
    assert [c.value for c in sheet[1]][:3] == ["Subject", "Filename", "Onset Frame"]
    r = rows(build_index("casme2", tmp_path))
    assert (r["EP02_01f"]["subject"], r["EP06_02_01"]["subject"]) == ("sub01", "sub12")
    assert (r["EP02_01f"]["onset"], r["EP02_01f"]["apex"], r["EP02_01f"]["offset"]) == (46, 47, 49)
    assert r["EP02_01f"]["emotion"] == "happiness"  # lower-cased
    assert r["EP06_02_01"]["flags"] == "apex_missing" and r["EP06_02_01"]["status"] == "ok"
    assert "Cropped" in r["EP02_01f"]["frames_dir"]
    assert sorted(p.name for p in frame_paths(r["EP02_01f"]["frames_dir"]).values()) == \
        ["reg_img46.jpg", "reg_img47.jpg", "reg_img48.jpg", "reg_img49.jpg"]


def test_casme2_header_spellings_normalised(tmp_path):
    write_casme2(tmp_path, [clip("3", "EP01_01", "repression")])  # frames only; sheet replaced
    (tmp_path / "CASME2-coding-20140508.xlsx").unlink()
    pd.DataFrame({"subject": [3], "File_name": ["EP01_01"], "onset_frame": ["1"],
                  "Apex frame": [2.0], "OFFSET FRAME": [3], "Estimated_Emotion": ["Repression"]}
                 ).to_excel(tmp_path / "CASME2-coding-2019.xlsx", index=False)
    r = rows(build_index("casme2", tmp_path))["EP01_01"]
    assert (r["subject"], r["onset"], r["apex"], r["offset"], r["label"], r["status"]) == \
        ("sub03", 1, 2, 3, "negative", "ok")


def test_casme2_latest_sheet_revision_and_raw_preferred(tmp_path):
    write_casme2(tmp_path, [clip("1", "EP01_01", "disgust")],
                 sheet_name="CASME2-coding-20140508.xlsx")
    write_casme2(tmp_path, [clip("1", "EP01_01", "happiness")], cropped=True,
                 sheet_name="CASME2-coding-20170101.xlsx")
    r = rows(build_index("casme2", tmp_path))["EP01_01"]
    assert r["emotion"] == "happiness"  # the later revision's sheet
    assert "CASME2_RAW_selected" in r["frames_dir"]  # raw frames preferred over Cropped


def test_frames_out_of_range(tmp_path):
    write_casme2(tmp_path, [clip("1", "EP01_01", "disgust", n=3, first=5, onset=1, offset=7)])
    r = rows(build_index("casme2", tmp_path))["EP01_01"]
    assert r["status"] == "frames_out_of_range"
    assert "onset 1 " in r["reason"] and "offset 7" not in r["reason"] and "5..7" in r["reason"]
    assert "sub01/EP01_01" in r["reason"] and r["n_frames"] == 3


def test_malformed_sheet_names_sheet_and_columns(tmp_path):
    write_casme2(tmp_path, [clip("1", "EP01_01", "disgust")])
    sheet = tmp_path / "CASME2-coding-20140508.xlsx"
    pd.DataFrame({"Subject": [1], "Filename": ["EP01_01"], "OnsetFrame": [1]}).to_excel(
        sheet, index=False)
    with pytest.raises(ValueError) as err:
        build_index("casme2", tmp_path)
    msg = str(err.value)
    assert str(sheet) in msg
    assert "apex" in msg and "offset" in msg and "emotion" in msg and "onset (" not in msg
    pd.DataFrame({"a": [1], "b": [2]}).to_excel(sheet, index=False)  # no header row at all
    with pytest.raises(ValueError, match="no header row"):
        build_index("casme2", tmp_path)
    sheet.write_bytes(b"PK\x03\x04 truncated")  # not a readable workbook
    with pytest.raises(ValueError, match="cannot be read as .xlsx") as err:
        build_index("casme2", tmp_path)
    assert str(sheet) in str(err.value)


# --------------------------------------------------------------------------- SAMM

def test_samm_fixture_counts_and_quirks(fixture_root):
    index = build_index("samm", fixture_root("samm"))
    assert list(index.columns) == INDEX_COLUMNS and len(index) == 8
    # fixtures.SAMM_CLIPS: anger, contempt, anger (apex outside) / happiness / surprise
    assert ok_counts(index) == {"negative": 3, "positive": 1, "surprise": 1}
    r = rows(index)
    assert set(index.subject) == {"006", "007", "028"}  # sheet holds ints 6, 7, 28
    assert r["006_1_4"]["status"] == "excluded" and r["006_1_4"]["emotion"] == "other"
    out = r["028_4_1"]
    assert out["status"] == "ok" and out["flags"] == "apex_outside"
    assert "outside" in out["reason"] and "028/028_4_1" in out["reason"]
    assert (out["onset"], out["apex"], out["offset"]) == (100, 110, 103)
    assert r["028_4_2"]["status"] == "bad_annotation" and "'1a'" in r["028_4_2"]["reason"]
    assert r["028_5_1"]["status"] == "missing_folder"
    first = r["006_1_2"]
    assert (first["onset"], first["offset"], first["n_frames"]) == (5562, 5565, 4)
    assert (index.fps == 200).all()


def test_samm_header_row_14_and_elsewhere(fixture_root, tmp_path):
    src = fixture_root("samm") / "SAMM_Micro_FACS_Codes_v2.xlsx"
    ws = openpyxl.load_workbook(src).active
    assert ws.cell(14, 2).value == "Filename" and ws.cell(14, 4).value == "Onset Frame"
    root = tmp_path / "moved"
    shutil.copytree(fixture_root("samm"), root)
    wb = openpyxl.load_workbook(root / "SAMM_Micro_FACS_Codes_v2.xlsx")
    wb.active.delete_rows(3, 9)  # the header now sits on row 5
    wb.save(root / "SAMM_Micro_FACS_Codes_v2.xlsx")
    moved = build_index("samm", root)
    original = build_index("samm", fixture_root("samm"))
    cols = ["subject", "clip", "emotion", "label", "onset", "apex", "offset", "status"]
    pd.testing.assert_frame_equal(moved[cols], original[cols])


@pytest.mark.parametrize("pad,name", [(4, "006_5562.jpg"), (5, "006_05562.jpg")])
def test_samm_frame_padding(tmp_path, pad, name):
    write_samm(tmp_path, [clip(6, "006_1_2", "Sadness", n=3, first=5562, apex=5563)], pad=pad)
    r = rows(build_index("samm", tmp_path))["006_1_2"]
    assert (r["onset"], r["apex"], r["offset"], r["n_frames"], r["status"]) == \
        (5562, 5563, 5564, 3, "ok")
    assert frame_paths(r["frames_dir"])[5562].name == name


# --------------------------------------------------------------------------- SMIC

def test_smic_fixture_counts_and_quirks(fixture_root):
    index = build_index("smic", fixture_root("smic"))
    assert list(index.columns) == INDEX_COLUMNS and len(index) == 9
    assert ok_counts(index) == {"negative": 3, "positive": 3, "surprise": 1}
    assert index.apex.isna().all() and (index.fps == 100).all()
    r = rows(index)
    assert set(index.subject) == {"s01", "s02", "s03"}
    assert (r["s01_ne_01"]["onset"], r["s01_ne_01"]["offset"]) == (1000, 1003)
    assert r["s03_ne_01"]["status"] == "no_frames" and "s03/s03_ne_01" in r["s03_ne_01"]["reason"]
    assert r["s03_sur_01"]["status"] == "bad_frame_names"
    assert "image.bmp" in r["s03_sur_01"]["reason"]


@pytest.mark.parametrize("style", ["s1", "s01"])
def test_smic_subject_spelling_and_label_from_folder(tmp_path, style):
    clips = [clip("s3", "s03_ne_02", "positive", n=2, first=46210),  # folder says positive
             clip("s14", "s14_sur_01", "surprise", n=3, first=7)]
    write_smic(tmp_path, clips, subject_style=style, cropped=style == "s01")
    assert (tmp_path / "HS" / ("s3" if style == "s1" else "s03") / "micro" / "positive").is_dir()
    r = rows(build_index("smic", tmp_path))
    assert set(r) == {"s03_ne_02", "s14_sur_01"}
    assert r["s03_ne_02"]["subject"] == "s03" and r["s03_ne_02"]["label"] == "positive"
    assert (r["s03_ne_02"]["onset"], r["s03_ne_02"]["offset"]) == (46210, 46211)
    assert pd.isna(r["s14_sur_01"]["apex"]) and r["s14_sur_01"]["flags"] == "apex_missing"


# --------------------------------------------------------------------------- MEGC

def test_megc_composite_via_cli(fixture_root, tmp_path):
    out = tmp_path / "megc.csv"
    proc = subprocess.run([sys.executable, "-m", "merlib", "index", "--dataset", "megc",
                           "--data-root", str(fixture_root("megc")), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    index = pd.read_csv(out, dtype={"subject": str}, keep_default_na=False)
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == 442 and index.subject.nunique() == 68
    assert (index.status == "ok").all() and (index.dataset == "megc").all()
    assert index.label.value_counts().to_dict() == \
        {"negative": 250, "positive": 109, "surprise": 83}
    by_source = index.groupby("source").label.value_counts().unstack()
    assert by_source.loc["casme2"].tolist() == [88, 32, 25]
    assert by_source.loc["samm"].tolist() == [92, 26, 15]
    assert by_source.loc["smic"].tolist() == [70, 51, 43]
    assert "442 rows, 442 usable (negative 250, positive 109, surprise 83)" in proc.stderr


def test_megc_sources_keep_their_excluded_clips(fixture_root):
    casme2 = build_index("casme2", fixture_root("megc"))
    samm = build_index("samm", fixture_root("megc"))
    assert (casme2.status == "excluded").sum() == 3 and len(casme2) == 148
    assert (samm.status == "excluded").sum() == 2 and len(samm) == 135
    assert set(samm[samm.status == "excluded"].emotion) == {"other"}


def test_megc_missing_source_and_clip(tmp_path):
    root = write_megc_fixture(tmp_path)
    shutil.rmtree(root / "samm")
    sheet = root / "casme2" / "CASME2-coding-20140508.xlsx"
    wb = openpyxl.load_workbook(sheet)
    ws = wb.active
    by_name = {(ws.cell(i, 1).value, ws.cell(i, 2).value): i for i in range(2, ws.max_row + 1)}
    ws.cell(by_name[9, "EP09f"], 9).value = "others"  # the list says sub09/EP09f is positive
    ws.delete_rows(by_name[1, "EP02_01f"])  # listed sub01/EP02_01f gone from the sheet
    wb.save(sheet)
    index = build_index("megc", root)
    assert len(index) == 442
    samm = index[index.source == "samm"]
    assert len(samm) == 133 and (samm.status == "not_in_source").all()
    assert samm.reason.str.contains("SAMM_Micro_FACS_Codes").all()
    assert (samm.label != "").all()
    gone = index[(index.subject == "sub01") & (index["clip"] == "EP02_01f")].iloc[0]
    assert gone.status == "not_in_source" and "no such clip in the casme2 index" in gone.reason
    relabelled = index[index["clip"] == "EP09f"].iloc[0]
    assert (relabelled.status, relabelled.label, relabelled.emotion) == ("ok", "positive", "others")
    assert "MEGC2019 label 'positive' used" in relabelled.reason
    assert (index[index.source == "smic"].status == "ok").all()


# --------------------------------------------------------------------------- discovery

@pytest.mark.parametrize("dataset,patterns", [
    ("casme2", ["CASME2-coding-*.xlsx", "CASME2_RAW_selected", "Cropped"]),
    ("samm", ["SAMM_Micro_FACS_Codes*.xlsx", "NNN subject folders"]),
    ("smic", ["HS", "s<N>/micro/{negative,positive,surprise}"]),
    ("megc", ["CASME2-coding-*.xlsx", "SAMM_Micro_FACS_Codes*.xlsx", "HS"]),
])
def test_discovery_failure_names_what_it_looked_for(tmp_path, capsys, dataset, patterns):
    (tmp_path / "unrelated" / "folder").mkdir(parents=True)
    with pytest.raises(DatasetNotFound) as err:
        build_index(dataset, tmp_path)
    for text in patterns + [str(tmp_path)]:
        assert text in str(err.value)
    assert cli_main(["index", "--dataset", dataset, "--data-root", str(tmp_path)]) == 2
    stderr = capsys.readouterr().err
    assert all(text in stderr for text in patterns)


def test_discovery_depth_bound(fixture_root, tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    shutil.copytree(fixture_root("samm"), deep)  # SAMM/ at depth 4: found
    assert len(build_index("samm", tmp_path)) == 8
    deeper = tmp_path / "x" / "y" / "z" / "w" / "v" / "u"  # sheet and SAMM/ at depth 5
    shutil.copytree(fixture_root("samm"), deeper)
    with pytest.raises(DatasetNotFound):
        build_index("samm", tmp_path / "x")


def test_missing_data_root():
    with pytest.raises(DatasetNotFound, match="not a folder"):
        build_index("casme2", "/nonexistent/merlib/data")


# --------------------------------------------------------------------------- frames

def test_read_frames_shapes_and_values(fixture_root):
    r = rows(build_index("smic", fixture_root("smic")))["s01_ne_01"]
    frames = read_frames(r["frames_dir"], range(r["onset"], r["offset"] + 1))
    assert frames.shape == (4, 24, 32, 3) and frames.dtype == np.uint8
    expected = np.stack(list(tiny_frames("s1_ne_01", 4)()))  # BMP is lossless
    np.testing.assert_array_equal(frames, expected)
    casme2 = rows(build_index("casme2", fixture_root("casme2")))
    jpeg = read_frames(casme2["EP02_01f"]["frames_dir"], [46, 50])
    truth = np.stack(list(tiny_frames("EP02_01f", 5)()))[[0, 4]]
    assert jpeg.shape == (2, 24, 32, 3)
    assert np.abs(jpeg.astype(int) - truth.astype(int)).mean() < 12  # JPEG q95 of noise


def test_frame_paths_sorted_and_bad_names(fixture_root):
    paths = frame_paths(rows(build_index("samm", fixture_root("samm")))["006_1_2"]["frames_dir"])
    assert list(paths) == [5562, 5563, 5564, 5565]
    bad = rows(build_index("smic", fixture_root("smic")))["s03_sur_01"]["frames_dir"]
    with pytest.raises(ValueError, match="image.bmp"):
        frame_paths(bad)


def test_truncated_jpeg_names_the_file(fixture_root, tmp_path):
    src = Path(rows(build_index("casme2", fixture_root("casme2")))["EP19_05f"]["frames_dir"])
    clip_dir = tmp_path / "EP19_05f"
    shutil.copytree(src, clip_dir)
    victim = clip_dir / "img3.jpg"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert read_frames(clip_dir, [1, 2]).shape == (2, 24, 32, 3)
    with pytest.raises(FrameReadError) as err:
        read_frames(clip_dir, [1, 2, 3])
    assert str(victim) in str(err.value)
    (clip_dir / "img4.jpg").write_bytes(b"not an image")
    with pytest.raises(FrameReadError, match="img4.jpg"):
        read_frames(clip_dir, [4])
    with pytest.raises(FrameReadError, match="frame 9 is not in"):
        read_frames(clip_dir, [9])


def test_truncated_frame_fails_even_after_face_recognition_is_imported(tmp_path):
    # face_recognition's import sets PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True process-wide
    import face_recognition  # noqa: F401
    import numpy as np
    from PIL import Image, ImageFile

    from merlib.datasets import FrameReadError, read_frame

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    path = tmp_path / "img1.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(FrameReadError, match="img1.jpg"):
        read_frame(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored
    ImageFile.LOAD_TRUNCATED_IMAGES = False
