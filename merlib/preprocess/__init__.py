"""Per-clip preprocessing steps (docs/DESIGN.md, "Preprocessing"), each a pure function on arrays.

apex (Eqs. 16-17) -> tim (10 frames) -> align (LWM to a template, eye crop, 224x224) ->
landmarks (72 key points per aligned frame) -> blocks (24 or 10 identification points).
face_recognition is imported only when a landmark function is first called.
"""
from merlib.preprocess.align import (AlignmentMaps, LWMTransform, alignment_forward, alignment_map,
                                     apply_alignment, fit_lwm, template68,
                                     template_box)
from merlib.preprocess.apex import ApexError, ApexResult, apex_error, detect_apex, difference_curve
from merlib.preprocess.blocks import IdentificationPoints, identification_points
from merlib.preprocess.landmarks import (ClipLandmarks, box_from_points, clip_landmarks72,
                                         detect_face, landmarks68, p, to68, to72)
from merlib.preprocess.tim import tim_interpolate

__all__ = [
    "AlignmentMaps", "ApexError", "ApexResult", "ClipLandmarks", "IdentificationPoints",
    "LWMTransform", "alignment_forward", "alignment_map", "apex_error", "apply_alignment",
    "box_from_points", "clip_landmarks72", "detect_apex", "detect_face", "difference_curve",
    "fit_lwm", "identification_points", "landmarks68", "p", "template68", "template_box", "tim_interpolate",
    "to68", "to72",
]
