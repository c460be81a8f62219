"""SynthME: determinism, the real loaders read it (the megc layout included), its ground truth is
consistent with its pixels (head rotation and blinks included), its expressions are micro,
learnable and detectable, and its people are counted (calibration)."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from merlib import synth as S
from merlib.datasets import build_index, read_frames
from merlib.datasets.megc import megc_list
from merlib.datasets.schema import map_emotion
from merlib.synth import calibration as C
from merlib.synth import motion
from merlib.synth.plan import SourceCounts

TINY = S.PRESETS["tiny"]
EXPECTED = {"negative": 6, "positive": 4, "surprise": 4}  # TINY.class_counts
# tiny's knobs on (people stay the bundled ones: offline), for the nuisances' tests
HARD_TINY = dataclasses.replace(
    TINY, name="tiny-hard", au_variants="overlapping", style_au_sigma=0.35, style_asymmetry=0.3,
    style_amplitude_sigma=0.25, head_rotation_deg=1.5, head_move_rate=1.0, blink_rate=1.0,
    illumination=0.05)
# the megc layout at tiny scale: 2 subjects per source
TINY_MEGC = dataclasses.replace(
    TINY, name="tiny-megc", megc_sources=(SourceCounts("casme2", 2, (2, 1, 1), 1),
                                          SourceCounts("samm", 2, (1, 2, 1), 1),
                                          SourceCounts("smic", 2, (1, 1, 2), 0)))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """layout -> root of SynthME tiny, seed 0, generated once per session (read-only)."""
    roots = {}

    def get(layout: str):
        if layout not in roots:
            roots[layout] = S.generate(tmp_path_factory.mktemp(f"synth-{layout}") / "data",
                                       layout=layout, preset="tiny", seed=0)
        return roots[layout]

    return get


def _file_hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ determinism

def test_same_seed_same_bytes_whatever_the_worker_count(tiny, tmp_path):
    import shutil

    first = tiny("casme2")  # 2 render threads (the preset's)
    # an incomplete copy (a frame lost) is regenerated in full, here with one render thread
    shutil.copytree(first, tmp_path / "again")
    next((tmp_path / "again").glob("CASME2_RAW_selected/sub02/*/*.jpg")).unlink()
    again = S.generate(tmp_path / "again", layout="casme2", preset="tiny", seed=0, workers=1)
    a, b = _file_hashes(first), _file_hashes(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert S.dataset_digest(first) == S.dataset_digest(again)
    assert any(k.endswith(".xlsx") for k in a) and any(k.endswith(".npz") for k in a)


def test_different_seeds_differ():
    p0, p1 = S.plan_dataset("casme2", "tiny", 0), S.plan_dataset("casme2", "tiny", 1)
    assert [(p.clip, p.onset, p.apex, p.amplitude) for p in p0] != \
        [(p.clip, p.onset, p.apex, p.amplitude) for p in p1]
    # same class counts whatever the seed
    assert sorted(p.label for p in p0) == sorted(p.label for p in p1)
    s0, s1 = S.make_subject(TINY, 0, 0), S.make_subject(TINY, 1, 0)
    assert s0.identity == s1.identity and not np.array_equal(s0.neutral, s1.neutral)
    f0 = S.render_clip(p0[0], TINY, 0).frames[0]
    f1 = S.render_clip(p1[0], TINY, 1).frames[0]
    assert f0.shape == f1.shape == (480, 640, 3) and not np.array_equal(f0, f1)


def test_tiny_frames_are_pinned():
    """tiny is what CI's notebooks run on and compare their outputs against: the realism knobs
    (off in tiny) must leave its frames as they were. Raw RGB frames of the first three clips,
    casme2 and smic layouts (the SAMM layout is written grey since generator version 2).
    Update only with a reason: every committed notebook output then changes too."""
    def digest(layout):
        h = hashlib.sha256()
        for pl in S.plan_dataset(layout, "tiny", 0)[:3]:
            for f in S.render_clip(pl, TINY, 0).frames:
                h.update(f.tobytes())
        return h.hexdigest()

    assert digest("casme2") == "ede5f87eb2d3e76dc106eb3b56011d348fcf0f6b174bea2e4f51ec2d8ad387d6"
    assert digest("smic") == "c1fb46302c24abf42a53f6723e1a219869349cadf15c689410c3e8413a08ace5"


# ------------------------------------------------------------------------------ layouts

@pytest.mark.parametrize("layout", ["casme2", "samm", "smic"])
def test_tiny_loads_through_the_real_loader(tiny, layout):
    root = tiny(layout)
    index = build_index(layout, root)
    gt = S.load_groundtruth(root)
    ok = index[index["status"] == "ok"]
    assert ok["label"].value_counts().to_dict() == EXPECTED
    excluded = index[index["status"] == "excluded"]
    assert len(excluded) == (0 if layout == "smic" else TINY.n_others)
    assert set(index["status"]) <= {"ok", "excluded"}  # nothing bad
    assert index["subject"].nunique() == TINY.n_subjects
    # every subject shows at least two of the three classes
    assert ok.groupby("subject")["label"].nunique().min() >= 2
    merged = index.merge(gt, on=["subject", "clip"], suffixes=("", "_gt"), validate="one_to_one")
    assert len(merged) == len(index) == len(gt)
    assert (merged["onset"] == merged["onset_gt"]).all()
    assert (merged["offset"] == merged["offset_gt"]).all()
    assert (merged["n_frames"] == merged["n_frames_gt"]).all()
    assert (merged["label"] == merged["label_gt"]).all()
    assert (merged["emotion"] == merged["emotion_gt"]).all()
    if layout == "smic":
        assert index["apex"].isna().all() and (index["fps"] == 100).all()
    else:
        assert (merged["apex"] == merged["apex_gt"]).all() and (index["fps"] == 200).all()


def test_emotions_use_each_layouts_vocabulary(tiny):
    casme = build_index("casme2", tiny("casme2"))
    assert set(casme.loc[casme["label"] == "negative", "emotion"]) <= {"repression", "disgust"}
    assert set(casme.loc[casme["status"] == "excluded", "emotion"]) == {"others"}
    samm = build_index("samm", tiny("samm"))
    assert set(samm.loc[samm["label"] == "negative", "emotion"]) <= \
        {"anger", "contempt", "disgust", "fear", "sadness"}
    assert set(samm.loc[samm["label"] == "positive", "emotion"]) == {"happiness"}
    assert set(samm.loc[samm["status"] == "excluded", "emotion"]) == {"other"}


def test_samm_is_written_grey(tiny):
    index = build_index("samm", tiny("samm"))
    row = index.iloc[0]
    frames = read_frames(row["frames_dir"], [int(row["onset"]), int(row["apex"])])
    assert frames.shape == (2, 480, 640, 3)
    assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()
    assert frames.std() > 10  # a face, not a blank


@pytest.fixture(scope="session")
def tiny_megc(tmp_path_factory):
    return S.generate(tmp_path_factory.mktemp("synth-megc") / "data", layout="megc",
                      preset=TINY_MEGC, seed=0)


def test_a_source_linked_from_its_composite_is_the_source_written_alone(tiny_megc, tmp_path):
    """make reproduce's per-source runs take their files from the composite (rendered once):
    byte for byte what generating the source alone writes, marker included, and reusable."""
    import os
    for layout in ("casme2", "samm", "smic"):
        alone = S.generate(tmp_path / f"alone-{layout}", layout=layout, preset=TINY_MEGC, seed=0)
        linked = S.generate(tmp_path / f"linked-{layout}", layout=layout, preset=TINY_MEGC, seed=0,
                            composite=tiny_megc)
        assert S.dataset_digest(linked) == S.dataset_digest(alone)
        assert S.is_complete(linked, layout=layout, preset=TINY_MEGC, seed=0)
        shared = next(f for f in linked.rglob("*.jpg")) if layout != "smic" else next(linked.rglob("*.bmp"))
        assert os.stat(shared).st_nlink >= 2  # a hard link into the composite, not a copy
    stamp = (tmp_path / "linked-casme2" / "synthme.json").stat().st_mtime_ns
    S.generate(tmp_path / "linked-casme2", layout="casme2", preset=TINY_MEGC, seed=0, composite=tiny_megc)
    assert (tmp_path / "linked-casme2" / "synthme.json").stat().st_mtime_ns == stamp  # reused


def test_megc_layout_is_read_by_all_four_loaders(tiny_megc):
    root = tiny_megc
    gt = S.load_groundtruth(root)
    listed = pd.read_csv(root / "megc2019_composite_3class.csv", dtype=str)
    assert list(listed.columns) == list(megc_list().columns)  # the official file's
    assert (listed["label_id"] == listed["label"].map({"negative": "0", "positive": "1",
                                                       "surprise": "2"})).all()
    assert len(listed) == (gt["label"] != "").sum() == 4 + 4 + 4
    megc = build_index("megc", root)
    assert (megc["status"] == "ok").all() and len(megc) == len(listed)
    assert megc["source"].value_counts().to_dict() == {"casme2": 4, "samm": 4, "smic": 4}
    merged = megc.merge(gt, on=["subject", "clip"], suffixes=("", "_gt"), validate="one_to_one")
    assert (merged["label"] == merged["label_gt"]).all()
    assert (merged["source"] == merged["source_gt"]).all()
    assert (merged["onset"] == merged["onset_gt"]).all()
    # each source on its own through its own loader, 'others' included where the source has them
    for source, sc in zip(("casme2", "samm", "smic"), TINY_MEGC.megc_sources):
        index = build_index(source, root)
        assert index["subject"].nunique() == sc.n_subjects
        ok = index[index["status"] == "ok"]["label"].value_counts()
        assert [int(ok.get(c, 0)) for c in ("negative", "positive", "surprise")] == \
            list(sc.class_counts)
        assert (index["status"] == "excluded").sum() == sc.n_others
    # no subject id shared between sources, so LOSO over the composite holds out one person
    subjects = gt.groupby("source")["subject"].agg(set)
    assert not (subjects["casme2"] & subjects["samm"] or subjects["samm"] & subjects["smic"]
                or subjects["casme2"] & subjects["smic"])
    assert S.is_complete(root, layout="megc", preset=TINY_MEGC, seed=0)
    # calibration reads it too, 'others' included (the composite's list leaves them out)
    assert C.identity_check(root)["n_subjects"] == 6
    assert len(C.amplitude_check(root)["per_clip"]) == len(gt) == 12 + 2
    x, rows = C.difference_features(root)
    assert len(x) == len(rows) == 12 and set(rows["subject"]) == set(megc["subject"])


def test_megc_reads_the_packaged_list_unless_the_root_has_its_own(tiny_megc, tmp_path):
    import shutil

    from merlib.datasets import megc

    copy = tmp_path / "copy"
    shutil.copytree(tiny_megc, copy)
    (copy / megc.LIST_FILE).unlink()
    # without its own list the root is read with the official 442 rows and their labels
    index = build_index("megc", copy)
    official = megc_list()
    assert len(official) == 442
    assert index[["source", "subject", "clip", "label"]].values.tolist() == \
        official[["dataset", "subject", "clip", "label"]].values.tolist()
    assert (index["status"] == "not_in_source").mean() > 0.9  # SynthME's names are other ones
    (copy / megc.LIST_FILE).write_text("dataset,subject,clip,label,label_id\n"
                                        "casme2,sub01,EP01_01,happy,1\n")
    with pytest.raises(ValueError, match=f"{copy / megc.LIST_FILE}.*row 2: casme2,sub01"):
        build_index("megc", copy)


def test_frames_are_recording_sized(tiny):
    index = build_index("casme2", tiny("casme2"))
    row = index.iloc[0]
    frames = read_frames(row["frames_dir"], [int(row["onset"]), int(row["offset"])])
    assert frames.shape == (2, 480, 640, 3)


# ------------------------------------------------------------------------------ ground truth

def test_groundtruth_is_consistent(tiny):
    root = tiny("casme2")
    gt = S.load_groundtruth(root)
    assert list(gt.columns) == S.GT_COLUMNS
    assert ((gt["onset"] < gt["apex"]) & (gt["apex"] < gt["offset"])).all()
    for row in gt.itertuples():
        clip = S.load_groundtruth(root, row.subject, row.clip)
        n = row.offset - row.onset + 1
        assert clip["landmarks"].shape == (n, 68, 2) and clip["jitter"].shape == (n, 2)
        assert np.array_equal(clip["frame_numbers"], np.arange(row.onset, row.offset + 1))
        s = clip["intensity"]
        assert s[0] == 0 and s[-1] == pytest.approx(0, abs=1e-6)
        assert int(clip["frame_numbers"][np.argmax(s)]) == row.apex and s.max() == pytest.approx(1)
        assert clip["apex"] == row.apex and clip["aus"] == row.aus
        # landmarks inside the frame, the face 190-250 px wide
        assert (clip["landmarks"][..., 0] > 0).all() and (clip["landmarks"][..., 0] < 640).all()
        assert (clip["landmarks"][..., 1] > 0).all() and (clip["landmarks"][..., 1] < 480).all()
        assert 180 < clip["face_width"] < 260
        assert np.abs(clip["jitter"]).max() <= TINY.jitter_max + 1e-6


def test_timing_follows_casme2_and_smic_halves_it():
    plans = S.plan_dataset("casme2", "demo", 0)
    n = np.array([p.n_frames for p in plans])
    rise = np.array([p.apex - p.onset for p in plans])
    assert 52 <= np.median(n) <= 70
    assert 30 <= np.percentile(n, 10) <= 50 and 80 <= np.percentile(n, 90) <= 110
    assert 24 <= rise.mean() <= 40 and (rise < 10).any()
    frac = np.array([(p.apex - p.onset) / (p.offset - p.onset) for p in plans])
    assert 0.4 <= frac.mean() <= 0.6
    assert all(p.onset < p.apex < p.offset for p in plans)
    labels = [p.label for p in plans]
    assert [labels.count(c) for c in ("negative", "positive", "surprise")] == [44, 16, 13]
    smic = S.plan_dataset("smic", "demo", 0)
    assert all(p.fps == 100 and p.onset < p.apex < p.offset for p in smic)
    assert np.median([p.n_frames for p in smic]) == pytest.approx(np.median(n) / 2, abs=2)
    assert "" not in {p.label for p in smic}  # SMIC has no 'others'


def test_intensity_curve_known_values():
    s = S.intensity_curve(11, 4, 6)
    assert s[0] == 0 and s[4] == 1 and s[10] == pytest.approx(0, abs=1e-12)
    assert s[2] == pytest.approx(0.5) and s[7] == pytest.approx(0.5)
    assert (np.diff(s[:5]) > 0).all() and (np.diff(s[4:]) < 0).all()


def test_forward_points_inverts_a_known_backward_map():
    # out(x) = src(x + s*c + shift*mask): with a constant field c and mask 1,
    # points move by -(s*c + shift)
    fld = np.broadcast_to(np.float32([2.0, -1.0]), (60, 80, 2)).copy()
    mask = np.ones((60, 80), np.float32)
    pts = np.array([[20.0, 30.0], [50.5, 10.25]])
    s = np.array([0.0, 0.5, 1.0])
    shift = np.array([[0.0, 0.0], [0.3, -0.2], [1.0, 1.0]])
    got = S.forward_points(pts, fld, scale=s, shift=shift, shift_mask=mask)
    want = pts[None] - s[:, None, None] * np.array([2.0, -1.0]) - shift[:, None, :]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_forward_points_follows_a_head_rotation_and_an_extra_field():
    # out(x) = src(x + mask * (A x + b - x) + s2 * c2): with mask 1 and a constant c2, a point p
    # of the source lands where A x + b + s2 * c2 = p
    h, w = 200, 240
    fld = np.zeros((h, w, 2), np.float32)
    extra = np.broadcast_to(np.float32([0.5, 1.5]), (h, w, 2)).copy()
    mask = np.ones((h, w), np.float32)
    th = np.deg2rad([0.0, 2.0, -3.0])
    c, s = np.cos(th), np.sin(th)
    a = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)
    b = np.array([[0.0, 0.0], [1.0, -2.0], [-0.5, 0.7]])
    affine = np.concatenate([a, b[:, :, None]], axis=2)
    s2 = np.array([0.0, 1.0, 0.5])
    pts = np.array([[100.0, 80.0], [140.5, 120.25]])
    got = S.forward_points(pts, fld, scale=np.zeros(3), shift_mask=mask, affine=affine,
                           extra=[(extra, s2)], iterations=30)
    want = np.stack([np.linalg.solve(a[t], (pts - b[t] - s2[t] * np.array([0.5, 1.5])).T).T
                     for t in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_blink_curve_known_values():
    b = motion.blink_curve(20, start=4, duration=9)
    assert (b[:4] == 0).all() and (b[14:] == 0).all()
    assert b[7] == pytest.approx(1.0) and b[int(np.argmax(b))] == pytest.approx(1.0)
    assert (np.diff(b[4:8]) > 0).all() and (np.diff(b[7:14]) < 0).all()
    # closes in a third of its time (3 frames), opens in two thirds (6 frames)
    assert int(np.argmax(b)) - 4 == 3 and b[13] == pytest.approx(0, abs=1e-12) and b[12] > 0


def test_dense_field_hits_its_values_and_vanishes_away_from_the_face():
    lm = S.make_subject(TINY, 0, 0).landmarks
    d = np.zeros((68, 2))
    d[48] = [3.0, -2.0]
    d[54] = [-3.0, -2.0]
    fld = S.dense_field(lm, d, lm, (480, 640))
    idx = [48, 54, 8, 27]
    np.testing.assert_allclose(S.sample_field(fld, lm[idx]), d[idx], atol=0.3)
    assert np.abs(fld[:5, :5]).max() == 0 and np.abs(fld[-5:, -5:]).max() == 0


def test_close_control_points_are_merged_not_singular():
    pts = np.array([[10.0, 10.0], [10.5, 10.0], [40.0, 40.0]])
    vals = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    p, v = motion._merge_close(pts, vals)
    np.testing.assert_allclose(p, [[10.25, 10.0], [40.0, 40.0]])
    np.testing.assert_allclose(v, [[2.0, 0.0], [0.0, 1.0]])


def test_groundtruth_landmarks_sit_on_the_moved_pixels():
    """With noise and flicker off, the patch around a moving landmark at its apex position in the
    apex frame matches the onset patch better than the same place does without the motion."""
    clean = dataclasses.replace(TINY, noise_sigma_range=(0.0, 0.0), chroma_noise_sigma=0.0,
                                flicker=0.0, amplitude_range=(5.5, 5.5))
    plan = next(p for p in S.plan_dataset("casme2", clean, 0) if p.label == "surprise")
    out = S.render_clip(plan, clean, 0)
    lm, a = out.groundtruth["landmarks"], plan.apex - plan.onset
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32)
            for f in (out.frames[0], out.frames[a])]
    motion = np.linalg.norm(lm[a] - lm[0], axis=1)
    for i in np.argsort(motion)[-3:]:  # the three landmarks that move most
        ref = cv2.getRectSubPix(grey[0], (15, 15), tuple(map(float, lm[0, i])))
        moved = cv2.getRectSubPix(grey[1], (15, 15), tuple(map(float, lm[a, i])))
        stayed = cv2.getRectSubPix(grey[1], (15, 15), tuple(map(float, lm[0, i])))
        assert motion[i] > 3
        assert np.abs(moved - ref).mean() < 0.5 * np.abs(stayed - ref).mean()


def test_nuisances_move_the_pixels_where_the_groundtruth_says():
    """Head rotation, a head move, a blink and a light change on, noise off: the landmarks that
    move most (the eyes' aside, which the blink squeezes) sit where the ground truth puts them,
    and the expression-only landmarks leave the head motion out."""
    clean = dataclasses.replace(HARD_TINY, noise_sigma_range=(0.0, 0.0), chroma_noise_sigma=0.0,
                                flicker=0.0, illumination=0.0, amplitude_range=(3.0, 3.0),
                                head_rotation_deg=2.0, head_move_px=(4.0, 4.0))
    plan = S.plan_dataset("casme2", clean, 0)[1]
    out = S.render_clip(plan, clean, 0)
    gt = out.groundtruth
    assert gt["blink"].max() > 0 and np.abs(gt["head_angle"]).max() > 0.1
    t = int(np.argmax(np.abs(gt["head_angle"]) + np.linalg.norm(gt["jitter"], axis=1)))
    lm, expr, neutral = gt["landmarks"], gt["expression_landmarks"], gt["neutral_landmarks"]
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32)
            for f in (out.frames[0], out.frames[t])]
    motion_t = np.linalg.norm(lm[t] - lm[0], axis=1)
    motion_t[36:48] = 0
    for i in np.argsort(motion_t)[-3:]:
        ref = cv2.getRectSubPix(grey[0], (15, 15), tuple(map(float, lm[0, i])))
        moved = cv2.getRectSubPix(grey[1], (15, 15), tuple(map(float, lm[t, i])))
        stayed = cv2.getRectSubPix(grey[1], (15, 15), tuple(map(float, lm[0, i])))
        assert motion_t[i] > 2
        assert np.abs(moved - ref).mean() < 0.5 * np.abs(stayed - ref).mean()
    # the upper lids at the blink's peak
    tb = int(np.argmax(gt["blink"]))
    g0, gb = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32)
              for f in (out.frames[0], out.frames[tb]))
    for i in (37, 38, 43, 44):
        ref = cv2.getRectSubPix(g0, (9, 9), tuple(map(float, lm[0, i])))
        moved = cv2.getRectSubPix(gb, (9, 9), tuple(map(float, lm[tb, i])))
        stayed = cv2.getRectSubPix(gb, (9, 9), tuple(map(float, lm[0, i])))
        assert np.linalg.norm(lm[tb, i] - lm[0, i]) > 1.5
        assert np.abs(moved - ref).mean() < 0.5 * np.abs(stayed - ref).mean()
    # the expression alone stays micro while the head moved several px
    k = gt["face_width"] / 224
    assert np.linalg.norm(expr - neutral, axis=2).max() / k <= 3.0 * 1.1
    assert np.linalg.norm(lm - neutral, axis=2).max() > 4.0 * k
    assert gt["max_landmark_motion"] == pytest.approx(
        np.linalg.norm(expr - neutral, axis=2).max() / k, rel=1e-5)


def test_knobs_off_draw_nothing_and_on_change_the_clip():
    plan = S.plan_dataset("casme2", TINY, 0)[0]
    gt = S.render_clip(plan, TINY, 0).groundtruth
    assert not gt["head_angle"].any() and not gt["blink"].any() and not gt["illumination"].any()
    hard = S.plan_dataset("casme2", HARD_TINY, 0)
    out = S.render_clip(hard[0], HARD_TINY, 0).groundtruth
    assert out["head_angle"].any() and out["illumination"].any()


def test_realistic_plans_share_aus_between_classes_and_keep_each_layouts_words():
    classes_of: dict[str, set] = {}
    for cat, variants in motion.CLASS_AU_MIX.items():
        assert sum(w for _, w in variants) == pytest.approx(1.0)
        for aus, _ in variants:
            for au in aus:
                classes_of.setdefault(au, set()).add(cat)
    shared = {au for au, cats in classes_of.items() if len(cats & {"negative", "positive",
                                                                   "surprise"}) >= 2}
    assert {"AU4", "AU7", "AU6", "AU1", "AU14", "AU17"} <= shared
    for preset in ("demo", "megc"):
        plans = S.plan_dataset("megc", preset, 0) if preset == "megc" else \
            S.plan_dataset("casme2", preset, 0) + S.plan_dataset("samm", preset, 0)
        for pl in plans:  # the loaders must map every emotion word back to the planned label
            assert map_emotion(pl.source, pl.emotion) == pl.label, (pl.source, pl.emotion)
        # identity-specific style: one left/right imbalance per subject, not the same for all
        asym = {}
        for pl in plans:
            asym.setdefault((pl.source, pl.subject), set()).add(pl.asymmetry)
        assert all(len(v) == 1 for v in asym.values()) and len({*map(min, asym.values())}) > 3
        assert len({pl.aus for pl in plans if pl.label == "negative"}) > 6


def test_megc_preset_has_at_least_eight_people_per_source_and_real_balances():
    p = S.get_preset("megc")
    sources = p.sources("megc")
    assert [sc.layout for sc in sources] == ["casme2", "samm", "smic"]
    assert all(sc.n_subjects >= 8 for sc in sources) and sum(sc.n_subjects for sc in sources) <= 42
    assert sources[2].n_others == 0  # SMIC has no 'others'
    plans = S.plan_dataset("megc", p, 0)
    assert len({pl.subject_index for pl in plans}) == sum(sc.n_subjects for sc in sources)
    # a single source of the megc preset is exactly its part of the composite
    for source in ("casme2", "samm", "smic"):
        assert S.plan_dataset(source, p, 0) == [pl for pl in plans if pl.source == source]
    for sc in sources:  # negative the largest class everywhere, as in the real composite
        neg, pos, sur = sc.class_counts
        assert neg > pos >= sur


def test_amplitude_is_micro(tiny):
    check = C.amplitude_check(tiny("casme2"))
    table = check["per_clip"]
    assert check["max_motion_224"] <= 6.0
    assert (table["max_motion_224"] > 1.0).all()  # and every clip really moves
    # the recorded amplitude bounds the landmark motion (a few % of spline overshoot allowed)
    assert (table["max_motion_224"] <= table["amplitude"] * 1.1).all()


# ------------------------------------------------------------------------------ generation

def test_complete_dataset_is_reused_not_regenerated(tiny):
    root = tiny("casme2")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    from merlib.cli import main

    assert main(["synth", "--out", str(root), "--layout", "casme2", "--preset", "tiny"]) == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    marker = json.loads((root / S.MARKER).read_text())
    assert marker["n_files"] == len(before) - 1 and marker["classes"]["excluded"] == 2
    assert S.is_complete(root, layout="casme2", preset="tiny", seed=0)
    assert not S.is_complete(root, layout="casme2", preset="tiny", seed=1)
    assert not S.is_complete(root, layout="samm", preset="tiny", seed=0)


def test_refuses_to_overwrite_other_content(tiny, tmp_path):
    with pytest.raises(FileExistsError, match="different SynthME"):
        S.generate(tiny("casme2"), layout="casme2", preset="tiny", seed=3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="other files"):
        S.generate(tmp_path / "mine", layout="casme2", preset="tiny")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep me"


def test_incomplete_dataset_is_not_taken_as_done(tiny, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny("samm"), copy)
    assert S.is_complete(copy, layout="samm", preset="tiny", seed=0)
    next(copy.glob("SAMM/*/*/*.jpg")).unlink()
    assert not S.is_complete(copy, layout="samm", preset="tiny", seed=0)
    (copy / S.MARKER).write_text("{not json")
    assert not S.is_complete(copy, layout="samm", preset="tiny", seed=0)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="layout 'casme3'"):
        S.generate(tmp_path / "x", layout="casme3")
    with pytest.raises(ValueError, match="preset 'huge'"):
        S.generate(tmp_path / "x", preset="huge")
    assert not (tmp_path / "x").exists()


def test_base_faces_are_four_photographs_with_68_landmarks():
    faces = S.base_faces()
    assert [f.name for f in faces] == ["astronaut", "astronaut_mirrored", "grace_hopper",
                                       "grace_hopper_mirrored"]
    assert [f.person for f in faces] == ["astronaut", "astronaut", "grace_hopper", "grace_hopper"]
    for f in faces:
        assert f.landmarks.shape == (68, 2)
        # dlib order: jaw runs left to right, the chin (point 9) is the lowest jaw point
        assert f.landmarks[0, 0] < f.landmarks[16, 0]
        assert f.landmarks[8, 1] == f.landmarks[:17, 1].max()
    # the astronaut's face, not the false positive on her suit (in the photo's lower half)
    assert faces[0].landmarks[:, 1].max() < 256 and faces[1].landmarks[:, 1].max() < 256


# ------------------------------------------------------------------------------ calibration

def test_chance_uf1_known_values():
    c = C.chance_uf1(["negative", "negative", "positive", "surprise"])
    assert c["prior"] == pytest.approx(1 / 3)
    assert c["uniform"] == pytest.approx((0.4 + 2 * (2 * 0.25 / 3) / (0.25 + 1 / 3)) / 3)
    assert c["majority"] == pytest.approx((2 * 0.5 / 1.5) / 3)


def test_calibration_on_tiny(tiny):
    root = tiny("casme2")
    det = C.detection_rate(root, step=12)
    assert det["frames_checked"] >= 2 * 14 and det["detection_rate"] >= 0.99
    base = C.loso_baseline(root)
    assert base["n_clips"] == 14 and base["n_subjects"] == 4
    # 14 clips over 4 folds: a loose bound; bench/synth.py reports the demo figure
    assert base["baseline_uf1"] >= base["chance_uf1"] + 0.15
    # tiny works offline on the bundled photographs: 2 people for 4 subjects, and says so
    ident = C.identity_check(root)
    assert (ident["n_identities"], ident["n_subjects"], ident["faces_shared"]) == (2, 4, 2)
    assert ident["per_identity"]["subject"].tolist() == ["casme2/sub01, casme2/sub02",
                                                         "casme2/sub03, casme2/sub04"]
