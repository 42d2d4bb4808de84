"""Tests that fail when a central behaviour breaks (issue 16): each one is checked against a
hand-made one-line break of the code it guards (see the issue for the list)."""
from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from ifmdm_data.scenes import SceneCutDetector


# --- scene cuts ------------------------------------------------------------------------------

def _panorama(width=4000, height=64, seed=0):
    """A colourful, non-repeating texture: every stretch of it has its own colours."""
    rng = np.random.default_rng(seed)
    small = (rng.random((4, width // 16, 3)) * 255).astype(np.uint8)
    pano = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.add(pano, (rng.random(pano.shape) * 20).astype(np.uint8))


def test_steady_pan_is_not_a_cut():
    """A real pan (a textured image translated, easing in from still to 20 px a frame on a
    64 px frame): unlike np.roll, the histogram really changes, by more than the threshold on
    most frames, but steadily, so the 'well above the recent level' rule finds no cut. A real
    cut after the pan (to a scene with none of its colours) is still found."""
    pano = _panorama()
    speeds = np.r_[np.arange(1, 20), np.full(50, 20)]
    x = np.r_[0, np.cumsum(speeds)].astype(int)
    frames = [np.ascontiguousarray(pano[:, o:o + 64]) for o in x]
    other = np.zeros((64, 64, 3), np.uint8)
    other[..., 2] = 90                                                   # a dark blue scene
    frames += [other] * 3
    det = SceneCutDetector(0.2)
    out = [det(f) for f in frames]
    d = np.array([dist for _, dist in out])
    assert (d[:len(x)] > 0.2).sum() >= 30          # the pan does change the histogram a lot
    assert [i for i, (cut, _) in enumerate(out) if cut] == [len(x)]


def _write_cut_clip(path, n_frames: int, cut_frame: int, fps: int = 25, size=(128, 128)):
    """Two scenes of moving colour texture, a hard cut at frame `cut_frame` (t = cut / fps).
    No B-frames: every frame is a reference frame, decoded whatever `skip_nonref`."""
    w, h = size
    a, b = _panorama(2000, h, seed=2), _panorama(2000, h, seed=3)[:, :, ::-1]
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"bf": "0"}
        vs.time_base = Fraction(1, fps)
        for i in range(n_frames):
            src = a if i < cut_frame else b
            img = np.ascontiguousarray(src[:, 2 * i:2 * i + w])
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    return path


class _NoFace:
    """Face models that find nothing: analyse_unit's segmentation runs without mediapipe."""

    def __init__(self):
        from ifmdm_data.backends.base import SCHEMES
        self.scheme = SCHEMES["mp478"]

    def detect(self, rgb):
        return np.zeros((0, 4), np.float32)

    def reset(self):
        pass

    def landmarks(self, rgb):
        return None

    def person_mask(self, rgb):
        return np.zeros(rgb.shape[:2], np.float32)

    def close(self):
        pass


@pytest.mark.parametrize("skip_nonref", [False, True])
def test_segment_after_a_cut_starts_at_the_cut_time(tmp_path, skip_nonref):
    """Cut at frame 54 of 25 fps (t = 2.16 s), between the analysis frames at 2.08 and 2.24
    (6.25 fps): the second segment starts at 2.16 s, within half a source frame, not at the
    next analysed frame."""
    from ifmdm_data.analyse import analyse_unit
    from ifmdm_data.backends.base import FaceModels
    from ifmdm_data.config import FilterConfig
    from ifmdm_data.probe import probe_file

    fps, cut = 25, 54
    path = _write_cut_clip(tmp_path / "cut.mp4", 125, cut, fps)
    probe = probe_file(str(path))
    cfg = FilterConfig()
    cfg.analysis.skip_nonref = skip_nonref
    m = _NoFace()
    unit = {"clip_id": "c", "path": str(path), "start_s": 0.0, "end_s": float(probe["duration_s"]),
            "probe": probe}
    res = analyse_unit(unit, cfg, FaceModels(detector=m, landmarks=m, segmenter=m))
    rows = [r["row"] for r in res]
    assert len(rows) == 2
    true_cut = cut / fps
    assert not (true_cut / (1 / cfg.analysis.fps)).is_integer()            # between analysed frames
    assert abs(rows[1]["start_s"] - true_cut) <= 0.5 / fps, rows[1]["start_s"]
    assert rows[1]["scene_cut_before"] and not rows[0]["scene_cut_before"]
    assert abs(rows[0]["end_s"] - true_cut) <= 0.5 / fps


# --- local flow: group weights from the normalised masks ------------------------------------

def _np_masks(logits: np.ndarray, mode: str) -> np.ndarray:
    """M^g: each group's map normalised over space, written out in numpy (N, G, H, W)."""
    def softmax(x, axis):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    n, g, h, w = logits.shape
    if mode == "spatial":
        return softmax(logits.reshape(n, g, h * w), -1).reshape(n, g, h, w)
    if mode == "paper":
        return softmax(softmax(logits, -1), -2) / w
    raise ValueError(mode)


@pytest.mark.parametrize("mode", ["spatial", "paper"])
def test_local_flow_group_weights_are_the_normalised_masks(mode):
    """Group g's weight at pixel p is M^g(p) / sum_g' M^g'(p), M the spatially normalised
    masks, not a softmax of the raw logits over groups: with logits whose per-group offsets
    and spreads differ, the two differ by far more than the tolerance."""
    import torch
    from torch import nn
    from ifmdm_model.stage1 import LocalFlowModule

    torch.manual_seed(0)
    n, g, c, r = 2, 4, 8, 8
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, g, r, r)) * np.array([0.5, 1.0, 2.0, 3.0])[None, :, None, None] \
        + np.array([4.0, -2.0, 0.0, 1.0])[None, :, None, None]
    head_out = torch.zeros(n, g, 3, r, r)
    head_out[:, :, 2] = torch.from_numpy(logits).float()           # zero flow, given mask logits

    class Fixed(nn.Module):
        def forward(self, x):
            return head_out.reshape(n, 3 * g, r, r)

    lf = LocalFlowModule(c, r, g, mask_norm=mode)
    lf.hidden, lf.head = nn.Identity(), Fixed()
    seen = {}
    inner = lf.warp_and_combine

    def spy(appearance, flow, weights):
        seen["w"] = weights.detach().numpy()
        return inner(appearance, flow, weights)
    lf.warp_and_combine = spy
    appearance = torch.randn(n, c, r, r)
    warped, masks, flow = lf(torch.zeros(n, c, r, r), appearance)

    m = _np_masks(logits, mode)
    want = m / m.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(masks.detach().numpy(), m, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(seen["w"], want, rtol=1e-4, atol=1e-6)
    # a softmax of the raw logits over groups is far from it (the test can tell them apart)
    e = np.exp(logits - logits.max(1, keepdims=True))
    assert np.abs(e / e.sum(1, keepdims=True) - want).max() > 0.2
    # zero flow: the output is the appearance times the weights summed over groups = A_l
    np.testing.assert_allclose(warped.detach().numpy(), appearance.numpy(), rtol=1e-4, atol=1e-5)


# --- resume: parts appear only complete, under their final names ----------------------------

def _tracks(n=3, points=5):
    z = np.zeros(n, np.float32)
    return dict(t=np.arange(n, dtype=np.float64) / 6.25, n_faces=np.ones(n, np.int32),
                box=np.zeros((n, 4), np.float32), landmarks=np.zeros((n, points, 3), np.float32),
                pose=np.zeros((n, 6), np.float32), mouth_open=z, eye_open=z, lip_energy=z,
                head_speed=z, camera_motion=z, sharpness=z)


def _row_for(uid):
    from ifmdm_data.work import failure_row
    return failure_row(uid.rsplit("_", 1)[0], f"/x/{uid}.mp4", "decode_error", "test")


@pytest.mark.parametrize("where", ["write_table", "replace"])
def test_a_write_that_fails_midway_leaves_no_part_and_the_unit_is_redone(tmp_path, monkeypatch, where):
    """A failure in the middle of writing a part (the Parquet writer has written some bytes,
    or the final rename fails) leaves nothing under the final name and no temporary file, so
    `done()` does not count the unit and a re-run writes it."""
    import os
    import pyarrow.parquet as pq
    from ifmdm_data import schema, storage
    from ifmdm_data.work import PartStore

    store = PartStore(tmp_path)
    store.write("a_w0000", [_row_for("a_w0000")])                  # a finished unit
    real_write, real_replace = pq.write_table, os.replace

    class Killed(Exception):
        pass

    def half_write(table, where_, **kw):
        with open(where_, "wb") as f:                                 # half a Parquet file
            f.write(b"PAR1" + b"\0" * 100)
        raise Killed("killed while writing")

    def no_replace(src, dst):
        raise Killed("killed before the rename")

    if where == "write_table":
        monkeypatch.setattr(schema.pq, "write_table", half_write)
    else:
        monkeypatch.setattr(storage.os, "replace", no_replace)   # the atomic write (storage.py)
    with pytest.raises(Killed):
        store.write("b_w0000", [_row_for("b_w0000")])
    with pytest.raises(Killed):
        store.write_tracks("b_0000000", _tracks(), {"fps": 6.25})
    monkeypatch.setattr(schema.pq, "write_table", real_write)
    monkeypatch.setattr(storage.os, "replace", real_replace)

    assert sorted(p.name for p in store.parts.iterdir()) == ["a_w0000.parquet"]   # no half part
    assert list(store.tracks.iterdir()) == []
    assert store.done() == {"a_w0000"}                              # b is not done: a re-run redoes it
    store.write("b_w0000", [_row_for("b_w0000")])
    assert store.done() == {"a_w0000", "b_w0000"}
    assert pq.read_table(store.parts / "b_w0000.parquet").num_rows == 1
    assert sorted(store.read_all()["clip_id"]) == ["a", "b"]
    store.write_tracks("b_0000000", _tracks(), {"fps": 6.25})
    assert pq.read_table(store.tracks / "b_0000000.parquet").num_rows == 3


def test_a_writer_killed_midway_leaves_no_part(tmp_path):
    """The process is SIGKILLed in the middle of writing a part (no except clause runs):
    only a hidden temporary file may remain; no file under the final name, the unit is not
    done, and the re-run writes it."""
    import signal
    import subprocess
    import sys
    import pyarrow.parquet as pq
    from ifmdm_data.work import PartStore

    code = f"""
import os, signal, pyarrow.parquet as pq
def half_write(table, where, **kw):
    with open(where, "wb") as f:
        f.write(b"PAR1" + b"\\0" * 100)
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
pq.write_table = half_write
from ifmdm_data.work import PartStore, failure_row
PartStore({str(tmp_path)!r}).write("b_w0000", [failure_row("b", "/x/b.mp4", "decode_error", "t")])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-2000:]
    store = PartStore(tmp_path)
    assert not (store.parts / "b_w0000.parquet").exists()
    assert all(p.name.startswith(".") for p in store.parts.iterdir())   # at most a hidden temp file
    assert store.done() == set()
    store.write("b_w0000", [_row_for("b_w0000")])
    assert store.done() == {"b_w0000"} and pq.read_table(store.parts / "b_w0000.parquet").num_rows == 1
