"""The public MEGC2019 release (HTNet's derived data): the loader on small look-alike releases
written here (the release's naming quirks, bad files, labels against the official list), its
flow images, and its single-frame clips through preprocessing with the face routes.

No test reads the real release: the images are synthetic or crops of a bundled photograph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from merlib.datasets import DatasetNotFound, read_frame
from merlib.datasets.megc_public import (CSV_NAME, EXTRA_COLUMNS, FlowReadError, build_index,
                                         preprocess_config, read_flow)
from merlib.datasets.schema import INDEX_COLUMNS, STATUS_CODES
from merlib.datasets.writers import write_megc_public

LISTED = 442


def noise(seed: int, shape=(32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def sample(dataset, sub, filename_o, label, seed, **kw) -> dict:
    return {"dataset": dataset, "sub": sub, "filename_o": filename_o, "label": label,
            "image": noise(seed), "flow": noise(seed + 100, (28, 28, 3)), **kw}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def by_clip(index: pd.DataFrame) -> dict[str, dict]:
    return {f"{r['subject']}/{r['clip']}": r for r in index.to_dict("records")}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A release of 9 samples, 8 listed in the official list, in HTNet's layout, with its quirks
    and one bad file of each kind."""
    root = tmp_path_factory.mktemp("release") / "HTNet"
    write_megc_public(root, [
        sample("casme2", "sub01", "EP02_01f", 1, 0),
        sample("casme2", "sub01", "EP19_05f", 0, 1, image=None),         # missing image
        sample("casme2", "sub01", "EP19_06f", 0, 2),                     # truncated image
        sample("samm", "006", "006_1_2", 0, 3),
        sample("samm", "006", "006_1_3", 1, 4),                          # truncated flow
        sample("smic", "s01", "s01_ne_01", 0, 5),                        # s01_s1_ne_01.jpg
        sample("smic", "s01", "s01_ne_02", 2, 6),                        # listed as negative
        sample("smic", "s01", "s01_ne_03", 0, 7, flow=None),             # missing flow
        sample("casme2", "sub99", "EP99_99", 0, 8),                      # not in the list
    ])
    images = root / "datasets" / "combined_datasets_whole"
    truncate(images / "sub01_EP19_06f.jpg")
    truncate(root / "datasets" / "STSNet_whole_norm_u_v_os" / "006_006_1_3 .png")
    return root


# --------------------------------------------------------------------------- loader

def test_index_columns_spellings_and_single_frames(release):
    index = build_index(release.parent)  # found one folder below the data root
    assert list(index.columns) == INDEX_COLUMNS + EXTRA_COLUMNS
    assert len(index) == LISTED + 1
    assert set(index["status"]) <= set(STATUS_CODES)
    assert (index["dataset"] == "megc-public").all()
    r = by_clip(index)
    assert {"sub01/EP02_01f", "006/006_1_2", "s01/s01_ne_01"} <= set(r)
    for name, source, fps in (("sub01/EP02_01f", "casme2", 200), ("006/006_1_2", "samm", 200),
                              ("s01/s01_ne_01", "smic", 100)):
        row = r[name]
        assert row["status"] == "ok", row["reason"]
        assert (row["source"], row["fps"], row["n_frames"]) == (source, fps, 1)
        assert (row["onset"], row["apex"], row["offset"]) == (1, 1, 1)  # one frame, the apex
        assert row["precropped"] is True or row["precropped"] == np.True_
        assert Path(row["frame_file"]).parent == Path(row["frames_dir"])
        assert Path(row["frame_file"]).is_file() and Path(row["flow_file"]).is_file()
    assert Path(r["s01/s01_ne_01"]["frame_file"]).name == "s01_s1_ne_01.jpg"
    assert Path(r["s01/s01_ne_01"]["flow_file"]).name == "s01_s01_ne_01 .png"
    assert Path(r["006/006_1_2"]["flow_file"]).name == "006_006_1_2 .png"
    assert r["sub01/EP02_01f"]["label"] == "positive" and r["006/006_1_2"]["label"] == "negative"
    assert str(index["onset"].dtype) == "Int64" and index["precropped"].dtype == bool


def test_bad_files_are_named_rows_and_the_rest_goes_on(release):
    r = by_clip(build_index(release))
    missing, trunc = r["sub01/EP19_05f"], r["sub01/EP19_06f"]
    assert missing["status"] == "missing_file" and missing["n_frames"] == 0
    assert "sub01/EP19_05f" in missing["reason"] and "sub01_EP19_05f.jpg" in missing["reason"]
    assert trunc["status"] == "unreadable_file"
    assert "sub01/EP19_06f" in trunc["reason"] and "sub01_EP19_06f.jpg" in trunc["reason"]
    flow = r["006/006_1_3"]
    assert flow["status"] == "unreadable_file" and flow["n_frames"] == 1  # the image is fine
    assert "006/006_1_3" in flow["reason"] and "006_006_1_3 .png" in flow["reason"]
    no_flow = r["s01/s01_ne_03"]
    assert no_flow["status"] == "missing_file" and "s01_s01_ne_03 .png" in no_flow["reason"]
    assert no_flow["flow_file"] == "" and no_flow["frame_file"]
    assert r["sub01/EP02_01f"]["status"] == r["006/006_1_2"]["status"] == "ok"


def test_labels_are_checked_against_the_official_list(release):
    index = build_index(release)
    r = by_clip(index)
    disagree = r["s01/s01_ne_02"]
    assert disagree["status"] == "ok" and disagree["flags"] == "label_disagrees"
    assert disagree["label"] == "negative" and disagree["emotion"] == "surprise"
    assert "'negative'" in disagree["reason"] and "'2'" in disagree["reason"]
    unlisted = r["sub99/EP99_99"]
    assert unlisted["status"] == "not_in_list" and unlisted["label"] == ""
    assert "sub99/EP99_99" in unlisted["reason"] and CSV_NAME in unlisted["reason"]
    assert index.iloc[-1]["clip"] == "EP99_99"  # after the 442 listed rows, in list order
    absent = index[index["status"] == "not_in_source"]
    assert len(absent) == LISTED - 8
    assert absent["reason"].str.contains("listed by MEGC2019 as").all()
    assert (absent["frame_file"] == "").all()


def test_other_spellings_of_subjects_clips_and_files(tmp_path):
    """A release written with unpadded subjects, SMIC's short clip names and flow files without
    the space still reads under the official list's spellings."""
    write_megc_public(tmp_path, [
        sample("samm", "6", "6_1_2", 0, 0, flow_name="006_006_1_2.png"),
        sample("smic", "s1", "s1_ne_01", 0, 1, flow_name="s01_s1_ne_01 .png"),
        sample("casme2", "1", "EP02_01f", 1, 2, flow_name="sub01_EP02_01f.png"),
    ])
    images = tmp_path / "datasets" / "combined_datasets_whole"
    # the CSV says s1_s1_ne_01.jpg; the file is under the list's spelling
    (images / "s1_s1_ne_01.jpg").rename(images / "s01_s01_ne_01.jpg")
    r = by_clip(build_index(tmp_path))
    for name in ("006/006_1_2", "s01/s01_ne_01", "sub01/EP02_01f"):
        assert r[name]["status"] == "ok", r[name]["reason"]
    assert Path(r["sub01/EP02_01f"]["frame_file"]).name == "1_EP02_01f.jpg"  # the CSV's name
    assert Path(r["s01/s01_ne_01"]["frame_file"]).name == "s01_s01_ne_01.jpg"
    assert Path(r["s01/s01_ne_01"]["flow_file"]).name == "s01_s1_ne_01 .png"
    assert Path(r["006/006_1_2"]["flow_file"]).name == "006_006_1_2.png"
    assert Path(r["sub01/EP02_01f"]["flow_file"]).name == "sub01_EP02_01f.png"


def test_a_sample_listed_twice_is_flagged_once(tmp_path):
    write_megc_public(tmp_path, [sample("casme2", "sub01", "EP02_01f", 1, 0),
                                 sample("casme2", "sub01", "EP02_01f", 0, 1)])
    index = build_index(tmp_path)
    rows = index[(index["subject"] == "sub01") & (index["clip"] == "EP02_01f")]
    assert len(index) == LISTED and len(rows) == 1 and rows.iloc[0]["flags"] == "duplicate_in_release"
    assert "line(s) 3" in rows.iloc[0]["reason"] and rows.iloc[0]["emotion"] == "positive"


def test_no_release_names_what_it_looked_for(tmp_path):
    with pytest.raises(DatasetNotFound, match=CSV_NAME):
        build_index(tmp_path)


# --------------------------------------------------------------------------- flow images

def test_flow_png_reads_as_three_channels_as_stored(tmp_path):
    u, v, strain = (np.full((28, 28), k, np.uint8) for k in (10, 200, 3))
    u[0, 1] = 255
    path = tmp_path / "sub01_EP02_01f .png"  # the release's space before .png
    Image.fromarray(np.dstack([u, v, strain])).save(path)
    flow = read_flow(path, clip="sub01/EP02_01f")
    assert flow.shape == (3, 28, 28) and flow.dtype == np.float32
    np.testing.assert_array_equal(flow, np.stack([u, v, strain]).astype(np.float32))


def test_bad_flow_files_name_the_clip_and_the_file(tmp_path):
    path = tmp_path / "s01_s01_ne_01 .png"
    Image.fromarray(noise(0, (28, 28, 3))).save(path)
    truncate(path)
    with pytest.raises(FlowReadError, match=r"s01/s01_ne_01: .*s01_s01_ne_01 \.png"):
        read_flow(path, clip="s01/s01_ne_01")
    with pytest.raises(FlowReadError, match="s01/s01_ne_02: .*no_such .png"):
        read_flow(tmp_path / "no_such .png", clip="s01/s01_ne_02")
    small = tmp_path / "small.png"
    Image.fromarray(noise(1, (14, 28, 3))).save(small)
    with pytest.raises(FlowReadError, match="28x14 RGB; expected 28x28"):
        read_flow(small, clip="x/y")
    grey = tmp_path / "grey.png"
    Image.fromarray(noise(2, (28, 28, 3))[..., 0]).save(grey)
    with pytest.raises(FlowReadError, match="28x28 L; expected"):
        read_flow(grey, clip="x/y")


# --------------------------------------------------------------------------- preprocessing

@pytest.fixture(scope="module")
def face_release(tmp_path_factory, face_crops):
    """Three samples whose apex images are face crops: one the detector finds, one it misses
    (the padded route finds it), and a blank frame."""
    root = tmp_path_factory.mktemp("faces")
    write_megc_public(root, [
        sample("casme2", "sub01", "EP02_01f", 1, 0, image=face_crops["loose"]),
        sample("samm", "006", "006_1_2", 0, 1, image=face_crops["tight"]),
        sample("smic", "s01", "s01_ne_01", 0, 2, image=np.full((224, 224, 3), 128, np.uint8)),
    ])
    index = build_index(root)
    return index[index["status"] == "ok"].reset_index(drop=True)


def _row(index: pd.DataFrame, clip: str) -> dict:
    return {k: (None if v is pd.NA else v)
            for k, v in index[index["clip"] == clip].iloc[0].to_dict().items()}


def test_a_single_frame_clip_is_its_apex_aligned_with_blocks(face_release):
    from merlib.preprocess import align
    from merlib.preprocess.recipe import process_clip

    row = _row(face_release, "EP02_01f")
    out = process_clip(row, preprocess_config())
    z, rec = out["arrays"], out["record"]
    assert z["frames"].shape == (1, 224, 224, 3)
    assert z["landmarks"].shape == (1, 72, 2) and z["ip24"].shape == (1, 24, 2)
    assert z["ip10"].shape == (1, 10, 2) and z["side10"].shape == (1, 10)
    for key in ("landmarks", "ip10"):
        assert np.all((z[key] >= 0) & (z[key] < 224)), key
    assert list(z["frame_numbers"]) == [1]
    assert (rec["onset"], rec["apex_used"], rec["offset"]) == (1, 1, 1)
    assert rec["apex_source"] == "annotated" and rec["apex_abs_err"] == 0
    assert (rec["n_frames_span"], rec["n_frames_tim"]) == (1, 1)
    assert rec["face_route"] == "detector" and rec["face_rejected"] == ""
    # TIM of one frame is the frame itself: the output is the apex image, aligned
    maps = align.alignment_map(z["landmarks68_source"].astype(np.float64))
    np.testing.assert_array_equal(z["frames"],
                                  align.apply_alignment(read_frame(row["frame_file"])[None], maps))


def test_a_single_frame_clip_refuses_a_multi_frame_config(face_release):
    from merlib.preprocess.recipe import ClipFailed, PreprocessConfig, process_clip

    row = _row(face_release, "EP02_01f")
    for cfg in (PreprocessConfig(), PreprocessConfig(min_frames=1)):
        with pytest.raises(ClipFailed) as err:
            process_clip(row, cfg)
        assert err.value.status == "too_few_frames"
        assert "sub01/EP02_01f" in err.value.reason and "n_frames=1" in err.value.reason
    assert preprocess_config() == PreprocessConfig(n_frames=1, min_frames=1)
    assert preprocess_config(size=112).size == 112


def test_face_routes_are_recorded_in_the_manifest(face_release, tmp_path):
    from merlib.preprocess.cache import cache_folder, load_manifest
    from merlib.preprocess.workers import run

    cfg = preprocess_config()
    manifest = run(face_release, cfg, tmp_path, jobs=1, progress=False)
    m = {r["clip"]: r for r in manifest.to_dict("records")}
    assert m["EP02_01f"]["status"] == "ok" and m["EP02_01f"]["face_route"] == "detector"
    tight = m["006_1_2"]
    assert tight["status"] == "ok" and tight["face_route"] == "padded"
    assert tight["detector_calls"] == 3  # detector, padded, and the check of the padded box
    # a blank frame: the whole-frame route offers a box, the check turns it down by name
    blank = m["s01_ne_01"]
    assert blank["status"] == "no_landmarks" and blank["face_route"] == ""
    assert "s01/s01_ne_01" in blank["reason"]
    assert "whole_frame: no face on the aligned frame" in blank["reason"]
    on_disk = load_manifest(cache_folder(tmp_path, "megc-public", cfg) / "manifest.csv")
    assert dict(zip(on_disk["clip"], on_disk["face_route"])) == {
        "EP02_01f": "detector", "s01_ne_01": "", "006_1_2": "padded"}


def test_a_manifest_without_face_routes_still_loads(tmp_path):
    from merlib.preprocess.cache import load_manifest

    path = tmp_path / "manifest.csv"
    path.write_text("dataset,source,subject,clip,label,stage,status,reason,file,apex_source\n"
                    "casme2,casme2,sub01,EP02_01f,positive,preprocess,ok,,/x.npz,annotated\n")
    assert load_manifest(path)["face_route"].tolist() == [""]


def test_the_public_release_table_keeps_reported_rows_once_and_each_profile_under_them():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "megc_public_bench", Path(__file__).resolve().parents[1] / "bench" / "megc_public_results.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cols = ["method", "ref", "Acc", "UF1", "UAR", "origin"]

    def row(method, origin, uf1=0.5):
        return {"method": method, "ref": "", "Acc": 0.6, "UF1": uf1, "UAR": 0.5, "origin": origin}

    reported = [row("STSTNet", "reported by its authors"), row("HTNet", "reported by its authors")]
    quick = pd.DataFrame([reported[0], row("ststnet", "measured here (quick profile)"), reported[1]], columns=cols)
    paper = pd.DataFrame([reported[0], row("ststnet", "measured here (paper profile)"), reported[1]], columns=cols)
    t = bench.merged([quick, paper])
    assert t["origin"].tolist() == ["reported by its authors", "measured here (quick profile)",
                                    "measured here (paper profile)", "reported by its authors"]
    assert t["method"].tolist() == ["STSTNet", "ststnet", "ststnet", "HTNet"]
