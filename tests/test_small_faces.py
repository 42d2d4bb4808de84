"""Issue 11: small and secondary faces are counted (tiled second detector pass), and the
rejection names what is there (multi_face / face_too_small), never no_face."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

VIDEO = Path("/work/shared/media/video")
A, B = VIDEO / "aoc_talking.mp4", VIDEO / "woman_quiet_talking.mp4"

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or not (A.exists() and B.exists()),
    reason="needs ffmpeg and the shared media clips")


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _half(i, side):
    # a clip scaled to side x side, centred in a 320x360 half of a 640x360 frame
    return f"[{i}:v]scale={side}:{side},setsar=1,pad=320:360:(ow-iw)/2:(oh-ih)/2[v{i}]"


@pytest.fixture(scope="module")
def models():
    from ifmdm_data.faces.backends import build_models
    m = build_models("mediapipe")
    yield m
    m.close()


def _analyse(path, models):
    from ifmdm_data.filter.analyse import analyse_unit
    from ifmdm_data.filter.config import FilterConfig
    from ifmdm_data.filter.decide import decide
    from ifmdm_data.media.probe import probe_file

    cfg = FilterConfig()
    probe = probe_file(str(path))
    unit = {"clip_id": "c", "path": str(path), "start_s": 0.0, "end_s": float(probe["duration_s"]),
            "probe": probe}
    t0 = time.perf_counter()
    rows = [r["row"] for r in analyse_unit(unit, cfg, models)]
    dt = time.perf_counter() - t0
    df = pd.DataFrame([{**r, "width": probe["width"], "height": probe["height"], "reasons": []}
                       for r in rows])
    out, _ = decide(df, cfg)
    print(f"{Path(path).name}: analysis {dt:.2f} s", rows[0]["max_faces"], rows[0]["multi_face_fraction"],
          rows[0]["face_fraction"], rows[0]["face_px"], [list(r) for r in out["reasons"]])
    return rows, [list(r) for r in out["reasons"]]


def test_two_small_faces_are_multi_face_not_no_face(tmp_path, models):
    # faces ~28 px (aoc's face is ~62 % of its frame, the woman's ~35 %)
    two = tmp_path / "two.mp4"
    _ffmpeg("-t", "3", "-i", str(A), "-t", "3", "-i", str(B), "-filter_complex",
            f"{_half(0, 48)};{_half(1, 84)};[v0][v1]hstack,fps=25", "-an", str(two))
    rows, reasons = _analyse(two, models)
    assert rows[0]["max_faces"] >= 2
    assert rows[0]["detected_face_fraction"] >= 0.8
    for r in reasons:
        assert "no_face" not in r, reasons
        assert {"multi_face", "face_too_small"} & set(r), reasons


def test_one_small_face_is_one_face(tmp_path, models):
    # the second pass runs here (the only face is small) and must not invent a face
    one = tmp_path / "one.mp4"
    _ffmpeg("-t", "3", "-i", str(A), "-filter_complex",
            "[0:v]scale=56:56,setsar=1,pad=640:360:(ow-iw)/2:(oh-ih)/2,fps=25", "-an", str(one))
    rows, reasons = _analyse(one, models)
    assert max(r["max_faces"] for r in rows) == 1
    for r in reasons:
        assert "no_face" not in r and "multi_face" not in r, reasons
        assert "face_too_small" in r, reasons


def test_normal_single_face_clip_still_counts_one(tmp_path, models):
    clip = tmp_path / "aoc3.mp4"
    _ffmpeg("-t", "3", "-i", str(A), "-an", "-c:v", "libx264", "-preset", "ultrafast", str(clip))
    rows, reasons = _analyse(clip, models)
    assert max(r["max_faces"] for r in rows) == 1
    assert all(r["detected_face_fraction"] == 1.0 for r in rows)
    for r in reasons:
        assert "no_face" not in r and "multi_face" not in r, reasons


class _Recording:
    """A detector wrapper that records the (h, w) of every image it is given."""

    def __init__(self, det):
        self.det, self.shapes = det, []

    def detect(self, rgb):
        self.shapes.append(rgb.shape[:2])
        return self.det.detect(rgb)


@pytest.mark.parametrize("second_pass, tile_frac", [(True, 0.75), (False, 0.6)])
def test_second_pass_tiles_come_from_the_config(tmp_path, models, second_pass, tile_frac):
    """analysis.second_pass / tile_frac reach the detector: on two ~30 px faces the tiles are
    tile_frac of the analysed frame, and with the second pass off only full frames are seen."""
    import dataclasses

    from ifmdm_data.filter.analyse import analyse_unit
    from ifmdm_data.faces.backends.base import FaceModels
    from ifmdm_data.filter.config import FilterConfig
    from ifmdm_data.media.probe import probe_file

    two = tmp_path / "two.mp4"
    _ffmpeg("-t", "1", "-i", str(A), "-t", "1", "-i", str(B), "-filter_complex",
            f"{_half(0, 48)};{_half(1, 84)};[v0][v1]hstack,fps=25", "-an", str(two))
    cfg = FilterConfig()
    cfg.analysis = dataclasses.replace(cfg.analysis, second_pass=second_pass, tile_frac=tile_frac)
    rec = _Recording(models.detector)
    m = FaceModels(rec, models.landmarks, models.segmenter)
    probe = probe_file(str(two))
    unit = {"clip_id": "c", "path": str(two), "start_s": 0.0, "end_s": float(probe["duration_s"]),
            "probe": probe}
    analyse_unit(unit, cfg, m)
    full = (360, 640)                                     # analysis size of the 640x360 clip
    tiles = [s for s in rec.shapes if s != full]
    assert full in rec.shapes
    if second_pass:
        assert tiles and set(tiles) == {(round(360 * tile_frac), round(640 * tile_frac))}
    else:
        assert not tiles
