import face_recognition
import numpy as np
import pytest

import merlib.preprocess.landmarks as lm
from merlib.faces import photograph
from merlib.preprocess.landmarks import (FR72_GROUPS, box_from_points, clip_landmarks72,
                                         detect_face, landmarks68, landmarks_ok, p, to68, to72)


@pytest.fixture(scope="module")
def astronaut():
    return photograph("astronaut")


@pytest.fixture(scope="module")
def astronaut_box(astronaut):
    return detect_face(astronaut)


def test_detect_face_keeps_the_largest_box(astronaut, astronaut_box):
    boxes = face_recognition.face_locations(astronaut)
    assert len(boxes) >= 2  # HOG's false positive on the suit is why the largest is kept
    areas = [(b[2] - b[0]) * (b[1] - b[3]) for b in boxes]
    assert astronaut_box == boxes[int(np.argmax(areas))]
    top, right, bottom, left = astronaut_box
    assert top < 150 and bottom > 100 and left > 100 and right < 300   # the face, not the suit


def test_detect_face_returns_none_without_a_face():
    assert detect_face(np.full((200, 200, 3), 128, np.uint8)) is None


def test_detect_face_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB uint8"):
        detect_face(np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        detect_face(np.zeros((100, 100, 3), np.float32))


def test_to72_matches_face_recognition_dict(astronaut, astronaut_box):
    pts68 = landmarks68(astronaut, astronaut_box)
    assert pts68.shape == (68, 2) and pts68.dtype == np.float64
    ref = face_recognition.face_landmarks(astronaut, [astronaut_box], model="large")[0]
    assert [name for name, _ in FR72_GROUPS] == list(ref)
    assert [n for _, n in FR72_GROUPS] == [len(v) for v in ref.values()]
    concatenated = np.array([pt for name in ref for pt in ref[name]], dtype=float)
    np.testing.assert_array_equal(to72(pts68), concatenated)
    np.testing.assert_array_equal(to68(to72(pts68)), pts68)


def test_landmarks_lie_in_the_box(astronaut, astronaut_box):
    top, right, bottom, left = astronaut_box
    pts = landmarks68(astronaut, astronaut_box)
    centre = pts.mean(axis=0)
    assert left < centre[0] < right and top < centre[1] < bottom
    # left eye (image left) left of the right eye; chin tip below the nose
    assert pts[36:42, 0].mean() < pts[42:48, 0].mean()
    assert pts[8, 1] > pts[30, 1]


def test_p_is_one_based():
    pts = np.arange(144, dtype=float).reshape(72, 2)
    np.testing.assert_array_equal(p(pts, 1), pts[0])
    np.testing.assert_array_equal(p(pts, 72), pts[71])
    seq = np.stack([pts, pts + 1])
    np.testing.assert_array_equal(p(seq, 49), seq[:, 48])
    for k in (0, 73):
        with pytest.raises(IndexError):
            p(pts, k)


def test_to72_to68_shapes():
    with pytest.raises(ValueError):
        to72(np.zeros((72, 2)))
    with pytest.raises(ValueError):
        to68(np.zeros((68, 2)))
    seq = np.random.default_rng(0).normal(size=(5, 68, 2))
    assert to72(seq).shape == (5, 72, 2)
    np.testing.assert_array_equal(to68(to72(seq)), seq)


def test_box_from_points():
    assert box_from_points(np.array([[10.2, 20.7], [30.5, 5.1]])) == (5, 31, 21, 10)


def test_landmarks_ok():
    good = np.stack(np.meshgrid(np.linspace(20, 80, 17), np.linspace(20, 80, 4)), -1).reshape(-1, 2)[:68]
    assert landmarks_ok(good, (100, 100, 3))
    assert not landmarks_ok(good + 1000, (100, 100, 3))                 # outside the image
    assert not landmarks_ok(np.full((68, 2), 50.0), (100, 100, 3))      # collapsed
    bad = good.copy()
    bad[3, 0] = np.nan
    assert not landmarks_ok(bad, (100, 100, 3))


def test_clip_landmarks_on_real_frames(astronaut, astronaut_box):
    frames = np.stack([astronaut] * 3)
    res = clip_landmarks72(frames, astronaut_box)
    assert res.points.shape == (3, 72, 2) and res.n_fallback == 0
    np.testing.assert_array_equal(res.points[0], to72(landmarks68(astronaut, astronaut_box)))
    res68 = clip_landmarks72(frames, astronaut_box, scheme="dlib68")
    assert res68.points.shape == (3, 68, 2)
    np.testing.assert_array_equal(to72(res68.points), res.points)


def test_clip_landmarks_fallback(monkeypatch):
    # Frames carry their index in pixel (0, 0); the fake fit fails on frames 0, 2 and 3.
    frames = np.zeros((6, 50, 50, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(6)

    def fake(image, box):
        i = int(image[0, 0, 0])
        if i in (0, 2):
            raise RuntimeError("dlib failed")
        if i == 3:
            return np.full((68, 2), np.nan)
        return np.full((68, 2), float(i)) + np.stack([np.arange(68) % 10, np.arange(68) // 10], 1) * 3

    monkeypatch.setattr(lm, "landmarks68", fake)
    res = clip_landmarks72(frames, (0, 50, 50, 0), scheme="dlib68")
    assert res.n_fallback == 3
    first = res.points[:, 0, 0]
    np.testing.assert_array_equal(first, [1, 1, 1, 1, 4, 5])   # leading miss back-filled


def test_clip_landmarks_all_fail(monkeypatch):
    monkeypatch.setattr(lm, "landmarks68", lambda image, box: np.zeros((68, 2)))
    with pytest.raises(ValueError, match="no usable landmarks"):
        clip_landmarks72(np.zeros((2, 20, 20, 3), np.uint8), (0, 20, 20, 0))


def test_clip_landmarks_bad_input():
    with pytest.raises(ValueError):
        clip_landmarks72(np.zeros((2, 20, 20, 3), np.uint8), (0, 20, 20, 0), scheme="ibug")
    with pytest.raises(ValueError):
        clip_landmarks72(np.zeros((20, 20, 3), np.uint8), (0, 20, 20, 0))
