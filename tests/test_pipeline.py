"""The clip pipeline (recipe, cache, workers) end to end on the tiny SynthME (CASME II layout)
plus planted bad clips: outputs and shapes, bad clips reported by name, cache reuse, kill +
resume, cache keys, the identification points against the generator's ground-truth landmarks,
and the apex report's scoring against SynthME's ground truth."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from merlib.datasets import frame_paths
from merlib.config import DataConfig
from merlib.experiment import load_index
from merlib.preprocess import align, blocks, landmarks
from merlib import cli, report
from merlib.preprocess import cache as pcache
from merlib.preprocess import recipe, workers
from merlib.preprocess.cache import cache_folder, clip_stem, load_manifest
from merlib.preprocess.recipe import PreprocessConfig, process_clip
from merlib.preprocess.workers import run

SIZE = 224


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from merlib.synth import generate

    return generate(tmp_path_factory.mktemp("synthme") / "tiny", layout="casme2", preset="tiny",
                    seed=0)


@pytest.fixture(scope="session")
def synth_index(synth_root):
    return load_index(DataConfig(dataset="synthme", layout="casme2"), synth_root)


def _row(index: pd.DataFrame, i: int) -> dict:
    return {k: (None if v is pd.NA else v) for k, v in index.iloc[i].to_dict().items()}


@pytest.fixture(scope="session")
def planted(synth_index, tmp_path_factory):
    """4 good SynthME clips, 3 planted bad ones (truncated JPEG, no face, empty folder) that the
    index still calls ok, and one row the index excluded."""
    base = tmp_path_factory.mktemp("planted")
    ok = synth_index[synth_index["status"] == "ok"].reset_index(drop=True)
    good = ok.iloc[:4]
    src = ok.iloc[4]
    bad = ok.iloc[[4, 4, 4]].copy().reset_index(drop=True)
    names = ["EP90_trunc", "EP91_noface", "EP92_empty"]
    bad["subject"] = "sub90"
    bad["clip"] = names
    bad["frames_dir"] = [str(base / n) for n in names]

    shutil.copytree(src["frames_dir"], base / names[0])
    paths = frame_paths(base / names[0])
    victim = paths[sorted(paths)[len(paths) // 2]]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])

    (base / names[1]).mkdir()
    h, w = 480, 640
    grey = np.broadcast_to(np.linspace(90, 160, w, dtype=np.uint8)[None, :, None], (h, w, 3))
    for n, p in frame_paths(src["frames_dir"]).items():
        Image.fromarray(np.ascontiguousarray(grey)).save(base / names[1] / p.name, quality=95)

    (base / names[2]).mkdir()
    excluded = synth_index[synth_index["status"] == "excluded"].iloc[:1]
    index = pd.concat([good, bad, excluded], ignore_index=True)
    return {"index": index, "good": list(good["subject"] + "/" + good["clip"]),
            "bad": [f"sub90/{n}" for n in names], "victim": victim,
            "excluded": f"{excluded.iloc[0]['subject']}/{excluded.iloc[0]['clip']}"}


@pytest.fixture(scope="session")
def processed(planted, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    cfg = PreprocessConfig()
    manifest = run(planted["index"], cfg, cache, jobs=2, progress=False)
    return {"manifest": manifest, "cache": cache, "cfg": cfg,
            "folder": cache_folder(cache, "synthme", cfg)}


def _by_clip(manifest: pd.DataFrame) -> dict:
    """subject/clip -> manifest row (clip names repeat across subjects)."""
    return {f"{r['subject']}/{r['clip']}": r for r in manifest.to_dict("records")}


# ----------------------------------------------------------------------------- outputs

def test_good_clips_have_every_array_with_the_right_shape(processed, planted):
    m = _by_clip(processed["manifest"])
    for clip in planted["good"]:
        r = m[clip]
        assert r["status"] == "ok", r["reason"]
        assert Path(r["file"]).parent == processed["folder"] / "clips"
        with np.load(r["file"]) as z:
            assert z["frames"].shape == (10, SIZE, SIZE, 3) and z["frames"].dtype == np.uint8
            assert z["ip24"].shape == (10, 24, 2) and z["side24"].shape == (10, 24)
            assert z["ip10"].shape == (10, 10, 2) and z["side10"].shape == (10, 10)
            assert z["landmarks"].shape == (10, 72, 2)
            for key in ("ip24", "side24", "ip10", "side10", "landmarks"):
                assert z[key].dtype == np.float32 and np.all(np.isfinite(z[key]))
            for key in ("ip24", "ip10", "landmarks"):  # every point inside the aligned frame
                assert np.all((z[key] >= 0) & (z[key] < SIZE)), key
            assert np.all(z["side24"] == 48)
            # 10-IP side: half the mouth width, per frame (Eqs. 6-12)
            mouth = np.abs(z["landmarks"][:, 54, 0] - z["landmarks"][:, 48, 0]) / 2
            np.testing.assert_allclose(z["side10"], np.repeat(mouth[:, None], 10, 1), rtol=1e-5)
            assert int(z["onset"]) <= int(z["apex_used"]) <= int(z["offset"])
            assert int(z["apex_used"]) == int(z["apex_annotated"]) == r["apex_annotated"]
            assert z["dif"].shape == (r["n_frames_span"],)
            # the aligned frames hold the face: not black where the template face sits
            assert z["frames"][:, 60:170, 50:174].mean() > 30
        assert r["detector_calls"] == 1
        assert r["apex_source"] == "annotated"
        assert r["n_frames_tim"] == r["apex_used"] - r["onset"] + 1
        assert r["apex_abs_err"] == abs(r["apex_detected"] - r["apex_annotated"])
        assert r["seconds"] > 0 and r["t_detect"] > 0


def test_cache_folder_holds_config_records_and_manifest(processed, planted):
    folder = processed["folder"]
    assert folder.name == f"synthme-{processed['cfg'].key()}"
    config = json.loads((folder / "config.json").read_text())
    assert config["preprocess"] == dataclasses.asdict(processed["cfg"])
    on_disk = load_manifest(folder / "manifest.csv")
    assert list(on_disk["clip"]) == list(planted["index"]["clip"])
    assert list(on_disk["status"]) == list(processed["manifest"]["status"])
    for col in ("dataset", "source", "subject", "clip", "label", "status", "reason", "file",
                "apex_annotated", "apex_detected", "apex_used", "apex_abs_err", "apex_rel_err",
                "n_frames_span", "n_landmark_fallback", "detector_calls", "seconds"):
        assert col in on_disk.columns
    n_records = len(list((folder / "records").glob("*.json")))
    assert n_records == len(planted["good"]) + len(planted["bad"])  # excluded row: not processed
    assert not list(folder.rglob("*.tmp"))


def test_bad_clips_are_listed_with_their_reason_and_the_rest_succeed(processed, planted):
    m = _by_clip(processed["manifest"])
    trunc, noface, empty = (m[c] for c in planted["bad"])
    assert trunc["status"] == "unreadable_frame"
    assert "sub90/EP90_trunc" in trunc["reason"] and planted["victim"].name in trunc["reason"]
    assert noface["status"] == "no_face"
    assert "sub90/EP91_noface" in noface["reason"]
    assert empty["status"] == "too_few_frames"
    assert "sub90/EP92_empty" in empty["reason"] and "0 frame" in empty["reason"]
    for r in (trunc, noface, empty):
        assert r["file"] == ""
    ex = m[planted["excluded"]]
    assert ex["status"] == "excluded" and "outside the 3-class" in ex["reason"]
    assert all(m[c]["status"] == "ok" for c in planted["good"])
    text = pcache.summary(processed["manifest"])
    assert text.startswith("4 clips ok, 3 failed, 1 not processed")
    assert "FAILED sub90/EP91_noface: no_face" in text


def test_rerun_skips_every_recorded_clip(processed, planted):
    folder = processed["folder"]
    files = sorted(folder.glob("clips/*.npz")) + sorted(folder.glob("records/*.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    again = run(planted["index"], processed["cfg"], processed["cache"], jobs=2, progress=False)
    assert {p: p.stat().st_mtime_ns for p in files} == before  # nothing recomputed, failed included
    pd.testing.assert_frame_equal(again, processed["manifest"])


def test_a_cache_written_with_ground_truth_fields_is_read_as_it_is(processed, planted, tmp_path):
    # Records written before the apex scoring moved to the report carry gt_* fields: such a cache
    # is still complete (nothing redone) and the manifest leaves those fields out.
    cache = tmp_path / "cache"
    shutil.copytree(processed["cache"], cache)
    folder = cache_folder(cache, "synthme", processed["cfg"])
    for p in folder.glob("records/*.json"):
        rec = json.loads(p.read_text())
        if rec["status"] == "ok":
            rec.update(gt_apex=rec["apex_annotated"], gt_abs_err=0.0, gt_rel_err=0.0)
            p.write_text(json.dumps(rec))
    files = sorted(folder.glob("clips/*.npz")) + sorted(folder.glob("records/*.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    again = run(planted["index"], processed["cfg"], cache, jobs=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    pd.testing.assert_frame_equal(again, processed["manifest"])  # records keep their file paths


def test_a_changed_index_row_is_redone_alone(processed, planted, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(processed["cache"], cache)
    folder = cache_folder(cache, "synthme", processed["cfg"])
    index = planted["index"].copy()
    row = index.iloc[0]
    new_apex = int(row["onset"]) + (2 if row["apex"] != row["onset"] + 2 else 3)  # a corrected sheet
    index.loc[0, "apex"] = new_apex
    records = sorted(folder.glob("records/*.json"))
    before = {p: p.stat().st_mtime_ns for p in records}
    m = _by_clip(run(index, processed["cfg"], cache, jobs=1, progress=False))
    changed = [p.stem for p in records if p.stat().st_mtime_ns != before[p]]
    assert changed == [clip_stem(row)]
    r = m[f"{row['subject']}/{row['clip']}"]
    assert r["apex_used"] == new_apex and r["n_frames_tim"] == new_apex - row["onset"] + 1


# ----------------------------------------------------------------------------- one clip

def test_face_detector_runs_once_per_clip(synth_index, monkeypatch):
    align.template_box(SIZE)  # the template's own detections happen once per process, not per clip
    calls = []
    real = landmarks.detect_face

    def counting(image, **kw):
        calls.append(image.shape)
        return real(image, **kw)

    monkeypatch.setattr(landmarks, "detect_face", counting)
    out = process_clip(_row(synth_index, 1), PreprocessConfig(apex="detected"))
    assert len(calls) == 1 and calls[0] == (480, 640, 3)  # the source frame, not aligned ones
    rec = out["record"]
    assert rec["detector_calls"] == 1
    assert rec["apex_source"] == "detected" and rec["apex_used"] == rec["apex_detected"]
    assert out["arrays"]["frames"].shape == (10, SIZE, SIZE, 3)


@pytest.mark.parametrize("apex, flags, mode, expect", [
    (30, "", "annotated", ("annotated", 30)),
    (30, "", "detected", ("detected", 33)),
    (None, "apex_missing", "annotated", ("detected", 33)),        # SMIC, CASME II '/'
    (50, "apex_outside", "annotated", ("detected", 33)),          # SAMM 028_4_1-like
    (31, "", "annotated", ("detected", 33)),                      # apex frame not on disk
])
def test_apex_choice(apex, flags, mode, expect):
    numbers = [n for n in range(25, 41) if n != 31]
    annotated, used, source = recipe._choose_apex({"apex": apex, "flags": flags}, numbers, 33,
                                                    PreprocessConfig(apex=mode))
    assert annotated == apex and (source, used) == expect


def test_unexpected_error_in_one_clip_does_not_stop_the_run(synth_index, monkeypatch, tmp_path):
    index = synth_index[synth_index["status"] == "ok"].iloc[:2].reset_index(drop=True)
    target = int(index.loc[1, "offset"] - index.loc[1, "onset"] + 1)
    assert target != int(index.loc[0, "offset"] - index.loc[0, "onset"] + 1)
    real = recipe.detect_apex

    def flaky(frames, **kw):
        if len(frames) == target:
            raise RuntimeError("boom")
        return real(frames, **kw)

    monkeypatch.setattr(recipe, "detect_apex", flaky)
    m = run(index, PreprocessConfig(), tmp_path, jobs=1, progress=False)
    assert list(m["status"]) == ["ok", "error"]
    assert m.loc[1, "reason"] == f"{index.loc[1, 'subject']}/{index.loc[1, 'clip']}: RuntimeError: boom"


_REAL_WORK = workers._work


def _work_dying_on_crash_clips(row, cfg, folder):
    """Stands in for workers._work in the workers (pickled by reference, so this module is
    imported there and _REAL_WORK is the real one): a clip named *_crash kills its process."""
    if str(row["clip"]).endswith("_crash"):
        os._exit(3)
    return _REAL_WORK(row, cfg, folder)


def test_a_worker_that_dies_takes_only_its_own_clip(processed, planted, monkeypatch, tmp_path):
    index = planted["index"].iloc[[0, 0, 1]].copy().reset_index(drop=True)
    index["subject"] = "sub91"
    index["clip"] = ["EP93_crash", "EP94_ok", "EP95_ok"]
    monkeypatch.setattr(workers, "_work", _work_dying_on_crash_clips)
    m = run(index, processed["cfg"], tmp_path, jobs=2, progress=False)
    assert list(m["status"]) == ["worker_crashed", "ok", "ok"], m[["clip", "reason"]]
    assert m.loc[0, "reason"].startswith("sub91/EP93_crash: worker process died")


# ----------------------------------------------------------------------------- kill + resume

_CHILD = """
import sys
import pandas as pd
from merlib.config import PreprocessConfig
from merlib.preprocess.workers import run
run(pd.read_pickle(sys.argv[1]), PreprocessConfig(), sys.argv[2], jobs=1, progress=False)
"""


def test_killed_run_resumes_without_losing_or_redoing_work(synth_index, tmp_path):
    index = synth_index[synth_index["status"] == "ok"].iloc[:6].reset_index(drop=True)
    index.to_pickle(tmp_path / "index.pkl")
    cache = tmp_path / "cache"
    folder = cache_folder(cache, "synthme", PreprocessConfig())
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "index.pkl"), str(cache)],
                             cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if list((folder / "records").glob("*.json")) if (folder / "records").is_dir() else []:
            break
        time.sleep(0.02)
    assert child.poll() is None, "the child run ended before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = {p: p.stat().st_mtime_ns for p in (folder / "records").glob("*.json")}
    assert 1 <= len(done) < len(index)
    # what a kill in mid-write leaves: a partial clip file next to a missing record
    missing = [clip_stem(r) for r in index.to_dict("records")
               if (folder / "records" / f"{clip_stem(r)}.json") not in done]
    (folder / "clips" / f"{missing[0]}.npz.tmp").write_bytes(b"partial")

    m = run(index, PreprocessConfig(), cache, jobs=1, progress=False)
    assert (m["status"] == "ok").all(), m[["clip", "status", "reason"]]
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # finished clips not redone
    assert len(list((folder / "records").glob("*.json"))) == len(index)
    assert not list(folder.rglob("*.tmp"))
    for f in m["file"]:
        with np.load(f) as z:
            assert z["frames"].shape == (10, SIZE, SIZE, 3)


# ----------------------------------------------------------------------------- config

def test_cache_key_follows_the_config(tmp_path):
    base = PreprocessConfig()
    assert base.key() == PreprocessConfig().key() and len(base.key()) == 10
    variants = [PreprocessConfig(apex="detected"), PreprocessConfig(scheme="dlib68"),
                PreprocessConfig(scheme="gacnn24"), PreprocessConfig(lwm_neighbors=8),
                PreprocessConfig(n_frames=8), PreprocessConfig(size=112), PreprocessConfig(version=base.version + 1)]
    keys = {v.key() for v in variants}
    assert len(keys) == len(variants) and base.key() not in keys
    assert cache_folder(tmp_path, "casme2", base) != cache_folder(tmp_path, "casme2", variants[0])
    with pytest.raises(ValueError, match="apex"):
        PreprocessConfig(apex="guess")
    with pytest.raises(ValueError, match="scheme"):
        PreprocessConfig(scheme="dlib5")


# ----------------------------------------------------------------------------- ground truth

def test_identification_points_land_where_the_ground_truth_puts_them(processed, planted,
                                                                     synth_root):
    """Ground-truth landmarks of the onset frame (the first TIM frame), carried into the aligned
    frame by the forward LWM of the pipeline's alignment, give IPs within a few pixels of the
    pipeline's own IPs of frame 0."""
    from merlib.synth import load_groundtruth

    errors = {10: [], 24: []}
    for r in processed["manifest"].query("status == 'ok'").to_dict("records"):
        gt = load_groundtruth(synth_root, r["subject"], r["clip"])
        with np.load(r["file"]) as z:
            gt68 = gt["landmarks"][int(z["onset"]) - int(gt["first_frame"])].astype(np.float64)
            forward = align.alignment_forward(z["landmarks68_source"].astype(np.float64),
                                              out_size=SIZE)
            gt72 = landmarks.to72(forward(gt68))
            for scheme in (10, 24):
                centres, _ = blocks.identification_points(gt72, scheme=scheme)
                errors[scheme].append(np.linalg.norm(centres - z[f"ip{scheme}"][0], axis=-1))
    for scheme, errs in errors.items():
        e = np.concatenate(errs)
        print(f"ip{scheme} vs ground truth over {len(errs)} clips: median {np.median(e):.2f} px, "
              f"max {e.max():.2f} px")
        assert np.median(e) < 3.0 and e.max() < 10.0


def test_records_hold_only_what_preprocessing_computed(processed):
    for p in processed["folder"].glob("records/*.json"):
        assert not [k for k in json.loads(p.read_text()) if k.startswith("gt_")], p.name
    assert not [c for c in processed["manifest"].columns if c.startswith("gt_")]


def test_apex_report_scores_the_detected_apex_against_synthme_ground_truth(processed, planted,
                                                                          synth_root):
    from merlib.synth import load_groundtruth

    ok = report.usable(processed["manifest"], groundtruth_root=synth_root)
    assert sorted(ok["subject"] + "/" + ok["clip"]) == sorted(planted["good"])
    for r in ok.itertuples():
        true = load_groundtruth(synth_root, r.subject, r.clip)["apex"]
        assert r.gt_apex == true == r.apex_annotated     # SynthME's sheet holds the true apex
        assert r.gt_abs_err == abs(r.apex_detected - true)
        assert r.gt_rel_err == pytest.approx(abs(r.apex_detected - true) / r.n_frames_span)
    table = report.apex_error_table(processed["manifest"], groundtruth_root=synth_root)
    assert list(table["reference"]) == ["annotated apex", "ground truth (SynthME)"]
    assert (table["clips"] == 4).all()
    # the annotation is the ground truth here, so both rows score the same errors
    pd.testing.assert_series_equal(table.iloc[0].drop("reference"), table.iloc[1].drop("reference"),
                                   check_names=False)
    # without the SynthME folder there is nothing to score against; a real dataset has no truth
    assert list(report.apex_error_table(processed["manifest"])["reference"]) == ["annotated apex"]
    # a clip of one frame (the public MEGC2019 release) has no apex to find: no error of 0 counted
    single = processed["manifest"].assign(n_frames_span=1)
    assert report.apex_error_table(single).empty
    with pytest.raises(ValueError, match="not a SynthME folder"):
        report.usable(processed["manifest"], groundtruth_root=synth_root / "sub01")


# ----------------------------------------------------------------------------- CLI

def test_cli_main_reports_each_failed_clip_and_the_manifest(fixture_root, tmp_path, capsys):
    # fixture frames are 32x24 patterns: every usable clip fails with no_face, by name
    argv = ["preprocess", "--dataset", "casme2", "--data-root", str(fixture_root("casme2")),
            "--cache", str(tmp_path), "--jobs", "1"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().err
    assert "0 clips ok, 7 failed, 4 not processed" in out  # 2 excluded, 2 bad index rows
    assert "FAILED sub01/EP02_01f: no_face: sub01/EP02_01f: no face found" in out
    path = cache_folder(tmp_path / "casme2", "casme2", PreprocessConfig()) / "manifest.csv"
    assert f"manifest: {path}" in out and path.is_file()


def test_cli_main_names_a_missing_dataset(tmp_path, capsys):
    argv = ["preprocess", "--dataset", "samm", "--data-root", str(tmp_path), "--cache", str(tmp_path),
            "--jobs", "1"]
    assert cli.main(argv) == 2
    assert "merlib preprocess: SAMM: looked for" in capsys.readouterr().err
