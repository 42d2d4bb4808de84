"""Every kind of bad input becomes a row with a specific reason, and the run goes on."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ifmdm_data.filter.config import load_config
from ifmdm_data.errors import InputError
from ifmdm_data.filter.pipeline import run_filter
from ifmdm_data.media.probe import probe_file

from media_factory import write_audio_only, write_rotated, write_vfr, write_video


@pytest.fixture(scope="module")
def bad_run(ray_session, sample_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = sample_dir / "lip_talk.mp4"
    (d / "zero.mp4").write_bytes(b"")
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "notes.mp4").write_text("this is not a video\n" * 50)
    write_audio_only(d / "audio_only.mp4")
    os.symlink(d / "vanished.mp4", d / "broken_link.mp4")
    write_video(d / "one_frame.mp4", 1)
    write_rotated(good, d / "rotated_phone.mp4", 90)
    write_vfr(d / "vfr.mp4")
    write_video(d / "huge.mp4", 8, size=(3840, 2160))
    shutil.copy(good, d / "Ünïcødé 東京 talk.mp4")
    out = tmp_path_factory.mktemp("bad_manifests")
    summary = run_filter([str(d)], str(out), load_config(), workers=2, progress=False)
    df = pd.read_parquet(out / "clips.parquet")
    df["file"] = [Path(p).name for p in df["path"]]
    return d, df, summary


def _reasons(df, name):
    rows = df[df["file"] == name]
    assert len(rows) >= 1, f"{name} has no row"
    return [list(r) for r in rows["reasons"]], rows


def test_every_input_has_a_row(bad_run):
    d, df, summary = bad_run
    names = {p.name for p in d.iterdir()}
    assert set(df["file"]) == names
    assert summary["inputs"] == len(names)


@pytest.mark.parametrize("name, reason", [
    ("zero.mp4", "empty_file"),
    ("truncated.mp4", "decode_error"),
    ("notes.mp4", "decode_error"),
    ("audio_only.mp4", "no_video_stream"),
    ("broken_link.mp4", "unreadable"),
    ("one_frame.mp4", "too_short"),
    ("huge.mp4", "too_short"),
])
def test_specific_reason(bad_run, name, reason):
    reasons, rows = _reasons(bad_run[1], name)
    assert reason in reasons[0]
    assert not rows["accepted"].any()


def test_error_rows_say_what_failed(bad_run):
    _, rows = _reasons(bad_run[1], "notes.mp4")
    assert rows["error"].iloc[0]  # the ffprobe message


def test_rotated_phone_video_is_analysed_upright(bad_run):
    _, rows = _reasons(bad_run[1], "rotated_phone.mp4")
    r = rows.iloc[0]
    assert r["rotation"] in (90, 270)
    assert r["face_fraction"] > 0.8   # the face is found only if frames are turned upright


def test_vfr_and_unicode_names(bad_run):
    _, rows = _reasons(bad_run[1], "vfr.mp4")
    assert rows["vfr"].iloc[0]
    assert "no_face" in rows["reasons"].iloc[0]       # colour bars: analysed, no face
    _, rows = _reasons(bad_run[1], "Ünïcødé 東京 talk.mp4")
    assert rows["subset"].iloc[0] == "lip"


def test_up_front_errors_for_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        run_filter([str(tmp_path / "nope")], str(tmp_path / "o"), load_config())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video files"):
        run_filter([str(tmp_path / "empty")], str(tmp_path / "o"), load_config())
    (tmp_path / "list.csv").write_text("name\nx.mp4\n")
    with pytest.raises(InputError, match="no path column"):
        run_filter([str(tmp_path / "list.csv")], str(tmp_path / "o"), load_config())


def test_probe_reports_rotation_and_size(sample_dir, tmp_path):
    rec = probe_file(str(write_rotated(sample_dir / "lip_talk.mp4", tmp_path / "r.mp4", 90)))
    src = probe_file(str(sample_dir / "lip_talk.mp4"))
    assert rec["rotation"] in (90, 270)
    assert (rec["width"], rec["height"]) == (src["height"], src["width"])
