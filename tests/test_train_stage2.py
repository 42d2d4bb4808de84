"""Stage 1 -> motion extraction -> stage 2, end to end on the sample set's shards (CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ifmdm_model.checkpoint import CheckpointError
from ifmdm_model.cli.train import train_main

CURRICULUM = """\
shards: {shards}
stage1:
  model: S1-tiny
  batch_size: 2
  pairs_per_clip: 4
  num_workers: 0
  warmup_steps: 1
  log_every: 1
  image_every: 100
  checkpoint_every: 100
  levels:
    - {{name: coarse, subsets: [coarse], steps: 1, lr: 1.0e-3}}
    - {{name: hard, subsets: [hard, lip, coarse], steps: 1, lr: 1.0e-3}}
stage2:
  model: M2-tiny
  batch_size: 2
  window: 8
  steps: 3
  lr: 1.0e-3
  warmup_steps: 1
  num_workers: 0
  log_every: 1
  checkpoint_every: 2
  extract_batch: 16
"""


@pytest.fixture()
def manifests(sample_shards, tmp_path):
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "curriculum.yaml").write_text(CURRICULUM.format(shards=sample_shards))
    return d


def _state(ck_dir: Path) -> dict:
    return json.loads((ck_dir / (ck_dir / "latest").read_text().strip() / "state.json").read_text())


def test_stage1_then_stage2_end_to_end(manifests, sample_shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--curriculum", str(manifests), "-o", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stage1"]["steps"] == 2 and out["stage2"]["steps"] == 3
    st = _state(run / "stage2")
    assert st["global_step"] == 3 and st["encoder"] == out["stage2"]["encoder"]
    assert st["model_config"]["speech_dim"] == 80 and st["model_config"]["n_frames"] == 8
    motion_root = sample_shards / "motion" / st["encoder"]
    assert (motion_root / "encoder.json").is_file() and list(motion_root.rglob("*.tar"))

    # running again: extraction skipped (same encoder), training resumes at the end -> no steps
    assert train_main(["--curriculum", str(manifests), "-o", str(run), "--stage", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["stage2"]["steps"] == 3


def test_stage2_needs_stage1(manifests, tmp_path, capsys):
    assert train_main(["--curriculum", str(manifests), "-o", str(tmp_path / "r"), "--stage", "2"]) == 2
    assert "needs a stage-1 checkpoint" in capsys.readouterr().err


def test_stage2_resume_with_other_encoder_is_refused(manifests, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--curriculum", str(manifests), "-o", str(run), "--max-steps", "2"]) == 0
    capsys.readouterr()
    # more stage-1 training changes the encoder: stage 2's checkpoint no longer matches
    text = (manifests / "curriculum.yaml").read_text().replace("steps: 1, lr", "steps: 2, lr")
    (manifests / "curriculum.yaml").write_text(text)
    with pytest.raises(CheckpointError):
        from ifmdm_model.curriculum import load_curriculum
        from ifmdm_model.stage1.train import TrainOptions, train_stage1
        from ifmdm_model.stage2.train import train_stage2
        cur = load_curriculum(manifests)
        with pytest.raises(CheckpointError):          # stage 1: other levels than its checkpoint
            train_stage1(cur, TrainOptions(run_dir=run))
        import shutil
        shutil.rmtree(run / "stage1")
        train_stage1(cur, TrainOptions(run_dir=run))
        train_stage2(cur, TrainOptions(run_dir=run))


def test_stage2_nan_and_ddp(manifests, tmp_path, monkeypatch, capsys):
    import os
    import subprocess
    import sys

    from ifmdm_model.stage2 import train as t2
    from ifmdm_model.curriculum import load_curriculum
    from ifmdm_model.training import TrainingError, TrainOptions

    run = tmp_path / "run"
    assert train_main(["--curriculum", str(manifests), "-o", str(run), "--stage", "1"]) == 0
    capsys.readouterr()
    # DDP: two CPU processes (gloo) share the extraction and train stage 2
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29531", "-m", "ifmdm_model.cli.train", "--curriculum", str(manifests),
                          "-o", str(run), "--stage", "2", "--max-steps", "2", "--device", "cpu"],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    st = _state(run / "stage2")
    assert st["world_size"] == 2 and st["global_step"] == 2
    # a non-finite loss stops the run with the step and the batch keys
    import shutil

    import torch

    import ifmdm_model.stage2.diffusion as diff
    other = tmp_path / "other"
    shutil.copytree(run / "stage1", other / "stage1")
    monkeypatch.setattr(diff, "diffusion_loss",
                        lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match=r"non-finite stage-2 loss at step 0; batch keys"):
        t2.train_stage2(load_curriculum(manifests), TrainOptions(run_dir=other))


ABLATIONS = """\
  modulation: global
  speech_residual: false
  conditioning: tokens
  motion_stats: window
  p_drop_hint: 0.3
"""


def test_stage2_ablations_reach_the_checkpoint_the_loader_and_inference(manifests, sample_shards, tmp_path,
                                                                        capsys):
    import numpy as np

    from ifmdm_data.loaders import stage2_dataset
    from ifmdm_model.infer import load_models

    (manifests / "curriculum.yaml").write_text(CURRICULUM.format(shards=sample_shards) + ABLATIONS)
    run = tmp_path / "run"
    assert train_main(["--curriculum", str(manifests), "-o", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = _state(run / "stage2")["model_config"]
    assert {k: cfg[k] for k in ("modulation", "speech_residual", "conditioning", "motion_stats", "p_drop_hint")} \
        == {"modulation": "global", "speech_residual": False, "conditioning": "tokens", "motion_stats": "window",
            "p_drop_hint": 0.3}
    assert cfg["p_drop_speech"] == 0.1                               # unset keys keep the size's default
    # the same curriculum resumes (at its end: no steps) instead of refusing another model
    assert train_main(["--curriculum", str(manifests), "-o", str(run), "--stage", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["stage2"]["steps"] == 3
    # inference rebuilds the model from model_config (strict weight load)
    s2 = load_models(run, "cpu").stage2
    assert (s2.cfg.conditioning, s2.cfg.modulation, s2.blocks[0].speech_in) == ("tokens", "global", None)
    assert s2.stats_guidance.null.shape == (2, s2.cfg.hidden)
    # ... and generates with it: guidance rescale on (default) or off (--cfg-rescale 0)
    import wave

    import cv2

    from ifmdm_model.cli.infer import main
    from ifmdm_model.infer import generate
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    wav = tmp_path / "speech.wav"
    t = np.arange(16000) / 16000
    with wave.open(str(wav), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
        f.writeframes((0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * 32767)
                      .astype("<i2").tobytes())
    fast = dict(steps=3, progress=False, face_check=False, return_motion=True, device="cpu")
    on = generate(run, img, wav, tmp_path / "on.mp4", **fast)
    off = generate(run, img, wav, tmp_path / "off.mp4", guidance_rescale=0.0, **fast)
    assert on["cfg_rescale"] == 1.0 and off["cfg_rescale"] == 0.0 and on["frames"] == 25
    assert np.isfinite(on["motion"]).all() and np.isfinite(off["motion"]).all()   # (3 steps: speech barely used)
    assert main(["--checkpoint", str(run), "--image", str(img), "--audio", str(wav), "-o", str(tmp_path / "x.mp4"),
                 "--cfg-rescale", "1.5", "-q"]) == 2
    assert "--cfg-rescale must be in [0, 1]" in capsys.readouterr().err

    # motion_stats: "window" statistics are each window's own, "clip" the sidecar's per clip
    motion_root = sample_shards / "motion" / out["stage2"]["encoder"]
    per_clip = {}
    for w in stage2_dataset(sample_shards, motion_root, window=8, shuffle_buffer=1, motion_stats="clip"):
        per_clip.setdefault(w["key"], []).append(w)
    windows = list(stage2_dataset(sample_shards, motion_root, window=8, shuffle_buffer=1, motion_stats="window"))
    assert len(windows) == sum(map(len, per_clip.values())) >= 2
    moved = 0
    for w in windows:
        m = w["motion"].double().numpy()
        assert np.allclose(w["motion_mean"].numpy(), m.mean(0), atol=1e-5)
        assert np.allclose(w["motion_std"].numpy(), m.std(0), atol=1e-5)
        c = per_clip[w["key"]][0]
        assert all(np.array_equal(c["motion_std"].numpy(), o["motion_std"].numpy()) for o in per_clip[w["key"]])
        moved += not np.allclose(c["motion_std"].numpy(), w["motion_std"].numpy(), atol=1e-4)
    assert moved > 0
    with pytest.raises(ValueError, match="motion_stats"):
        stage2_dataset(sample_shards, motion_root, motion_stats="video")

    # the stage-2 learning benchmark's windows from real clips (frames encoded by stage 1)
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from learning_stage2 import windows_from_clips
    tr, he = windows_from_clips(load_models(run, "cpu", need_stage2=False).stage1, sample_shards, 64, window=8)
    d = s2.cfg.motion_dim
    assert tr["motion"].shape[1:] == (8, d) and tr["speech"].shape[1:] == (8, 80) and tr["hint"].shape[1:] == (d,)
    assert len(tr["motion"]) > len(he["motion"]) > 0 and np.isfinite(tr["motion"]).all()


def test_stage2_checkpoint_without_the_newer_config_keys_still_loads(tmp_path):
    """A stage-2 checkpoint written before `conditioning` / `motion_stats` existed: inference
    fills them with the behaviour it was trained with (sum, clip)."""
    from ifmdm_model.infer import load_models
    from ifmdm_model.testing import save_random_run

    run = save_random_run(tmp_path / "old")
    ck = run / "stage2" / (run / "stage2" / "latest").read_text().strip()
    st = json.loads((ck / "state.json").read_text())
    for key in ("conditioning", "motion_stats"):
        del st["model_config"][key]
    (ck / "state.json").write_text(json.dumps(st))
    s2 = load_models(run, "cpu").stage2
    assert (s2.cfg.conditioning, s2.cfg.motion_stats) == ("sum", "clip")


@pytest.mark.parametrize("line,key", [("conditioning: concat", "conditioning"),
                                      ("motion_stats: video", "motion_stats"),
                                      ("modulation: perclip", "modulation")])
def test_bad_stage2_ablation_value_is_a_one_line_error(manifests, sample_shards, tmp_path, capsys, line, key):
    (manifests / "curriculum.yaml").write_text(CURRICULUM.format(shards=sample_shards) + f"  {line}\n")
    assert train_main(["--curriculum", str(manifests), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err and line.split()[-1] in err, err
    assert not (tmp_path / "run" / "stage1").exists()                 # failed before any training
