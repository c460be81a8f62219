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


# ----------------------------------------------------------------------------- face routes

def test_a_tight_crop_missed_by_the_detector_is_found_with_a_border(face_crops):
    from merlib.faces import FaceFind, find_face, landmarks68, pad_image

    tight = face_crops["tight"]
    assert detect_face(tight) is None  # brows and cheeks touch the border: HOG sees no face
    found = find_face(tight)
    assert found.route == "padded" and found.detector_calls == 2 and found.rejected == ()
    top, right, bottom, left = found.box
    assert top < 0 and left < 0 and right > 224 and bottom > 224  # the box reaches the border
    # dlib reads outside pixels as black, so the box on the crop fits what the padded image fits
    pad = 56
    np.testing.assert_array_equal(landmarks68(tight, found.box),
                                  landmarks68(pad_image(tight, pad),
                                              tuple(v + pad for v in found.box)) - pad)
    assert isinstance(found, FaceFind)


def test_a_face_the_detector_finds_keeps_the_detector_box(face_crops):
    from merlib.faces import find_face

    for image in (face_crops["loose"], photograph("astronaut")):
        found = find_face(image, precropped=True)
        assert found == (detect_face(image), "detector", 1, ())


def test_a_blank_frame_is_a_face_only_for_a_precropped_loader():
    from merlib.faces import find_face

    blank = np.full((120, 100, 3), 128, np.uint8)
    assert find_face(blank) == (None, "", 3, ())
    assert find_face(blank, precropped=True) == ((0, 100, 120, 0), "whole_frame", 3, ())


def _fake_detector(hit):
    """A detector that finds the box (10, 60, 50, 20) only when ``hit(image, upsample)``."""
    calls = []

    def detect(image, *, upsample):
        calls.append((image.shape, upsample))
        return (10, 60, 50, 20) if hit(image, upsample) else None

    return detect, calls


def test_routes_run_in_order_and_map_the_padded_box_back():
    from merlib.faces import find_face

    image = np.zeros((80, 64, 3), np.uint8)
    detect, calls = _fake_detector(lambda im, up: im.shape[0] == 80 + 2 * 20)
    assert find_face(image, detect=detect) == ((-10, 40, 30, 0), "padded", 2, ())
    assert calls == [((80, 64, 3), 1), ((120, 104, 3), 1)]  # border: a quarter of the long side

    detect, calls = _fake_detector(lambda im, up: up == 2)
    assert find_face(image, detect=detect) == ((10, 60, 50, 20), "upsampled", 3, ())
    assert [up for _, up in calls] == [1, 1, 2]

    # the upsampled route is skipped when the first route already upsamples as much
    detect, calls = _fake_detector(lambda im, up: False)
    assert find_face(image, upsample=2, detect=detect) == (None, "", 2, ())
    assert find_face(image, pad_fraction=0, detect=detect).detector_calls == 2


def test_a_rejected_fallback_box_passes_to_the_next_route():
    from merlib.faces import find_face

    image = np.zeros((80, 64, 3), np.uint8)
    detect, _ = _fake_detector(lambda im, up: True if im.shape[0] > 80 or up == 2 else False)
    seen = []

    def accept(box):
        seen.append(box)
        return len(seen) > 1  # turn down the first fallback box (the padded route's)

    found = find_face(image, detect=detect, accept=accept)
    assert found == ((10, 60, 50, 20), "upsampled", 3, ("padded",))
    assert seen == [(-10, 40, 30, 0), (10, 60, 50, 20)]
    never = find_face(image, detect=detect, precropped=True, accept=lambda box: False)
    assert never == (None, "", 3, ("padded", "upsampled", "whole_frame"))
    # the detector's own box is not put to the check: outputs of the first route are as before
    assert find_face(image, detect=lambda im, upsample: (1, 2, 3, 0),
                     accept=lambda box: False).route == "detector"
