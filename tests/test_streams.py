"""Issue 11 D: the main video / audio stream is the one ffmpeg would pick, not the first.

Input: one ffmpeg command putting a one-frame cover image (face_aflw.jpg, 450 px wide) before
a 3 s cut of aoc_talking.mp4 in an MKV (the cover is stream 0, not default).
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import MEDIA

SRC = MEDIA / "video" / "aoc_talking.mp4"
IMG = MEDIA / "image" / "face_aflw.jpg"

pytestmark = [
    pytest.mark.skipif(not (SRC.exists() and IMG.exists()), reason=f"real media not found at {MEDIA}"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed"),
]


@pytest.fixture(scope="module")
def cover_mkv(tmp_path_factory):
    out = tmp_path_factory.mktemp("streams") / "t.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(IMG), "-i", str(SRC), "-t", "3",
                    "-map", "0", "-map", "1", "-c:v:0", "mjpeg", "-c:v:1", "copy", "-c:a", "copy",
                    "-disposition:v:0", "attached_pic", str(out)], check=True)
    return str(out)


def test_main_streams_skip_the_cover(cover_mkv):
    import av

    from ifmdm_data.media.streams import main_streams

    with av.open(cover_mkv) as c:
        v, a = main_streams(c)
        assert len(c.streams.video) == 2 and v.index == 1 and v.codec_context.width == 512
        assert a is not None and a.type == "audio"


def test_probe_and_decode_use_the_main_stream(cover_mkv):
    from ifmdm_data.media.probe import probe_file
    from ifmdm_data.shard.segment import ShardConfig, render_video
    from ifmdm_data.media.video import iter_frames

    p = probe_file(cover_mkv)
    assert (p["width"], p["height"]) == (512, 512)
    assert p["n_video_streams"] == 2 and p["n_audio_streams"] == 1
    frames = [t for t, _ in iter_frames(cover_mkv, 0.0, 2.0, 5.0, (128, 128))]
    assert len(frames) >= 9
    _, n = render_video(cover_mkv, 0.0, 25, ShardConfig(size=64, preset="ultrafast"), (0, 0, 512, 512))
    assert n == 25
