"""ifmdm-eval video: talking-head evaluation on a random-init run (CPU, short clips).

Tiny random feature extractors (state dicts of the module's own network classes, and a
random torchvision Inception-v3) go through the same loading and metric code as real weights.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ifmdm_data.faces import syncnet as sn
from ifmdm_data.features import mfcc as mf
from ifmdm_model.cli import eval as cli_eval
from ifmdm_model.eval import csim, fid, lipsync, nets, video as ev
from ifmdm_model.testing import save_random_run

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
FAST = dict(steps=2, max_frames=14, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return save_random_run(tmp_path_factory.mktemp("evv") / "run", n_frames=8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    src = MEDIA / "video" / "man_talking_2s.mp4"
    if src.is_file():
        return src
    # fallback: a moving picture with a syllabic tone, written by infer's VideoWriter
    from skimage import data

    from ifmdm_model.infer import AUDIO_RATE, VideoWriter
    from ifmdm_data.shard.crop import square_resize
    p = tmp_path_factory.mktemp("clip") / "talk.mp4"
    t = np.arange(int(1.2 * AUDIO_RATE)) / AUDIO_RATE
    wav = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    base = square_resize(data.astronaut(), 128)
    w = VideoWriter(p, 128, 25.0, wav)
    w.write(np.stack([np.roll(base, k, axis=0) for k in range(30)]))
    w.close()
    return p


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from torchvision.models import inception_v3
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    inc = inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(inc.state_dict(), d / "inception.pt")
    torch.save(nets.IResNet(layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem=8).state_dict(), d / "arcface.pt")
    torch.save(sn.SyncNet(width=8, emb=32).state_dict(), d / "syncnet.pt")
    return {k: d / f"{k}.pt" for k in ("inception", "arcface", "syncnet")}


def _finite(v):
    return isinstance(v, float) and math.isfinite(v)


def test_without_weights_metrics_skipped(run, clip, tmp_path):
    res = ev.evaluate_videos(run, [str(clip)], tmp_path / "out", **FAST)
    c = res["clips"][0]
    assert (tmp_path / "out" / f"{Path(clip).stem}.mp4").is_file()
    assert _finite(c["psnr"]) and _finite(c["ssim"]) and -1 <= c["ssim"] <= 1
    assert c["frames_compared"] == min(c["frames_generated"], c["frames_real"]) > 0
    for k in ("av_corr_generated", "av_corr_real"):            # a number or None (no face), never NaN
        assert c[k] is None or _finite(c[k])
    assert set(res["skipped"]) == {"fid", "csim", "lse_d", "lse_c"}
    assert "--inception" in res["skipped"]["fid"] and "--arcface" in res["skipped"]["csim"]
    assert "--syncnet" in res["skipped"]["lse_d"]
    for k in ("fid", "csim", "lse_d", "lse_c"):
        assert k not in res["summary"] and k not in c
    json.dumps(res, allow_nan=False)


def test_with_random_extractors(run, clip, tmp_path, weights):
    res = ev.evaluate_videos(run, [str(clip)], tmp_path / "out", **{k: str(v) for k, v in weights.items()},
                             **FAST)
    s = res["summary"]
    assert res["skipped"] == {}
    assert _finite(s["fid"]) and s["fid"] >= -1e-6
    assert _finite(s["csim"]) and -1 - 1e-6 <= s["csim"] <= 1 + 1e-6
    assert _finite(s["lse_d"]) and s["lse_d"] >= 0 and _finite(s["lse_c"]) and s["lse_c"] >= 0


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 2048))
    assert abs(fid.frechet_distance(a, a)) < 1e-6 * max(1.0, float(np.sum(np.var(a, 0))))
    b = rng.normal(size=(300, 16))
    c = rng.normal(size=(200, 16)) + 1.0
    assert abs(fid.frechet_distance(b, b)) < 1e-6
    # the small-sample (Gram) route equals the d x d route
    full = fid.frechet_distance(b, c)
    x, y = b[:10], c[:12]
    from scipy import linalg
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
           - 2 * np.real(np.trace(linalg.sqrtm(s1 @ s2))))
    assert fid.frechet_distance(x, y) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert full > 10                                            # mean shift of 1 in 16 dims


def test_wrong_state_dict_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save(sn.SyncNet(width=8, emb=32).state_dict(), bad)
    with pytest.raises(nets.VideoEvalError, match="bad.pt"):
        nets.load_arcface(bad)
    with pytest.raises(nets.VideoEvalError, match="bad.pt"):
        nets.load_inception(bad)
    sd = nets.IResNet(layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem=8).state_dict()
    sd["fc.weight"] = sd["fc.weight"][:, :5]
    torch.save(sd, tmp_path / "arc.pt")
    with pytest.raises(nets.VideoEvalError, match="arc.pt"):
        nets.load_arcface(tmp_path / "arc.pt")
    with pytest.raises(nets.VideoEvalError, match="missing.pt"):
        nets.load_syncnet(tmp_path / "missing.pt")


def test_cli_writes_results(run, clip, tmp_path, capsys):
    out = tmp_path / "eval_out"
    rc = cli_eval.main(["video", "--checkpoint", str(run), "--clips", str(clip), "-o", str(out),
                        "--steps", "2", "--max-frames", "12", "--device", "cpu"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["n_clips"] == 1 and "fid" in res["skipped"]
    assert "skipped" in capsys.readouterr().out


def test_cli_user_errors(run, clip, tmp_path, capsys, weights):
    assert cli_eval.main(["video", "--checkpoint", str(tmp_path / "nope"), "--clips", str(clip), "-o", str(tmp_path / "o")]) == 2
    assert cli_eval.main(["video", "--checkpoint", str(run), "--clips", str(tmp_path / "no.mp4"), "-o", str(tmp_path / "o")]) == 2
    assert cli_eval.main(["video", "--checkpoint", str(run), "--clips", str(clip), "-o", str(tmp_path / "o"),
                    "--arcface", str(weights["syncnet"]), "--max-frames", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("ifmdm-eval: error:") == 3 and "syncnet.pt" in err
    # -o naming a file: one line, and a failed run leaves no empty output folder behind
    assert cli_eval.main(["video", "--checkpoint", str(run), "--clips", str(clip), "-o", str(clip)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------
# syncnet_python layout (syncnet_v2.model)
# ------------------------------------------------------------------------------------------

# conv / linear weight shapes of syncnet_python's SyncNetModel.S, as its released
# syncnet_v2.model holds them (Sequential indices included: they are in the key names)
SYNCNET_V2_SHAPES = {
    "netcnnaud.0.weight": (64, 1, 3, 3), "netcnnaud.4.weight": (192, 64, 3, 3),
    "netcnnaud.8.weight": (384, 192, 3, 3), "netcnnaud.11.weight": (256, 384, 3, 3),
    "netcnnaud.14.weight": (256, 256, 3, 3), "netcnnaud.18.weight": (512, 256, 5, 4),
    "netfcaud.0.weight": (512, 512), "netfcaud.1.running_var": (512,), "netfcaud.3.weight": (1024, 512),
    "netcnnlip.0.weight": (96, 3, 5, 7, 7), "netcnnlip.4.weight": (256, 96, 1, 5, 5),
    "netcnnlip.8.weight": (256, 256, 1, 3, 3), "netcnnlip.11.weight": (256, 256, 1, 3, 3),
    "netcnnlip.14.weight": (256, 256, 1, 3, 3), "netcnnlip.18.weight": (512, 256, 1, 6, 6),
    "netcnnlip.19.running_mean": (512,),
    "netfclip.0.weight": (512, 512), "netfclip.1.weight": (512,), "netfclip.3.weight": (1024, 512),
}


@pytest.fixture(scope="module")
def syncnet_v2_file(tmp_path_factory):
    """A randomly initialised network of the syncnet_python layout, stored as syncnet_v2.model
    is: torch.save of a plain state dict (here without the BatchNorm counters, as that
    pre-PyTorch-0.4.1 file)."""
    torch.manual_seed(0)
    sd = {k: v for k, v in sn.SyncNetPython().state_dict().items() if not k.endswith("num_batches_tracked")}
    p = tmp_path_factory.mktemp("syncnet_v2") / "syncnet_v2.model"
    torch.save(sd, p)
    return p


def test_syncnet_python_layout_matches_syncnet_v2():
    net = sn.SyncNetPython().eval()
    sd = net.state_dict()
    for k, shape in SYNCNET_V2_SHAPES.items():
        assert tuple(sd[k].shape) == shape, k
    prefixes = {k.split(".")[0] for k in sd}
    assert prefixes == {"netcnnaud", "netfcaud", "netcnnlip", "netfclip"}
    conv_idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("netcnnlip.") and k.endswith(".weight")})
    assert conv_idx == [0, 1, 4, 5, 8, 9, 11, 12, 14, 15, 18, 19]    # convs and their BatchNorms
    with torch.no_grad():
        assert net.forward_audio(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)
        assert net.forward_video(torch.zeros(2, 3, 5, 224, 224)).shape == (2, 1024)


def test_load_syncnet_picks_layout(tmp_path, syncnet_v2_file):
    net = nets.load_syncnet(syncnet_v2_file)
    assert isinstance(net, sn.SyncNetPython) and net.layout == "syncnet_python" and not net.training
    ref = torch.load(syncnet_v2_file, weights_only=True)
    assert torch.equal(net.state_dict()["netcnnlip.0.weight"], ref["netcnnlip.0.weight"])
    # a SyncNetInstance's own state dict (keys under "__S__.") loads too
    torch.save({f"__S__.{k}": v for k, v in ref.items()}, tmp_path / "instance.model")
    assert nets.load_syncnet(tmp_path / "instance.model").layout == "syncnet_python"
    torch.save(sn.SyncNet(width=8, emb=32).state_dict(), tmp_path / "ours.pt")
    ours = nets.load_syncnet(tmp_path / "ours.pt")
    assert isinstance(ours, sn.SyncNet) and ours.layout == "ifmdm"
    # wrong shape, missing key, unknown layout: errors naming the file
    bad = dict(ref)
    bad["netcnnlip.0.weight"] = bad["netcnnlip.0.weight"][:, :, :3]
    torch.save(bad, tmp_path / "shape.model")
    with pytest.raises(nets.VideoEvalError, match="shape.model"):
        nets.load_syncnet(tmp_path / "shape.model")
    torch.save({k: v for k, v in ref.items() if not k.startswith("netfclip.3")}, tmp_path / "short.model")
    with pytest.raises(nets.VideoEvalError, match="short.model.*netfclip.3"):
        nets.load_syncnet(tmp_path / "short.model")
    torch.save(nets.IResNet(layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem=8).state_dict(), tmp_path / "arc.pt")
    with pytest.raises(nets.VideoEvalError, match="arc.pt.*netcnnaud"):
        nets.load_syncnet(tmp_path / "arc.pt")


def test_lse_with_syncnet_python_layout(run, clip, tmp_path, syncnet_v2_file, weights):
    res = ev.evaluate_videos(run, [str(clip)], tmp_path / "out", syncnet=str(syncnet_v2_file),
                             arcface=str(weights["arcface"]), **FAST)
    c, s = res["clips"][0], res["summary"]
    assert res["syncnet_layout"] == "syncnet_python"
    assert _finite(s["lse_d"]) and s["lse_d"] >= 0 and _finite(s["lse_c"]) and s["lse_c"] >= 0
    assert c["lse_fps"] == 25.0 and abs(c["offset_frames"]) <= sn.SYNC_VSHIFT
    n25 = len(lipsync.resample_indices(c["frames_generated"], c["fps"]))
    assert 0 <= c["lse_no_face_frames"] <= n25
    assert 0 <= c["csim_unaligned_frames"] <= c["frames_generated"] and isinstance(c["csim_source_aligned"], bool)
    assert s["csim_unaligned_frames"] == c["csim_unaligned_frames"]
    json.dumps(res, allow_nan=False)


def test_lse_scores_from_syncnet_python_windows(syncnet_v2_file):
    """The LSE path on its own: 1 s of 25 fps face crops against 1 s of audio."""
    net = nets.load_syncnet(syncnet_v2_file)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(25, 224, 224, 3), dtype=np.uint8)
    wav = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    r = lipsync.lse(net, video, wav, 25.0)
    assert _finite(r["lse_d"]) and _finite(r["lse_c"]) and r["lse_c"] >= 0
    with pytest.raises(ValueError, match="25 fps"):
        lipsync.lse(net, video, wav, 30.0)
    assert lipsync.lse(net, video[:5], wav, 25.0)["lse_d"] is None        # no window fits


def test_offset_scores_finds_the_shift():
    """Audio embeddings equal to the video's 3 windows later: the offset search finds it."""
    torch.manual_seed(0)
    ea = torch.randn(40, 16)
    ev_ = torch.cat([ea[3:], torch.randn(3, 16)])                  # video window i ~ audio i + 3
    r = sn.offset_scores(ev_, ea, vshift=15)
    assert r["offset_frames"] == -3 and r["lse_d"] < 1.0 and r["lse_c"] > 2.0


# ------------------------------------------------------------------------------------------
# MFCC (python_speech_features' definition) and window alignment
# ------------------------------------------------------------------------------------------

def _noise(seconds, seed=0):
    return np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 1000.0


def test_syncnet_mfcc_shape_and_energy():
    x = _noise(1.0)
    m = mf.syncnet_mfcc(x)
    assert m.shape == (13, 99)                                      # 1 + ceil((16000 - 400) / 160)
    assert mf.syncnet_mfcc(_noise(2.5)).shape == (13, 1 + math.ceil((40000 - 400) / 160))
    assert mf.syncnet_mfcc(x[:300]).shape == (13, 1)               # shorter than a frame
    # c0 is the log energy of the pre-emphasised 400-sample frame: by Parseval about half its
    # sum of squares over the one-sided 512-point spectrum
    y = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    for t in (0, 17, 98):
        frame = np.pad(y, (0, 400))[160 * t:160 * t + 400]
        assert m[0, t] == pytest.approx(np.log(0.5 * np.sum(frame ** 2)), abs=0.05)
    # only c0 depends on the signal's scale (hence the int16 scaling before it)
    m2 = mf.syncnet_mfcc(2.0 * x)
    np.testing.assert_allclose(m2[0] - m[0], np.log(4.0), atol=1e-9)
    np.testing.assert_allclose(m2[1:], m[1:], atol=1e-9)
    # the lifter: 1 + 11 sin(pi n / 22) multiplies c_n (n >= 1); silence stays finite
    z = mf.syncnet_mfcc(np.zeros(3200))
    assert np.isfinite(z).all() and np.allclose(z[0], np.log(np.finfo(float).eps))
    assert mf.to_int16_scale(np.array([0.5, -1.0, 1.0]))[0] == 16384.0


def test_mel_filterbank_and_tone_band():
    fb = mf.mel_filterbank(26, 512, 16000)
    assert fb.shape == (26, 257) and fb.max() == pytest.approx(1.0) and fb.min() >= 0
    peaks = fb.argmax(1)
    assert np.all(np.diff(peaks) > 0)                               # centres rise with the filter index
    # adjacent triangles overlap into a partition of unity between the first and last centres
    np.testing.assert_allclose(fb.sum(0)[peaks[0]:peaks[-1] + 1], 1.0, atol=1e-12)
    # centres evenly spaced in mel: 2595 log10(1 + f / 700) from 0 to 8 kHz, 28 points
    centres = 700.0 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 28)[1:-1] / 2595) - 1)
    assert np.all(np.abs(peaks * 16000 / 512 - centres) <= 2 * 16000 / 512)
    t = np.arange(16000) / 16000
    for j in (3, 10, 18, 24):
        mel, energy = mf.mel_energies(8000 * np.sin(2 * np.pi * centres[j] * t))
        assert mel.shape == (99, 26) and energy.shape == (99,)
        assert int(np.argmax(mel.mean(0))) == j, j


def test_sync_windows_line_up():
    """Window i: video frames i..i+4 and MFCC frames 4i..4i+19, which start at the same time
    (frame i at i / 25 s; MFCC frame t at 160 t / 16000 s) and span the same 0.2 s."""
    n = 12
    video = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()
    wav = np.zeros(n * 640)
    feats = np.tile(np.arange(mf.syncnet_mfcc(wav).shape[1], dtype=np.float64), (13, 1))   # column t = t
    starts = sn.sync_window_starts(n, len(wav) // 640, drop_last=True)
    assert list(starts) == list(range(n - 5))                       # syncnet_python: min_length - 5
    assert len(sn.sync_window_starts(n, n)) == n - 4                 # every window that fits
    v, a = sn.sync_windows(video, feats, starts, "syncnet_python")
    assert v.shape == (len(starts), 3, 5, 4, 4) and a.shape == (len(starts), 1, 13, 20)
    for i in starts:
        assert v[i, 0, :, 0, 0].tolist() == [i, i + 1, i + 2, i + 3, i + 4]
        assert a[i, 0, 0].tolist() == list(range(4 * i, 4 * i + 20))
        assert 4 * i * 160 / 16000 == pytest.approx(i / 25)         # same start time
        assert (4 * i + 20) * 160 / 16000 == pytest.approx((i + 5) / 25)   # same span
    v2, _ = sn.sync_windows(video[..., 0], feats, starts[:2], "ifmdm")
    assert v2.shape == (2, 5, 4, 4) and float(v2[1, 0, 0, 0]) == pytest.approx(1 / 255)


def test_sync_window_audio_burst_under_its_frame():
    """A noise burst during video frame 7 lands under window position 7 - i in every window
    i that holds frame 7: MFCC columns 4 (7 - i) .. 4 (7 - i) + 3 carry the energy."""
    wav = np.random.default_rng(1).standard_normal(20 * 640) * 1e-4
    wav[7 * 640:8 * 640] += np.random.default_rng(2).standard_normal(640) * 0.3
    feats = mf.syncnet_mfcc(mf.to_int16_scale(wav))
    starts = sn.sync_window_starts(20, len(wav) // 640, drop_last=True)
    video = np.zeros((20, 2, 2, 3), np.uint8)
    _, a = sn.sync_windows(video, feats, starts, "syncnet_python")
    for i in range(3, 8):                                           # windows holding frame 7
        col = int(torch.argmax(a[i, 0, 0]))                         # c0 = log energy
        assert 4 * (7 - i) <= col <= 4 * (7 - i) + 3, (i, col)


# ------------------------------------------------------------------------------------------
# syncnet_python face crops
# ------------------------------------------------------------------------------------------

def test_syncnet_face_crop_geometry():
    yy, xx = np.mgrid[0:256, 0:256]
    frame = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)   # R = x, G = y
    crop = sn.syncnet_face_crop(frame, 128, 100, 40)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    # BGR: R (x) in channel 2, G (y) in channel 1; columns 128 -+ 56, rows 100 - 40 .. 100 + 72
    assert abs(int(crop[0, 0, 2]) - 72) <= 1 and abs(int(crop[0, 0, 1]) - 60) <= 1
    assert abs(int(crop[-1, -1, 2]) - 183) <= 1 and abs(int(crop[-1, -1, 1]) - 171) <= 1
    edge = sn.syncnet_face_crop(frame, 10, 10, 40)                   # box leaves the frame
    assert edge.shape == (224, 224, 3) and tuple(edge[0, 0]) == (110, 110, 110)


def test_face_track_and_resampling():
    def lm(cx, cy, half):
        return np.array([[cx - half, cy - half, 0], [cx + half, cy + half / 2, 0]], np.float32)
    lms = [lm(50, 60, 10), None, None, lm(80, 60, 10)] + [lm(80, 60, 10)] * 10
    track = lipsync.face_track(lms, smooth=1)
    np.testing.assert_allclose(track[:4, 0], [50, 60, 70, 80])       # interpolated over the gap
    np.testing.assert_allclose(track[:, 2], 10)                       # max(width, height) / 2
    assert lipsync.face_track([None, None]) is None
    jumpy = [lm(50, 60, 10)] * 6 + [lm(200, 60, 10)] + [lm(50, 60, 10)] * 6
    assert lipsync.face_track(jumpy)[6, 0] == pytest.approx(50)          # 13-frame median removes a spike
    idx = lipsync.resample_indices(30, 30000 / 1001)
    assert len(idx) == 25 and idx[0] == 0 and np.all(np.diff(idx) >= 1) and idx[-1] <= 29
    assert list(lipsync.resample_indices(7, 25.0)) == list(range(7))
    assert list(lipsync.resample_indices(4, 12.5)) == [0, 1, 1, 2, 2, 3, 3, 3]


# ------------------------------------------------------------------------------------------
# ArcFace alignment (CSIM)
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def astronaut_pair():
    """skimage's astronaut and a rotated (25 deg), scaled (x1.4), shifted copy, with their
    MediapipeMesh landmarks."""
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("mediapipe")
    from skimage import data

    from ifmdm_data.faces.backends.mediapipe_backend import MediapipeMesh
    img = np.ascontiguousarray(data.astronaut())
    m = cv2.getRotationMatrix2D((230, 130), 25, 1.4)
    m[:, 2] += (-40, 60)
    moved = cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mesh = MediapipeMesh()
    lms = []
    for im in (img, moved):
        mesh.reset()
        lms.append(mesh.landmarks(im))
    mesh.close()
    assert all(lm is not None for lm in lms)
    return [img, moved], lms


def test_arcface_alignment_undoes_a_similarity(astronaut_pair):
    imgs, lms = astronaut_pair
    aligned, unaligned = csim.arcface_crops(imgs, lms)
    assert aligned.shape == (2, 112, 112, 3) and unaligned == 0
    plain, n_plain = csim.arcface_crops(imgs, [None, None])
    assert n_plain == 2
    diff_aligned = np.abs(aligned[0].astype(float) - aligned[1]).mean()
    diff_plain = np.abs(plain[0].astype(float) - plain[1]).mean()
    assert diff_aligned < 10 and diff_plain > 40 and diff_plain > 5 * diff_aligned
    for lm in lms:
        p = csim.five_points(lm)
        m = csim.arcface_matrix(p)
        q = p @ m[:, :2].T + m[:, 2]
        err = np.linalg.norm(q - csim.ARCFACE_TEMPLATE, axis=1)
        assert err[:2].max() < 4 and err.max() < 10                # eyes tight, all five close
        assert q[0, 0] < q[1, 0] and q[3, 0] < q[4, 0]              # image-left first, as the template


def test_syncnet_face_crops_frame_the_face(astronaut_pair):
    """The 224 x 224 crop holds the whole face, centred, mouth below the middle (as
    syncnet_python's crops, which extend the box towards the chin)."""
    from ifmdm_data.faces.backends.mediapipe_backend import MediapipeMesh
    imgs, lms = astronaut_pair
    crops, missing = lipsync.syncnet_face_crops(np.stack([imgs[0]] * 6), [lms[0], None] + [lms[0]] * 4, 25.0)
    assert crops.shape == (6, 224, 224, 3) and missing == 1
    mesh = MediapipeMesh()
    lm = mesh.landmarks(np.ascontiguousarray(crops[0][..., ::-1]))  # BGR -> RGB
    mesh.close()
    assert lm is not None
    assert 0.4 < lm[:, 0].mean() / 224 < 0.6 and 0.4 < lm[13, 1] / 224 < 0.7
    assert lm[:, 1].max() / 224 < 0.85                                # the chin inside the crop


def _chirp_int16():
    """1 s deterministic test signal: a 100 -> 4000 Hz chirp, amplitude-modulated, plus a
    seeded noise floor, in int16 units (the signal tests/data/python_speech_features_mfcc_chirp.npy
    was computed from)."""
    sr = 16000
    t = np.arange(sr) / sr
    phase = 2 * np.pi * (100 * t + 0.5 * 3900 * t ** 2)
    x = 0.4 * np.sin(phase) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    x += 0.01 * np.random.default_rng(1234).standard_normal(sr)
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def test_syncnet_mfcc_equals_python_speech_features():
    """Reference values: python_speech_features 0.6 `mfcc(signal, 16000)` (transposed) on
    `_chirp_int16()`, computed once in a separate environment and stored as a test file
    (the package is not a dependency)."""
    from ifmdm_data.features.mfcc import syncnet_mfcc

    ref = np.load(Path(__file__).parent / "data" / "python_speech_features_mfcc_chirp.npy")
    ours = syncnet_mfcc(_chirp_int16().astype(np.float64), 16000)
    assert ours.shape == ref.shape == (13, 99)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)


def _flat_clip(path, colours: np.ndarray, size: int, fps: float = 25.0, audio: bool = True):
    """An mp4 whose frame k is one flat colour colours[k] (uint8 RGB) (+ a syllabic tone)."""
    from ifmdm_model.infer import AUDIO_RATE, VideoWriter
    n = len(colours)
    t = np.arange(int(round(n / fps * AUDIO_RATE))) / AUDIO_RATE
    wav = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    w = VideoWriter(path, size, fps, wav if audio else None, overwrite=True)
    w.write(np.broadcast_to(colours[:, None, None, :], (n, size, size, 3)).copy())
    w.close()
    return path


def _fid_ref(x, y):
    from scipy import linalg
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.real(np.trace(linalg.sqrtm(s1 @ s2))))


def test_fid_is_generated_against_real(run, tmp_path, monkeypatch):
    """FID in `evaluate_videos` (what `ifmdm-eval video` runs) compares the generated frames
    with the real ones. Known distributions: the real clip's frames are flat colours around
    RGB 0.3, the (stubbed) generator's around 0.7; the 'Inception' features are each frame's
    mean colour. FID(gen, real) is then ~3 * 0.4^2 (computed here from the colours written),
    while FID(gen, gen) or FID(real, real) would be 0."""
    import ifmdm_model.infer as infer
    rng = np.random.default_rng(0)
    n = 20
    real_c = np.clip(np.round(255 * rng.normal(0.3, 0.05, (n, 3))), 0, 255).astype(np.uint8)
    gen_c = np.clip(np.round(255 * rng.normal(0.7, 0.05, (n, 3))), 0, 255).astype(np.uint8)
    clip = _flat_clip(tmp_path / "real.mp4", real_c, 128)

    def fake_generate(run_dir, image, audio, out_path, fps=25.0, steps=25, cfg=2.5, seed=0, models=None, **kw):
        _flat_clip(out_path, gen_c, models.image_size, fps, audio=False)
        return {"frames": n, "seconds": n / fps, "wall_s": 0.0, "steps": steps, "cfg": cfg, "seed": seed}

    monkeypatch.setattr(infer, "generate", fake_generate)
    monkeypatch.setattr(ev, "load_inception", lambda path, device="cpu": "inception")
    monkeypatch.setattr(ev, "inception_features",
                        lambda net, frames, device="cpu", batch=16: frames.reshape(len(frames), -1, 3).mean(1) / 255.0)
    res = ev.evaluate_videos(run, [str(clip)], tmp_path / "out", inception="unused.pt", steps=2, device="cpu")
    s = res["summary"]
    assert s["fid_frames"] == [n, n]
    want = _fid_ref(gen_c / 255.0, real_c / 255.0)
    assert want > 0.4                                            # ~3 * 0.4^2: far apart
    assert s["fid"] == pytest.approx(want, rel=0.05)             # (x264 moves flat colours ~1 level)
    assert _fid_ref(gen_c / 255.0, gen_c / 255.0) < 1e-9         # what gen-vs-gen would give
