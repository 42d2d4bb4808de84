"""`ifmdm-tune` (stage-1 LoRA personalisation) and `ifmdm-infer --lora`: tuning lowers the
subject's held-out reconstruction error and only through the adapter; the base run is never
written; merging computes what the unmerged adapter computes; adapters of another base, or
broken ones, are one-line errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import media
from ifmdm_model.infer import InferenceError, load_models, load_stage1
from ifmdm_model.testing import save_random_run
from ifmdm_model.lora import LoraConfig, LoraError, add_lora, apply_adapter, merge_lora, set_lora_enabled
from ifmdm_model.checkpoint import weights_sha256
from ifmdm_model.tune.stage1 import TuneError, eval_pairs, load_subject, recon_error, tune_stage1

CLIP = media("video", "man_talking_2s.mp4")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return save_random_run(tmp_path_factory.mktemp("tune") / "base")


@pytest.fixture(scope="module")
def tuned(base_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "subject"
    ck = base_run / "stage1" / (base_run / "stage1" / "latest").read_text().strip()
    before = {p.name: weights_sha256(p) for p in ck.iterdir() if p.is_file()}
    rec = tune_stage1(base_run, [str(CLIP)], out, steps=40, seed=0, device="cpu")
    return out, rec, ck, before


def test_tuning_lowers_heldout_error_through_the_adapter(tuned):
    out, rec, ck, _ = tuned
    assert rec["evaluated_on"] == "held-out" and rec["eval_pairs"] > 5
    assert rec["tuned"]["l1"] < 0.8 * rec["base"]["l1"], rec
    assert rec["tuned"]["psnr"] > rec["base"]["psnr"] + 1.0, rec
    # the same model with the adapter switched off is exactly the base
    data = load_subject([str(CLIP)], 64)
    app, tgt = eval_pairs(data)
    model = load_stage1(ck, torch.device("cpu"))
    base_err = recon_error(model, app, tgt)
    apply_adapter(model, out, ck / "ema.safetensors", merge=False)
    tuned_err = recon_error(model, app, tgt)
    assert tuned_err["l1"] == pytest.approx(rec["tuned"]["l1"], rel=1e-4)
    assert base_err["l1"] == pytest.approx(rec["base"]["l1"], rel=1e-4)
    updates = {n: m.parametrizations.weight[0] for n, m in model.named_modules()
               if hasattr(m, "parametrizations")}
    set_lora_enabled(updates, False)
    assert recon_error(model, app, tgt)["l1"] == pytest.approx(base_err["l1"], rel=1e-6)


def test_base_run_is_never_written(tuned):
    _, rec, ck, before = tuned
    assert {p.name: weights_sha256(p) for p in ck.iterdir() if p.is_file()} == before
    assert rec["base_sha256"] == before["ema.safetensors"]
    rec_file = json.loads((tuned[0] / "lora" / "adapter.json").read_text())
    assert rec_file["lora"] == {"rank": 8, "alpha": 8.0, "targets": "decoder"}
    assert 0 < rec_file["adapter_parameters"] < rec_file["base_parameters"]


def test_merged_adapter_equals_unmerged():
    from ifmdm_model.stage1.model import build_stage1
    torch.manual_seed(0)
    model = build_stage1("S1-tiny").eval()
    ups = add_lora(model, LoraConfig(rank=4, alpha=4.0, targets="all"))
    with torch.no_grad():
        for u in ups.values():
            u.lora_B.normal_(0, 0.05)                        # a non-zero update
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        unmerged = model(x, x.flip(0))["recon"]
        set_lora_enabled(ups, False)
        base = model(x, x.flip(0))["recon"]
        set_lora_enabled(ups, True)
        merge_lora(model)
        merged = model(x, x.flip(0))["recon"]
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert (unmerged - base).abs().max() > 1e-3
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_infer_applies_the_adapter_and_refuses_another_base(tuned, base_run, tmp_path):
    out, _, ck, _ = tuned
    plain = load_models(base_run, "cpu", need_stage2=False)
    adapted = load_models(base_run, "cpu", need_stage2=False, lora=out)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert (plain.stage1(x, x)["recon"] - adapted.stage1(x, x)["recon"]).abs().max() > 1e-4
    other = save_random_run(tmp_path / "other", seed=1)
    with pytest.raises(InferenceError, match="was tuned on"):
        load_models(other, "cpu", need_stage2=False, lora=out)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "lora" / "adapter.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InferenceError, match="corrupt"):
        load_models(base_run, "cpu", need_stage2=False, lora=broken)
    with pytest.raises(LoraError, match="no LoRA adapter"):
        apply_adapter(plain.stage1, tmp_path, ck / "ema.safetensors")


def test_cli_runs_and_errors_are_one_line(base_run, tmp_path, capsys):
    from ifmdm_model.cli.infer import main as infer_main
    from ifmdm_model.cli.tune import main
    out = tmp_path / "s"
    assert main(["--base", str(base_run), "--data", str(CLIP), "-o", str(out), "--steps", "2"]) == 0
    txt = capsys.readouterr().out
    assert "reconstruction on" in txt and "adapter:" in txt
    assert main(["--base", str(base_run), "--data", str(CLIP), "-o", str(out), "--steps", "2"]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert main(["--base", str(tmp_path / "nope"), "--data", str(CLIP), "-o", str(out)]) == 2
    assert main(["--base", str(base_run), "--data", str(tmp_path / "none.mp4"), "-o", str(out)]) == 2
    assert main(["--base", str(base_run), "--data", str(CLIP), "-o", str(out), "--rank", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("ifmdm-tune: error:") == 3 and "Traceback" not in err
    video = tmp_path / "r.mp4"
    assert infer_main(["--checkpoint", str(base_run), "--lora", str(out), "--image", str(media("image", "cat_face.png")),
                       "--driving-video", str(CLIP), "-o", str(video), "-q", "--no-face-check"]) == 0
    assert video.stat().st_size > 1000
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TuneError, match="holds no image or video"):
        load_subject([str(empty)], 64)


def test_eval_loads_the_adapter(tuned, base_run, tmp_path):
    from ifmdm_model.eval.stage1 import load_stage1 as eval_load
    out = tuned[0]
    plain, _, _ = eval_load(base_run)
    adapted, _, _ = eval_load(base_run, lora=out)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert (plain(x, x)["recon"] - adapted(x, x)["recon"]).abs().max() > 1e-4
    other = save_random_run(tmp_path / "other", seed=2)
    with pytest.raises(LoraError, match="was tuned on"):
        eval_load(other, lora=out)


def test_images_are_subjects_with_augmented_pairs(tmp_path):
    import cv2
    cat = cv2.imread(str(media("image", "cat_face.png")))
    one = load_subject([str(media("image", "cat_face.png"))], 64)
    assert len(one.train) == 1 and not one.train[0].is_video and one.train[0].frames.shape == (1, 64, 64, 3)
    assert one.heldout_kind == "train"                                 # one image: nothing to hold out
    app, tgt = eval_pairs(one)
    assert app.shape == tgt.shape == (4, 64, 64, 3) and np.abs(app.astype(int) - tgt).mean() > 1
    folder = tmp_path / "cats"
    folder.mkdir()
    for k in range(4):
        cv2.imwrite(str(folder / f"c{k}.png"), np.roll(cat, 7 * k, axis=1))
    four = load_subject([str(folder)], 64)
    assert (len(four.train), len(four.heldout), four.heldout_kind) == (3, 1, "held-out")
    assert four.heldout[0].name == "c3.png"


def test_stage2_adapter_lowers_heldout_denoising_loss_and_is_applied(tmp_path):
    from ifmdm_model.lora import find_adapters
    from ifmdm_model.stage2.motion_windows import heldout_loss
    from ifmdm_model.tune.stage2 import fit_stage2_adapter, subject_windows, tune_stage2
    base = save_random_run(tmp_path / "base", n_frames=16)
    talk = media("video", "aoc_talking.mp4")
    rec = tune_stage2(base, [str(talk), str(media("image", "cat_face.png"))], tmp_path / "s", steps=60,
                      batch_size=16, lr=3e-3, device="cpu")
    assert rec["videos"] == ["aoc_talking.mp4"] and rec["heldout_windows"] >= 2
    assert rec["tuned"]["heldout_loss"] < 0.95 * rec["base"]["heldout_loss"], rec
    assert set(find_adapters(tmp_path / "s")) == {2}
    # the adapter switched off is exactly the base; loaded through infer it changes stage 2 only
    models = load_models(base, "cpu")
    train, held, _ = subject_windows(models, [str(talk)])
    he = {k: torch.from_numpy(v) for k, v in held.items()}
    fit = fit_stage2_adapter(models, train, held, LoraConfig(4, 4.0, "dit"), steps=1, seed=0)
    set_lora_enabled(fit["updates"], False)
    assert heldout_loss(models.stage2, he, models.schedule, 0) == pytest.approx(fit["base"]["heldout_loss"], rel=1e-6)
    plain, adapted = load_models(base, "cpu"), load_models(base, "cpu", lora=tmp_path / "s")
    x, t = torch.randn(1, 16, 20), torch.tensor([300])
    cond = dict(speech=torch.randn(1, 16, 80), m_mu=torch.zeros(1, 20), m_sigma=torch.full((1, 20), 0.1),
                hint=torch.zeros(1, 20))
    with torch.no_grad():
        assert (plain.stage2(x, t, **cond) - adapted.stage2(x, t, **cond)).abs().max() > 1e-4
        probe = torch.rand(1, 3, 64, 64) * 2 - 1
        assert torch.equal(plain.stage1(probe, probe)["recon"], adapted.stage1(probe, probe)["recon"])
    with pytest.raises(InferenceError, match="was tuned on"):
        load_models(save_random_run(tmp_path / "other", n_frames=16, seed=3), "cpu", lora=tmp_path / "s")
    with pytest.raises(TuneError, match="needs videos of the subject with speech"):
        tune_stage2(base, [str(media("image", "cat_face.png"))], tmp_path / "t", steps=1, device="cpu")


def test_bad_files_skipped_output_outside_base_and_readable_files(base_run, tmp_path, capsys):
    import os
    import stat

    from ifmdm_model.cli.tune import main
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(media("image", "cat_face.png"), data / "cat.png")
    (data / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "notes.wav").write_bytes(b"RIFF")
    subject = load_subject([str(data)], 64)
    assert [s.name for s in subject.train] == ["cat.png"]                # the two bad files skipped
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "broken.png").write_bytes(b"")
    with pytest.raises(TuneError, match="no usable image or video"):
        load_subject([str(only_bad)], 64)
    ck = base_run / "stage1" / (base_run / "stage1" / "latest").read_text().strip()
    assert main(["--base", str(ck), "--data", str(data), "-o", str(base_run / "mine"), "--steps", "1"]) == 2
    assert "inside the base run" in capsys.readouterr().err
    assert main(["--base", str(ck), "--data", str(data), "-o", str(tmp_path / "o"), "--steps", "1"]) == 0
    assert f"--checkpoint {base_run.resolve()} --lora" in capsys.readouterr().out   # the run, not the ckpt
    mode = stat.S_IMODE(os.stat(tmp_path / "o" / "lora" / "adapter.safetensors").st_mode)
    assert mode & 0o044 == 0o044 & ~_umask(), oct(mode)


def _umask() -> int:
    import os
    m = os.umask(0)
    os.umask(m)
    return m


def test_odd_arguments_and_broken_adapters_are_one_line_errors(tuned, base_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from ifmdm_model.cli.tune import main
    out = tuned[0]
    common = ["--base", str(base_run), "--data", str(CLIP), "--steps", "1"]
    assert main(common + ["-o", str(tmp_path / "a"), "--lr", "inf"]) == 2
    assert main(common + ["-o", str(tmp_path / "a"), "--seed", "-1"]) == 2
    assert main(common + ["-o", str(tmp_path / "a"), "--rank", "100000"]) == 2
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "lora").write_text("x")
    assert main(common + ["-o", str(tmp_path / "f"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("ifmdm-tune: error:") == 4 and "Traceback" not in err
    assert "larger than every adapted layer allows" in err and "is not a folder" in err
    ck = base_run / "stage1" / (base_run / "stage1" / "latest").read_text().strip()
    model = load_stage1(ck, torch.device("cpu"))
    bad = tmp_path / "nan"
    shutil.copytree(out, bad)
    t = load_file(str(bad / "lora" / "adapter.safetensors"))
    t[next(iter(t))][0] = float("nan")
    save_file(t, str(bad / "lora" / "adapter.safetensors"))
    with pytest.raises(LoraError, match="non-finite"):
        apply_adapter(model, bad, ck / "ema.safetensors")
    rec = json.loads((out / "lora" / "adapter.json").read_text())
    nul = tmp_path / "nul"
    shutil.copytree(out, nul)
    (nul / "lora" / "adapter.json").write_text(json.dumps({**rec, "base_sha256": None}))
    with pytest.raises(LoraError, match="not an ifmdm-tune adapter record"):
        apply_adapter(model, nul, ck / "ema.safetensors")


def test_infer_records_the_adapter(tuned, base_run, tmp_path):
    from ifmdm_model.infer import reenact
    st = reenact(base_run, media("image", "cat_face.png"), CLIP, tmp_path / "r.mp4", device="cpu", progress=False,
                 face_check=False, lora=tuned[0])
    assert st["lora"] == {"stage1": str(tuned[0] / "lora")}
