"""`filter` on the real clips of ../shared/media: the expectations of its README."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ifmdm_data.config import load_config
from ifmdm_data.pipeline import run_filter

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
    tracks = pd.read_parquet(out / "tracks" / f"{rows(df, 'aoc_talking.mp4')['segment_id'].iloc[0]}.parquet")
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
