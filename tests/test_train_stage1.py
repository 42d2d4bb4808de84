"""`ifmdm-train` stage 1 on the sample set's shards: curriculum levels, checkpoints, resume,
clear errors, NaN detection, DDP on CPU (gloo, 2 processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ifmdm_model.stage1 import train as ts
from ifmdm_model.checkpoint import CheckpointError
from ifmdm_model.cli.train import train_main
from ifmdm_model.curriculum import load_curriculum

CURRICULUM = """\
shards: {shards}
stage1:
  model: S1-tiny
  batch_size: 2
  pairs_per_clip: 4
  num_workers: 0
  warmup_steps: 1
  log_every: 1
  image_every: 3
  checkpoint_every: 100
  levels:
    - {{name: coarse, subsets: [coarse], steps: 2, lr: 1.0e-3}}
    - {{name: lip, subsets: [lip, coarse], steps: 2, lr: 1.0e-3}}
    - {{name: hard, subsets: [hard, lip, coarse], steps: 2, lr: 5.0e-4}}
"""


@pytest.fixture()
def curriculum(sample_shards, tmp_path):
    d = tmp_path / "manifests"
    d.mkdir()
    (d / "curriculum.yaml").write_text(CURRICULUM.format(shards=sample_shards))
    return d


def _record_levels(monkeypatch):
    seen = []
    real = ts._batches

    def spy(shards, subsets, *a, **k):
        seen.append(list(subsets))
        return real(shards, subsets, *a, **k)
    monkeypatch.setattr(ts, "_batches", spy)
    return seen


def _state(run: Path) -> dict:
    latest = (run / "stage1" / "latest").read_text().strip()
    return json.loads((run / "stage1" / latest / "state.json").read_text())


def test_levels_switch_and_read_their_subsets(curriculum, tmp_path, monkeypatch):
    seen = _record_levels(monkeypatch)
    run = tmp_path / "run"
    res = ts.train_stage1(load_curriculum(curriculum), ts.TrainOptions(run_dir=run))
    assert res["steps"] == 6
    assert seen == [["coarse"], ["lip", "coarse"], ["hard", "lip", "coarse"]]
    # a checkpoint at the end of every level, with its curriculum position
    ckpts = sorted(p.name for p in (run / "stage1").glob("ckpt-*"))
    assert ckpts == ["ckpt-00000002", "ckpt-00000004", "ckpt-00000006"]
    st = json.loads((run / "stage1" / "ckpt-00000002" / "state.json").read_text())
    assert (st["global_step"], st["level"]) == (2, 1)
    assert any((run / "stage1" / "tb").iterdir())          # TensorBoard event file
    from safetensors.torch import load_file
    assert load_file(str(run / "stage1" / "ckpt-00000006" / "ema.safetensors"))


def test_resume_continues_at_same_level_and_step(curriculum, tmp_path, monkeypatch):
    run = tmp_path / "run"
    ts.train_stage1(load_curriculum(curriculum), ts.TrainOptions(run_dir=run, max_steps=3))
    assert _state(run)["global_step"] == 3                 # stopped inside level 'lip'
    (run / "stage1" / ".ckpt-00000004.tmp").mkdir()         # a save killed half way: ignored
    seen = _record_levels(monkeypatch)
    res = ts.train_stage1(load_curriculum(curriculum), ts.TrainOptions(run_dir=run))
    assert res["steps"] == 6
    assert seen == [["lip", "coarse"], ["hard", "lip", "coarse"]]   # resumed inside level 2
    assert [h["step"] for h in res["history"]] == [4, 5, 6]


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(curriculum, tmp_path):
    run = tmp_path / "run"
    ts.train_stage1(load_curriculum(curriculum), ts.TrainOptions(run_dir=run, max_steps=1))
    ck = run / "stage1" / (run / "stage1" / "latest").read_text().strip()
    good = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        ts.train_stage1(load_curriculum(curriculum), ts.TrainOptions(run_dir=run))
    (ck / "model.safetensors").write_bytes(good)
    text = (curriculum / "curriculum.yaml").read_text().replace("S1-tiny", "S1-256")
    (curriculum / "curriculum.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="S1-256"):
        ts.train_stage1(load_curriculum(curriculum), ts.TrainOptions(run_dir=run))


def test_nan_loss_stops_with_step_and_keys(curriculum, tmp_path, monkeypatch):
    from ifmdm_model.stage1 import losses

    real = losses.Stage1Loss.forward
    calls = {"n": 0}

    def poisoned(self, outputs, target, discriminator=None):
        out = real(self, outputs, target, discriminator)
        calls["n"] += 1
        if calls["n"] == 2:
            out["loss"] = out["loss"] * float("nan")
        return out
    monkeypatch.setattr(losses.Stage1Loss, "forward", poisoned)
    with pytest.raises(ts.TrainingError, match=r"non-finite loss at step 1 .*batch keys"):
        ts.train_stage1(load_curriculum(curriculum), ts.TrainOptions(run_dir=tmp_path / "run"))


def test_cli_errors_are_one_line(curriculum, tmp_path, capsys):
    assert train_main(["--curriculum", str(curriculum), "-o", str(tmp_path / "r"),
                       "--shards", str(tmp_path / "none")]) == 2
    assert "no shards" in capsys.readouterr().err
    (curriculum / "curriculum.yaml").write_text("stage1:\n  levels:\n    - {name: a, subsets: [x], steps: 1, lr: 1}\n")
    assert train_main(["--curriculum", str(curriculum), "-o", str(tmp_path / "r")]) == 2
    assert "unknown subset 'x'" in capsys.readouterr().err


def test_ddp_two_cpu_processes(curriculum, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", "-m", "ifmdm_model.cli.train", "--curriculum", str(curriculum),
                          "-o", str(run), "--max-steps", "2", "--device", "cpu", "--stage", "1"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    st = _state(run)
    assert st["world_size"] == 2 and st["global_step"] == 2


def test_gan_and_perceptual_paths_train(curriculum, tmp_path):
    """The optional discriminator and the VGG perceptual loss (random VGG19 weights saved under
    the torchvision file name) run through the trainer and are checkpointed."""
    import torchvision

    vgg = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), vgg)
    text = (curriculum / "curriculum.yaml").read_text().replace(
        "  levels:", "  loss: {l1: 1.0, perceptual: 1.0, local_flow: 0.1, gan: 0.1}\n  levels:")
    (curriculum / "curriculum.yaml").write_text(text)
    run = tmp_path / "run"
    res = ts.train_stage1(load_curriculum(curriculum), ts.TrainOptions(run_dir=run, max_steps=2,
                                                                       vgg_weights=str(vgg)))
    assert {"perceptual", "gan_g"} <= set(res["history"][-1])
    optim = torch.load(run / "stage1" / "ckpt-00000002" / "optim.pt", weights_only=False)
    assert "disc" in optim and "opt_d" in optim


def test_ddp_gan_keeps_discriminator_and_generator_equal_on_ranks(curriculum, tmp_path):
    """With gan > 0 under DDP (2 CPU processes, gloo), the discriminator's gradients are
    averaged like the generator's: after a few steps (the first with the lazy R1 term) both
    ranks hold identical discriminator, generator and EMA weights, and the discriminator moved
    away from its initial weights."""
    text = (curriculum / "curriculum.yaml").read_text().replace(
        "  levels:", "  loss: {l1: 1.0, perceptual: 0.0, local_flow: 0.1, gan: 0.1}\n  levels:")
    (curriculum / "curriculum.yaml").write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    worker = Path(__file__).with_name("ddp_stage1_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29523", str(worker), str(curriculum), str(out), "3"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 3
    for name in ("disc", "model", "ema"):
        w0, w1 = r0["weights"][name], r1["weights"][name]
        assert w0.keys() == w1.keys() and w0
        diff = [k for k in w0 if not torch.equal(w0[k], w1[k])]
        assert not diff, f"{name}: {len(diff)} tensors differ between ranks, e.g. {diff[0]}"
    from ifmdm_model.stage1.model import build_discriminator
    torch.manual_seed(0)
    fresh = build_discriminator(load_curriculum(curriculum).stage1.model_config()).state_dict()
    assert any(not torch.equal(fresh[k], r0["weights"]["disc"][k]) for k in fresh)


def _shards_with(sample_shards, tmp_path, subsets) -> Path:
    """A shards folder holding only `subsets` of the sample shards: the tar folders linked, an
    index.parquet of their rows (as `shard` writes when a subset had no accepted clip)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = tmp_path / ("shards_" + "_".join(subsets))
    out.mkdir()
    for s in subsets:
        (out / s).symlink_to(Path(sample_shards) / s, target_is_directory=True)
    index = pq.read_table(Path(sample_shards) / "index.parquet")
    index = index.filter(pc.is_in(index["subset"], value_set=pa.array(list(subsets))))
    assert set(index.column("subset").to_pylist()) == set(subsets)
    pq.write_table(index, out / "index.parquet")
    return out


def test_level_without_samples_is_skipped_and_resume_stays_exact(curriculum, sample_shards, tmp_path,
                                                                  monkeypatch, caplog):
    """Shards with lip and hard samples only (like ../shared/media, which has no coarse clip):
    level 'coarse' is skipped with one warning naming it and its subsets, its steps count as
    done (global steps keep their curriculum position), the others train on their non-empty
    subsets; state.json records the skipped level; --max-steps counts trained steps; a resume
    continues where it stopped."""
    import logging

    cur = load_curriculum(curriculum)
    cur.shards = _shards_with(sample_shards, tmp_path, ("lip", "hard"))
    run = tmp_path / "run"
    seen = _record_levels(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="ifmdm_model"):
        res = ts.train_stage1(cur, ts.TrainOptions(run_dir=run, max_steps=1))
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]
    assert len(warns) == 1 and "'coarse'" in warns[0] and "[coarse]" in warns[0], warns
    assert "\n" not in warns[0]
    assert res["steps"] == 3 and res["skipped_levels"] == ["coarse"]     # 2 skipped + 1 trained
    assert [h["step"] for h in res["history"]] == [3]
    st = _state(run)
    assert (st["global_step"], st["skipped_levels"]) == (3, ["coarse"])
    assert st["subset_samples"]["coarse"] == 0 and st["subset_samples"]["lip"] > 0
    assert seen == [["lip"]]                                            # coarse left out: empty

    seen.clear()
    res = ts.train_stage1(cur, ts.TrainOptions(run_dir=run))
    assert res["steps"] == 6
    assert [h["step"] for h in res["history"]] == [4, 5, 6]
    assert seen == [["lip"], ["hard", "lip"]]
    assert _state(run)["skipped_levels"] == ["coarse"]


def test_every_level_empty_is_a_clear_error(curriculum, sample_shards, tmp_path, capsys):
    text = (curriculum / "curriculum.yaml").read_text()
    text = text.replace("subsets: [lip, coarse]", "subsets: [coarse]").replace(
        "subsets: [hard, lip, coarse]", "subsets: [coarse]")
    (curriculum / "curriculum.yaml").write_text(text)
    shards = _shards_with(sample_shards, tmp_path, ("lip", "hard"))
    cur = load_curriculum(curriculum)
    cur.shards = shards
    with pytest.raises(ts.TrainingError, match=r"no curriculum level has training samples.*'coarse' \[coarse\]"):
        ts.train_stage1(cur, ts.TrainOptions(run_dir=tmp_path / "run"))
    assert train_main(["--curriculum", str(curriculum), "-o", str(tmp_path / "r"), "--shards", str(shards)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ifmdm-train: error: no curriculum level") and "\n" not in err
    assert "Traceback" not in err


def test_console_says_where_a_capped_run_stops_and_logs_its_first_step(curriculum, tmp_path, caplog):
    """A new user's `--max-steps 3` run with log_every 50: the level line names the global step the
    run stops at (not only the level's own length), and step 1 gets a line at once."""
    import logging
    cur = load_curriculum(curriculum)
    cur.stage1.log_every = 50
    with caplog.at_level(logging.INFO, logger="ifmdm_model"):
        ts.train_stage1(cur, ts.TrainOptions(run_dir=tmp_path / "run", max_steps=3))
    msgs = [r.getMessage() for r in caplog.records]
    assert any("level 2/3 'lip'" in m and "stops at global step 3 (--max-steps)" in m for m in msgs), msgs
    assert not any("level 1/3" in m and "stops at" in m for m in msgs)      # level 1 ends before the cap
    first = [m for m in msgs if m.startswith("step 1/3 done in")]
    assert len(first) == 1 and "next log at step 3" in first[0], msgs


def test_loader_workers_are_capped_at_the_cpus_of_this_rank(monkeypatch):
    from ifmdm_model.training import loader_workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(4) == 2 and loader_workers(1) == 1 and loader_workers(0) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_workers(4, world=2) == 1
