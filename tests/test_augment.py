import numpy as np
import pytest

from merlib.augment import AugmentConfig, draw_affine, warp_frames, warp_points, warp_sides


def augment_clip(frames, centres, sides, rng, cfg):
    """One draw for all frames and their points (Sec. 4.4), through the numpy functions."""
    affine = draw_affine(rng, cfg)
    return warp_frames(frames, affine), warp_points(centres, affine), warp_sides(sides, affine), affine


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


# --------------------------------------------------------------------------- batched, torch

def test_batched_affines_equal_the_cv2_composition():
    import torch
    from merlib.augment import affine_from, affines_from
    cfg = AugmentConfig()
    u = torch.rand((20, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = affines_from(u, cfg).numpy()
    for row, a in zip(u.numpy(), got):
        frac = cfg.min_crop_frac + (1 - cfg.min_crop_frac) * row[1]
        crop = frac * cfg.size
        want = affine_from((2 * row[0] - 1) * cfg.max_rotation_deg, frac,
                           row[2] * (cfg.size - crop), row[3] * (cfg.size - crop), cfg.size)
        np.testing.assert_allclose(a, want, atol=1e-9)


def test_batched_draws_stay_within_ranges_and_differ_per_clip():
    import torch
    from merlib.augment import draw_affines
    cfg = AugmentConfig()
    a = draw_affines(500, cfg, generator=torch.Generator().manual_seed(1)).numpy()
    scale = np.sqrt(np.abs(np.linalg.det(a[:, :, :2])))
    angle = np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
    assert scale.min() >= 1 - 1e-9 and scale.max() <= 1 / cfg.min_crop_frac + 1e-9
    assert np.abs(angle).max() <= cfg.max_rotation_deg + 1e-9
    assert np.abs(angle).max() > 0.9 * cfg.max_rotation_deg  # the range is used, not a constant
    assert len(np.unique(a.round(6), axis=0)) == 500


def test_batched_warp_matches_cv2_and_applies_one_draw_to_all_frames_of_a_clip():
    import torch
    from merlib.augment import draw_affines, warp_clips
    yy, xx = np.mgrid[0:224, 0:224]
    smooth = np.stack([127 + 100 * np.sin(xx / 9.0 + c) * np.cos(yy / 13.0) for c in range(3)], -1)
    frames = np.stack([smooth, smooth[::-1]]).astype(np.uint8)  # (T=2, H, W, 3)
    clips = np.stack([frames, frames[:, :, ::-1]])               # (B=2, T, H, W, 3)
    aff = draw_affines(2, AugmentConfig(), generator=torch.Generator().manual_seed(5))
    x = torch.from_numpy(clips.copy()).permute(0, 1, 4, 2, 3).double()
    out = warp_clips(x, aff).permute(0, 1, 3, 4, 2).numpy()       # (B, T, H, W, 3)
    for b in range(2):
        want = warp_frames(clips[b], aff[b].numpy()).astype(float)
        inner = (slice(None), slice(4, -4), slice(4, -4))
        diff = np.abs(out[b][inner] - want[inner])
        valid = want[inner] > 0  # away from the zero border the rotation leaves
        assert np.percentile(diff[valid], 99) < 2.0 and diff[valid].mean() < 0.5


@pytest.mark.parametrize("seed", range(3))
def test_batched_points_follow_their_pixels(seed):
    import torch
    from merlib.augment import draw_affines, warp_clips, warp_points_batch, warp_sides_batch
    cfg = AugmentConfig()
    pts = torch.tensor([[[[80.0, 120.0]], [[150.0, 60.0]]], [[[112.0, 112.0]], [[60.0, 170.0]]]])
    frames = torch.zeros(2, 2, 1, 224, 224, dtype=torch.float64)  # (B, T, C, H, W)
    for b in range(2):
        for t in range(2):
            x, y = pts[b, t, 0].int().tolist()
            frames[b, t, 0, y - 1:y + 2, x - 1:x + 2] = 1.0
    aff = draw_affines(2, cfg, generator=torch.Generator().manual_seed(seed))
    out = warp_clips(frames, aff)
    moved = warp_points_batch(pts.double(), aff)
    for b in range(2):
        for t in range(2):
            img = out[b, t, 0].numpy()
            ys, xs = np.nonzero(img > 0)
            w = img[ys, xs]
            centroid = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
            assert np.linalg.norm(centroid - moved[b, t, 0].numpy()) < 1.0
        np.testing.assert_allclose(warp_sides_batch(torch.full((2, 1), 48.0), aff[b:b + 1])[0].numpy(),
                                   warp_sides(np.full((2, 1), 48.0), aff[b].numpy()), rtol=1e-6)
