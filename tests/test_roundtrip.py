"""Sample set -> filter -> shard -> loaders: what the trainer receives."""
from __future__ import annotations


import pandas as pd
import torch

from ifmdm_data.cli import main
from ifmdm_data.loaders import stage1_dataset


def test_stage1_pairs_from_real_shards(sample_shards, sample_manifests):
    index = pd.read_parquet(sample_shards / "index.parquet")
    clips = pd.read_parquet(sample_manifests[0] / "clips.parquet")
    accepted = clips[clips["accepted"]]
    assert set(index["key"]) == set(accepted["segment_id"])          # every accepted segment
    for r in index.itertuples():
        dur = float(accepted.set_index("segment_id").loc[r.key, "duration_s"])
        assert abs(r.n_frames - round(dur * r.fps)) <= 1
    ds = stage1_dataset(str(sample_shards), subsets=("lip",), size=64, pairs_per_clip=4, seed=1)
    pairs = list(ds)
    assert len(pairs) == 4 * int((index["subset"] == "lip").sum())
    keys = set(index.loc[index["subset"] == "lip", "key"])
    for p in pairs:
        assert p["key"] in keys and p["frames"][0] != p["frames"][1]
        for k in ("appearance", "motion"):
            assert p[k].shape == (3, 64, 64) and p[k].dtype == torch.float32
            assert -1.0 <= float(p[k].min()) and float(p[k].max()) <= 1.0
    # the two frames of a lip pair differ around the mouth, not everywhere
    a, m = pairs[0]["appearance"], pairs[0]["motion"]
    assert float((a - m).abs().mean()) < 0.2


def test_shard_cli_missing_wav2vec2_is_one_line(sample_manifests, tmp_path, capsys):
    code = main(["shard", str(sample_manifests[0]), "-o", str(tmp_path / "s"),
                 "--wav2vec2", str(tmp_path / "no_such_model")])
    assert code == 2
    err = capsys.readouterr().err
    assert "config.json" in err or "no_such_model" in err
    assert "Traceback" not in err
