"""Issue 12 item 4: the probe runs in process (PyAV) and gives ffprobe's record, field by field.

Inputs: real clips of ../shared/media/video (mpeg4 with audio past the video, no audio stream,
VFR phone-style h264, 1080x1920 HEVC) and four small files made here by one ffmpeg command each
from them: a phone-style rotated copy (display matrix, `-c copy`), SAR 2:1, start offsets
(video +1.3 s, audio +0.7 s, 48 kHz) and irregular frame times. The expected records were
written down from ffprobe 5.1 (`probe_file(..., backend="ffprobe")`) on 2026-11-30.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

from ifmdm_data.media import probe as probe_mod
from ifmdm_data.errors import ClipError
from ifmdm_data.media.probe import probe_file
from ifmdm_data.reasons import Reason
from media_factory import write_audio_only, write_rotated, write_vfr

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media" / "video"
pytestmark = [
    pytest.mark.skipif(not MEDIA.is_dir(), reason="needs ../shared/media (real clips)"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                       reason="ffmpeg/ffprobe not installed"),
]


def _rec(size, cdur, audio, dur, fps, vfr, w, h, rot, vcodec, n_frames, n_video=1):
    has_audio = audio is not None
    acodec, sr, ch = audio or ("", 0, 0)
    return {"file_size": size, "container_duration_s": cdur, "has_audio": has_audio, "acodec": acodec,
            "audio_sr": sr, "audio_channels": ch, "n_video_streams": n_video,
            "n_audio_streams": int(has_audio), "duration_s": dur, "fps": fps, "vfr": vfr, "width": w,
            "height": h, "rotation": rot, "vcodec": vcodec, "pix_fmt": "yuv420p", "n_frames": n_frames}


EXPECTED = {
    # audio runs 64 ms past the video: the container duration is mvhd's 8.064 s (ffmpeg 5.x)
    "aoc_talking.mp4": _rec(2257667, 8.064, ("aac", 16000, 2), 8.0, 25.0, False, 512, 512, 0, "mpeg4", 200),
    "man_expressions_noaudio.mp4": _rec(2958395, 3.12, None, 3.12, 25.0, False, 512, 512, 0, "h264", 78),
    "man_suit_static_talking.mp4": _rec(662788, 6.131, ("aac", 44100, 2), 6.1, 22.131147540983605, True,
                                        700, 700, 0, "h264", 135),
    "woman_fullbody_smallface_hevc.mp4": _rec(1240008, 10.008, ("aac", 44100, 2), 10.0, 25.0, False,
                                              1080, 1920, 0, "hevc", 250),
}
MADE = {
    # 1280x720 with a phone's display matrix: shown 720x1280
    "rot.mp4": _rec(None, 9.427, ("aac", 44100, 2), 9.4, 30.0, False, 720, 1280, 270, "h264", 282),
    "sar2.mp4": _rec(None, 1.0, ("aac", 16000, 2), 1.0, 25.0, False, 256, 256, 0, "h264", 25),
    "start.mp4": _rec(None, 1.0, ("aac", 48000, 2), 1.0, 25.0, False, 128, 128, 0, "h264", 25),
    "vfr.mp4": _rec(None, 1.134, None, 1.133333, 26.470588235294116, True, 128, 128, 0, "h264", 30),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("probe")
    write_rotated(MEDIA / "woman_static_ambient.mp4", d / "rot.mp4", 90)

    def ff(name, *args):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(MEDIA / "aoc_talking.mp4"), "-t", "1",
                        *args, str(d / name)], check=True)
    ff("sar2.mp4", "-vf", "scale=128:256,setsar=2", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac")
    ff("start.mp4", "-vf", "scale=128:128,setpts=PTS+1.3/TB", "-af", "adelay=700", "-c:v", "libx264",
       "-preset", "ultrafast", "-c:a", "aac", "-ar", "48000")
    write_vfr(d / "vfr.mp4", 1.0)
    return d


@pytest.fixture
def no_ffprobe(monkeypatch):
    """Fail if the probe falls back to the ffprobe subprocess."""
    def boom(path):
        raise AssertionError(f"ffprobe was called for {path}")
    monkeypatch.setattr(probe_mod, "_ffprobe_info", boom)


def test_pyav_probe_gives_the_recorded_fields(made, no_ffprobe):
    for name, want in EXPECTED.items():
        assert probe_file(str(MEDIA / name)) == want, name
    for name, want in MADE.items():
        got = probe_file(str(made / name))
        assert {**got, "file_size": None} == want, name


@pytest.mark.parametrize("name", sorted(p.name for p in MEDIA.glob("*.mp4")) + sorted(MADE))
def test_pyav_equals_ffprobe_field_by_field(name, made):
    path = str(MEDIA / name) if name not in MADE else str(made / name)
    a, b = probe_file(path, backend="pyav"), probe_file(path, backend="ffprobe")
    assert list(a) == list(b)
    assert {k: a[k] for k in a if a[k] != b[k]} == {}


def test_unreadable_files_keep_ffprobe_words(tmp_path):
    bad = tmp_path / "trunc.mp4"
    bad.write_bytes((MEDIA / "aoc_talking.mp4").read_bytes()[:5000])
    with pytest.raises(ClipError) as pyav_only:
        probe_file(str(bad), backend="pyav")
    with pytest.raises(ClipError) as auto:
        probe_file(str(bad))    # PyAV fails -> ffprobe decides and words the error
    assert pyav_only.value.reason == auto.value.reason == Reason.DECODE_ERROR
    assert "Invalid data" in str(auto.value) and str(bad) in str(auto.value)
    with pytest.raises(ClipError) as audio_only:
        probe_file(str(write_audio_only(tmp_path / "a.mp4")))
    assert audio_only.value.reason == Reason.NO_VIDEO_STREAM


def test_raw_h264_stream_rate_and_a_moov_size_past_the_end(tmp_path):
    """Two inputs a break-it pass found: a raw H.264 elementary stream at 30000/1001 (no container
    timing: ffmpeg >= 7's raw demuxer says 25 fps; the SPS timing, which ffprobe 5.1 and the
    decoder read, says 29.97, constant) and a rotated mp4 whose moov size field claims 300 MiB
    past the end of the file (ffmpeg reads what is there: the rotation must not be lost)."""
    import struct
    raw = tmp_path / "clip.264"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=30000/1001:d=1",
                    "-c:v", "libx264", "-preset", "ultrafast", "-f", "h264", str(raw)], check=True)
    rec = probe_file(str(raw), backend="pyav")
    assert rec["fps"] == pytest.approx(30000 / 1001) and rec["vfr"] is False
    assert _same_but_nan(rec, probe_file(str(raw), backend="ffprobe"))

    plain, rot = tmp_path / "plain.mp4", tmp_path / "rot.mp4"    # moov at the end (no faststart)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=1", "-c:v", "libx264",
                    "-preset", "ultrafast", str(plain)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(plain), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rot)],
                   check=True)                                 # a display matrix, as phones write
    data = bytearray(rot.read_bytes())
    pos = 0
    while pos < len(data):                                     # find the top-level moov box
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"moov":
            data[pos:pos + 4] = struct.pack(">I", 300 << 20)
            break
        pos += size
    assert kind == b"moov"
    rot.write_bytes(bytes(data))
    got = probe_file(str(rot), backend="pyav")
    assert (got["rotation"], got["width"], got["height"]) == (270, 48, 64)
    assert got == probe_file(str(rot), backend="ffprobe")


def _same_but_nan(a: dict, b: dict) -> bool:
    """Equal records where NaN equals NaN (raw streams have no duration)."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)
