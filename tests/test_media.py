"""`filter` on the real clips of ../shared/media: the expectations of its README."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ifmdm_data.filter.config import load_config
from ifmdm_data.filter.pipeline import run_filter

from conftest import MEDIA

TALKING = ["aoc_talking.mp4", "man_suit_static_talking.mp4", "woman_quiet_talking.mp4",
           "woman_fullbody_smallface_hevc.mp4", "man_halfbody_talking_hevc.mp4"]


@pytest.fixture(scope="module")
def media_run(ray_session, tmp_path_factory):
    video = MEDIA / "video"
    if not video.is_dir():
        pytest.skip(f"real media not found at {video} (../shared/media is absent)")
    out = tmp_path_factory.mktemp("media_manifests")
    summary = run_filter([str(video)], str(out), load_config(), workers=2, progress=False)
    df = pd.read_parquet(out / "clips.parquet")
    df["file"] = [Path(p).name for p in df["path"]]
    return df, summary, out


def rows(df, name):
    r = df[df["file"] == name]
    assert len(r), f"no row for {name}"
    return r


def test_every_file_is_accounted_for(media_run):
    df, summary, out = media_run
    assert set(df["file"]) == {p.name for p in (MEDIA / "video").glob("*.mp4")}
    assert summary["segments"] == len(df)
    assert df["segment_id"].is_unique
    for name in ("coarse", "lip", "hard", "rejected"):
        assert (out / f"{name}.parquet").exists()
    from ifmdm_data.schema import read_segment_tracks
    tracks, _ = read_segment_tracks(out, rows(df, "aoc_talking.mp4")["segment_id"].iloc[0])
    assert len(tracks) == rows(df, "aoc_talking.mp4")["n_analysed"].iloc[0]
    assert len(tracks["landmarks"].iloc[0]) == 478 * 3


@pytest.mark.parametrize("name", TALKING)
def test_talking_clips_accepted_and_stage2_ok(media_run, name):
    r = rows(media_run[0], name)
    assert r["accepted"].all(), r[["start_s", "reasons"]]
    assert r["stage2_ok"].all(), r[["start_s", "stage2_reasons", "speech_ratio", "av_corr", "av_lag_s"]]


def test_static_talking_man_is_lip_with_least_head_motion(media_run):
    df = media_run[0]
    suit = rows(df, "man_suit_static_talking.mp4")
    assert suit["subset"].tolist() == ["lip"]
    others = df[df["file"].isin(set(TALKING) - {"man_suit_static_talking.mp4"})]
    assert suit["head_motion"].iloc[0] < others["head_motion"].min()
    assert rows(df, "aoc_talking.mp4")["head_motion"].iloc[0] > 1.5 * suit["head_motion"].iloc[0]


def test_no_audio_clip_is_stage1_only(media_run):
    r = rows(media_run[0], "man_expressions_noaudio.mp4")
    assert r["accepted"].all()
    assert [list(x) for x in r["stage2_reasons"]] == [["no_audio"]]


def test_long_music_clip_is_split_and_not_speech(media_run):
    r = rows(media_run[0], "woman_faces_music_34s.mp4")
    assert len(r) >= 2 and (r["duration_s"] <= load_config().segment.max_duration_s + 1e-6).all()
    assert all("no_speech" in list(x) for x in r["stage2_reasons"])


def test_static_ambient_is_static_and_no_speech(media_run):
    r = rows(media_run[0], "woman_static_ambient.mp4")
    assert [list(x) for x in r["reasons"]] == [["static"]]
    assert "no_speech" in list(r["stage2_reasons"].iloc[0])


def test_two_second_clip_too_short(media_run):
    r = rows(media_run[0], "man_talking_2s.mp4")
    assert load_config().segment.min_duration_s > 2.1
    assert "too_short" in list(r["reasons"].iloc[0])


def test_sintel_scene_cuts_and_no_talking_face(media_run):
    r = rows(media_run[0], "sintel_cuts_noaudio.mp4")
    cuts = r.loc[r["scene_cut_before"], "start_s"].to_numpy()
    # cuts found by ffmpeg's scene score > 0.3 on this clip: each is a segment boundary
    for t in (14.5, 15.5, 23.875, 25.42, 26.0):
        assert (abs(cuts - t) < 0.25).any(), (t, cuts)
    assert not r["accepted"].any()
    assert all("no_audio" in list(x) for x in r["stage2_reasons"])


# --- identity and near-duplicates (issue 15: filter's identify step) -------------------------

PEOPLE = ["aoc_talking.mp4", "man_halfbody_talking_hevc.mp4", "woman_quiet_talking.mp4",
          "woman_fullbody_smallface_hevc.mp4", "woman_faces_music_34s.mp4", "man_talking_2s.mp4"]


def test_each_talking_person_gets_an_identity_of_their_own(media_run):
    """Six people (dlib distances 0.62-0.97 between them): six identity_ids; the two segments of
    one file (same person) share theirs. Every face segment has a 128-d mean descriptor of 2
    sampled frames (identity.face_every 4 of 8), a small spread and no 'mixed' flag."""
    df = media_run[0]
    ids = {f: set(rows(df, f)["identity_id"]) for f in PEOPLE}
    assert all(len(v) == 1 and min(v) >= 0 for v in ids.values()), ids
    assert len({min(v) for v in ids.values()}) == len(PEOPLE), ids
    faces = df[df["file"].isin(PEOPLE)]
    assert all(len(d) == 128 for d in faces["face_descriptor"])
    assert (faces["identity_faces"] == 2).all() and (faces["identity_spread"] < 0.3).all()
    assert not faces["identity_mixed"].any()
    # different footage: no two of these files share a near-duplicate group
    groups = {f: set(rows(df, f)["dup_group"]) for f in PEOPLE}
    assert len(set().union(*groups.values())) == sum(len(g) for g in groups.values())


def test_sintel_without_people_has_no_identity_but_hashes(media_run):
    """Segments where dlib finds no face: identity -1, yet pHashes (dup groups) are there (flat
    frames of fades carry none); no audio stream: no fingerprint."""
    s = rows(media_run[0], "sintel_cuts_noaudio.mp4")
    assert (s["identity_faces"] == 0).any() and (s.loc[s["identity_faces"] == 0, "identity_id"] == -1).all()
    assert (s["phash"].map(len) > 0).sum() >= len(s) // 2
    assert all(len(a) == 0 for a in s["audio_fingerprint"])


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """A re-encoded, 0.5x rescaled copy of aoc_talking.mp4 trimmed by 1.3 s (same pictures,
    same audio), and woman_static_ambient.mp4's pictures with aoc_talking.mp4's audio (other
    pictures, same audio: a re-upload with another video track)."""
    import shutil
    import subprocess

    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not installed")
    d = tmp_path_factory.mktemp("copies")
    aoc, amb = MEDIA / "video" / "aoc_talking.mp4", MEDIA / "video" / "woman_static_ambient.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "1.3", "-i", str(aoc), "-vf", "scale=iw/2:ih/2",
                    "-c:v", "libx264", "-crf", "30", "-c:a", "libmp3lame", "-b:a", "64k", str(d / "copy.mp4")],
                   check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(amb), "-i", str(aoc), "-map", "0:v", "-map", "1:a",
                    "-t", "8", "-c:v", "libx264", "-crf", "30", "-c:a", "aac", str(d / "dubbed.mp4")], check=True)
    return d / "copy.mp4", d / "dubbed.mp4"


def _with(df, path, sig):
    row = {"segment_id": f"zz_{Path(path).stem}", "path": str(path), "file": Path(path).name, **sig}
    return pd.concat([df, pd.DataFrame([row])], ignore_index=True)


def test_a_copy_and_a_redub_join_the_original_s_duplicate_group(media_run, copies):
    """The per-segment signals of filter (identify.segment_signals) for the two copies, clustered
    with the media run's segments (identify.collection_ids): the rescaled, re-encoded, trimmed
    copy is aoc's person and duplicate group (pictures and audio); the redub has the ambient
    clip's person but joins aoc's duplicate group through its audio fingerprint alone, and only
    with audio fingerprints on."""
    pytest.importorskip("dlib")
    from ifmdm_data.filter.identify import collection_ids, identifier
    from ifmdm_data.filter.config import IdentityConfig

    ident = identifier(IdentityConfig())
    df = media_run[0]
    copy, dubbed = copies
    df = _with(df, copy, ident(str(copy), 0.0, 6.0))
    df = _with(df, dubbed, ident(str(dubbed), 0.0, 8.0))
    ids, groups, _ = collection_ids(df)
    at = {f: i for i, f in enumerate(df["file"])}
    a, c, b, amb = at["aoc_talking.mp4"], at["copy.mp4"], at["dubbed.mp4"], at["woman_static_ambient.mp4"]
    assert ids[c] == ids[a] >= 0 and groups[c] == groups[a]
    assert ids[b] == ids[amb] != ids[a]
    assert groups[b] == groups[a]
    _, no_audio, _ = collection_ids(df, audio=False)
    assert no_audio[c] == no_audio[a] and no_audio[b] != no_audio[a]


def test_decide_reclusters_identities_at_a_new_threshold(media_run, tmp_path):
    """`ifmdm-data decide` with another identity.threshold re-clusters from the stored
    descriptors (no decoding): at 0.35 the two segments of one file still share a person
    (0.27 apart), at 0.1 they do not."""
    import shutil

    from ifmdm_data.filter.config import config_from_dict
    from ifmdm_data.filter.finalise import redecide

    shutil.copy(media_run[2] / "clips.parquet", tmp_path / "clips.parquet")
    got = {}
    for t in (0.35, 0.1):
        redecide(tmp_path, config_from_dict({"identity": {"threshold": t}}))
        d = pd.read_parquet(tmp_path / "clips.parquet")
        got[t] = d.loc[d["path"].str.endswith("man_halfbody_talking_hevc.mp4"), "identity_id"].nunique()
    assert got == {0.35: 1, 0.1: 2}
    # a plain `ifmdm-data decide` keeps the run's threshold (summary.json, updated by decide)
    from ifmdm_data.cli import main
    import json

    assert json.loads((tmp_path / "summary.json").read_text())["config"]["identity"]["threshold"] == 0.1
    assert main(["decide", str(tmp_path)]) == 0
    d = pd.read_parquet(tmp_path / "clips.parquet")
    assert d.loc[d["path"].str.endswith("man_halfbody_talking_hevc.mp4"), "identity_id"].nunique() == 2
