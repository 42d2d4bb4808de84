"""`ifmdm-eval stage1`: stage-1 same- / cross-identity metrics on the sample set's shards, with a
randomly initialised S1-tiny checkpoint (saved directly, no training) and monkeypatched
"oracle" models that show the metrics rank reconstructions the right way round."""
from __future__ import annotations

import json
import math
import tarfile

import numpy as np
import pytest
import torch

from ifmdm_model.cli import eval as cli_eval
from ifmdm_model.eval import metrics as em, stage1 as ev
from ifmdm_model.checkpoint import CheckpointError, save_checkpoint
from ifmdm_model.stage1.model import MotionAutoencoder, build_stage1

SMALL = dict(n_clips=4, pairs_per_clip=2, device="cpu", batch_size=4)


def _save_run(run, step=3, ema_differs=False):
    torch.manual_seed(0)
    model = build_stage1("S1-tiny")
    ema = build_stage1("S1-tiny") if ema_differs else model
    state = {"model": "S1-tiny", "model_config": model.cfg.to_dict(), "global_step": step}
    return save_checkpoint(run / "stage1", step, model, ema, {"opt": {}}, state)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("evalrun") / "run"
    _save_run(run)
    return run


# ---------------------------------------------------------------------------- metrics

def test_psnr_and_ssim_of_identical_and_noisy_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    assert torch.allclose(em.ssim(x, x), torch.ones(3), atol=1e-5)
    assert torch.equal(em.psnr(x, x), torch.full((3,), em.PSNR_CAP_DB))   # capped, not inf
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    very = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (em.ssim(x, noisy) < 0.99).all() and (em.ssim(x, very) < em.ssim(x, noisy)).all()
    assert (em.psnr(x, very) < em.psnr(x, noisy)).all() and (em.psnr(x, noisy) < 100).all()
    # a uniform error of 0.1 on [0, 1]: MSE 0.01 -> 20 dB; L1 0.1
    y = (torch.full((1, 3, 16, 16), 0.5))
    assert em.psnr(y, y + 0.1).item() == pytest.approx(20.0, abs=1e-3)
    assert em.l1(y, y + 0.1).item() == pytest.approx(0.1, abs=1e-6)


def test_ssim_matches_skimage_gaussian_ssim():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((40, 48, 3))
    b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)
    ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=1.0, channel_axis=2)
    ta, tb = (torch.from_numpy(v).permute(2, 0, 1)[None].float() for v in (a, b))
    assert em.ssim(ta, tb).item() == pytest.approx(ref, abs=1e-4)


# ---------------------------------------------------------------------------- checkpoints

def test_checkpoint_paths_resolve(run_dir, tmp_path):
    ck = run_dir / "stage1" / "ckpt-00000003"
    assert ev.resolve_checkpoint(run_dir) == ck
    assert ev.resolve_checkpoint(run_dir / "stage1") == ck
    assert ev.resolve_checkpoint(ck) == ck
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        ev.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no stage-1 checkpoint under"):
        ev.resolve_checkpoint(tmp_path)


def test_raw_and_ema_weights(tmp_path):
    _save_run(tmp_path / "r", ema_differs=True)
    ema, _, state = ev.load_stage1(tmp_path / "r", use_ema=True)
    raw, _, _ = ev.load_stage1(tmp_path / "r", use_ema=False)
    assert state["global_step"] == 3 and not ema.training
    assert not torch.equal(ema.decoder.const, raw.decoder.const)


def test_clip_selection_is_seeded(sample_shards):
    a = ev.select_clips(sample_shards, n_clips=3, seed=0)
    assert a == ev.select_clips(sample_shards, n_clips=3, seed=0) and len(a) == 3
    everything = ev.select_clips(sample_shards, n_clips=1000, seed=0)
    assert sorted(everything) == sorted(ev.select_clips(sample_shards, n_clips=1000, seed=5))
    assert all(n >= 2 for _, _, n in everything)


# ---------------------------------------------------------------------------- evaluation

def test_random_model_gives_sane_finite_metrics(run_dir, sample_shards):
    res = ev.evaluate_stage1(run_dir, sample_shards, **SMALL)
    assert (res["step"], res["model"], res["n_clips"], res["pairs"]) == (3, "S1-tiny", 4, 8)
    assert res["paper_reference"] == {"G16_D20": {"same_psnr": 32.04, "cross_psnr": 29.74}}
    for sec in ("same_identity", "cross_identity"):
        m = res[sec]
        assert m["n"] == 8
        assert all(math.isfinite(m[k]) for k in ("psnr", "ssim", "l1"))
        # SSIM lies in [-1, 1]: a random-init model can score slightly below 0
        assert 0 < m["psnr"] < ev.PSNR_CAP_DB and -1 <= m["ssim"] <= 1 and 0 < m["l1"] <= 1
    assert math.isfinite(res["cross_identity"]["motion_l1"]) and res["cross_identity"]["motion_l1"] >= 0
    json.dumps(res, allow_nan=False)                        # JSON-clean


def _patch(monkeypatch, encode, decode):
    monkeypatch.setattr(MotionAutoencoder, "encode", encode)
    monkeypatch.setattr(MotionAutoencoder, "decode", decode)


def test_oracle_scores_best_and_copying_the_appearance_frame_does_not(run_dir, sample_shards,
                                                                      monkeypatch):
    rand = ev.evaluate_stage1(run_dir, sample_shards, **SMALL)

    # oracle: the "motion vector" is the whole image and the decoder returns it
    _patch(monkeypatch, lambda self, img: ([img], img.flatten(1)),
           lambda self, app, m: m.reshape(m.shape[0], 3, self.cfg.image_size, self.cfg.image_size))
    oracle = ev.evaluate_stage1(run_dir, sample_shards, **SMALL)
    for sec in ("same_identity", "cross_identity"):
        assert oracle[sec]["psnr"] == ev.PSNR_CAP_DB
        assert oracle[sec]["ssim"] == pytest.approx(1.0, abs=1e-5) and oracle[sec]["l1"] == 0
        assert oracle[sec]["psnr"] > rand[sec]["psnr"] and oracle[sec]["ssim"] > rand[sec]["ssim"]
        assert oracle[sec]["l1"] < rand[sec]["l1"]
    assert oracle["cross_identity"]["motion_l1"] == 0

    # ignores the motion, returns the appearance frame: must not look perfect (target = frame j)
    _patch(monkeypatch, lambda self, img: ([img], torch.zeros(img.shape[0], 20)),
           lambda self, app, m: app[0])
    copier = ev.evaluate_stage1(run_dir, sample_shards, **SMALL)
    for sec in ("same_identity", "cross_identity"):
        assert copier[sec]["psnr"] < oracle[sec]["psnr"] and copier[sec]["l1"] > 0


# ---------------------------------------------------------------------------- CLI

def test_cli_writes_json_and_prints_table(run_dir, sample_shards, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    rc = cli_eval.main(["stage1", "--checkpoint", str(run_dir), "--shards", str(sample_shards), "--clips", "2",
                  "--pairs", "1", "--subsets", "coarse,lip,hard", "--device", "cpu", "--raw",
                  "-o", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["weights"] == "raw" and res["n_clips"] == 2 and res["pairs"] == 2
    assert not list(out.parent.glob(".*tmp"))
    printed = capsys.readouterr().out
    assert "same identity" in printed and "cross identity" in printed and "32.04" in printed


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ifmdm-eval: error:") and needle in err, err


def test_cli_user_errors_exit_2(run_dir, sample_shards, tmp_path, capsys):
    assert cli_eval.main(["stage1", "--checkpoint", str(tmp_path / "missing"), "--shards", str(sample_shards)]) == 2
    _one_line_error(capsys, "no checkpoint at")
    empty = tmp_path / "empty_shards"
    empty.mkdir()
    assert cli_eval.main(["stage1", "--checkpoint", str(run_dir), "--shards", str(empty)]) == 2
    _one_line_error(capsys, "no shards")
    # shards exist but hold no clip: our own error
    (empty / "hard").mkdir()
    with tarfile.open(empty / "hard" / "hard-000000.tar", "w"):
        pass
    assert cli_eval.main(["stage1", "--checkpoint", str(run_dir), "--shards", str(empty)]) == 2
    _one_line_error(capsys, "no clips")
    assert cli_eval.main(["stage1", "--checkpoint", str(run_dir), "--shards", str(sample_shards),
                    "--subsets", "nope"]) == 2
    _one_line_error(capsys, "unknown subset")
    assert cli_eval.main(["stage1", "--checkpoint", str(run_dir), "--shards", str(sample_shards),
                    "--clips", "0"]) == 2
    _one_line_error(capsys, "n_clips must be >= 1")


def test_cli_needs_a_subcommand(capsys):
    """`ifmdm-eval` has two explicit subcommands; none, an unknown one or the old flag-only
    form is a one-line error naming both (exit 2, no argparse usage dump); -h is help."""
    for argv in ([], ["bogus"], ["--checkpoint", "runs/x", "--clips", "a.mp4", "-o", "out"]):
        assert cli_eval.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ifmdm-eval: error:"), err
        assert "ifmdm-eval stage1" in err and "ifmdm-eval video" in err
    assert cli_eval.main(["nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err
    # -o naming a folder is refused before any evaluation (not after it, when writing)
    assert cli_eval.main(["stage1", "--checkpoint", "runs/none", "--shards", "shards/none", "-o", "."]) == 2
    assert "-o . is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_eval.main(["-h"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "stage1" in out and "video" in out
    for sub in ("stage1", "video"):
        with pytest.raises(SystemExit) as e:
            cli_eval.main([sub, "--help"])
        assert e.value.code == 0 and f"ifmdm-eval {sub}" in capsys.readouterr().out
