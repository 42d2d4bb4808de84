"""`ifmdm-data filter --syncnet`: the SyncNet sync check (LatentSync's rule on syncnet_python's
network) on the sample set, its decision rule, its user errors and its window / crop timing.

The network here is a randomly initialised `SyncNetPython` saved as syncnet_v2.model is (a
plain state dict): random weights exercise the loading, cropping, windowing, scoring and
decision code, but cannot tell a clip in sync from one out of sync, so no test asserts sync
quality (with random weights every talking clip gets a confidence far below 3).
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from ifmdm_data.filter.config import FilterConfig, load_config
from ifmdm_data.filter.decide import decide
from ifmdm_data.schema import read_clips
from ifmdm_data.faces.syncnet import (SYNCNET_PY_FPS, SyncNet, SyncNetPython, SyncWindowCollector,
                                syncnet_face_crop)
from test_decide import _row


@pytest.fixture(scope="module")
def random_syncnet_v2(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(SyncNetPython().state_dict(), path)
    return path


def test_filter_with_random_syncnet(ray_session, sample_dir, random_syncnet_v2, tmp_path, capsys):
    from ifmdm_data.filter.pipeline import run_filter

    clips = [str(sample_dir / n) for n in ("lip_talk.mp4", "noaudio_talk.mp4")]
    s = run_filter(clips, str(tmp_path / "m"), load_config(), workers=2, progress=False,
                   syncnet=str(random_syncnet_v2))
    assert s["syncnet"] == str(random_syncnet_v2)
    df = read_clips(tmp_path / "m").set_index("path")
    assert len(df) == 2
    talk, silent = df.loc[clips[0]], df.loc[clips[1]]
    # 4 s of talking: windows at 0, 0.4, ..., 3.6 s, all with a face and audio under them
    assert talk["sync_windows"] == 10
    assert talk["sync_conf"] >= 0 and math.isfinite(talk["sync_dist"]) and talk["sync_dist"] > 0
    assert abs(talk["sync_offset_frames"]) <= 15 and talk["sync_offset_frames"] == round(talk["sync_offset_frames"])
    # the SyncNet rule decides: random weights give a confidence far below LatentSync's 3
    assert talk["accepted"] and talk["sync_conf"] < 3.0 and list(talk["stage2_reasons"]) == ["av_out_of_sync"]
    assert math.isnan(silent["sync_conf"]) and math.isnan(silent["sync_offset_frames"])
    assert silent["sync_windows"] == 0 and list(silent["stage2_reasons"]) == ["no_audio"]
    from ifmdm_data.report.inspect import inspect_manifest
    inspect_manifest(str(tmp_path / "m"))
    out = capsys.readouterr().out
    assert "sync_conf" in out and "sync_off" in out


def test_syncnet_gpus_without_gpus_is_an_error(ray_session, sample_dir, random_syncnet_v2, tmp_path):
    """Actors asking for more GPUs than the cluster has would never start: refused up front.
    Asks for 0.5 more than the cluster has, so it runs on machines with and without GPUs."""
    from ifmdm_data.errors import InputError
    from ifmdm_data.filter.pipeline import run_filter
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    with pytest.raises(InputError, match=f"has {have:g} GPUs"):
        run_filter([str(sample_dir / "lip_talk.mp4")], str(tmp_path / "m"), load_config(),
                   workers=1, progress=False, syncnet=str(random_syncnet_v2), syncnet_gpus=have + 0.5)


def test_decide_syncnet_rule():
    """SyncNet's rule where sync_conf is finite; the landmark correlation rule elsewhere."""
    nan = float("nan")
    df = pd.DataFrame([
        _row(sync_conf=4.0, sync_offset_frames=1.0),                  # in sync
        _row(sync_conf=2.5, sync_offset_frames=0.0),                  # confidence too low
        _row(sync_conf=6.0, sync_offset_frames=-4.0),                 # offset too large
        _row(sync_conf=6.0, sync_offset_frames=3.0, av_corr=0.0),     # SyncNet overrides av_corr
        _row(sync_conf=nan, sync_offset_frames=nan),                  # no SyncNet: av_corr 0.5 ok
        _row(sync_conf=nan, sync_offset_frames=nan, av_corr=0.05),    # no SyncNet: av_corr too low
        _row(),                                                       # manifest without the columns
    ])
    out, _ = decide(df, FilterConfig())
    oos = ["av_out_of_sync" in r for r in out["stage2_reasons"]]
    assert oos == [False, True, True, False, False, True, False]
    cfg = FilterConfig()
    cfg.decide.min_sync_conf, cfg.decide.max_sync_offset_frames = 2.0, 5
    out, _ = decide(df, cfg)
    assert ["av_out_of_sync" in r for r in out["stage2_reasons"]][:4] == [False, False, False, False]


def _filter_cli(*args):
    return subprocess.run([sys.executable, "-m", "ifmdm_data.cli", "filter", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_syncnet_file_errors(sample_dir, tmp_path):
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a torch file")
    ours = tmp_path / "ifmdm_syncnet.pt"
    torch.save(SyncNet(width=8, emb=32).state_dict(), ours)
    for path, says in ((tmp_path / "missing.model", "does not exist"), (garbage, "cannot read"),
                       (ours, "syncnet_python")):
        out = tmp_path / f"m_{path.stem}"
        res = _filter_cli(str(sample_dir / "lip_talk.mp4"), "-o", str(out), "--syncnet", str(path))
        assert res.returncode == 2, res.stderr
        assert str(path) in res.stderr and says in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert not (out / "_work").exists()                         # refused before any work


def test_window_timing_picks_consecutive_25fps_frames():
    """30 fps source, windows every 0.4 s from t0 = 1.0: each of the 5 frames of window j is
    the decoded frame nearest t0 + (10 j + m) / 25; a scene cut closes the segment with its
    complete windows only; frames before the first face wait for its box."""
    taken = []

    def crop(frame, box):
        taken.append((frame, box))
        return np.full((224, 224, 3), frame, np.uint8)

    col = SyncWindowCollector(0.4, crop)
    col.start(1.0)
    times = 1.0 + np.arange(40) / 30.0                              # frames 0..39, ids = index
    for i, t in enumerate(times):
        col.feed(t, i)
        if i == 2:
            col.set_box(50.0, 60.0, 20.0)                           # first analysed face
    crops, starts = col.close()
    assert crops.shape[1:] == (5, 224, 224, 3) and crops.dtype == np.uint8
    assert np.allclose(starts, 1.0 + np.arange(len(starts)) * 0.4)
    for w, t_w in enumerate(starts):
        want = [int(np.argmin(np.abs(times - (t_w + m / SYNCNET_PY_FPS)))) for m in range(5)]
        assert crops[w, :, 0, 0, 0].tolist() == want
    assert len(starts) == 3                                         # 1.0, 1.4, 1.8 (2.2 > last frame)
    assert all(box == (50.0, 60.0, 20.0) for _, box in taken)
    # a cut after 0.3 s: window 0 complete, window 1 (starts at 1.4) has no frame yet
    col.start(1.0)
    col.set_box(50.0, 60.0, 20.0)
    for i, t in enumerate(times[:10]):
        col.feed(t, i)
    crops, starts = col.close()
    assert starts.tolist() == [1.0]


def test_filter_crops_are_syncnet_crops_of_the_full_frame(sample_dir):
    """The filter crops from the decoded YUV planes (only the region) exactly what
    syncnet_face_crop gives on the whole converted frame: 224 x 224 BGR around the box."""
    import av
    import cv2

    from ifmdm_data.filter.analyse import _sync_collector
    from ifmdm_data.media.probe import probe_file

    path = str(sample_dir / "lip_talk.mp4")
    with av.open(path) as c:
        frame = next(c.decode(video=0))
        bgr = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)      # (H, W, 3) whole frame
    col = _sync_collector(load_config(), probe_file(path))
    for box in ((128.0, 110.0, 40.0), (20.0, 15.0, 37.0), (251.0, 240.0, 33.3)):   # inside, over edges
        got = col.crop(frame, box)
        want = syncnet_face_crop(bgr[..., ::-1], *box)
        assert got.shape == (224, 224, 3) and got.dtype == np.uint8
        assert np.array_equal(got, want), box
    # BGR order: a red frame region comes out in channel 2
    red = np.zeros((256, 256, 3), np.uint8)
    red[..., 0] = 200
    assert syncnet_face_crop(red, 128, 128, 30)[112, 112].tolist() == [0, 0, 200]
