"""The labelled sample set: files, streams, labels, the scene cut and real lip/speech sync."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

av = pytest.importorskip("av")

from ifmdm_data import sample  # noqa: E402
from ifmdm_data.errors import InputError  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed")

SIZE, FPS = 256, 25.0
# file -> (frames, width, has audio, [(segment, start_s, end_s, expected, stage2)])
EXPECTED = {
    "coarse_head.mp4": (100, SIZE, True, [(0, 0.0, 4.0, "coarse", "no_speech")]),
    "lip_talk.mp4": (100, SIZE, True, [(0, 0.0, 4.0, "lip", "ok")]),
    "hard_talk.mp4": (100, SIZE, True, [(0, 0.0, 4.0, "hard", "ok")]),
    "static_still.mp4": (100, SIZE, True, [(0, 0.0, 4.0, "static", "no_speech")]),
    "noface_texture.mp4": (100, SIZE, True, [(0, 0.0, 4.0, "no_face", "not_in_subset")]),
    "two_faces.mp4": (100, 2 * SIZE, True, [(0, 0.0, 4.0, "multi_face", "not_in_subset")]),
    "noaudio_talk.mp4": (100, SIZE, False, [(0, 0.0, 4.0, "hard", "no_audio")]),
    "short_talk.mp4": (30, SIZE, True, [(0, 0.0, 1.2, "too_short", "not_in_subset")]),
    "scene_cut.mp4": (200, SIZE, True, [(0, 0.0, 4.0, "coarse", "no_speech"),
                                        (1, 4.0, 8.0, "lip", "ok")]),
    "dubbed_talk.mp4": (100, SIZE, True, [(0, 0.0, 4.0, "hard", "av_out_of_sync")]),
}


@pytest.fixture(scope="module")
def sample_set(sample_dir) -> Path:
    """The default set (seed 0, 256 px, 25 fps), generated once per session by conftest."""
    assert (sample_dir / "labels.csv").is_file()
    return sample_dir


_CACHE: dict = {}


def decode(path: Path) -> dict:
    """Frames (n, h, w, 3) uint8, stream facts, and the audio (mono float32) or None."""
    if path in _CACHE:
        return _CACHE[path]
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        info = dict(codec=vs.codec_context.name, pix_fmt=vs.codec_context.pix_fmt,
                    fps=float(vs.average_rate), n_audio=len(c.streams.audio),
                    duration=c.duration / 1e6)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    audio = None
    if info["n_audio"]:
        with av.open(str(path)) as c:
            ast = c.streams.audio[0]
            info.update(sample_rate=ast.codec_context.sample_rate, codec_a=ast.codec_context.name,
                        channels=ast.codec_context.channels)
            audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    _CACHE[path] = dict(info=info, frames=frames, audio=audio)
    return _CACHE[path]


def mesh_track(frames: np.ndarray) -> tuple:
    """Per frame: inner-lip gap / inter-ocular distance, and the eye midpoint (px)."""
    import mediapipe as mp

    ratio, eyes = [], []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=True) as fm:
        for f in frames:
            res = fm.process(f)
            assert res.multi_face_landmarks, "face mesh lost the face"
            lm = np.array([(p.x * f.shape[1], p.y * f.shape[0])
                           for p in res.multi_face_landmarks[0].landmark])
            iod = np.linalg.norm(lm[33] - lm[263])
            ratio.append(np.linalg.norm(lm[13] - lm[14]) / iod)
            eyes.append((lm[33] + lm[263]) / 2)
    return np.array(ratio), np.array(eyes)


def test_files_and_labels(sample_set):
    assert sorted(p.name for p in sample_set.iterdir()) == sorted([*EXPECTED, "labels.csv"])
    with open(sample_set / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == sample.LABEL_COLUMNS
        rows = list(reader)
    got = [(r["file"], int(r["segment"]), float(r["start_s"]), float(r["end_s"]),
            r["expected"], r["stage2"]) for r in rows]
    want = [(name, *seg) for name, (_, _, _, segs) in EXPECTED.items() for seg in segs]
    assert got == want
    assert all(r["description"] for r in rows)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_streams(sample_set, name):
    n, width, has_audio, segs = EXPECTED[name]
    d = decode(sample_set / name)
    info, frames = d["info"], d["frames"]
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert frames.shape == (n, SIZE, width, 3)
    assert info["fps"] == pytest.approx(FPS)
    assert info["duration"] == pytest.approx(segs[-1][2], abs=0.1)
    assert info["n_audio"] == int(has_audio)
    if has_audio:
        assert (info["codec_a"], info["sample_rate"], info["channels"]) == ("aac", 16000, 1)
        assert len(d["audio"]) / 16000 == pytest.approx(n / FPS, abs=0.1)
        assert np.abs(d["audio"]).max() > 0


def test_scene_cut_is_one_hard_cut(sample_set):
    frames = decode(sample_set / "scene_cut.mp4")["frames"]
    hists = []
    for f in frames:
        hsv = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)
        h = cv2.calcHist([hsv], [0, 1], None, [16, 16], [0, 180, 0, 256])
        hists.append(cv2.normalize(h, h).flatten())
    dist = np.array([cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA)
                     for a, b in zip(hists[:-1], hists[1:])])
    cut = int(np.argmax(dist)) + 1
    assert cut == 100                                  # 4.0 s at 25 fps
    assert dist[cut - 1] > 0.35
    assert np.delete(dist, cut - 1).max() < 0.15
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert int(np.argmax(diff)) + 1 == 100
    assert diff[99] > 4 * np.delete(diff, 99).max()


def test_static_still_barely_changes(sample_set):
    frames = decode(sample_set / "static_still.mp4")["frames"].astype(np.int16)
    assert np.abs(frames - frames[0]).mean(axis=(1, 2, 3)).max() < 2.0


def test_lip_talk_mouth_follows_speech(sample_set):
    d = decode(sample_set / "lip_talk.mp4")
    frames = d["frames"]
    ratio, eyes = mesh_track(frames)
    env = sample.speech_envelope(d["audio"], len(frames), FPS)
    r = np.corrcoef(ratio, env)[0, 1]
    assert r > 0.6, r
    assert ratio.std() > 0.02, ratio.std()
    assert np.ptp(eyes, axis=0).max() < 1.5            # the head does not move
    upper = frames[:, : SIZE * 2 // 5].astype(np.int16)
    assert np.abs(upper - upper[0]).mean(axis=(1, 2, 3)).max() < 1.5


def test_coarse_head_moves_with_mouth_closed(sample_set):
    ratio, eyes = mesh_track(decode(sample_set / "coarse_head.mp4")["frames"])
    assert np.ptp(eyes, axis=0).max() > 0.05 * SIZE
    assert ratio.std() < 0.01 and ratio.mean() < 0.05


def test_dubbed_mouth_does_not_follow_its_audio(sample_set):
    d = decode(sample_set / "dubbed_talk.mp4")
    ratio, _ = mesh_track(d["frames"])
    env = sample.speech_envelope(d["audio"], len(d["frames"]), FPS)
    assert ratio.std() > 0.02                          # the mouth does move
    corr = sample.lagged_corr(ratio, env, int(0.4 * FPS))
    assert corr.max() < 0.25 and np.abs(corr).max() < 0.35, corr   # in sync: ~0.96


def test_lagged_corr_finds_the_lag():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(200)
    b = np.roll(a, 3)
    corr = sample.lagged_corr(a, b, 5)
    assert int(np.argmax(corr)) - 5 == 3 and corr.max() > 0.95
    stacked = sample.lagged_corr(a, np.stack([b, a]), 5)
    assert stacked.shape == (2, 11) and np.allclose(stacked[0], corr)


def test_clip_material_is_deterministic():
    one, two = sample._clip_table(3, 64, FPS), sample._clip_table(3, 64, FPS)
    for a, b in zip(one, two):
        assert a.name == b.name and a.segments == b.segments
        assert (a.audio is None) == (b.audio is None)
        if a.audio is not None:
            np.testing.assert_array_equal(a.audio, b.audio)
        np.testing.assert_array_equal(next(iter(a.frames())), next(iter(b.frames())))


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sample.audio.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="apt-get install espeak-ng"):
        sample.make_sample_set(tmp_path / "s")


@pytest.mark.parametrize("kwargs", [dict(size=255), dict(size=32), dict(fps=0)])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(InputError):
        sample.make_sample_set(tmp_path / "s", **kwargs)
