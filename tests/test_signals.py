"""Per-frame signal functions on constructed inputs with known answers."""
import numpy as np
import pytest

from ifmdm_data.faces import signals as sig
from ifmdm_data.faces.backends.base import SCHEMES
from ifmdm_data.filter.scenes import SceneCutDetector

MP = SCHEMES["mp478"]


def _rot(yaw, pitch, roll):
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _face(seed=0):
    rng = np.random.default_rng(seed)
    lm = rng.normal(0, 40, (478, 3)).astype(np.float32) + np.array([200, 200, 0], np.float32)
    lm[33], lm[263] = [160, 180, 0], [240, 180, 0]   # eyes 80 px apart
    for (top, bot) in MP.inner_lips:
        lm[top], lm[bot] = [200, 260, 0], [200, 262, 0]
    return lm


def test_similarity_align_recovers_transform():
    src = np.random.default_rng(1).normal(size=(30, 3))
    r = _rot(10, -5, 3)
    dst = 1.7 * src @ r.T + np.array([1.0, -2.0, 0.5])
    s, rr, t = sig.similarity_align(src, dst)
    assert s == pytest.approx(1.7, rel=1e-6)
    np.testing.assert_allclose(rr, r, atol=1e-6)


def test_head_pose_reports_rotation_and_translation():
    ref = _face()
    c = ref[list(MP.rigid)].mean(0)
    moved = (ref - c) @ _rot(12, 0, 0).T + c + np.array([8.0, 0, 0])
    pose = sig.head_pose(moved.astype(np.float32), ref, MP)
    assert pose[0] == pytest.approx(12, abs=0.5)          # yaw
    assert abs(pose[2]) < 0.5                             # roll
    assert pose[3] == pytest.approx(8 / 80, abs=0.01)     # tx in face sizes (eyes 80 px apart)


def test_mouth_opening_is_pose_normalised():
    ref = _face()
    opened = ref.copy()
    for (top, bot) in MP.inner_lips:
        opened[bot, 1] += 16                              # 0.2 face sizes wider
    closed_v = sig.mouth_opening(sig.pose_normalise(ref, ref, MP), MP, 80)
    c = ref[list(MP.rigid)].mean(0)
    turned = (opened - c) @ _rot(0, 0, 20).T * 1.5 + c   # rolled and closer to the camera
    open_v = sig.mouth_opening(sig.pose_normalise(turned.astype(np.float32), ref, MP), MP, 80)
    assert open_v - closed_v == pytest.approx(16 / 80, abs=0.01)


def test_scene_cut_detector_finds_cut_not_motion():
    rng = np.random.default_rng(0)
    a = np.zeros((64, 64, 3), np.uint8); a[..., 0] = 200
    b = np.zeros((64, 64, 3), np.uint8); b[..., 2] = 200; b[:, :32, 1] = 180
    frames = [np.roll(a + rng.integers(0, 10, a.shape, dtype=np.uint8), k, 1) for k in range(10)]
    frames += [np.roll(b, k, 0) for k in range(10)]
    det = SceneCutDetector(0.35)
    cuts = [i for i, f in enumerate(frames) if det(f)[0]]
    assert cuts == [10]


def test_camera_motion_sees_pan_but_not_static():
    rng = np.random.default_rng(0)
    tex = (rng.random((400, 600)) * 255).astype(np.uint8)
    import cv2
    tex = cv2.GaussianBlur(tex, (5, 5), 0)
    cam = sig.CameraMotion()
    still = [cam(tex[50:290, 50:370].copy(), None) for _ in range(3)]
    cam.reset()
    pan = [cam(tex[50:290, 50 + 6 * k:370 + 6 * k].copy(), None) for k in range(3)]
    assert np.nanmax(still) < 1e-3
    assert np.nanmin(pan[1:]) > 0.005


def test_sharpness_drops_with_blur():
    import cv2
    img = (np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8)
    box = np.array([20, 20, 180, 180], np.float32)
    assert sig.sharpness(cv2.GaussianBlur(img, (15, 15), 5), box, 128) < 0.1 * sig.sharpness(img, box, 128)


def test_frame_histogram_matches_rgb_histogram(tmp_path):
    """The strided-YUV histogram of a decoded frame is close to the RGB-thumbnail one."""
    import av
    from skimage import data
    from ifmdm_data.filter.scenes import frame_histogram, hsv_histogram

    img = np.ascontiguousarray(data.astronaut()[:, :, :3][::2, ::2])        # (256, 256, 3)
    other = np.ascontiguousarray(np.roll(img[:, ::-1, ::-1], 40, axis=0))    # other colours
    for fmt in ("yuv420p", "yuv444p", "rgb24"):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        if fmt != "rgb24":
            frame = frame.reformat(format=fmt)
        h = frame_histogram(frame)
        assert h.shape == (256,) and h.sum() == pytest.approx(1.0)
        d_same = 0.5 * np.abs(h - hsv_histogram(img)).sum()
        d_other = 0.5 * np.abs(h - hsv_histogram(other)).sum()
        assert d_same < 0.15 and d_other > 2 * d_same, (fmt, d_same, d_other)


def test_scene_cut_min_gap_in_seconds():
    det = SceneCutDetector(0.35, min_gap_s=0.25)
    a = np.zeros(256); a[0] = 1
    b = np.zeros(256); b[5] = 1
    c = np.zeros(256); c[9] = 1
    seq = [(0.0, a), (0.04, a), (0.08, b), (0.2, c), (0.24, c), (0.28, c), (0.32, c), (0.36, c),
           (0.4, c), (0.5, a)]
    cuts = [t for t, h in seq if det.feed(h, t)[0]]
    assert cuts == [0.08, 0.5]     # 0.2 is within 0.25 s of the cut at 0.08


# ---- lip motion of every decoded frame (issue 11, AV sync): signals.DenseMouth

def _mouth_lm(cx, cy, iod=40.0):
    """mp478 landmarks with the eyes `iod` apart and the lips centred on (cx, cy)."""
    lm = np.zeros((478, 3), np.float32)
    lm[:, :2] = [cx, cy]
    lm[MP.eye_outer[0], :2] = [cx - iod / 2, cy - 0.8 * iod]
    lm[MP.eye_outer[1], :2] = [cx + iod / 2, cy - 0.8 * iod]
    return lm


def _yuv_frame(gray):
    import av

    h, w = gray.shape
    i420 = np.concatenate([gray.ravel(), np.full(h * w // 2, 128, np.uint8)]).reshape(h * 3 // 2, w)
    return av.VideoFrame.from_ndarray(i420, format="yuv420p")


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_dense_mouth_maps_analysis_points_to_the_decoded_frame(rotation):
    """A point of the analysed (rotated as video.iter_frames does, then scaled) picture maps
    back to the same pixel of the decoded, unrotated frame."""
    w, h, x, y = 64, 48, 10, 30
    img = np.zeros((h, w), np.uint8)
    img[y, x] = 255
    rot = np.rot90(img, k=-rotation // 90)
    ys, xs = np.nonzero(rot)
    ah, aw = rot.shape[0] // 2, rot.shape[1] // 2                 # analysis at half size
    dm = sig.DenseMouth(MP, 16, (aw, ah), rotation)
    got = dm._to_decoded(np.array([[(xs[0] + 0.5) / 2, (ys[0] + 0.5) / 2]]), w, h)[0]
    np.testing.assert_allclose(got, [x + 0.5, y + 0.5], atol=1e-6)


def test_dense_mouth_motion_energy():
    """Energy on every fed frame: ~0 for a still picture even when the mouth box is updated
    between frames (the update is not lip motion), clearly > 0 when the mouth region changes;
    nothing before the first landmarks or after a frame without a face."""
    rng = np.random.default_rng(0)
    still = (rng.random((120, 160)) * 255).astype(np.uint8)
    still = np.ascontiguousarray(np.repeat(np.repeat(still[::4, ::4], 4, 0), 4, 1))   # smooth-ish
    dm = sig.DenseMouth(MP, 32, (160, 120))
    dm.feed(0.0, _yuv_frame(still))                                # no landmarks yet: skipped
    dm.set_landmarks(_mouth_lm(80, 70))
    for i in range(1, 6):
        if i == 3:
            dm.set_landmarks(_mouth_lm(83, 72, 42))                  # box update, same picture
        dm.feed(i * 0.04, _yuv_frame(still))
    t, e = dm.close()
    np.testing.assert_allclose(t, [0.08, 0.12, 0.16, 0.2])
    assert np.all(e < 1e-3), e
    dm.set_landmarks(_mouth_lm(80, 70))
    moving = still.copy()
    dm.feed(0.0, _yuv_frame(still))
    moving[60:80, 60:100] = 255 - moving[60:80, 60:100]              # the mouth region changes
    dm.feed(0.04, _yuv_frame(moving))
    dm.set_landmarks(None)                                         # no face: the chain breaks
    dm.feed(0.08, _yuv_frame(still))
    t, e = dm.close()
    assert t.tolist() == [0.04] and e[0] > 0.5


def test_resample_track_grid_gaps_and_open_end():
    from ifmdm_data.media.avsync import resample_track

    t = np.array([0.0, 0.1, 0.2, 0.8, 0.9])                        # a 0.6 s gap
    g, x = resample_track(t, t * 10, 0.0, 1.0, 20.0, max_gap_s=0.25)
    assert len(g) == 19 and g[1] == pytest.approx(0.05)           # ends after the last sample
    np.testing.assert_allclose(x[:5], g[:5] * 10)                  # interpolated
    assert np.isnan(x[5:16]).all() and np.isfinite(x[16:]).all()  # NaN inside the gap
    g, x = resample_track(t, t, 0.0, float("inf"), 20.0)           # open end: up to the last sample
    assert g[-1] == pytest.approx(0.9) and len(g) == 19
    g, x = resample_track(t, t, 0.5, 0.6, 20.0)
    assert len(g) == 2 and np.isnan(x).all()


def test_luma_plane_views_the_y_plane_of_planar_formats():
    gray = (np.arange(48 * 64) % 251).astype(np.uint8).reshape(48, 64)
    f = _yuv_frame(gray)
    np.testing.assert_array_equal(sig.luma_plane(f), gray)
    assert sig.luma_plane(f.reformat(format="nv12")).tolist() == gray.tolist()
    y10 = sig.luma_plane(f.reformat(format="yuv420p10le"))          # 10-bit: uint16, 4x the values
    assert y10.dtype == np.uint16 and abs(int(y10[10, 10]) - 4 * int(gray[10, 10])) <= 4
    assert sig.luma_plane(f.reformat(format="rgb24")) is None        # packed RGB: no luma plane
