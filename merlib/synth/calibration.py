"""Calibration of a generated SynthME: is it a fair stand-in for a micro-expression dataset?

Four checks, each returning its figures (a notebook shows them, tests assert them):

- :func:`detection_rate`: the fraction of (sampled) frames where face_recognition's HOG detector
  finds the face (a box containing the ground-truth nose tip); target >= 0.99.
- :func:`loso_baseline`: a deliberately plain classifier, logistic regression on 32x32 grayscale
  apex-minus-onset difference images of the face, leave-one-subject-out; its UF1 must be well above
  chance (the expressions are learnable) and below 1 (they are not trivial).
- :func:`amplitude_check`: the largest ground-truth landmark motion of the expression alone (head
  motion and blinks removed), in px at the 224-px face scale; micro means <= 6.
- :func:`identity_check`: distinct people against subjects. LOSO tests generalisation to an
  unseen person only if no two subjects share a face, so the two must be equal (a mirrored
  photograph is the same person). The offline ``tiny`` preset has 2 people for 4 subjects and
  says so here.

:func:`calibrate` runs all four and returns one flat dict.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from merlib.datasets import build_index, read_frames
from merlib.registry import CLASSES
from merlib.synth.plan import SOURCES
from merlib.faces import face_boxes
from merlib.synth.faces import FACE_SCALE
from merlib.synth.write import MARKER, load_groundtruth


def _clips(root: Path) -> pd.DataFrame:
    """Ground-truth table joined with the index of the dataset's own layout (frames_dir); for the
    megc layout, with its three sources' indexes."""
    root = Path(root)
    layout = json.loads((root / MARKER).read_text())["layout"]
    gt = load_groundtruth(root)
    # the composite's list leaves out the 'others' clips; each source's own index has them all
    # (subject ids differ between sources, so (subject, clip) stays a key)
    loaders = SOURCES if layout == "megc" else (layout,)
    index = pd.concat([build_index(name, root) for name in loaders], ignore_index=True)
    index = index[["subject", "clip", "status", "frames_dir"]]
    merged = gt.merge(index, on=["subject", "clip"], how="left", validate="one_to_one")
    missing = merged["frames_dir"].isna()
    if missing.any():
        names = ", ".join(merged.loc[missing, "subject"] + "/" + merged.loc[missing, "clip"])
        raise ValueError(f"{root}: ground-truth clips absent from the {layout} index: {names}")
    return merged


def detection_rate(root: str | Path, *, step: int = 10, upsample: int = 0) -> dict:
    """Fraction of sampled frames (every ``step``-th of each clip, and its apex) where the HOG
    detector finds a face box containing the ground-truth nose tip (landmark 31).

    ``upsample=0``: SynthME faces are 190-250 px wide, far above the detector's ~80 px minimum,
    so upsampling (face_recognition's default 1) only costs time."""
    clips = _clips(root)
    per_clip = []
    for row in clips.itertuples():
        gt = load_groundtruth(root, row.subject, row.clip)
        frames_no = gt["frame_numbers"]
        picks = sorted(set(range(0, len(frames_no), step)) | {int(row.apex) - int(row.first_frame)})
        images = read_frames(row.frames_dir, [int(frames_no[i]) for i in picks])
        hits = 0
        for i, img in zip(picks, images):
            nose = gt["landmarks"][i, 30]
            boxes = face_boxes(img, upsample=upsample)  # any box counts, not only the largest
            hits += any(left <= nose[0] <= right and top <= nose[1] <= bottom
                        for top, right, bottom, left in boxes)
        per_clip.append({"subject": row.subject, "clip": row.clip, "frames": len(picks),
                         "found": hits})
    table = pd.DataFrame(per_clip)
    return {"detection_rate": float(table["found"].sum() / table["frames"].sum()),
            "frames_checked": int(table["frames"].sum()),
            "clips_with_misses": int((table["found"] < table["frames"]).sum()),
            "per_clip": table}


def _face_crop_box(landmarks: np.ndarray, margin: float = 0.15) -> tuple[int, int, int, int]:
    """A square box (x0, y0, x1, y1) around 68 landmarks, ``margin`` of its side added."""
    lo, hi = landmarks.min(0), landmarks.max(0)
    centre, side = (lo + hi) / 2, (hi - lo).max() * (1 + 2 * margin)
    x0, y0 = np.round(centre - side / 2).astype(int)
    s = int(round(side))
    return int(x0), int(y0), int(x0) + s, int(y0) + s


def difference_features(root: str | Path, *, size: int = 32) -> tuple[np.ndarray, pd.DataFrame]:
    """(N, size*size) apex-minus-onset grayscale differences of the face (a square crop around the
    onset frame's ground-truth landmarks, area-downsampled), for the clips of the three classes,
    and the matching rows (subject, clip, label)."""
    clips = _clips(root)
    clips = clips[clips["label"].isin(CLASSES) & clips["status"].eq("ok")].reset_index(drop=True)
    feats = []
    for row in clips.itertuples():
        gt = load_groundtruth(root, row.subject, row.clip)
        onset_i = int(row.onset) - int(row.first_frame)
        x0, y0, x1, y1 = _face_crop_box(gt["landmarks"][onset_i])
        pair = read_frames(row.frames_dir, [int(row.onset), int(row.apex)])
        grey = []
        for img in pair:
            g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
            h, w = g.shape
            crop = g[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
            grey.append(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
        feats.append((grey[1] - grey[0]).ravel())
    return np.asarray(feats, dtype=np.float32), clips[["subject", "clip", "label"]]


def chance_uf1(labels) -> dict:
    """Expected UF1 of label-blind guessing for these labels. Guessing class c with probability
    q_c when its share is p_c gives precision p_c and recall q_c, so F1_c = 2 p_c q_c / (p_c + q_c).
    'prior' (q = p: UF1 = mean of p over present classes = 1/K), 'uniform' (q = 1/K) and
    'majority' (always the biggest class)."""
    p = pd.Series(labels).value_counts(normalize=True).reindex(CLASSES, fill_value=0).to_numpy()
    k = len(CLASSES)

    def uf1(q):
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + q > 0, 2 * p * q / (p + q), 0.0)
        return float(f1.mean())

    majority = np.zeros(k)
    majority[np.argmax(p)] = 1
    return {"prior": uf1(p), "uniform": uf1(np.full(k, 1 / k)), "majority": uf1(majority)}


def loso_baseline(root: str | Path, *, size: int = 32, C: float = 1.0) -> dict:
    """Leave-one-subject-out logistic regression on :func:`difference_features`: pooled UF1 (macro
    F1), UAR and accuracy, and the chance levels of :func:`chance_uf1`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, rows = difference_features(root, size=size)
    y = rows["label"].to_numpy()
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=C, max_iter=2000, class_weight="balanced"))
    pred = cross_val_predict(model, x, y, groups=rows["subject"], cv=LeaveOneGroupOut())
    chance = chance_uf1(y)
    return {"baseline_uf1": float(f1_score(y, pred, average="macro", labels=list(CLASSES))),
            "baseline_uar": float(balanced_accuracy_score(y, pred)),
            "baseline_acc": float(accuracy_score(y, pred)),
            "chance_uf1": max(chance.values()), **{f"chance_uf1_{k}": v for k, v in chance.items()},
            "n_clips": int(len(y)), "n_subjects": int(rows["subject"].nunique()),
            "predictions": rows.assign(predicted=pred)}


def amplitude_check(root: str | Path) -> dict:
    """Largest landmark motion of every clip, from its ground-truth landmarks of the expression
    alone (``expression_landmarks``: no head motion, no blink; a SynthME from before they were
    written: the landmarks with the jitter removed), in px at the 224-px face scale."""
    gt_table = load_groundtruth(root)
    per_clip = []
    for row in gt_table.itertuples():
        gt = load_groundtruth(root, row.subject, row.clip)
        if "expression_landmarks" in gt:
            motion = gt["expression_landmarks"] - gt["neutral_landmarks"][None]
        else:
            motion = gt["landmarks"] - gt["jitter"][:, None, :] - gt["neutral_landmarks"][None]
        px = np.linalg.norm(motion, axis=2).max() * FACE_SCALE / float(gt["face_width"])
        per_clip.append({"subject": row.subject, "clip": row.clip, "max_motion_224": float(px),
                         "amplitude": float(row.amplitude)})
    table = pd.DataFrame(per_clip)
    return {"max_motion_224": float(table["max_motion_224"].max()),
            "median_motion_224": float(table["max_motion_224"].median()), "per_clip": table}


def _person(identity: str) -> str:
    return identity.removesuffix("_mirrored")  # a mirrored photograph shows the same person


def identity_check(root: str | Path) -> dict:
    """Distinct people (the ground truth's ``identity``, mirrors counted as their originals)
    against subjects: ``n_identities``, ``n_subjects``, ``identities_per_subject`` (1.0 when
    every subject is its own person), and per identity the subjects showing it."""
    gt = load_groundtruth(root)
    source = gt["source"] if "source" in gt else pd.Series([""] * len(gt))
    subjects = (source + "/" + gt["subject"]).rename("subject")
    people = gt["identity"].map(_person).rename("identity")
    table = (pd.concat([people, subjects], axis=1).drop_duplicates()
             .groupby("identity")["subject"].agg(lambda s: ", ".join(sorted(s))).reset_index())
    table["n_subjects"] = table["subject"].str.count(",") + 1
    n_subjects, n_people = int(subjects.nunique()), int(people.nunique())
    return {"n_identities": n_people, "n_subjects": n_subjects,
            "identities_per_subject": n_people / n_subjects,
            "faces_shared": int((table["n_subjects"] > 1).sum()), "per_identity": table}


def calibrate(root: str | Path, *, detection_step: int = 10) -> dict:
    """All four checks as one flat dict of figures (per-clip tables left out)."""
    out = {}
    for part in (detection_rate(root, step=detection_step), loso_baseline(root),
                 amplitude_check(root), identity_check(root)):
        out.update({k: v for k, v in part.items() if not isinstance(v, pd.DataFrame)})
    return out
