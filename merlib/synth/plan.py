"""What a SynthME holds, before any pixel: presets, which subject performs what, and every clip's
AUs, amplitude, timing and names in the layout's own spelling.

Timing follows CASME II at 200 fps (clip length log-normal, median 61 frames, 10th-90th
percentile about 41-97; apex at a Beta(2.2, 2.2) fraction of onset-offset); the SMIC layout is
100 fps with half the frame counts.

Every random draw comes from a generator seeded by ``(seed, stage, subject, clip)``
(:func:`cell_rng`), so the output does not depend on the order of evaluation or the number of
workers.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from merlib.registry import CLASSES
from merlib.synth.motion import CLASS_AUS, NUISANCE_AUS

LAYOUTS = ("casme2", "samm", "smic")


# --------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class SynthPreset:
    """Everything that shapes one SynthME preset; timings are in frames at 200 fps."""

    name: str
    n_subjects: int
    class_counts: tuple[int, int, int]  # negative, positive, surprise (CLASSES order)
    n_others: int  # 'others' clips (CASME II / SAMM layouts only)
    length_median: float = 61.0  # clip length onset..offset, log-normal
    length_sigma: float = 0.335  # gives 10th-90th percentile ~ 41-97 at median 61
    length_range: tuple[int, int] = (30, 150)
    apex_beta: float = 2.2  # apex fraction of onset..offset ~ Beta(a, a): mean 0.5
    min_rise_fall: int = 2  # frames from onset to apex and apex to offset, at least
    amplitude_range: tuple[float, float] = (1.5, 5.5)  # px at 224 face scale
    au9_share: float = 0.65  # negative clips with AU9 (rest AU15)
    extra_au_rate: float = 0.5  # clips with one weaker AU from outside their class
    extra_au_weight: tuple[float, float] = (0.25, 0.6)  # its weight (class AUs: 0.6-1.0)
    face_width_range: tuple[float, float] = (190.0, 250.0)  # px in the 640x480 frame
    roll_deg: float = 4.0  # extra in-plane rotation, +-
    shape_warp: float = 4.0  # identity warps, px at 224 face scale, +-
    noise_sigma_range: tuple[float, float] = (1.2, 2.0)  # luminance noise, grey levels
    chroma_noise_sigma: float = 0.8  # fixed-pattern noise per clip
    jitter_step: float = 0.08  # head drift per frame (random walk), px
    jitter_tremor: float = 0.15  # head tremor per frame, px
    jitter_max: float = 1.2  # px
    flicker: float = 0.006  # relative gain amplitude
    frame_size: tuple[int, int] = (480, 640)  # (H, W)
    fps: int = 200
    jpeg_quality: int = 95

    @property
    def n_clips(self) -> int:
        return sum(self.class_counts) + self.n_others


PRESETS = {
    # CI: 4 subjects, 16 clips (14 in the SMIC layout), short clips so it generates in seconds;
    # clearer expressions (no extra AU, amplitude >= 3 px) so 14 clips carry a learnable signal.
    "tiny": SynthPreset(name="tiny", n_subjects=4, class_counts=(6, 4, 4), n_others=2,
                        length_median=24.0, length_sigma=0.2, length_range=(16, 36),
                        amplitude_range=(3.0, 5.5), extra_au_rate=0.0),
    # make reproduce: CASME II's 88/32/25 imbalance halved, 10 subjects.
    "demo": SynthPreset(name="demo", n_subjects=10, class_counts=(44, 16, 13), n_others=5),
}


def get_preset(preset: str | SynthPreset) -> SynthPreset:
    if isinstance(preset, SynthPreset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown SynthME preset {preset!r}; "
                         f"choose one of {sorted(PRESETS)}") from None


def cell_rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of one (seed, stage, subject, clip) cell: independent of evaluation order."""
    return np.random.default_rng([int(seed), *map(int, key)])


STAGE_PLAN, STAGE_SUBJECT, STAGE_CLIP, STAGE_RENDER = 1, 2, 3, 4


# --------------------------------------------------------------------------------------------
# Dataset plan


@dataclass(frozen=True)
class ClipPlan:
    """Everything about one clip but its pixels."""

    subject_index: int
    clip_index: int  # within the subject
    subject: str  # canonical spelling of the layout: sub01 | 006 | s01
    clip: str
    label: str  # negative | positive | surprise | '' (others)
    emotion: str  # the layout's own word, as written in its sheet / folder
    aus: tuple[str, ...]
    au_weights: tuple[float, ...]
    amplitude: float  # px at 224 face scale: the largest control-point displacement at the apex
    first_frame: int
    onset: int
    apex: int
    offset: int
    fps: int

    @property
    def n_frames(self) -> int:
        return self.offset - self.first_frame + 1


SMIC_SUBJECTS = [i for i in range(1, 21) if i not in (7, 10, 16, 17)]
SMIC_CODE = {"negative": "ne", "positive": "po", "surprise": "sur"}
CASME2_NEGATIVE = {"AU9": "disgust", "AU15": "repression"}
SAMM_NEGATIVE = {"AU9": ("Anger", "Disgust"), "AU15": ("Contempt", "Sadness", "Fear")}


def _subject_name(layout: str, i: int) -> str:
    if layout == "casme2":
        return f"sub{i + 1:02d}"
    if layout == "samm":
        return f"{i + 6:03d}"
    return f"s{SMIC_SUBJECTS[i]:02d}"


def _allocate(preset: SynthPreset, seed: int) -> list[list[str]]:
    """Which categories each subject performs: every class dealt round-robin over a seeded
    permutation of the subjects, so each class reaches most subjects."""
    rng = cell_rng(seed, STAGE_PLAN)
    per_subject: list[list[str]] = [[] for _ in range(preset.n_subjects)]
    cursor = 0
    for cat, count in zip((*CLASSES, "others"), (*preset.class_counts, preset.n_others)):
        order = rng.permutation(preset.n_subjects)
        for j in range(count):
            per_subject[order[(cursor + j) % preset.n_subjects]].append(cat)
        cursor += count
    for cats in per_subject:
        rng.shuffle(cats)
    return per_subject


def _timing(preset: SynthPreset, rng: np.random.Generator,
            layout: str) -> tuple[int, int, int, int]:
    """(first frame, onset, apex, offset) of a clip; the frames run from onset to offset."""
    lo, hi = preset.length_range
    z = rng.standard_normal()
    n = int(np.clip(round(preset.length_median * np.exp(preset.length_sigma * z)), lo, hi))
    frac = rng.beta(preset.apex_beta, preset.apex_beta)
    rise = int(round(frac * (n - 1)))
    first = {"casme2": int(rng.integers(1, 300)), "samm": int(rng.integers(1000, 9000)),
             "smic": int(rng.integers(1, 3000))}[layout]
    if layout == "smic":  # 100 fps: half the frames
        n = max(n // 2, 2 * preset.min_rise_fall + 1)
        rise = int(round(rise / 2))
    rise = int(np.clip(rise, preset.min_rise_fall, n - 1 - preset.min_rise_fall))
    onset = first
    return first, onset, onset + rise, onset + n - 1


def plan_dataset(layout: str = "casme2", preset: str | SynthPreset = "tiny",
                 seed: int = 0) -> list[ClipPlan]:
    """The clips of a SynthME dataset, in writing order (subjects, then clips)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown SynthME layout {layout!r}; choose one of {LAYOUTS}")
    p = get_preset(preset)
    if layout == "smic" and p.n_subjects > len(SMIC_SUBJECTS):
        raise ValueError(f"the SMIC layout has {len(SMIC_SUBJECTS)} subject ids, "
                         f"preset {p.name} asks for {p.n_subjects}")
    plans = []
    for si, cats in enumerate(_allocate(p, seed)):
        subject = _subject_name(layout, si)
        used: set[str] = set()
        counters: Counter = Counter()
        for ci, cat in enumerate(cats):
            rng = cell_rng(seed, STAGE_CLIP, si, ci)
            variants = CLASS_AUS[cat]
            if cat == "negative":  # AU15 is the rarer one (CASME II: repression 27, disgust 63)
                aus = variants[0] if rng.random() < p.au9_share else variants[1]
            else:
                aus = variants[int(rng.integers(len(variants)))]
            weights = [float(x) for x in rng.uniform(0.6, 1.0, size=len(aus))]
            if rng.random() < p.extra_au_rate:  # a weaker AU from outside the class
                pool = [a for a in NUISANCE_AUS if a not in aus]
                aus = (*aus, pool[int(rng.integers(len(pool)))])
                weights.append(float(rng.uniform(*p.extra_au_weight)))
            weights = tuple(weights)
            amplitude = float(rng.uniform(*p.amplitude_range))
            first, onset, apex, offset = _timing(p, rng, layout)
            emotion = _emotion(layout, cat, aus, rng)
            if cat == "others" and layout == "smic":
                continue  # SMIC has only the three class folders
            name = _clip_name(layout, subject, cat, rng, used, counters)
            used.add(name)
            plans.append(ClipPlan(si, ci, subject, name, "" if cat == "others" else cat, emotion,
                                  tuple(aus), weights, round(amplitude, 4), first, onset, apex,
                                  offset, p.fps // 2 if layout == "smic" else p.fps))
    return plans


def _emotion(layout: str, cat: str, aus: Sequence[str], rng: np.random.Generator) -> str:
    if layout == "smic":
        return cat
    if layout == "casme2":
        if cat == "negative":
            return CASME2_NEGATIVE[aus[2]]  # AU9 or AU15, after AU4 and AU7
        return {"positive": "happiness", "surprise": "surprise", "others": "others"}[cat]
    if cat == "negative":
        words = SAMM_NEGATIVE[aus[2]]
        return words[int(rng.integers(len(words)))]
    return {"positive": "Happiness", "surprise": "Surprise", "others": "Other"}[cat]


def _clip_name(layout: str, subject: str, cat: str, rng: np.random.Generator, used: set[str],
               counters: Counter) -> str:
    if layout == "smic":
        code = SMIC_CODE[cat]
        counters[code] += 1
        return f"{subject}_{code}_{counters[code]:02d}"
    if layout == "samm":
        while True:
            ind = int(rng.integers(1, 8))
            counters[ind] += 1
            name = f"{subject}_{ind}_{counters[ind]}"
            if name not in used:
                return name
    # CASME II's irregular names: EP02_01f, EP01_2, EP09f, EP06_02_01
    while True:
        ep, k = int(rng.integers(1, 20)), int(rng.integers(1, 10))
        style = rng.choice(4, p=[0.55, 0.2, 0.15, 0.1])
        name = [f"EP{ep:02d}_{k:02d}f", f"EP{ep:02d}_{k:02d}", f"EP{ep:02d}_{k}",
                f"EP{ep:02d}f"][style]
        if name not in used:
            return name
