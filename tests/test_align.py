import cv2
import numpy as np
import pytest

from merlib.faces import photograph

from merlib.preprocess import align
from merlib.preprocess.align import (alignment_forward, alignment_map, apply_alignment, fit_lwm,
                                     template68)
from merlib.preprocess.landmarks import detect_face, landmarks68


def _scatter(n=40, seed=0, size=200.0):
    return np.random.default_rng(seed).uniform(0, size, size=(n, 2))


def _grid(size):
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    return xs, ys


def test_lwm_is_identity_when_src_equals_dst():
    pts = _scatter()
    tf = fit_lwm(pts, pts)
    query = np.random.default_rng(1).uniform(-100, 300, size=(500, 2))   # inside and outside reach
    np.testing.assert_allclose(tf(query), query, atol=1e-8)


def test_lwm_with_six_neighbours_maps_control_points_exactly():
    # With N = 6 each quadratic interpolates its 6 points, so every control point is exact.
    dst = _scatter(seed=2)
    src = dst + np.random.default_rng(3).normal(0, 5, dst.shape)        # an arbitrary warp
    tf = fit_lwm(src, dst, n_neighbors=6)
    np.testing.assert_allclose(tf(dst), src, atol=1e-6)


def test_lwm_reproduces_a_global_quadratic_warp():
    dst = _scatter(seed=4)

    def quad(p):
        x, y = p[..., 0] / 100, p[..., 1] / 100
        return np.stack([20 + 90 * x + 10 * y + 8 * x * x - 5 * x * y,
                         -7 + 5 * x + 110 * y + 6 * y * y + 3 * x * y], axis=-1)

    tf = fit_lwm(quad(dst), dst)
    np.testing.assert_allclose(tf(dst), quad(dst), atol=1e-6)
    query = np.random.default_rng(5).uniform(20, 180, size=(300, 2))
    covered = (np.linalg.norm((query[:, None] - tf.centres) / tf.radii[:, None], axis=-1) < 1).any(1)
    assert covered.mean() > 0.9
    np.testing.assert_allclose(tf(query[covered]), quad(query[covered]), atol=1e-6)


def test_lwm_reproduces_an_affine_warp_everywhere():
    dst = _scatter(seed=6)
    a = np.array([[1.1, 0.2], [-0.15, 0.9]])
    t = np.array([13.0, -4.0])
    tf = fit_lwm(dst @ a.T + t, dst)
    query = np.random.default_rng(7).uniform(-500, 700, size=(400, 2))    # mostly out of reach
    np.testing.assert_allclose(tf(query), query @ a.T + t, atol=1e-6)


def test_lwm_falls_back_to_global_affine_out_of_reach():
    dst = _scatter(seed=8)
    src = dst + np.random.default_rng(9).normal(0, 3, dst.shape)
    tf = fit_lwm(src, dst)
    far = np.array([[5000.0, -3000.0]])
    homog = np.hstack([dst, np.ones((len(dst), 1))])
    affine = np.linalg.lstsq(homog, src, rcond=None)[0]
    np.testing.assert_allclose(tf(far), np.array([[5000.0, -3000.0, 1.0]]) @ affine, rtol=1e-9)


def test_lwm_radius_is_distance_to_nth_nearest_control_point():
    dst = _scatter(seed=10)
    tf = fit_lwm(dst, dst)
    order = np.argsort(np.linalg.norm(dst - dst[0], axis=1))     # order[0] is the point itself
    assert tf.radii[0] == pytest.approx(np.linalg.norm(dst[order[11]] - dst[0]))
    tf6 = fit_lwm(dst, dst, n_neighbors=6)
    assert tf6.radii[0] == pytest.approx(np.linalg.norm(dst[order[5]] - dst[0]))


def test_lwm_keeps_point_shapes():
    pts = _scatter()
    tf = fit_lwm(pts, pts)
    q = np.zeros((3, 4, 2))
    assert tf(q).shape == (3, 4, 2)


@pytest.mark.parametrize("src, dst, kwargs", [
    (np.zeros((20, 2)), np.zeros((19, 2)), {}),
    (np.zeros((20, 3)), np.zeros((20, 3)), {}),
    (_scatter(10), _scatter(10), {}),                                # fewer points than 12
    (_scatter(20), _scatter(20), dict(n_neighbors=5)),
    (np.repeat(_scatter(4), 7, axis=0), np.repeat(_scatter(4), 7, axis=0), dict(n_neighbors=6)),
])
def test_lwm_bad_input_raises(src, dst, kwargs):
    with pytest.raises(ValueError):
        fit_lwm(src, dst, **kwargs)


def test_lwm_accepts_coinciding_pairs():
    # dlib puts inner-lip points on top of each other when the mouth is closed.
    dst = np.repeat(_scatter(15, seed=11), 2, axis=0)
    tf = fit_lwm(dst * 1.5 + 2, dst)
    np.testing.assert_allclose(tf(dst), dst * 1.5 + 2, atol=1e-6)


def test_lwm_nan_raises():
    pts = _scatter()
    bad = pts.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        fit_lwm(bad, pts)


# --- template and alignment -------------------------------------------------------------------

def test_template_geometry():
    t = template68(224)
    assert t.shape == (68, 2)
    np.testing.assert_allclose(t[36:42].mean(0), [(0.5 - align.EYE_DIST / 2) * 224, align.EYE_Y * 224])
    np.testing.assert_allclose(t[42:48].mean(0), [(0.5 + align.EYE_DIST / 2) * 224, align.EYE_Y * 224])
    assert np.all(t > 0) and np.all(t < 224)                       # whole face in the frame
    assert t[8, 1] == t[:, 1].max()                                # chin tip lowest
    assert t[0, 0] < t[16, 0]
    np.testing.assert_allclose(template68(112), t / 2)


def test_alignment_of_template_landmarks_is_the_identity():
    t = template68(224)
    maps = alignment_map(t)
    xs, ys = _grid(224)
    assert maps.map_x.dtype == np.float32 and maps.map_x.shape == (224, 224)
    np.testing.assert_allclose(maps.map_x, xs, atol=1e-4)
    np.testing.assert_allclose(maps.map_y, ys, atol=1e-4)
    image = np.random.default_rng(0).integers(0, 256, size=(2, 224, 224, 3)).astype(np.uint8)
    np.testing.assert_array_equal(apply_alignment(image, maps), image)


def test_alignment_undoes_a_similarity():
    # The source frame is the aligned picture scaled x2, rotated 10 degrees and shifted into a
    # 640x480 frame; alignment must bring it back.
    t = template68(224)
    xs, ys = _grid(224)
    picture = np.stack([127 + 100 * np.sin(xs / 9.0), 127 + 100 * np.cos(ys / 7.0),
                        127 + 100 * np.sin((xs + ys) / 11.0)], axis=-1).astype(np.uint8)
    m = cv2.getRotationMatrix2D((0, 0), 10, 2.0)
    m[:, 2] = (150, 60)
    frame = cv2.warpAffine(picture, m, (640, 480), flags=cv2.INTER_LINEAR)
    src = t @ m[:, :2].T + m[:, 2]
    maps = alignment_map(src)
    grid = np.stack([xs, ys], axis=-1)
    expected = grid @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(np.stack(maps, axis=-1), expected, atol=1e-3)
    out = apply_alignment(frame[None], maps)[0]
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(out[inner].astype(int) - picture[inner]).mean() < 3
    fwd = alignment_forward(src)
    np.testing.assert_allclose(fwd(src), t, atol=1e-6)


def test_real_face_lands_on_the_template():
    image = photograph("astronaut")
    pts = landmarks68(image, detect_face(image))
    aligned = apply_alignment(image[None], alignment_map(pts))[0]
    assert aligned.shape == (224, 224, 3) and aligned.dtype == np.uint8
    box = detect_face(aligned)
    assert box is not None
    again = landmarks68(aligned, box)
    # Re-fitted landmarks sit near the template (dlib's own scatter is a few pixels)
    assert np.median(np.linalg.norm(again - template68(224), axis=1)) < 6


def test_apply_alignment_bad_input():
    maps = alignment_map(template68(224))
    with pytest.raises(ValueError):
        apply_alignment(np.zeros((224, 224, 3), np.uint8), maps)
    with pytest.raises(ValueError):
        apply_alignment(np.zeros((1, 224, 224, 3), np.float32), maps)
    with pytest.raises(ValueError):
        alignment_map(np.zeros((72, 2)))


def test_template_box_frames_the_template_face():
    top, right, bottom, left = align.template_box(224)
    t = template68(224)
    assert 0 <= top < bottom <= 224 and 0 <= left < right <= 224
    # dlib's boxes span roughly brows to chin and jaw to jaw
    assert left < t[36:48, 0].min() and right > t[36:48, 0].max()
    assert top < t[36:48, 1].min() and bottom > t[48:68, 1].max()
    image = photograph("astronaut")
    aligned = apply_alignment(image[None], alignment_map(landmarks68(image, detect_face(image))))[0]
    pts = landmarks68(aligned, align.template_box(224))
    assert np.median(np.linalg.norm(pts - t, axis=1)) < 6
