"""Audio shorter than the video (issue 11): `audio_coverage` and the `audio_too_short` reason.

A copy of aoc_talking.mp4 cut to 6 s whose audio stops after 2 s: the pipeline's segment audio
statistics (`analyse._audio_stats`) must measure ~1/3 coverage for 0-6 s, and `decide` must
give that segment `audio_too_short`; the full 6 s copy covers ~1.0 and stays stage-2 ok.
"""
import json
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from ifmdm_data.filter.config import FilterConfig, load_config
from ifmdm_data.filter.decide import decide
from tests.test_decide import _row

SRC = "/work/shared/media/video/aoc_talking.mp4"
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def _durations(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,duration",
                          "-of", "json", str(path)], check=True, capture_output=True, text=True)
    return {s["codec_type"]: float(s["duration"]) for s in json.loads(out.stdout)["streams"]}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("coverage")
    full, short = d / "full.mp4", d / "short.mp4"
    base = ["ffmpeg", "-v", "error", "-y", "-i", SRC, "-t", "6", "-c:v", "copy", "-c:a", "aac"]
    subprocess.run(base + [str(full)], check=True)
    subprocess.run(base[:-4] + ["-af", "atrim=0:2"] + base[-4:] + [str(short)], check=True)
    short_d, full_d = _durations(short), _durations(full)
    assert abs(short_d["video"] - 6.0) < 0.2 and abs(short_d["audio"] - 2.0) < 0.1, short_d
    assert abs(full_d["video"] - 6.0) < 0.2 and abs(full_d["audio"] - 6.0) < 0.1, full_d
    return {"full": full, "short": short}


def _stats(path, start_s=0.0, end_s=6.0):
    """What the pipeline computes for a segment's audio (no VAD: coverage does not need it)."""
    from ifmdm_data.filter.analyse import _audio_stats

    cfg = FilterConfig()
    t = np.arange(start_s, end_s, 1.0 / cfg.analysis.fps)
    unit = {"path": str(path), "probe": {"has_audio": True}}
    return _audio_stats(unit, start_s, end_s, t, np.zeros(len(t), np.float32), cfg, None)


def test_coverage_of_short_and_full_audio(clips):
    short, full = _stats(clips["short"]), _stats(clips["full"])
    assert short["audio_error"] == "" and full["audio_error"] == ""
    assert abs(short["audio_coverage"] - 1 / 3) <= 0.03, short
    assert abs(full["audio_coverage"] - 1.0) <= 0.03, full
    # a segment entirely after the audio ends has none; one inside it is fully covered
    assert _stats(clips["short"], 3.0, 6.0)["audio_coverage"] == 0.0
    assert _stats(clips["short"], 0.5, 1.5)["audio_coverage"] >= 0.99


def test_no_audio_stream_gives_nan():
    from ifmdm_data.filter.analyse import _audio_stats

    unit = {"path": SRC, "probe": {"has_audio": False}}
    out = _audio_stats(unit, 0.0, 6.0, np.zeros(0), np.zeros(0, np.float32), FilterConfig(), None)
    assert out["audio_error"] == "no_audio" and math.isnan(out["audio_coverage"])


def test_decide_flags_short_audio(clips):
    rows = []
    for name in ("short", "full"):
        st = _stats(clips[name])
        rows.append(_row(audio_coverage=st["audio_coverage"]))
    out, _ = decide(pd.DataFrame(rows), FilterConfig())
    assert "audio_too_short" in list(out["stage2_reasons"][0])
    assert not out["stage2_ok"][0]
    assert "audio_too_short" not in list(out["stage2_reasons"][1])
    assert out["stage2_ok"][1]


def test_min_audio_coverage_threshold_is_inclusive_and_nan_is_not_judged():
    cfg = FilterConfig()
    m = cfg.decide.min_audio_coverage
    assert m == 0.95 and load_config().decide.min_audio_coverage == 0.95  # dataclass and filter.yaml
    below = float(np.nextafter(np.float32(m), np.float32(0)))   # one float32 step: the stored precision
    df = pd.DataFrame([_row(audio_coverage=m), _row(audio_coverage=below),
                       _row(audio_coverage=float("nan")), _row()])  # last: a manifest without the column
    out, _ = decide(df, cfg)
    assert [list(r) for r in out["stage2_reasons"]] == [[], ["audio_too_short"], [], []]
