"""merlib.faces: the one photo loader and the one face picker, shared by SynthME and preprocessing."""
import numpy as np
import pytest

from merlib.faces import PHOTOGRAPHS, detect_face, face_boxes, photograph


@pytest.mark.parametrize("name, shape", [("astronaut", (512, 512, 3)),
                                         ("grace_hopper", (600, 512, 3))])
def test_photographs_load_as_fresh_rgb_uint8(name, shape):
    a, b = photograph(name), photograph(name)
    assert a.shape == shape and a.dtype == np.uint8 and a.flags.c_contiguous
    a[:] = 0  # a caller may draw on its copy without touching the next caller's
    assert b.any()


def test_unknown_photograph_names_the_choices():
    with pytest.raises(ValueError, match="grace_hopper"):
        photograph("lena")


@pytest.mark.parametrize("name", PHOTOGRAPHS)
@pytest.mark.parametrize("mirrored", [False, True])
def test_largest_face_is_the_best_scoring_face_on_the_bundled_photographs(name, mirrored):
    """SynthME's base faces rest on this: on the photographs (and their mirrors) the largest HOG
    box is also the detector's most confident one, so the suit's false positive is never taken."""
    import face_recognition.api as fr

    img = photograph(name)
    img = np.ascontiguousarray(img[:, ::-1]) if mirrored else img
    dets, scores, _ = fr.face_detector.run(img, 1, 0)
    best = dets[int(np.argmax(scores))]
    assert detect_face(img) == (best.top(), best.right(), best.bottom(), best.left())
    assert len(face_boxes(img)) == len(dets)
