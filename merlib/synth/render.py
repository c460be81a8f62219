"""Pixels: subjects (a person's photograph placed into a recording-like frame, shape-warped and
recoloured) and clips (the subject's neutral frame moved by the clip's warp field, with head
motion, blinks, illumination changes, flicker and sensor noise), with each clip's ground truth.

A subject is one face (:func:`subject_face`: with ``people="orl"`` a distinct person per subject,
a seeded choice of the people of :func:`merlib.synth.faces.people` and of one of that person's
three most neutral photographs) placed into a 640x480 recording-like frame (face 190-250 px
wide, soft head-and-shoulders cut-out over a blurred/plain backdrop) under its own smooth shape
warp (eye spacing, jaw width, nose length, mouth height), roll, scale and colour. A small (ORL)
photograph's edges are extended by replication, not mirroring, so no mirrored face part
appears below the chin.

A clip's expression field is applied with one ``cv2.remap`` per frame, together with the head
motion (jitter, and where the preset asks: in-plane rotation about the face centre and one
larger smooth head move) and a blink field (eyelids) with its own timing; a light gradient that
changes over the clip, flicker (global gain) and sensor noise (per-frame luminance noise +
fixed-pattern chroma noise) complete the frame. SAMM is a greyscale dataset: its clips are
written grey (BT.601), in three equal channels.

Ground truth per clip: landmarks as they appear (everything applied), the expression alone
(``expression_landmarks``), and each nuisance's curve (``jitter``, ``head_angle``, ``blink``,
``illumination``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from merlib.synth.faces import (FACE_SCALE, KEEP_PHOTOS, VIRTUAL, BaseFace, base_faces,
                                ellipse_radius, face_axes, falloff, people, virtual_points)
from merlib.synth.motion import (au_displacements, blink_curve, blink_displacements, dense_field,
                                 forward_points, intensity_curve)
from merlib.synth.plan import (STAGE_NUISANCE, STAGE_PEOPLE, STAGE_RENDER, STAGE_SUBJECT,
                               ClipPlan, SynthPreset, cell_rng, get_preset)


# --------------------------------------------------------------------------------------------
# Subjects


@dataclass(frozen=True)
class Subject:
    index: int
    identity: str  # the person ("orl_s07", "astronaut": a mirrored photograph is the same person)
    photo: str  # the photograph ("orl_s07_3", "astronaut_mirrored")
    neutral: np.ndarray  # (H, W, 3) uint8, the face at rest in its recording frame
    landmarks: np.ndarray  # (68, 2) of the neutral frame
    face_width: float  # px
    head_mask: np.ndarray  # (H, W) float32 in [0, 1]: what moves with the head
    roi: tuple[int, int, int, int]  # y0, y1, x0, x1: where anything moves
    noise_sigma: float
    noise_bank: np.ndarray  # (K, H + pad, W + pad) float32 luminance noise; frames take windows


def _colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-subject colour: channel gains, gamma, saturation, brightness."""
    f = img.astype(np.float32) / 255.0
    f = f ** rng.uniform(0.85, 1.15)
    grey = f.mean(axis=2, keepdims=True)
    f = grey + rng.uniform(0.75, 1.2) * (f - grey)
    f = f * rng.uniform(0.92, 1.08, size=3).astype(np.float32) + rng.uniform(-0.06, 0.06)
    return np.clip(f * 255.0, 0, 255).astype(np.float32)


N_NEUTRAL_CHOICES = KEEP_PHOTOS  # a subject's photograph: one of its person's most neutral


def subject_face(preset: SynthPreset, seed: int, index: int) -> BaseFace:
    """The face subject ``index`` shows. ``people="bundled"``: the four faces of ``base_faces``
    in turn (two people). ``people="orl"``: person ``perm[index]`` of a seeded permutation of
    :func:`~merlib.synth.faces.people`, so no two subjects of a dataset share a person."""
    if preset.people == "bundled":
        faces = base_faces()
        return faces[index % len(faces)]
    pool = people()
    if index >= len(pool):
        raise ValueError(f"SynthME has {len(pool)} distinct people (the two bundled photographs and "
                         f"the ORL people the face finder accepts); preset {preset.name} asks for "
                         f"subject #{index + 1}")
    person = pool[cell_rng(seed, STAGE_PEOPLE).permutation(len(pool))[index]]
    pick = cell_rng(seed, STAGE_PEOPLE, index).integers(min(N_NEUTRAL_CHOICES, len(person.faces)))
    return person.faces[int(pick)]


def _clothe(placed: np.ndarray, m: np.ndarray, photo_shape: tuple[int, ...],
            rng: np.random.Generator) -> np.ndarray:
    """Below a small photograph's bottom edge, a plain shirt (its own tone, darker towards the
    sides) instead of the edge row replicated down the frame in streaks; a soft seam."""
    h, w = placed.shape[:2]
    ph, pw = photo_shape[:2]
    inv = cv2.invertAffineTransform(m)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x_photo = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    y_photo = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    seam = np.clip((y_photo - 0.96 * (ph - 1)) / (0.08 * ph), 0, 1)[..., None]
    tone = rng.uniform(30, 170) + rng.uniform(-12, 12, size=3)
    shade = 1 - 0.3 * np.clip(np.abs(x_photo - pw / 2) / np.float32(1.2 * pw), 0, 1)
    shirt = tone.astype(np.float32) * shade[..., None]
    return (1 - seam) * placed + seam * shirt


@lru_cache(maxsize=32)
def make_subject(preset: SynthPreset, seed: int, index: int) -> Subject:
    """Subject ``index`` of a preset: its face placed, warped and recoloured."""
    rng = cell_rng(seed, STAGE_SUBJECT, index)
    base = subject_face(preset, seed, index)
    h, w = preset.frame_size
    c0, u0, _, w0 = face_axes(base.landmarks)

    # placement: similarity transform from the photograph into the frame
    target_w = rng.uniform(*preset.face_width_range)
    scale = target_w / w0
    roll = np.deg2rad(rng.uniform(-preset.roll_deg, preset.roll_deg))
    centre = np.array([w / 2 + rng.uniform(-30, 30), h / 2 + 15 + rng.uniform(-15, 15)])
    rot = scale * np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
    m = np.hstack([rot, (centre - rot @ c0)[:, None]])
    # a small photograph ends at the chin: mirroring it would put a second mouth below the chin
    border = cv2.BORDER_REPLICATE if base.small else cv2.BORDER_REFLECT101
    placed = cv2.warpAffine(base.image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border)
    if base.small:
        placed = _clothe(placed, m, base.image.shape, cell_rng(seed, STAGE_PEOPLE, index, 1))
    lm = base.landmarks @ rot.T + m[:, 2]
    person = _colour(placed, rng)

    # backdrop: a plain gradient mixed with the heavily blurred scene
    tone = rng.uniform(120, 200) + rng.uniform(-20, 20, size=3)
    grad = np.linspace(-1, 1, h, dtype=np.float32)[:, None, None] * rng.uniform(-18, 18)
    plain = np.broadcast_to(tone.astype(np.float32), (h, w, 3)) + grad
    blurred = cv2.GaussianBlur(person, (0, 0), sigmaX=0.15 * target_w)
    mix = rng.uniform(0.2, 0.5)
    backdrop = (1 - mix) * plain + mix * blurred

    # head (ellipse, raised to take in the hair) and shoulders below the chin
    _, _, v, fw = face_axes(lm)
    head = falloff(ellipse_radius((h, w), lm, 0.62, 0.82, shift_v=-0.18), 0.92, 1.08)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chin = lm[8]
    below = yy - (chin[1] + 0.05 * fw)
    half = 0.32 * fw + 1.1 * np.maximum(below, 0)
    torso = ((below > 0) & (np.abs(xx - chin[0]) < np.minimum(half, 1.5 * fw))).astype(np.float32)
    mask = cv2.GaussianBlur(np.maximum(head, torso), (0, 0), sigmaX=0.03 * fw)[..., None]
    frame = mask * person + (1 - mask) * backdrop

    # identity shape warp, px at 224 face scale: eye spacing, jaw width, nose length, mouth height
    _, u, v, fw = face_axes(lm)
    k = fw / FACE_SCALE
    centre_pt = lm.mean(0)
    side = np.sign((lm - centre_pt) @ u)[:, None]
    d = np.zeros_like(lm)
    sw = preset.shape_warp
    eyes = list(range(17, 27)) + list(range(36, 48))
    d[eyes] += rng.uniform(-sw, sw) * side[eyes] * u
    jaw = {0: 1, 1: 1, 2: 1, 3: 1, 4: 0.6, 5: 0.3, 11: 0.3, 12: 0.6, 13: 1, 14: 1, 15: 1, 16: 1}
    dj = rng.uniform(-1.5 * sw, 1.5 * sw)
    for i, f in jaw.items():
        d[i] += f * dj * side[i, 0] * u
    dn = rng.uniform(-sw, sw)
    d[31:36] += dn * v
    d[30] += 0.6 * dn * v
    d[29] += 0.25 * dn * v
    d[48:68] += (rng.uniform(-0.75 * sw, 0.75 * sw) + 0.7 * dn) * v
    d *= k
    target = lm + d
    # backward field exact at the targets: out(p + d) = in(p)
    fld = dense_field(target, -d, lm, (h, w))
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    neutral = cv2.remap(frame.astype(np.float32), gx + fld[..., 0], gy + fld[..., 1],
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    neutral = np.clip(np.rint(neutral), 0, 255).astype(np.uint8)

    # what moves: the head (jitter) and the face (expressions); torso and backdrop stay
    head_mask = falloff(ellipse_radius((h, w), target, 0.7, 0.95, shift_v=-0.1), 0.9, 1.15)
    moving = (head_mask > 0) | (ellipse_radius((h, w), target, 0.85, 1.05) < 1.3)
    ys, xs = np.nonzero(moving)
    roi = (max(int(ys.min()) - 2, 0), min(int(ys.max()) + 3, h),
           max(int(xs.min()) - 2, 0), min(int(xs.max()) + 3, w))
    # drawing fresh normals for every frame costs more than the rest of a frame: frames take
    # random windows of a small bank instead
    sigma = float(rng.uniform(*preset.noise_sigma_range))
    bank = (sigma * rng.standard_normal((4, h + 32, w + 32), dtype=np.float32))
    return Subject(index=index, identity=base.person or base.name, photo=base.name,
                   neutral=neutral, landmarks=target,
                   face_width=float(face_axes(target)[3]), head_mask=head_mask, roi=roi,
                   noise_sigma=sigma, noise_bank=bank)


# --------------------------------------------------------------------------------------------
# Rendering


def _jitter(n: int, preset: SynthPreset, rng: np.random.Generator) -> np.ndarray:
    drift = np.cumsum(rng.normal(0, preset.jitter_step, size=(n, 2)), axis=0)
    drift -= drift[0]
    tremor = rng.normal(0, preset.jitter_tremor, size=(n, 2))
    return np.clip(drift + tremor, -preset.jitter_max, preset.jitter_max)


@dataclass
class RenderedClip:
    frames: list[np.ndarray]
    groundtruth: dict = field(default_factory=dict)


@dataclass
class _Nuisances:
    """One clip's head motion beyond the jitter, blink and illumination change (all per frame)."""

    angle: np.ndarray  # (n,) in-plane head rotation, degrees
    move: np.ndarray  # (n, 2) a smooth larger head move, px (added to the jitter)
    blink: np.ndarray  # (n,) 0..1
    blink_depth: float
    illumination: np.ndarray  # (n,) relative change of the light gradient
    light_dir: np.ndarray  # (2,) unit vector the gradient runs along

    @property
    def any(self) -> bool:
        return bool(self.angle.any() or self.blink.any() or self.illumination.any())


def _nuisances(plan: ClipPlan, p: SynthPreset, seed: int, face_width: float) -> _Nuisances:
    """Drawn from their own stream, only for the knobs that are on (so a preset without them
    renders exactly as before they existed). Durations are given at 200 fps and scaled to the
    clip's frame rate."""
    n = plan.n_frames
    rate = plan.fps / 200.0
    zeros = np.zeros(n)
    out = _Nuisances(zeros, np.zeros((n, 2)), zeros, 0.0, zeros, np.array([1.0, 0.0]))
    if not (p.head_rotation_deg or p.head_move_rate or p.blink_rate or p.illumination):
        return out
    rng = cell_rng(seed, STAGE_NUISANCE, plan.subject_index, plan.clip_index)
    if p.head_rotation_deg:  # a random walk whose spread at the clip's end is half the limit
        walk = np.cumsum(rng.normal(0, p.head_rotation_deg / (2 * np.sqrt(n)), size=n))
        tremor = rng.normal(0, p.head_rotation_deg / 20, size=n)
        out.angle = np.clip(walk - walk[0] + tremor, -p.head_rotation_deg, p.head_rotation_deg)
    if p.head_move_rate and rng.random() < p.head_move_rate:
        size = rng.uniform(*p.head_move_px) * face_width / FACE_SCALE
        phi = rng.uniform(0, 2 * np.pi)
        start, dur = rng.uniform(0, n), rng.uniform(8, 30) * rate
        step = 0.5 * (1 - np.cos(np.pi * np.clip((np.arange(n) - start) / dur, 0, 1)))
        out.move = step[:, None] * size * np.array([np.cos(phi), np.sin(phi)])
    if p.blink_rate and rng.random() < p.blink_rate:
        dur = rng.uniform(*p.blink_frames) * rate
        out.blink = blink_curve(n, rng.uniform(-dur / 2, n - dur / 2), dur)
        out.blink_depth = float(rng.uniform(*p.blink_depth))
    if p.illumination:
        phi = rng.uniform(0, 2 * np.pi)
        out.light_dir = np.array([np.cos(phi), np.sin(phi)])
        start, dur = rng.uniform(-n / 4, n), rng.uniform(n / 4, n)
        ramp = 0.5 * (1 - np.cos(np.pi * np.clip((np.arange(n) - start) / dur, 0, 1)))
        out.illumination = rng.uniform(-1, 1) * p.illumination * ramp
    return out


def _head_affine(angle_deg: np.ndarray, jit: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(n, 2, 3) backward head maps ``src = A x + b``: content turned by ``angle`` about
    ``centre`` and moved by ``jit``."""
    th = np.deg2rad(angle_deg)
    c, s = np.cos(th), np.sin(th)
    a = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)  # R(-angle)
    b = centre[None] - np.einsum("tij,j->ti", a, centre) - jit
    return np.concatenate([a, b[:, :, None]], axis=2)


def render_clip(plan: ClipPlan, preset: str | SynthPreset, seed: int) -> RenderedClip:
    """Frames (RGB uint8, first_frame..offset) and ground truth of one planned clip."""
    p = get_preset(preset)
    subj = make_subject(p, seed, plan.subject_index)
    rng = cell_rng(seed, STAGE_RENDER, plan.subject_index, plan.clip_index)
    h, w = p.frame_size
    lm = subj.landmarks
    k = subj.face_width / FACE_SCALE

    # one backward field per clip (the apex), scaled per frame by the intensity; fitted at the
    # motion's midpoints so that scaling it stays close to the exact inverse at every intensity
    # (the ground-truth landmarks below are solved exactly from it anyway)
    virt = virtual_points(lm)
    ctrl = np.vstack([lm, [virt[v] for v in VIRTUAL]])
    d = au_displacements(lm, plan.aus, plan.au_weights, asymmetry=plan.asymmetry)
    d = d * plan.amplitude * k
    fld = dense_field(ctrl + d / 2, -d, lm, (h, w))

    n = plan.n_frames
    s = intensity_curve(n, plan.apex - plan.onset, plan.offset - plan.apex)
    jit = _jitter(n, p, rng)
    gain = (1 + p.flicker * np.sin(2 * np.pi * rng.uniform(0.5, 3.0) * np.arange(n) / plan.fps
                                   + rng.uniform(0, 2 * np.pi))
            + rng.normal(0, p.flicker / 3, size=n)).astype(np.float32)
    chroma = rng.normal(0, p.chroma_noise_sigma, size=(h, w, 3)).astype(np.float32)
    nu = _nuisances(plan, p, seed, subj.face_width)
    jit = jit + nu.move

    y0, y1, x0, x1 = subj.roi
    gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32),
                         np.arange(y0, y1, dtype=np.float32))
    fx, fy = fld[y0:y1, x0:x1, 0], fld[y0:y1, x0:x1, 1]
    hm = subj.head_mask[y0:y1, x0:x1]
    still = subj.neutral.astype(np.float32) + chroma  # fixed-pattern noise on the still parts
    bank = subj.noise_bank
    pad = bank.shape[1] - h
    picks = rng.integers(0, [len(bank), pad + 1, pad + 1], size=(n, 3))

    centre = face_axes(lm)[0]
    extra = []
    if nu.blink.any():
        db = blink_displacements(lm, nu.blink_depth)
        bfld = dense_field(ctrl + db / 2, -db, lm, (h, w))
        bx, by = bfld[y0:y1, x0:x1, 0], bfld[y0:y1, x0:x1, 1]
        extra.append((bfld, nu.blink))
    if nu.illumination.any():
        # the gradient runs across the face: -1..1 over one face width, flat beyond 1.5
        across = ((np.arange(w, dtype=np.float32)[None, :] - np.float32(centre[0])) * nu.light_dir[0]
                  + (np.arange(h, dtype=np.float32)[:, None] - np.float32(centre[1])) * nu.light_dir[1])
        light = np.clip(across / np.float32(0.5 * subj.face_width), -1.5, 1.5)
        light = np.ascontiguousarray(np.repeat(light[..., None], 3, axis=2))
        relit = np.empty_like(light)
    affine = _head_affine(nu.angle, jit, centre)
    frames = []
    img = np.empty((h, w, 3), np.float32)
    for t in range(n):
        if not nu.any:
            # backward map: the head content moves by +jit[t], hence the minus
            mx = gx + np.float32(s[t]) * fx - np.float32(jit[t, 0]) * hm
            my = gy + np.float32(s[t]) * fy - np.float32(jit[t, 1]) * hm
        else:  # the head term as an affine map (rotation about the face centre, then the shift)
            (a00, a01, b0), (a10, a11, b1) = affine[t].astype(np.float32)
            mx = gx + np.float32(s[t]) * fx + hm * ((a00 - 1) * gx + a01 * gy + b0)
            my = gy + np.float32(s[t]) * fy + hm * (a10 * gx + (a11 - 1) * gy + b1)
            if nu.blink[t]:
                mx += np.float32(nu.blink[t]) * bx
                my += np.float32(nu.blink[t]) * by
        img[:] = still
        roi = img[y0:y1, x0:x1]
        roi[:] = cv2.remap(subj.neutral, mx, my, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT101)
        roi += chroma[y0:y1, x0:x1]
        if nu.illumination[t]:  # gain * (1 + illumination * light), in one pass over the frame
            np.multiply(light, gain[t] * np.float32(nu.illumination[t]), out=relit)
            relit += gain[t]
            img *= relit
        else:
            img *= gain[t]
        kb, oy, ox = picks[t]
        img += bank[kb, oy:oy + h, ox:ox + w, None]  # luminance noise: a window of the bank
        np.maximum(img, 0, out=img)
        frame = cv2.convertScaleAbs(img)  # rounds and saturates to uint8
        if plan.source == "samm":  # a greyscale camera
            frame = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        frames.append(frame)
    if not nu.any:
        marks = forward_points(lm, fld, scale=s, shift=-jit, shift_mask=subj.head_mask)
    else:
        # a blink's lid field is steep: more fixed-point steps than the smooth fields need
        marks = forward_points(lm, fld, scale=s, shift_mask=subj.head_mask, affine=affine,
                               extra=extra, iterations=20 if extra else 6)
    expression = forward_points(lm, fld, scale=s)  # no head motion, no blink

    motion = expression - lm[None]
    gt = {
        "subject": plan.subject, "clip": plan.clip, "label": plan.label,
        "emotion": plan.emotion.lower(), "aus": "+".join(plan.aus), "identity": subj.identity,
        "photo": subj.photo, "source": plan.source,
        "first_frame": plan.first_frame, "onset": plan.onset, "apex": plan.apex,
        "offset": plan.offset,
        "fps": plan.fps, "amplitude": plan.amplitude, "face_width": subj.face_width,
        "max_landmark_motion": float(np.linalg.norm(motion, axis=2).max() / k),
        "landmarks": marks.astype(np.float32), "neutral_landmarks": lm.astype(np.float32),
        "expression_landmarks": expression.astype(np.float32),
        "jitter": jit.astype(np.float32), "head_angle": nu.angle.astype(np.float32),
        "blink": nu.blink.astype(np.float32), "illumination": nu.illumination.astype(np.float32),
        "intensity": s.astype(np.float32),
        "frame_numbers": np.arange(plan.first_frame, plan.offset + 1, dtype=np.int32),
    }
    return RenderedClip(frames, gt)
