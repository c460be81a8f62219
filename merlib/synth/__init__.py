"""SynthME: a synthetic micro-expression dataset written in the real datasets' on-disk layouts.

Faces are the two real photographs bundled with installed packages (scikit-image's
``astronaut`` and matplotlib's ``grace_hopper.jpg``), each also mirrored: four base identities,
placed, warped and recoloured into one subject each. A clip is FACS-like landmark motion of micro
amplitude turned into a dense warp field, rising from onset to a known apex and decaying to
offset, with head jitter, flicker and sensor noise. Frames go through the format writers of
:mod:`merlib.datasets.writers`; the ground truth (apex, landmarks) is written beside them.

One module per stage, each importing only those before it:

- :mod:`~merlib.synth.faces`: base faces from the photographs, landmark geometry;
- :mod:`~merlib.synth.motion`: the AU model, dense warp fields, the intensity curve;
- :mod:`~merlib.synth.plan`: presets, who performs what, clip plans and names (no pixels);
- :mod:`~merlib.synth.render`: subjects' neutral frames and clips' frames + ground truth;
- :mod:`~merlib.synth.write`: layouts on disk, render-ahead threads, ground-truth files,
  ``generate`` / ``is_complete`` / ``dataset_digest``;
- :mod:`~merlib.synth.calibration`: is a generated SynthME a fair stand-in (imported on its own).

Layer: datasets. It writes datasets in real on-disk formats and uses :mod:`merlib.datasets`;
preprocess may import it, it imports nothing above datasets.
"""
from __future__ import annotations

from merlib.synth.faces import FACE_SCALE, VIRTUAL, BaseFace, base_faces, face_axes, virtual_points
from merlib.synth.motion import (AU_MOTION, CLASS_AUS, NUISANCE_AUS, au_displacements,
                                 dense_field, forward_points, intensity_curve, sample_field)
from merlib.synth.plan import LAYOUTS, PRESETS, ClipPlan, SynthPreset, get_preset, plan_dataset
from merlib.synth.render import RenderedClip, Subject, make_subject, render_clip
from merlib.synth.write import (DEFAULT_WORKERS, GENERATOR_VERSION, GT_COLUMNS, GT_CSV, GT_DIR,
                                MARKER, dataset_digest, generate, groundtruth_path, is_complete,
                                load_groundtruth)

__all__ = [
    "AU_MOTION", "CLASS_AUS", "DEFAULT_WORKERS", "FACE_SCALE", "GENERATOR_VERSION", "GT_COLUMNS",
    "GT_CSV", "GT_DIR", "LAYOUTS", "MARKER", "NUISANCE_AUS", "PRESETS", "VIRTUAL", "BaseFace",
    "ClipPlan", "RenderedClip", "Subject", "SynthPreset", "au_displacements", "base_faces",
    "dataset_digest", "dense_field", "face_axes", "forward_points", "generate", "get_preset",
    "groundtruth_path", "intensity_curve", "is_complete", "load_groundtruth", "make_subject",
    "plan_dataset", "render_clip", "sample_field", "virtual_points",
]
