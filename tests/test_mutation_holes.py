"""Tests that fail when a central behaviour breaks (issue 16): each one is checked against a
hand-made one-line break of the code it guards (see the issue for the list)."""
from __future__ import annotations

import math
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from ifmdm_data.filter.scenes import SceneCutDetector


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


def _two_bin(p: float) -> np.ndarray:
    """A histogram with mass 1 - p in one bin and p in another: the detector's distance between
    _two_bin(p) and _two_bin(q) is exactly |p - q| (dyadic p, q: no rounding)."""
    return np.array([1.0 - p, p, 0.0, 0.0])


def _feed(det, steps, start=0.5, times=None):
    """Feed histograms whose distances to the previous one are `steps`; the cut frame indices."""
    p, out = start, [det.feed(_two_bin(start), None if times is None else times[0])]
    for i, d in enumerate(steps, 1):
        p = p + d if p + d <= 1 else p - d
        out.append(det.feed(_two_bin(p), None if times is None else times[i]))
    return [i for i, (cut, _) in enumerate(out) if cut], [dist for _, dist in out]


def test_scene_cut_distance_is_half_the_l1_distance_and_the_first_change_can_be_a_cut():
    det = SceneCutDetector(0.2)
    cuts, dist = _feed(det, [0.375, 0.0, 0.0625])
    assert dist == [0.0, 0.375, 0.0, 0.0625]                      # the first frame: no distance
    assert cuts == [1]                                             # nothing recent yet: a cut


def test_scene_cut_threshold_and_ratio_are_strict():
    """A change exactly at `threshold`, or exactly `ratio` times the recent median, is no cut."""
    assert _feed(SceneCutDetector(0.25), [0.25])[0] == []
    assert _feed(SceneCutDetector(0.25), [0.375])[0] == [1]
    # recent level 0.125 (median of three), ratio 2: 0.25 is no cut, 0.375 is (threshold 0.2)
    det = SceneCutDetector(0.2, ratio=2.0)
    assert _feed(det, [0.125, 0.125, 0.125, 0.25, 0.375])[0] == [5]


def test_scene_cut_level_is_the_median_of_the_last_history_changes():
    """history=3: after five small changes and three of 0.25 (under the 0.3 threshold), the
    recent level is 0.25, so 0.375 (< 2 x 0.25) is no cut; over the whole past (median 0.0625)
    it would be one."""
    det = SceneCutDetector(0.3, history=3, ratio=2.0)
    assert _feed(det, [0.0625] * 5 + [0.25] * 3 + [0.375])[0] == []
    det = SceneCutDetector(0.3, history=20, ratio=2.0)
    assert _feed(det, [0.0625] * 5 + [0.25] * 3 + [0.375])[0] == [9]


def test_scene_cut_min_gap_in_frames_is_inclusive():
    """min_gap=3: a second cut needs 3 frames without a cut between (frames 2, 3, 4 after the cut at
    1): at frame 5 it is one, at frame 4 it is not."""
    assert _feed(SceneCutDetector(0.5, min_gap=3), [1.0, 0.0, 0.0, 1.0])[0] == [1]
    assert _feed(SceneCutDetector(0.5, min_gap=3), [1.0, 0.0, 0.0, 0.0, 1.0])[0] == [1, 5]
    # and again after the second cut
    assert _feed(SceneCutDetector(0.5, min_gap=3), [1.0, 0, 0, 0, 1.0, 0, 0, 1.0])[0] == [1, 5]
    assert _feed(SceneCutDetector(0.5, min_gap=3), [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])[0] == [1, 5, 9]


def test_scene_cut_min_gap_in_seconds_is_inclusive_and_replaces_the_frame_gap():
    """With times and min_gap_s=0.5 (frames every 0.125 s, a frame gap of 100 that would forbid
    it): a cut 0.5 s after the last one is allowed, 0.375 s after is not. Without times the
    frame gap applies; without min_gap_s the times are not used."""
    t = [i * 0.125 for i in range(8)]
    det = SceneCutDetector(0.5, min_gap=100, min_gap_s=0.5)
    assert _feed(det, [1.0, 0, 0, 1.0], times=t)[0] == [1]          # t 0.125, then 0.5: too soon
    det = SceneCutDetector(0.5, min_gap=100, min_gap_s=0.5)
    assert _feed(det, [1.0, 0, 0, 0, 1.0], times=t)[0] == [1, 5]    # 0.625 - 0.125 = 0.5
    det = SceneCutDetector(0.5, min_gap=100, min_gap_s=0.5)
    assert _feed(det, [1.0, 0, 0, 0, 1.0])[0] == [1]                # no times: 100 frames
    det = SceneCutDetector(0.5, min_gap=3)
    assert _feed(det, [1.0, 0, 0, 0, 1.0], times=[0.0] * 8)[0] == [1, 5]   # times ignored


def test_frame_histogram_of_planar_yuv_reads_the_planes_without_converting_the_frame():
    """Planar YUV frames (yuv420p / 422p / 444p, odd sizes too): the histogram comes from the
    planes alone (the frame is never converted to RGB) and matches the RGB one; a packed format
    such as bgr24 is converted, with its channels in the right order."""
    from ifmdm_data.filter.scenes import frame_histogram, hsv_histogram

    img = cv2.resize(_panorama(300, 64, seed=5), (301, 203), interpolation=cv2.INTER_LINEAR)
    img = np.ascontiguousarray(img)
    ref = hsv_histogram(img)

    class PlanesOnly:
        def __init__(self, frame):
            self.planes, self.format, self.width, self.height = frame.planes, frame.format, frame.width, frame.height

        def to_ndarray(self, *a, **k):
            raise AssertionError("planar YUV must not be converted")

    for fmt in ("yuv420p", "yuv422p", "yuv444p"):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=fmt)
        h = frame_histogram(PlanesOnly(frame))
        assert h.shape == ref.shape and abs(h.sum() - 1) < 1e-5
        assert 0.5 * np.abs(h - ref).sum() < 0.15, fmt
    h = frame_histogram(av.VideoFrame.from_ndarray(np.ascontiguousarray(img[:, :, ::-1]), format="bgr24"))
    assert 0.5 * np.abs(h - ref).sum() < 0.1
    assert 0.5 * np.abs(h - hsv_histogram(np.ascontiguousarray(img[:, :, ::-1]))).sum() > 0.3


@pytest.mark.parametrize("rgb, h, s, v", [
    ((255, 0, 0), 0, 255, 255),        # red: hue 0
    ((0, 255, 255), 90, 255, 255),     # cyan: hue 90 of OpenCV's [0, 180), exactly on bin 8's lower edge
    ((255, 191, 191), 0, 64, 255),     # saturation 255 * 64 / 255 = 64: on bin 1's lower edge
    ((64, 64, 64), 0, 0, 64),          # grey: no saturation, value 64 (bin 1's lower edge)
    ((0, 0, 0), 0, 0, 0)])
def test_hsv_histogram_bins_are_opencv_hsv_over_its_full_ranges(rgb, h, s, v):
    """A one-colour frame puts all its mass in the bin of its HSV value: 16 hue bins over
    [0, 180), 4 saturation and 4 value bins over [0, 256), index (hue, sat, val) row-major."""
    from ifmdm_data.filter.scenes import hsv_histogram

    img = np.full((100, 140, 3), rgb, np.uint8)
    want = np.zeros(16 * 4 * 4)
    want[(h * 16 // 180) * 16 + (s * 4 // 256) * 4 + v * 4 // 256] = 1.0
    np.testing.assert_array_equal(hsv_histogram(img), want)


@pytest.mark.parametrize("size", [(2, 2), (2, 64), (64, 2)])
def test_frame_histogram_of_a_frame_too_small_for_the_planes_is_its_rgb_histogram(size):
    """A frame with fewer than two chroma samples across (or down) has no 4:2:0 thumbnail: its
    histogram is that of the frame converted to RGB, and still a distribution."""
    from ifmdm_data.filter.scenes import frame_histogram, hsv_histogram

    w, h = size
    img = np.full((h, w, 3), (200, 60, 30), np.uint8)
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
    got = frame_histogram(frame)
    assert got.shape == (256,) and abs(got.sum() - 1) < 1e-6
    np.testing.assert_allclose(got, hsv_histogram(frame.to_ndarray(format="rgb24")), atol=1e-6)


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
        from ifmdm_data.faces.backends.base import SCHEMES
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
    from ifmdm_data.filter.analyse import analyse_unit
    from ifmdm_data.faces.backends.base import FaceModels
    from ifmdm_data.filter.config import FilterConfig
    from ifmdm_data.media.probe import probe_file

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
    from ifmdm_model.stage1.local_flow import LocalFlowModule

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


def test_mask_normalisation_default_is_spatial_and_unknown_modes_are_refused():
    """stage1.log_spatial_masks' docstring: "spatial" (a 2-D softmax over H*W) is the default,
    of the functions and of LocalFlowModule; an unknown mode is an error naming the choices."""
    import torch
    from ifmdm_model.stage1.local_flow import MASK_NORMS, LocalFlowModule, log_spatial_masks, normalise_masks

    logits = torch.randn(2, 3, 5, 6) * 2
    spatial = torch.softmax(logits.reshape(2, 3, 30), -1).reshape(2, 3, 5, 6)
    torch.testing.assert_close(normalise_masks(logits), spatial)
    torch.testing.assert_close(log_spatial_masks(logits).exp(), spatial)
    assert LocalFlowModule(8, 8, 2).mask_norm == "spatial"
    with pytest.raises(ValueError, match="mask normalisation must be one of") as e:
        normalise_masks(logits, "softmax")
    assert all(m in str(e.value) for m in MASK_NORMS) and "'softmax'" in str(e.value)


# --- resume: parts appear only complete, under their final names ----------------------------

def _tracks(n=3, points=5):
    z = np.zeros(n, np.float32)
    return dict(t=np.arange(n, dtype=np.float64) / 6.25, n_faces=np.ones(n, np.int32),
                box=np.zeros((n, 4), np.float32), landmarks=np.zeros((n, points, 3), np.float32),
                pose=np.zeros((n, 6), np.float32), mouth_open=z, eye_open=z, lip_energy=z,
                head_speed=z, camera_motion=z, sharpness=z)


def _row_for(uid):
    from ifmdm_data.filter.work import failure_row
    return failure_row(uid.rsplit("_", 1)[0], f"/x/{uid}.mp4", "decode_error", "test")


@pytest.mark.parametrize("where", ["write_table", "part_only", "replace"])
def test_a_write_that_fails_midway_leaves_no_part_and_the_unit_is_redone(tmp_path, monkeypatch, where):
    """A failure in the middle of writing a batch (the Parquet writer has written some bytes of
    the tracks file or of the part, or the final rename fails) leaves nothing under the final
    name and no temporary file, so `done()` does not count the unit and a re-run writes it (a
    tracks file whose part never came is superseded by the re-run's)."""
    import pyarrow.parquet as pq
    from ifmdm_data import schema
    from ifmdm_data.io import storage
    from ifmdm_data.filter.work import PartStore

    store = PartStore(tmp_path)
    store.write("a_w0000", [_row_for("a_w0000")])                  # a finished unit
    first = sorted(p.name for p in store.parts.iterdir())
    assert len(first) == 1 and first[0].startswith("batch-")

    class Killed(Exception):
        pass

    def half_write(table, where_, **kw):
        with open(where_, "wb") as f:                                 # half a Parquet file
            f.write(b"PAR1" + b"\0" * 100)
        raise Killed("killed while writing")

    def no_replace(src, dst):
        raise Killed("killed before the rename")

    def half_writer(where_, schema_, **kw):                         # the unit tracks writer
        half_write(None, where_)

    if where in ("write_table", "part_only"):
        monkeypatch.setattr(schema.pq, "write_table", half_write)         # the part writer
        if where == "write_table":
            monkeypatch.setattr(schema.pq, "ParquetWriter", half_writer)  # the tracks writer
    else:
        monkeypatch.setattr(storage.os, "replace", no_replace)   # the atomic write (storage.py)
    store.write_tracks("b_w0000", {"b_000000000": schema.tracks_table(_tracks(2), {"fps": 6.25})})
    with pytest.raises(Killed):
        store.write("b_w0000", [_row_for("b_w0000")])                 # tracks, then part
    monkeypatch.undo()

    assert sorted(p.name for p in store.parts.iterdir()) == first   # no half part
    orphans = sorted(p.name for p in store.tracks.iterdir())
    # the tracks writer failed: no tracks file; only the part failed: a complete tracks file
    assert orphans == [] if where != "part_only" else (len(orphans) == 1 and not orphans[0].startswith("."))
    assert store.done() == {"a_w0000"}                              # b is not done: a re-run redoes it
    store.write_tracks("b_w0000", {"b_000000000": schema.tracks_table(_tracks(), {"fps": 6.25})})
    store.write("b_w0000", [_row_for("b_w0000")])
    assert store.done() == {"a_w0000", "b_w0000"}
    new = sorted(set(p.name for p in store.parts.iterdir()) - set(first))
    assert len(new) == 1 and pq.read_table(store.parts / new[0]).num_rows == 1
    assert sorted(store.read_all()["clip_id"]) == ["a", "b"]
    assert pq.read_table(store.tracks / new[0]).num_rows == 3         # tracks and part: one name
    assert len(schema.read_segment_tracks(tmp_path, "b_000000000")[0]) == 3   # the re-run's, not the orphan's


def test_a_writer_killed_midway_leaves_no_part(tmp_path):
    """The process is SIGKILLed in the middle of writing a part (no except clause runs):
    only a hidden temporary file may remain; no file under the final name, the unit is not
    done, and the re-run writes it."""
    import signal
    import subprocess
    import sys
    import pyarrow.parquet as pq
    from ifmdm_data.filter.work import PartStore

    code = f"""
import os, signal, pyarrow.parquet as pq
def half_write(table, where, **kw):
    with open(where, "wb") as f:
        f.write(b"PAR1" + b"\\0" * 100)
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
pq.write_table = half_write
from ifmdm_data.filter.work import PartStore, failure_row
PartStore({str(tmp_path)!r}).write("b_w0000", [failure_row("b", "/x/b.mp4", "decode_error", "t")])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-2000:]
    store = PartStore(tmp_path)
    assert all(p.name.startswith(".") for p in store.parts.iterdir())   # at most a hidden temp file
    assert store.done() == set()
    store.write("b_w0000", [_row_for("b_w0000")])
    (part,) = [p for p in store.parts.iterdir() if not p.name.startswith(".")]
    assert store.done() == {"b_w0000"} and pq.read_table(part).num_rows == 1


# --- work units (issue 16: bash scripts/mutation.sh work) -----------------------------------

def test_unit_and_segment_ids_are_the_names_resume_relies_on():
    """A part's units are known by their unit ids (in its metadata; the parts of older runs by
    name), a track row group by its segment id: both are fixed-width, so they sort in time
    order and a re-run finds the same ids (start in whole milliseconds)."""
    from ifmdm_data.filter.work import segment_id, unit_id

    assert unit_id("clip", 7) == "clip_w0007"
    assert segment_id("clip", 0.0) == "clip_000000000"
    assert segment_id("clip", 12.3456) == "clip_000012346"          # 12345.6 ms rounds up
    assert segment_id("a_b", 1234.5) == "a_b_001234500"


def test_plan_units_cuts_equal_windows_of_at_most_the_maximum():
    from ifmdm_data.filter.work import plan_units

    probe = {"duration_s": 45.0}
    units = plan_units("c", "/v/c.mp4", probe, 20.0)                 # ceil(45 / 20) = 3 windows of 15 s
    assert [(u["unit_id"], u["start_s"], u["end_s"]) for u in units] == [
        ("c_w0000", 0.0, 15.0), ("c_w0001", 15.0, 30.0), ("c_w0002", 30.0, 45.0)]
    assert all(u["clip_id"] == "c" and u["path"] == "/v/c.mp4" and u["probe"] is probe for u in units)
    # exactly two maxima: two windows, not three; a little over: three
    assert [(u["start_s"], u["end_s"]) for u in plan_units("c", "p", {"duration_s": 40.0}, 20.0)] == [
        (0.0, 20.0), (20.0, 40.0)]
    assert len(plan_units("c", "p", {"duration_s": 40.001}, 20.0)) == 3
    one = plan_units("c", "p", {"duration_s": 5.0}, 20.0)
    assert [(u["unit_id"], u["start_s"], u["end_s"]) for u in one] == [("c_w0000", 0.0, 5.0)]
    # the last window ends exactly at the duration (9 * (175.756 / 9) is 175.75600000000003)
    units = plan_units("c", "p", {"duration_s": 175.756}, 20.0)
    assert len(units) == 9 and units[-1]["end_s"] == 175.756 and 9 * (175.756 / 9) != 175.756
    assert [(u["start_s"], u["end_s"]) for u in plan_units("c", "p", {"duration_s": 0.5}, 20.0)] == [(0.0, 0.5)]
    # no usable duration: one unit over the whole file
    for probe in ({}, {"duration_s": float("nan")}, {"duration_s": 0.0}, {"duration_s": -3.0},
                  {"duration_s": float("inf")}, {"duration_s": "12"}):
        units = plan_units("c", "p", probe, 20.0)
        assert units == [dict(unit_id="c_w0000", clip_id="c", path="p", start_s=0.0, end_s=float("inf"),
                              probe=probe)], probe


def test_failure_row_keeps_the_probe_fields_and_the_window():
    from ifmdm_data.filter.work import PROBE_FIELDS, failure_row

    record = {"width": 640, "height": 480, "fps": 25.0, "duration_s": 9.5, "head_motion": 0.3}
    row = failure_row("c", "/v/c.mp4", "decode_error", "x" * 600, record, start_s=2.0)
    assert row["width"] == 640 and row["height"] == 480 and row["fps"] == 25.0
    assert "head_motion" not in row                                 # only probe fields are kept
    assert set(row) - set(PROBE_FIELDS) == {"segment_id", "clip_id", "path", "start_s", "end_s",
                                            "duration_s", "reasons", "error"}
    assert (row["segment_id"], row["clip_id"], row["path"]) == ("c_000002000", "c", "/v/c.mp4")
    assert (row["start_s"], row["end_s"], row["duration_s"]) == (2.0, 9.5, 7.5)   # end: the probed duration
    assert row["reasons"] == ["decode_error"] and row["error"] == "x" * 500
    row = failure_row("c", "p", "unreadable", "d", record, start_s=20.0, end_s=40.0)  # a window's end
    assert (row["end_s"], row["duration_s"]) == (40.0, 20.0)
    row = failure_row("c", "p", "unreadable", "d")                  # nothing known
    assert math.isnan(row["end_s"]) and math.isnan(row["duration_s"]) and row["start_s"] == 0.0
    row = failure_row("c", "p", "unreadable", "d", {"duration_s": None})   # probed, no duration
    assert math.isnan(row["end_s"]) and math.isnan(row["duration_s"])


def test_collected_results_commit_to_the_same_files_as_a_direct_write(tmp_path):
    """A worker's CollectingStore payload, committed by the driver, writes the tracks and the
    part a PartStore would have written (a batch of one: one tracks file and one part of the
    same batch name); an empty payload (nothing written) commits nothing."""
    import pyarrow.parquet as pq
    from ifmdm_data.schema import read_segment_tracks, tracks_table
    from ifmdm_data.filter.work import CollectingStore, PartStore

    assert CollectingStore().payload() == b""
    store = PartStore(tmp_path / "out")
    # the layout readers rely on: OUT/_work/parts/batch-*.parquet, OUT/tracks/batch-*.parquet
    assert (store.parts, store.tracks) == (tmp_path / "out" / "_work" / "parts", tmp_path / "out" / "tracks")
    assert store.parts.is_dir() and store.tracks.is_dir()
    assert store.commit(b"") is None and store.done() == set()
    col = CollectingStore()
    col.write_tracks("c_w0000", {"c_000000000": tracks_table(_tracks(), {"fps": 6.25})})
    col.write("c_w0000", [_row_for("c_w0000")])
    assert store.commit(col.payload()) == "c_w0000"
    assert store.done() == {"c_w0000"}
    (part,) = list(store.parts.iterdir())
    assert part.name.startswith("batch-") and pq.read_table(part).num_rows == 1
    assert [p.name for p in store.tracks.iterdir()] == [part.name]
    tracks, meta = read_segment_tracks(store.out, "c_000000000")
    assert len(tracks) == 3 and meta["fps"] == "6.25"
    assert store.read_all()["clip_id"].tolist() == ["c"]
    assert PartStore(tmp_path / "empty").read_all().empty


def test_part_store_on_object_storage_names_and_reads_its_parts(tmp_path, monkeypatch):
    """An object-storage OUT: the parts and tracks are URLs under it (a trailing slash or not),
    nothing is created locally, and read_all fetches every part (one GET each) into one frame
    with a fresh index."""
    import os
    from ifmdm_data.io import storage
    from ifmdm_data.filter.work import PartStore, part_table

    monkeypatch.chdir(tmp_path)
    store = PartStore("s3://bucket/run/out/")
    assert store.remote and store.out == "s3://bucket/run/out"
    assert (store.parts, store.tracks) == ("s3://bucket/run/out/_work/parts", "s3://bucket/run/out/tracks")
    assert os.listdir(tmp_path) == []
    objs = {"s3://bucket/run/out/_work/parts/a_w0000.parquet": part_table([_row_for("a_w0000")]),
            "s3://bucket/run/out/_work/parts/b_w0000.parquet": part_table([_row_for("b_w0000")])}
    monkeypatch.setattr(storage, "list_names", lambda loc, suffix: sorted(n.rsplit("/", 1)[1] for n in objs if n.startswith(str(loc))))
    monkeypatch.setattr(storage, "read_parquet", lambda loc: objs[loc])
    df = store.read_all()
    assert df["clip_id"].tolist() == ["a", "b"] and df.index.tolist() == [0, 1]
    assert store.done() == {"a_w0000", "b_w0000"}
    assert PartStore(tmp_path / "local").read_all().empty


def test_part_table_stores_reasons_as_lists():
    from ifmdm_data.filter.work import part_table

    t = part_table([dict(clip_id="a", reasons=("x", "y")), dict(clip_id="b", reasons=None)])
    assert t.column("reasons").to_pylist() == [["x", "y"], []]
    assert t.num_rows == 2 and "__index_level_0__" not in t.column_names


def _unit(path="/v/c.mp4", start=20.0, end=40.0):
    probe = dict(width=640, height=480, fps=25.0, rotation=90, duration_s=60.0)
    return dict(unit_id="c_w0001", clip_id="c", path=path, start_s=start, end_s=end, probe=probe)


def test_run_unit_rows_tracks_and_identity_signals(tmp_path, monkeypatch):
    """A unit that analyses: one row per segment with the probe fields, its segment id, the
    backend, the identity signals (called with the segment's window and the rotation), and its
    tracks written under the segment id in one tracks file; the part is written last, with the
    unit id (a PartStore writes the unit as a batch of one)."""
    from ifmdm_data.filter import analyse
    from ifmdm_data.filter.config import FilterConfig
    from ifmdm_data.filter.identify import failed_signals
    from ifmdm_data.schema import read_segment_tracks
    from ifmdm_data.filter.work import PartStore, run_unit

    segs = [dict(start_s=20.0, end_s=27.5, duration_s=7.5, landmark_scheme="mp478"),
            dict(start_s=27.5, end_s=40.0, duration_s=12.5)]
    seen = []
    models, speech, syncnet, cfg = object(), object(), object(), FilterConfig()

    def fake_analyse(unit, cfg_, models_, speech_, syncnet_):
        seen.append((unit, cfg_, models_, speech_, syncnet_))
        return [dict(row=dict(r), tracks=_tracks()) for r in segs]
    monkeypatch.setattr(analyse, "analyse_unit", fake_analyse)
    calls = []

    def identify(path, start, end, rot, **kw):
        calls.append((path, start, end, rot))
        if start > 25:
            raise RuntimeError("no frames")
        return {"identity_faces": 3}

    store = PartStore(tmp_path)
    rows = run_unit(_unit(), cfg, models, speech, store, backend_name="mediapipe", identify=identify,
                    syncnet=syncnet)
    assert seen == [(_unit(), cfg, models, speech, syncnet)]        # a local path: analysed where it is
    assert calls == [("/v/c.mp4", 20.0, 27.5, 90), ("/v/c.mp4", 27.5, 40.0, 90)]
    assert [r["segment_id"] for r in rows] == ["c_000020000", "c_000027500"]
    for r in rows:
        assert (r["clip_id"], r["path"], r["reasons"], r["error"], r["backend"]) == ("c", "/v/c.mp4", [], "", "mediapipe")
        assert (r["width"], r["height"], r["fps"], r["rotation"]) == (640, 480, 25.0, 90)
        assert 0 <= r["analysis_s"] < 60
    assert rows[0]["identity_faces"] == 3
    assert store.read_all()["segment_id"].tolist() == ["c_000020000", "c_000027500"]
    want = failed_signals()                                 # an identify error: signals not computed (null)
    assert math.isnan(rows[1].pop("identity_spread")) and math.isnan(want.pop("identity_spread"))
    assert {k: rows[1][k] for k in want} == want
    assert store.done() == {"c_w0001"}
    assert [p.name for p in store.tracks.iterdir()] == [p.name for p in store.parts.iterdir()]  # one of each
    _, meta = read_segment_tracks(tmp_path, "c_000020000")
    assert meta == {"segment_id": "c_000020000", "path": "/v/c.mp4", "width": "640", "height": "480",
                    "landmark_scheme": "mp478", "analysis_fps": str(FilterConfig().analysis.fps)}
    assert read_segment_tracks(tmp_path, "c_000027500")[1]["landmark_scheme"] == ""
    # without identify: no signal columns
    rows = run_unit(_unit(), FilterConfig(), None, None, PartStore(tmp_path / "b"))
    assert "identity_faces" not in rows[0] and rows[0]["backend"] == ""
    # an unknown rotation is 0
    calls.clear()
    unit = _unit()
    unit["probe"] = dict(unit["probe"], rotation=None)
    run_unit(unit, FilterConfig(), None, None, PartStore(tmp_path / "c"), identify=identify)
    assert [c[3] for c in calls] == [0, 0]


def test_run_unit_turns_a_clip_failure_into_one_row_and_a_store_failure_into_an_error(tmp_path, monkeypatch):
    from ifmdm_data.filter import analyse
    from ifmdm_data.io import storage
    from ifmdm_data.filter.config import FilterConfig
    from ifmdm_data.errors import ClipError
    from ifmdm_data.filter.work import PartStore, run_unit

    def failing(exc):
        def f(*a, **k):
            raise exc
        return f

    cases = [(FileNotFoundError("gone"), "unreadable", "file not found"),
             (storage.SpoolLimitError("too big to spool"), "unreadable", "too big to spool"),
             (ClipError("decode_error", "bad frame 3"), "decode_error", "bad frame 3"),
             (ZeroDivisionError("our bug"), "analysis_error", "ZeroDivisionError: our bug | ")]
    for i, (exc, reason, detail) in enumerate(cases):
        monkeypatch.setattr(analyse, "analyse_unit", failing(exc))
        store = PartStore(tmp_path / str(i))
        rows = run_unit(_unit(), FilterConfig(), None, None, store)
        assert len(rows) == 1, exc
        r = rows[0]
        assert r["reasons"] == [reason] and r["error"].startswith(detail), (exc, r["error"])
        assert (r["clip_id"], r["path"]) == ("c", "/v/c.mp4")
        assert 0 <= r["analysis_s"] < 60 and len(store.read_all()) == 1
        assert (r["segment_id"], r["start_s"], r["end_s"], r["duration_s"]) == ("c_000020000", 20.0, 40.0, 20.0)
        assert r["width"] == 640 and r["analysis_s"] >= 0
        assert store.done() == {"c_w0001"}
    assert "Traceback" in rows[0]["error"] and "\n" not in rows[0]["error"]   # where our bug happened
    monkeypatch.setattr(analyse, "analyse_unit", failing(storage.StorageError("bucket gone")))
    store = PartStore(tmp_path / "s")
    with pytest.raises(storage.StorageError):
        run_unit(_unit(), FilterConfig(), None, None, store)
    assert store.done() == set()                                   # not done: the run stops, resumes later


def test_fault_injection_kills_only_the_named_clip(tmp_path, monkeypatch):
    """tests/fault_crash/sitecustomize.py (tests/test_resume.py's worker crash) exits the worker
    for a unit whose file name contains IFMDM_FAULT_CRASH, and only for that one; installed
    into `ifmdm_data.filter.analyse`, it reaches `run_unit` (which looks analyse_unit up per call)."""
    import os
    from fault_crash import sitecustomize as fault
    from ifmdm_data.filter import analyse
    from ifmdm_data.filter.config import FilterConfig
    from ifmdm_data.filter.work import CollectingStore, run_unit

    monkeypatch.setattr(analyse, "analyse_unit", lambda *a, **k: [])
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    fault.install("crashme")
    run_unit(_unit(path="/crashme/ok.mp4"), FilterConfig(), None, None, CollectingStore())
    assert exits == []
    run_unit(_unit(path="/v/crashme.mp4"), FilterConfig(), None, None, CollectingStore())
    assert exits == [17]
    monkeypatch.undo()                                             # the library alone: no crash
    monkeypatch.setattr(analyse, "analyse_unit", lambda *a, **k: [])
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    run_unit(_unit(path="/v/crashme.mp4"), FilterConfig(), None, None, CollectingStore())
    assert exits == [17]


def test_local_flow_checkpoint_and_coarse_flow_give_the_same_output_and_gradients():
    """`use_checkpoint` (activation checkpointing of the warps) changes memory, not maths: with a
    batch of 2 and a coarse flow to refine, output and every gradient equal the plain module's;
    the coarse flow is upsampled per sample and added (a coarse flow of a constant shift moves
    the output)."""
    import copy

    import torch
    from ifmdm_model.stage1.local_flow import LocalFlowModule

    torch.manual_seed(0)
    n, g, c, r = 2, 2, 4, 8
    plain = LocalFlowModule(c, r, g)
    ckpt = copy.deepcopy(plain)
    ckpt.use_checkpoint = True
    feature = torch.randn(n, c, r, r)
    appearance = torch.randn(n, c, r, r)
    coarse = torch.randn(n, g, 2, r // 2, r // 2) * 0.3
    outs = []
    for m in (plain, ckpt):
        a = appearance.clone().requires_grad_(True)
        warped, masks, flow = m(feature, a, coarse)
        (warped.square().sum() + masks.sum() + flow.sum()).backward()
        outs.append((warped.detach(), flow.detach(), a.grad, [p.grad.clone() for p in m.parameters()]))
    (w0, f0, ga0, gp0), (w1, f1, ga1, gp1) = outs
    torch.testing.assert_close(w1, w0)
    torch.testing.assert_close(f1, f0)
    torch.testing.assert_close(ga1, ga0)
    for p0, p1 in zip(gp0, gp1):
        torch.testing.assert_close(p1, p0)
    with torch.no_grad():                                      # flow = own tanh offset + upsampled coarse flow
        _, _, own = plain(feature, appearance)
        shift = torch.zeros(n, g, 2, r // 2, r // 2)
        shift[1, :, 0] = 0.25                                  # sample 1 only: its x offsets move by 0.25
        _, _, moved = plain(feature, appearance, shift)
    torch.testing.assert_close(moved[0], own[0])
    torch.testing.assert_close(moved[1, :, 0], own[1, :, 0] + 0.25)



def test_local_flow_head_is_grouped_nonlinear_small_at_init_and_not_in_the_state_dict():
    """The local flow head as the paper and the docstring say: grouped convolutions (group g's
    flow and mask see only its C/G feature channels), a nonlinear hidden layer, small initial
    outputs (near-identity warps, near-uniform masks: std ~0.08 for unit features, not ~1), and
    the pixel-centre grid rebuilt from the resolution, not saved in checkpoints."""
    import torch
    from ifmdm_model.stage1.local_flow import LocalFlowModule

    torch.manual_seed(0)
    n, c, g, r = 3, 16, 4, 8
    lf = LocalFlowModule(c, r, g)
    x = torch.randn(n, c, r, r)
    with torch.no_grad():
        out = lf.head(lf.hidden(x)).reshape(n, g, 3, r, r)
        x2 = x.clone()
        x2[:, : c // g] += torch.randn(n, c // g, r, r)              # group 0's channels only
        out2 = lf.head(lf.hidden(x2)).reshape(n, g, 3, r, r)
        assert not torch.allclose(out2[:, 0], out[:, 0])
        torch.testing.assert_close(out2[:, 1:], out[:, 1:])         # groups 1..G-1 untouched
        h = lf.hidden
        affine_gap = (h(x) + h(-x) - 2 * h(torch.zeros_like(x))).abs().max()
        assert affine_gap > 1e-2                                     # an affine layer gives 0
        assert out.std() < 0.3
    assert "base_grid" not in lf.state_dict()
