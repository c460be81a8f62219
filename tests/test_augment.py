import numpy as np
import pytest

from merlib.augment import AugmentConfig, augment_clip, draw_affine, warp_frames, warp_points, warp_sides


@pytest.mark.parametrize("seed", range(5))
def test_a_point_follows_its_pixel(seed):
    rng = np.random.default_rng(seed)
    cfg = AugmentConfig()
    frames = np.zeros((3, 224, 224, 3), np.uint8)
    centres = np.array([[[80.0, 120.0]], [[150.0, 60.0]], [[112.0, 112.0]]])  # (T, K=1, 2)
    for t, (x, y) in enumerate(centres[:, 0]):
        frames[t, int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 255  # 3x3 bright patch
    out, pts, _, _ = augment_clip(frames, centres, np.full((3, 1), 48.0), rng, cfg)
    for t in range(3):
        gray = out[t, ..., 0].astype(float)
        ys, xs = np.nonzero(gray > 0)
        w = gray[ys, xs]
        centroid = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
        assert np.linalg.norm(centroid - pts[t, 0]) < 1.0


def test_the_same_draw_is_applied_to_every_frame():
    rng = np.random.default_rng(0)
    frame = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    frames = np.stack([frame, frame])
    out, _, _, _ = augment_clip(frames, np.zeros((2, 1, 2)), np.ones((2, 1)), rng, AugmentConfig())
    np.testing.assert_array_equal(out[0], out[1])


def test_draw_stays_within_configured_ranges():
    cfg = AugmentConfig()
    rng = np.random.default_rng(3)
    for _ in range(200):
        a = draw_affine(rng, cfg)
        scale = np.sqrt(abs(np.linalg.det(a[:, :2])))
        assert 1.0 - 1e-9 <= scale <= 1.0 / cfg.min_crop_frac + 1e-9
        angle = np.degrees(np.arctan2(a[1, 0], a[0, 0]))
        assert abs(angle) <= cfg.max_rotation_deg + 1e-9


def test_identity_affine_leaves_everything_unchanged():
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    frames = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(warp_frames(frames, ident), frames)
    pts = np.array([[3.0, 4.0], [100.5, 7.25]])
    np.testing.assert_allclose(warp_points(pts, ident), pts)
    np.testing.assert_allclose(warp_sides(np.array([48.0]), ident), [48.0])
