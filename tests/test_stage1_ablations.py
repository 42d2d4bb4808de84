"""Stage-1 paper ablations set in curriculum.yaml (`groups`, `motion_dim`, `mask_norm`,
`motion_decoder`): they train, land in the checkpoint's model_config, and extraction, eval and
inference rebuild the ablated model from it; bad values are one-line `ifmdm-train` errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ifmdm_model.cli.train import train_main

CURRICULUM = """\
shards: {shards}
stage1:
  model: S1-tiny
{ablations}  batch_size: 2
  pairs_per_clip: 4
  num_workers: 0
  warmup_steps: 1
  log_every: 1
  image_every: 100
  checkpoint_every: 100
  levels:
    - {{name: lip, subsets: [lip], steps: 1, lr: 1.0e-3}}
    - {{name: hard, subsets: [hard, lip], steps: 1, lr: 1.0e-3}}
"""

ABLATED = {"groups": 1, "motion_dim": 8, "mask_norm": "paper", "motion_decoder": "mapping"}


def _write(folder: Path, shards, ablations: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "curriculum.yaml").write_text(CURRICULUM.format(shards=shards, ablations=ablations))
    return folder


def test_ablations_train_and_are_rebuilt_by_extraction_eval_and_inference(sample_shards, tmp_path, capsys):
    from ifmdm_model import infer
    from ifmdm_model.eval.stage1 import load_stage1
    from ifmdm_model.stage2.extract import load_encoder, resolve_checkpoint
    from ifmdm_model.stage1.model import STAGE1_CONFIGS

    text = "".join(f"  {k}: {v}\n" for k, v in ABLATED.items())
    manifests = _write(tmp_path / "manifests", sample_shards, text)
    run = tmp_path / "run"
    assert train_main(["--curriculum", str(manifests), "-o", str(run), "--stage", "1", "--device", "cpu"]) == 0
    ck = run / "stage1" / (run / "stage1" / "latest").read_text().strip()
    state = json.loads((ck / "state.json").read_text())
    assert state["global_step"] == 2
    cfg = state["model_config"]
    assert {k: cfg[k] for k in ABLATED} == ABLATED
    tiny = STAGE1_CONFIGS["S1-tiny"]
    assert (tiny.groups, tiny.motion_dim, tiny.mask_norm, tiny.motion_decoder) != tuple(ABLATED.values())

    # eval: the ablated model, its EMA weights
    model, _, _ = load_stage1(run)
    assert {k: getattr(model.cfg, k) for k in ABLATED} == ABLATED
    # inference (stage 1 alone, as --driving-video uses it)
    models = infer.load_models(run, device="cpu", need_stage2=False)
    assert {k: getattr(models.stage1.cfg, k) for k in ABLATED} == ABLATED
    assert models.motion_dim == 8
    # extraction: the frozen encoder
    enc = load_encoder(resolve_checkpoint(run), state, torch.device("cpu"))
    assert enc.cfg.motion_dim == 8

    torch.manual_seed(0)
    app, mot = torch.rand(2, 2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a = model(app, mot)
        b = models.stage1(app, mot)
        _, m = enc(mot)
    assert a["motion"].shape == (2, 8) and torch.equal(a["recon"], b["recon"])
    assert all(mask.shape[1] == 1 for mask in a["masks"])                     # G = 1
    assert torch.allclose(m, a["motion"], atol=1e-6)


@pytest.mark.parametrize("ablation, needle", [
    ("  mask_norm: foo\n", "'mask_norm' must be one of"),
    ("  motion_decoder: latent\n", "'motion_decoder' must be one of"),
    ("  groups: 3\n", "'groups' =3 must divide the channels"),
    ("  groups: abc\n", "stage1.groups must be an integer, got 'abc'"),
    ("  groups: true\n", "stage1.groups must be an integer, got True"),
    ("  motion_dim: 0\n", "'motion_dim' must be >= 1"),
    ("  motion_dim: 2.5\n", "stage1.motion_dim must be an integer, got 2.5"),
    ("  mask_norm: 1\n", "stage1.mask_norm must be a string, got 1"),
    ("  modulation: global\n", "unknown key 'modulation'"),
])
def test_bad_ablation_value_is_a_one_line_error(tmp_path, capsys, ablation, needle):
    manifests = _write(tmp_path / "manifests", tmp_path / "shards", ablation)
    assert train_main(["--curriculum", str(manifests), "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifmdm-train: error: ") and "\n" not in err, err
    assert needle in err and "curriculum.yaml" in err, err
    assert "Traceback" not in err
