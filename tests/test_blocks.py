import numpy as np
import pytest

from merlib.preprocess.blocks import SCHEMES, identification_points
from merlib.preprocess.landmarks import to72


def _numbered(n):
    """Paper point k (1-based) at (k, 2k)."""
    k = np.arange(1, n + 1, dtype=float)
    return np.stack([k, 2 * k], axis=1)


def _pt(k):
    return (k, 2 * k)


def _mid(a, b):
    return ((a + b) / 2, a + b)


# Expected IPs for point k at (k, 2k), written from the paper's text and Eqs. 4-12.
EXPECTED_24 = [_pt(k) for k in (19, 22, 23, 26, 39, 37, 44, 46, 28, 30, 49, 51, 53, 55, 59, 57)] + [
    _mid(20, 38),   # IP17
    _mid(18, 59),   # IP18
    _mid(41, 42),   # IP19
    _mid(25, 45),   # IP20
    _mid(47, 48),   # IP21
    _mid(27, 57),   # IP22
    (49 - 16, 98 - 16),    # IP23, Eq. 4
    (55 + 16, 110 + 16),   # IP24, Eq. 5
]
W = abs(55 - 49) / 2   # = 3
EXPECTED_10 = [
    (49, 98), (55, 110),          # IP1, IP2
    (9 - W / 2, 18),              # IP3, Eq. 12
    (32 - W / 2, 64),             # IP4, Eq. 10
    (36 + W / 2, 72),             # IP5, Eq. 11
    (37 - W / 2, 74),             # IP6, Eq. 8
    (46 + W / 2, 92),             # IP7, Eq. 9
    (22.5, 45),                   # IP8 = mid(20, 25)
    (22.5 - W, 45),               # IP9, Eq. 6
    (22.5 + W, 45),               # IP10, Eq. 7
]


@pytest.mark.parametrize("n, numbering", [(72, "fr72"), (68, "dlib68")])
def test_24_ips_follow_the_equations(n, numbering):
    ips = identification_points(_numbered(n), scheme=24, numbering=numbering)
    assert ips.centres.shape == (24, 2) and ips.sides.shape == (24,)
    np.testing.assert_allclose(ips.centres, EXPECTED_24)
    np.testing.assert_allclose(ips.sides, 48.0)


@pytest.mark.parametrize("n, numbering", [(72, "fr72"), (68, "dlib68")])
def test_10_ips_follow_the_equations(n, numbering):
    ips = identification_points(_numbered(n), scheme=10, numbering=numbering)
    assert ips.centres.shape == (10, 2)
    np.testing.assert_allclose(ips.centres, EXPECTED_10)
    np.testing.assert_allclose(ips.sides, W)


def test_dlib68_reading_of_a_72_point_array():
    # Same face in both numberings: dlib point k at (k, 2k); fr72 = face_recognition's order.
    d68 = _numbered(68)
    p72 = to72(d68)
    a = identification_points(p72, scheme=24, numbering="dlib68")
    b = identification_points(d68, scheme=24, numbering="dlib68")
    np.testing.assert_allclose(a.centres, b.centres)
    # Read as fr72, paper points 59 and 57 are top_lip[10] and top_lip[8] = dlib points 62 and 64
    # (1-based), the inner upper lip; as dlib68 they are the lower-lip points 59 and 57.
    fr = identification_points(p72, scheme=24, numbering="fr72").centres
    np.testing.assert_allclose(fr[14], _pt(62))
    np.testing.assert_allclose(fr[15], _pt(64))
    np.testing.assert_allclose(b.centres[14], _pt(59))
    np.testing.assert_allclose(b.centres[15], _pt(57))
    np.testing.assert_allclose(fr[:14], b.centres[:14])            # points <= 55 agree
    # the 10-IP scheme uses points <= 55 only: both numberings agree
    np.testing.assert_allclose(identification_points(p72, scheme=10).centres,
                               identification_points(d68, scheme=10, numbering="dlib68").centres)


def test_gacnn24_reads_dlib68_with_ip24_above_the_right_corner():
    # gACNN's converter (PG-CNN convert_point/pts68_24): dlib-68 numbers, (x55 + 16, y55 - 16).
    expected = list(EXPECTED_24)
    expected[23] = (55 + 16, 110 - 16)
    ips = identification_points(_numbered(68), scheme=24, numbering="gacnn24")
    np.testing.assert_allclose(ips.centres, expected)
    np.testing.assert_allclose(ips.sides, 48.0)


def test_gacnn24_mouth_points_are_symmetric_above_the_corners():
    # A face whose mouth corners are mirror images about x = 100 (dlib order).
    rng = np.random.default_rng(1)
    d68 = rng.uniform(40, 180, size=(68, 2))
    d68[48], d68[54] = (80.0, 150.0), (120.0, 150.0)       # points 49 and 55
    ip23, ip24 = identification_points(d68, scheme=24, numbering="gacnn24").centres[22:24]
    assert ip23[0] + ip24[0] == pytest.approx(2 * 100.0)    # mirrored about the mouth centre
    assert ip23[1] == ip24[1] == pytest.approx(150.0 - 16)  # both 16 px above (y grows down)
    assert ip23[0] == pytest.approx(80.0 - 16) and ip24[0] == pytest.approx(120.0 + 16)
    # The printed Eq. 5 puts IP24 16 px below the corner instead; everything else is the same.
    printed = identification_points(d68, scheme=24, numbering="dlib68").centres
    np.testing.assert_allclose(printed[23], (136.0, 166.0))
    gacnn = identification_points(d68, scheme=24, numbering="gacnn24").centres
    np.testing.assert_allclose(printed[:23], gacnn[:23])


def test_gacnn24_of_a_72_point_array_uses_the_lower_lip():
    d68 = _numbered(68)
    ips = identification_points(to72(d68), scheme=24, numbering="gacnn24").centres
    np.testing.assert_allclose(ips[14], _pt(59))            # IP15 = dlib 59, lower lip
    np.testing.assert_allclose(ips[15], _pt(57))            # IP16 = dlib 57, lower lip
    np.testing.assert_allclose(ips[17], _mid(18, 59))       # IP18 pairs with the same 59
    np.testing.assert_allclose(ips[21], _mid(27, 57))       # IP22 with the same 57
    # The 10 IPs use points <= 55 only: all readings agree.
    ref = identification_points(d68, scheme=10, numbering="dlib68").centres
    for numbering in SCHEMES:
        pts = d68 if numbering != "fr72" else to72(d68)
        ips10 = identification_points(pts, scheme=10, numbering=numbering)
        np.testing.assert_allclose(ips10.centres, ref)


def test_schemes_list_the_readings_with_the_paper_first():
    assert SCHEMES[0] == "fr72" and set(SCHEMES) == {"fr72", "dlib68", "gacnn24"}
    # The default reading is the paper's printed one.
    np.testing.assert_allclose(identification_points(_numbered(72), scheme=24).centres, EXPECTED_24)


def test_time_axis_is_kept():
    rng = np.random.default_rng(0)
    seq = rng.uniform(0, 224, size=(7, 72, 2))
    for scheme in (24, 10):
        ips = identification_points(seq, scheme=scheme)
        assert ips.centres.shape == (7, scheme, 2) and ips.sides.shape == (7, scheme)
        for t in range(7):
            one = identification_points(seq[t], scheme=scheme)
            np.testing.assert_allclose(ips.centres[t], one.centres)
            np.testing.assert_allclose(ips.sides[t], one.sides)
    sides = identification_points(seq, scheme=10).sides
    np.testing.assert_allclose(sides[:, 0], np.abs(seq[:, 54, 0] - seq[:, 48, 0]) / 2)


def test_width_is_absolute():
    pts = _numbered(72)
    pts[48, 0], pts[54, 0] = 60.0, 40.0   # mouth corners swapped in x
    assert identification_points(pts, scheme=10).sides[0] == 10.0


@pytest.mark.parametrize("points, kwargs", [
    (np.zeros((70, 2)), dict(scheme=10)),
    (np.zeros((68, 2)), dict(scheme=10)),                       # 68 points read as fr72
    (np.zeros((72, 3)), dict(scheme=10)),
    (np.zeros((72, 2)), dict(scheme=12)),
    (np.zeros((72, 2)), dict(scheme=10, numbering="ibug")),
    (np.zeros((70, 2)), dict(scheme=24, numbering="dlib68")),
    (np.zeros((70, 2)), dict(scheme=24, numbering="gacnn24")),
])
def test_bad_input_raises(points, kwargs):
    with pytest.raises(ValueError):
        identification_points(points, **kwargs)
