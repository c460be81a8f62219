"""What a SynthME holds, before any pixel: presets, who performs what, and every clip's AUs,
amplitude, timing, nuisances' strengths and names in the layout's own spelling.

Timing follows CASME II at 200 fps (clip length log-normal, median 61 frames, 10th-90th
percentile about 41-97; apex at a Beta(2.2, 2.2) fraction of onset-offset); the SMIC layout is
100 fps with half the frame counts.

Layouts: ``casme2``, ``samm``, ``smic`` (one dataset in that format), and ``megc``: the three
written side by side under one root, each source with its own people (none shared between
sources, as in the real composite), plus the composite's list of 3-class clips
(:mod:`merlib.datasets.megc`). Subject indices run on across the sources (CASME II's first, then
SAMM's, then SMIC's), so every subject of a ``megc`` SynthME is a different person.

What makes a preset hard (all off in ``tiny``, on in ``demo`` and ``megc``; see
:class:`SynthPreset`):

- ``people="orl"``: each subject a different real person (:func:`merlib.synth.faces.people`),
  so a held-out LOSO subject is a face the classifier never saw;
- ``au_variants="overlapping"``: partial AU sets and AUs shared between classes
  (:data:`merlib.synth.motion.CLASS_AU_MIX`), a weaker AU from outside the class in many clips;
- identity-specific style: per person, a gain on each AU (``style_au_sigma``), a left/right
  imbalance (``style_asymmetry``) and an overall expressiveness (``style_amplitude_sigma``);
- nuisances drawn per clip at render time: head rotation and larger head moves, blinks,
  illumination changes (``head_rotation_deg``, ``head_move_rate``, ``blink_rate``,
  ``illumination``), on top of the jitter, flicker and sensor noise every preset has.

Every random draw comes from a generator seeded by ``(seed, stage, subject, clip)``
(:func:`cell_rng`), so the output does not depend on the order of evaluation or the number of
workers; stages added for the knobs above draw only when their knob is on, so ``tiny`` is
unchanged by them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from merlib.registry import CLASSES, SOURCES  # SOURCES: the real datasets' on-disk formats
from merlib.synth.motion import CLASS_AU_MIX, CLASS_AUS, NUISANCE_AUS

LAYOUTS = (*SOURCES, "megc")  # megc: the three side by side, with the composite's list
MAX_BLINK_DEPTH = 0.6  # the lids' warp stays invertible below about 0.6 (motion.blink_displacements)


# --------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class SourceCounts:
    """One source's share of a ``megc`` SynthME: its people and its clips."""

    layout: str  # casme2 | samm | smic
    n_subjects: int
    class_counts: tuple[int, int, int]  # negative, positive, surprise
    n_others: int  # 'others' clips (written in the CASME II / SAMM sheets, not in the list)


@dataclass(frozen=True)
class SynthPreset:
    """Everything that shapes one SynthME preset; timings are in frames at 200 fps. The fields
    after ``jpeg_quality`` are the realism knobs; their defaults are off (the ``tiny`` preset)."""

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
    extra_au_weight: tuple[float, float] = (0.25, 0.6)  # its weight (class AUs: class_au_weight)
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
    # who the subjects are: "bundled" cycles the four faces of base_faces() (two people, works
    # offline); "orl" gives every subject its own person (merlib.synth.faces.people)
    people: str = "bundled"
    # layout "megc": each source's people and clips; empty means the fields above for each
    # source. When given, a single-format layout writes that source's part of the megc dataset
    # (same people, same clips), and n_subjects, class_counts and n_others go unused
    megc_sources: tuple[SourceCounts, ...] = ()
    # "stereotyped": CLASS_AUS; "overlapping": CLASS_AU_MIX (partial sets, AUs shared by classes)
    au_variants: str = "stereotyped"
    class_au_weight: tuple[float, float] = (0.6, 1.0)  # weight of each of a clip's class AUs
    # identity-specific style, drawn once per subject: AU gains exp(N(0, s)), a left/right
    # imbalance U(-a, a) (one side moves 1+a times as far as the other), expressiveness
    # exp(N(0, s)) on the amplitude (kept within amplitude_range)
    style_au_sigma: float = 0.0
    style_asymmetry: float = 0.0
    style_amplitude_sigma: float = 0.0
    # head motion on top of the jitter: in-plane rotation (random walk, at most this many
    # degrees) and, in this share of clips, one smooth head move of head_move_px px
    head_rotation_deg: float = 0.0
    head_move_rate: float = 0.0
    head_move_px: tuple[float, float] = (1.0, 3.0)
    # blinks: this share of clips holds one, closing the eyes by a fraction in blink_depth, over
    # blink_frames frames (at 200 fps), at any time of the clip (unrelated to the expression).
    # A warp can only narrow an eye, not lay a lid over it: past about 0.6 the lids' warp folds
    # over itself, so deeper blinks are refused
    blink_rate: float = 0.0
    blink_depth: tuple[float, float] = (0.25, 0.5)
    blink_frames: tuple[int, int] = (20, 50)
    # illumination: a light gradient across the face that changes by up to this relative amount
    # over the clip (a smooth ramp starting at a random frame)
    illumination: float = 0.0

    def __post_init__(self) -> None:
        if self.people not in ("bundled", "orl"):
            raise ValueError(f"SynthPreset.people must be 'bundled' or 'orl', got {self.people!r}")
        if self.au_variants not in ("stereotyped", "overlapping"):
            raise ValueError(f"SynthPreset.au_variants must be 'stereotyped' or 'overlapping', "
                             f"got {self.au_variants!r}")
        if not 0 <= self.blink_depth[0] <= self.blink_depth[1] <= MAX_BLINK_DEPTH:
            raise ValueError(f"SynthPreset.blink_depth must lie in [0, {MAX_BLINK_DEPTH}], got "
                             f"{self.blink_depth}")
        if any(sc.layout not in SOURCES for sc in self.megc_sources) or \
                len({sc.layout for sc in self.megc_sources}) != len(self.megc_sources):
            raise ValueError(f"SynthPreset.megc_sources: one entry per source at most, "
                             f"each one of {SOURCES}")

    @property
    def n_clips(self) -> int:
        return sum(self.class_counts) + self.n_others

    @property
    def has_style(self) -> bool:
        return bool(self.style_au_sigma or self.style_asymmetry or self.style_amplitude_sigma)

    def sources(self, layout: str) -> tuple[SourceCounts, ...]:
        """The sources a layout writes, with their counts (one for a single-format layout)."""
        if layout != "megc":
            return (SourceCounts(layout, self.n_subjects, self.class_counts, self.n_others),)
        given = {sc.layout: sc for sc in self.megc_sources}
        return tuple(given.get(src, SourceCounts(src, self.n_subjects, self.class_counts,
                                                 self.n_others)) for src in SOURCES)


# The realism knobs of the presets meant to be trained on (demo, megc); tiny keeps them off.
# Tuned on demo (casme2 layout) with the calibration's LOSO logistic regression as the proxy:
# UF1 0.63, 0.57 and 0.56 with seeds 0-2, against 0.94 before they existed (docs/DECISIONS.md).
# The amplitude stops at 4.5: the overlapping AU sets' steeper fields overshoot it by up to about
# 30% in a few clips, and the expression must stay within 6 px.
# The knobs that make SynthME harder and closer to real recordings (notebook 01 shows them).
KNOBS = {
    "people": "who the subjects are: 'orl' one real person each (40 ORL people), 'bundled' two photographs",
    "amplitude_range": "apex displacement of the class AUs, px at the 224 face scale",
    "au_variants": "'overlapping': partial AU sets, AUs shared between classes",
    "class_au_weight": "weight of each of a clip's class AUs (partial activation)",
    "extra_au_rate": "share of clips with one weaker AU from outside their class",
    "style_au_sigma": "identity style: log-normal gain per AU and subject",
    "style_asymmetry": "identity style: one side of the face moves up to 1+a times the other",
    "style_amplitude_sigma": "identity style: log-normal expressiveness per subject",
    "jitter_step": "head drift per frame (random walk), px",
    "head_rotation_deg": "in-plane head rotation during a clip, degrees at most",
    "head_move_rate": "share of clips with one smooth head move",
    "blink_rate": "share of clips with a blink unrelated to the expression",
    "illumination": "light gradient changing over the clip, relative amount",
    "flicker": "frame-to-frame gain flicker, relative amplitude",
}


_HARD = dict(
    people="orl", au_variants="overlapping", class_au_weight=(0.5, 1.0),
    amplitude_range=(1.5, 4.5),
    style_au_sigma=0.35, style_asymmetry=0.3, style_amplitude_sigma=0.25,
    jitter_step=0.1, jitter_tremor=0.2, jitter_max=1.5,
    head_rotation_deg=0.6, head_move_rate=0.3, head_move_px=(1.0, 3.0),
    blink_rate=0.35, illumination=0.04, flicker=0.008,
)


PRESETS = {
    # CI: 4 subjects, 16 clips (14 in the SMIC layout), short clips so it generates in seconds;
    # clearer expressions (no extra AU, amplitude >= 3 px) so 14 clips carry a learnable signal.
    "tiny": SynthPreset(name="tiny", n_subjects=4, class_counts=(6, 4, 4), n_others=2,
                        length_median=24.0, length_sigma=0.2, length_range=(16, 36),
                        amplitude_range=(3.0, 5.5), extra_au_rate=0.0),
    # make reproduce: CASME II's 88/32/25 imbalance halved, 10 subjects, 10 different people,
    # the realism knobs on.
    "demo": SynthPreset(name="demo", n_subjects=10, class_counts=(44, 16, 13), n_others=5,
                        **_HARD),
    # layout "megc": 8 people per source (24 in all), 5-6 clips each, each source with its
    # own class balance from the real composite (CASME II 88/32/25, SAMM 92/26/15, SMIC
    # 70/51/43, about a quarter of it); layout casme2, samm or smic: that source's part of it.
    "megc": SynthPreset(name="megc", n_subjects=8, class_counts=(24, 9, 7), n_others=3,
                        megc_sources=(SourceCounts("casme2", 8, (24, 9, 7), 3),
                                      SourceCounts("samm", 8, (25, 7, 5), 3),
                                      SourceCounts("smic", 8, (17, 13, 11), 0)),
                        **_HARD),
    # make reproduce (the whole paper on 2 cores in its time budget): the megc layout at its
    # smallest, 8 people per source as in "megc" but 3 clips each (24 per source, 72 in all),
    # each source's class balance from the real composite as closely as 24 clips allow.
    "compact": SynthPreset(name="compact", n_subjects=8, class_counts=(15, 5, 4), n_others=1,
                           megc_sources=(SourceCounts("casme2", 8, (15, 5, 4), 1),
                                         SourceCounts("samm", 8, (16, 5, 3), 1),
                                         SourceCounts("smic", 8, (10, 8, 6), 0)),
                           **_HARD),
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
# added with the realism knobs: drawn only when those are on
STAGE_PEOPLE, STAGE_STYLE, STAGE_NUISANCE = 5, 6, 7


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
    source: str = ""  # the layout the clip is written in (casme2 | samm | smic)
    asymmetry: float = 0.0  # the subject's left/right imbalance (SynthPreset.style_asymmetry)

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


def _allocate(counts: SourceCounts, rng: np.random.Generator) -> list[list[str]]:
    """Which categories each subject performs: every class dealt round-robin over a seeded
    permutation of the subjects, so each class reaches most subjects."""
    per_subject: list[list[str]] = [[] for _ in range(counts.n_subjects)]
    cursor = 0
    for cat, count in zip((*CLASSES, "others"), (*counts.class_counts, counts.n_others)):
        order = rng.permutation(counts.n_subjects)
        for j in range(count):
            per_subject[order[(cursor + j) % counts.n_subjects]].append(cat)
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
    """The clips of a SynthME dataset, in writing order (sources, subjects, then clips)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown SynthME layout {layout!r}; choose one of {LAYOUTS}")
    p = get_preset(preset)
    if layout != "megc" and p.megc_sources:
        # a source of a megc preset is its part of the composite: the same people and clips, so
        # a per-source run and the composite run see the same data
        return [pl for pl in plan_dataset("megc", p, seed) if pl.source == layout]
    plans: list[ClipPlan] = []
    first_subject = 0
    for k, counts in enumerate(p.sources(layout)):
        if counts.layout == "smic" and counts.n_subjects > len(SMIC_SUBJECTS):
            raise ValueError(f"the SMIC layout has {len(SMIC_SUBJECTS)} subject ids, "
                             f"preset {p.name} asks for {counts.n_subjects}")
        # a single format keeps the stream it always had; megc's sources each get their own
        rng = cell_rng(seed, STAGE_PLAN) if layout != "megc" else cell_rng(seed, STAGE_PLAN, k)
        plans += _plan_source(p, counts, seed, rng, first_subject)
        first_subject += counts.n_subjects
    return plans


def _style(p: SynthPreset, seed: int, si: int) -> tuple[dict[str, float], float, float]:
    """A subject's expression style: AU gains, left/right imbalance, expressiveness."""
    if not p.has_style:
        return {}, 0.0, 1.0
    rng = cell_rng(seed, STAGE_STYLE, si)
    aus = sorted({au for variants in CLASS_AU_MIX.values() for aus, _ in variants for au in aus}
                 | set(NUISANCE_AUS), key=lambda a: int(a[2:]))
    gains = dict(zip(aus, np.exp(p.style_au_sigma * rng.standard_normal(len(aus)))))
    asym = float(rng.uniform(-p.style_asymmetry, p.style_asymmetry))
    expressive = float(np.exp(p.style_amplitude_sigma * rng.standard_normal()))
    return gains, asym, expressive


def _class_aus(p: SynthPreset, cat: str, rng: np.random.Generator) -> tuple[str, ...]:
    if p.au_variants == "overlapping":
        variants = CLASS_AU_MIX[cat]
        probs = np.array([w for _, w in variants])
        return variants[int(rng.choice(len(variants), p=probs / probs.sum()))][0]
    variants = CLASS_AUS[cat]
    if cat == "negative":  # AU15 is the rarer one (CASME II: repression 27, disgust 63)
        return variants[0] if rng.random() < p.au9_share else variants[1]
    return variants[int(rng.integers(len(variants)))]


def _plan_source(p: SynthPreset, counts: SourceCounts, seed: int, rng: np.random.Generator,
                 first_subject: int) -> list[ClipPlan]:
    layout = counts.layout
    plans = []
    for local, cats in enumerate(_allocate(counts, rng)):
        si = first_subject + local
        subject = _subject_name(layout, local)
        gains, asym, expressive = _style(p, seed, si)
        used: set[str] = set()
        counters: Counter = Counter()
        for ci, cat in enumerate(cats):
            rng = cell_rng(seed, STAGE_CLIP, si, ci)
            aus = cls = _class_aus(p, cat, rng)
            weights = [float(x) for x in rng.uniform(*p.class_au_weight, size=len(aus))]
            if rng.random() < p.extra_au_rate:  # a weaker AU from outside the class
                pool = [a for a in NUISANCE_AUS if a not in aus]
                aus = (*aus, pool[int(rng.integers(len(pool)))])
                weights.append(float(rng.uniform(*p.extra_au_weight)))
            if gains:
                weights = [w * float(gains[a]) for a, w in zip(aus, weights)]
            weights = tuple(weights)
            amplitude = float(rng.uniform(*p.amplitude_range))
            if expressive != 1.0:
                lo, hi = p.amplitude_range
                amplitude = float(np.clip(amplitude * expressive, lo, hi))
            first, onset, apex, offset = _timing(p, rng, layout)
            emotion = _emotion(layout, cat, cls, rng, p.au_variants)
            if cat == "others" and layout == "smic":
                continue  # SMIC has only the three class folders
            name = _clip_name(layout, subject, cat, rng, used, counters)
            used.add(name)
            plans.append(ClipPlan(si, ci, subject, name, "" if cat == "others" else cat, emotion,
                                  tuple(aus), weights, round(amplitude, 4), first, onset, apex,
                                  offset, p.fps // 2 if layout == "smic" else p.fps,
                                  source=layout, asymmetry=round(asym, 4)))
    return plans


def _emotion(layout: str, cat: str, aus: Sequence[str], rng: np.random.Generator,
             au_variants: str = "stereotyped") -> str:
    """The layout's word for a clip of category ``cat`` with class AUs ``aus``."""
    if layout == "smic":
        return cat
    if cat == "negative" and au_variants == "overlapping":
        return _negative_word(layout, aus, rng)
    if layout == "casme2":
        if cat == "negative":
            return CASME2_NEGATIVE[aus[2]]  # AU9 or AU15, after AU4 and AU7
        return {"positive": "happiness", "surprise": "surprise", "others": "others"}[cat]
    if cat == "negative":
        words = SAMM_NEGATIVE[aus[2]]
        return words[int(rng.integers(len(words)))]
    return {"positive": "Happiness", "surprise": "Surprise", "others": "Other"}[cat]


def _negative_word(layout: str, aus: Sequence[str], rng: np.random.Generator) -> str:
    """The coders' word for a negative clip of the overlapping sets, from its class AUs: nose
    wrinkle or brow lowering reads as disgust (SAMM: anger or disgust), the mouth and chin AUs
    (AU14/15/17) as repression (SAMM: contempt, sadness or fear)."""
    mouth = bool({"AU14", "AU15", "AU17"} & set(aus)) and "AU9" not in aus
    if layout == "casme2":
        return "repression" if mouth else "disgust"
    words = ("Contempt", "Sadness", "Fear") if mouth else ("Anger", "Disgust")
    return words[int(rng.integers(len(words)))]


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
