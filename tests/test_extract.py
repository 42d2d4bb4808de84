"""Stage-2 motion extraction on the sample set's shards: sidecars the stage-2 loader reads,
motion equal to the encoder's, per-clip statistics, resume, one folder per encoder, errors."""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ifmdm_data.loaders import (TarShard, decode_frames, list_shards, read_meta, sidecar_path,
                                stage2_dataset, to_tensor, write_motion_sidecar)
from ifmdm_model.stage1 import model as stage1
from ifmdm_model.checkpoint import save_checkpoint
from ifmdm_model.stage2.extract import (ExtractionError, MissingShardsError, NoCheckpointError,
                                 NoIndexError, encoder_id, extract_motion)
from ifmdm_model.stage1.model import build_stage1


def save_tiny(run: Path, step: int, seed: int):
    """A random-init S1-tiny checkpoint whose EMA differs from its model weights."""
    torch.manual_seed(seed)
    model = build_stage1("S1-tiny")
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.encoder.parameters():
            p.mul_(0.9).add_(0.05 * torch.randn_like(p))
    state = {"model": "S1-tiny", "model_config": model.cfg.to_dict(), "global_step": step}
    ck = save_checkpoint(run / "stage1", step, model, ema, {"opt": {}}, state)
    return ck, ema.eval()


@pytest.fixture(scope="module")
def extracted(sample_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("extract") / "run-a"
    ck, ema = save_tiny(run, 3, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        def no_decoder(*a, **k):
            raise AssertionError("the decoder must not run during extraction")
        mp.setattr(stage1.MotionDecoder, "forward", no_decoder)
        summary = extract_motion(run, sample_shards, batch_size=16, progress=False,
                                 decode_workers=1)
    return run, ck, ema, summary


def stage2_keys(shards_root) -> dict:
    t = pq.read_table(Path(shards_root) / "index.parquet").to_pydict()
    out = {}
    for key, rel, ok, audio, n in zip(t["key"], t["shard"], t["stage2_ok"], t["has_audio"],
                                      t["n_frames"]):
        if ok and audio:
            out[key] = (str(Path(shards_root) / rel), n)
    return out


def test_sidecars_for_every_stage2_shard(sample_shards, extracted):
    run, ck, _, summary = extracted
    out = Path(summary["out_root"])
    eid = encoder_id(run)
    assert summary["encoder_id"] == eid and out == sample_shards / "motion" / eid
    assert eid.startswith("run-a-00000003-") and "." not in eid and len(eid.split("-")[-1]) == 10
    keys = stage2_keys(sample_shards)
    assert keys, "the sample set has stage-2 clips"
    with_stage2 = sorted({shard for shard, _ in keys.values()})
    assert with_stage2 == list_shards(sample_shards, stage2=True)
    assert all(os.path.isfile(sidecar_path(s, out)) for s in with_stage2)
    all_shards = list_shards(sample_shards)
    for s in set(all_shards) - set(with_stage2):                      # no stage-2 clip: no sidecar
        assert not os.path.exists(sidecar_path(s, out))
    assert summary["shards_written"] == len(with_stage2) and summary["shards_skipped"] == 0
    assert summary["shards_without_stage2"] == len(all_shards) - len(with_stage2)
    assert summary["clips"] == len(keys)
    assert summary["frames"] == sum(n for _, n in keys.values()) > 0
    rec = json.loads((out / "encoder.json").read_text())
    assert rec["encoder_id"] == eid and rec["checkpoint"] == str(ck.absolute())
    assert (rec["step"], rec["motion_dim"], rec["image_size"]) == (3, 20, 64)


def test_stage2_loader_reads_the_encoders_motion(sample_shards, extracted):
    _, _, ema, summary = extracted
    keys = stage2_keys(sample_shards)
    direct = {}
    for key, (shard, n) in keys.items():          # decode each clip again, encode in one batch
        with TarShard(shard) as t:
            assert read_meta(t, key)["n_frames"] == n
            frames = decode_frames(t.read(key, "mp4"), range(n), 64, key)
        x = torch.stack([to_tensor(frames[i]) for i in range(n)])
        with torch.no_grad():
            direct[key] = ema.encode(x)[1].numpy()                     # EMA weights, (n, D)
    ds = stage2_dataset(sample_shards, summary["out_root"], window=8, shuffle_buffer=0)
    seen = set()
    for w in ds:
        m = direct[w["key"]]
        assert w["motion"].shape == (8, 20)
        np.testing.assert_allclose(w["motion"].numpy(), m[w["start"]:w["start"] + 8], atol=1e-5)
        np.testing.assert_allclose(w["motion_mean"].numpy(), m.mean(0), atol=1e-5)
        np.testing.assert_allclose(w["motion_std"].numpy(), m.std(0), atol=1e-5)
        seen.add(w["key"])
    assert seen == {k for k, (_, n) in keys.items() if n >= 8}


def test_motion_json_statistics(sample_shards, extracted):
    _, _, _, summary = extracted
    for s in list_shards(sample_shards, stage2=True):
        with TarShard(sidecar_path(s, summary["out_root"])) as side:
            for key in side.keys():
                m, meta = side.read(key, "motion.npy"), side.read(key, "motion.json")
                assert m.dtype == np.float32 and meta["dim"] == m.shape[1] == 20
                assert meta["encoder"] == summary["encoder_id"]
                np.testing.assert_allclose(meta["mean"], m.astype(np.float64).mean(0), rtol=1e-12)
                np.testing.assert_allclose(meta["std"], m.astype(np.float64).std(0), rtol=1e-12)


def test_second_run_skips_and_resumes_a_missing_sidecar(sample_shards, extracted):
    run, _, _, first = extracted
    out = Path(first["out_root"])
    sides = sorted(str(p) for p in out.glob("*/*.tar"))
    mtimes = {p: os.stat(p).st_mtime_ns for p in sides}
    again = extract_motion(run, sample_shards, progress=False, decode_workers=0)
    assert (again["shards_written"], again["shards_skipped"]) == (0, len(sides))
    assert again["clips"] == again["frames"] == 0
    assert {p: os.stat(p).st_mtime_ns for p in sides} == mtimes

    # a killed run: one sidecar never became visible -> only that one is extracted again
    gone = sides[0]
    with TarShard(gone) as t:
        before = {k: t.read(k, "motion.npy") for k in t.keys()}
    os.remove(gone)
    third = extract_motion(run, sample_shards, progress=False, decode_workers=0)
    assert (third["shards_written"], third["shards_skipped"]) == (1, len(sides) - 1)
    with TarShard(gone) as t:
        assert t.keys() == list(before)
        for k in t.keys():
            # the same encoder on the same frames; batches of another size may round differently
            np.testing.assert_allclose(t.read(k, "motion.npy"), before[k], rtol=0, atol=1e-5)
    assert all(os.stat(p).st_mtime_ns == mtimes[p] for p in sides[1:])

    # a sidecar that does not match its shard (rewritten shard, foreign file): extracted again
    write_motion_sidecar(sides[1], [("bogus", np.zeros((3, 20), np.float32), "other-enc")])
    fourth = extract_motion(run, sample_shards, progress=False, decode_workers=0)
    assert (fourth["shards_written"], fourth["shards_skipped"]) == (1, len(sides) - 1)
    with TarShard(sides[1]) as t:
        assert "bogus" not in t.keys()
        assert t.read(t.keys()[0], "motion.json")["encoder"] == first["encoder_id"]


def test_ranks_split_the_shards(sample_shards, extracted, tmp_path):
    run, _, _, first = extracted
    out = tmp_path / "motion"
    parts = [extract_motion(run, sample_shards, out_root=out, progress=False, decode_workers=0,
                            rank=r, world_size=2) for r in (0, 1)]
    n = len(list_shards(sample_shards, stage2=True))
    assert [p["shards_written"] for p in parts] == [(n + 1) // 2, n // 2]
    assert sum(p["frames"] for p in parts) == first["frames"]
    assert len(list(stage2_dataset(sample_shards, out, window=8, shuffle_buffer=0))) > 0


def test_other_checkpoint_gets_its_own_folder(sample_shards, extracted, tmp_path):
    run, _, _, first = extracted
    ck2, _ = save_tiny(run, 5, seed=1)                     # same run, later step, other weights
    eid2 = encoder_id(ck2)
    assert eid2 != first["encoder_id"] and eid2.startswith("run-a-00000005-")
    assert encoder_id(run) == eid2                         # run folder -> its latest checkpoint
    # same step, other weights (a re-trained run copied over): the hash still tells them apart
    other = tmp_path / "run-a"
    ck3, _ = save_tiny(other, 3, seed=2)
    assert encoder_id(ck3) != first["encoder_id"]
    assert encoder_id(ck3).rsplit("-", 1)[0] == first["encoder_id"].rsplit("-", 1)[0]

    res = extract_motion(ck2, sample_shards, subsets=("lip",), progress=False, decode_workers=0)
    assert res["encoder_id"] == eid2 and Path(res["out_root"]).name == eid2
    assert res["shards_written"] == len(list_shards(sample_shards, ["lip"], stage2=True))
    assert Path(first["out_root"]) != Path(res["out_root"])
    # an output folder that belongs to another encoder is refused
    with pytest.raises(ExtractionError, match="holds the motion of encoder"):
        extract_motion(ck3, sample_shards, out_root=first["out_root"], progress=False)


def test_clear_errors(sample_shards, tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(NoCheckpointError, match=str(missing)) as e:
        extract_motion(missing, sample_shards, progress=False)
    assert isinstance(e.value, ExtractionError)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(NoCheckpointError, match="stage1/latest"):
        extract_motion(empty, sample_shards, progress=False)
    ck, _ = save_tiny(tmp_path / "run", 1, seed=0)
    (ck / "ema.safetensors").unlink()
    with pytest.raises(NoCheckpointError, match="ema.safetensors is missing"):
        extract_motion(ck, sample_shards, progress=False)

    ck, _ = save_tiny(tmp_path / "run2", 1, seed=0)
    with pytest.raises(NoIndexError, match="index.parquet"):
        extract_motion(ck, tmp_path / "empty-run", progress=False)
    bare = tmp_path / "shards"
    bare.mkdir()
    shutil.copy(sample_shards / "index.parquet", bare / "index.parquet")
    with pytest.raises(MissingShardsError, match="do not exist"):
        extract_motion(ck, bare, progress=False)
