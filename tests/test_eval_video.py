"""ifmdm-eval --clips: talking-head evaluation on a random-init run (CPU, short clips).

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

from ifmdm_model import eval_stage1, eval_video as ev
from ifmdm_model.infer import save_random_run

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

    from ifmdm_model.infer import AUDIO_RATE, VideoWriter, square_resize
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
    torch.save(ev.IResNet(layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem=8).state_dict(), d / "arcface.pt")
    torch.save(ev.SyncNet(width=8, emb=32).state_dict(), d / "syncnet.pt")
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
    assert abs(ev.frechet_distance(a, a)) < 1e-6 * max(1.0, float(np.sum(np.var(a, 0))))
    b = rng.normal(size=(300, 16))
    c = rng.normal(size=(200, 16)) + 1.0
    assert abs(ev.frechet_distance(b, b)) < 1e-6
    # the small-sample (Gram) route equals the d x d route
    full = ev.frechet_distance(b, c)
    x, y = b[:10], c[:12]
    from scipy import linalg
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = (np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
           - 2 * np.real(np.trace(linalg.sqrtm(s1 @ s2))))
    assert ev.frechet_distance(x, y) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert full > 10                                            # mean shift of 1 in 16 dims


def test_wrong_state_dict_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save(ev.SyncNet(width=8, emb=32).state_dict(), bad)
    with pytest.raises(ev.VideoEvalError, match="bad.pt"):
        ev.load_arcface(bad)
    with pytest.raises(ev.VideoEvalError, match="bad.pt"):
        ev.load_inception(bad)
    sd = ev.IResNet(layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), stem=8).state_dict()
    sd["fc.weight"] = sd["fc.weight"][:, :5]
    torch.save(sd, tmp_path / "arc.pt")
    with pytest.raises(ev.VideoEvalError, match="arc.pt"):
        ev.load_arcface(tmp_path / "arc.pt")
    with pytest.raises(ev.VideoEvalError, match="missing.pt"):
        ev.load_syncnet(tmp_path / "missing.pt")


def test_cli_writes_results(run, clip, tmp_path, capsys):
    out = tmp_path / "eval_out"
    rc = eval_stage1.main(["--checkpoint", str(run), "--clips", str(clip), "-o", str(out),
                           "--steps", "2", "--max-frames", "12", "--device", "cpu"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["summary"]["n_clips"] == 1 and "fid" in res["skipped"]
    assert "skipped" in capsys.readouterr().out


def test_cli_user_errors(run, clip, tmp_path, capsys, weights):
    assert ev.main(["--checkpoint", str(tmp_path / "nope"), "--clips", str(clip), "-o", str(tmp_path / "o")]) == 2
    assert ev.main(["--checkpoint", str(run), "--clips", str(tmp_path / "no.mp4"), "-o", str(tmp_path / "o")]) == 2
    assert ev.main(["--checkpoint", str(run), "--clips", str(clip), "-o", str(tmp_path / "o"),
                    "--arcface", str(weights["syncnet"]), "--max-frames", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("ifmdm-eval: error:") == 3 and "syncnet.pt" in err
