"""`ifmdm-data split`: near-duplicate groups (pHash), identity/duplicate-disjoint splits, CLI."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from ifmdm_data.filter.dedup import dup_groups, frame_hashes, hamming, sample_frames
from ifmdm_data.schema import SPLIT_SCHEMA, clips_table, read_clips, write_parquet_atomic
from ifmdm_data.split import assign_splits, run_split
from tests.conftest import media

TALKING = ["aoc_talking.mp4", "man_talking_2s.mp4", "woman_quiet_talking.mp4"]


@pytest.fixture(scope="module")
def near_copy(tmp_path_factory):
    """aoc_talking.mp4 re-encoded (x264 crf 30), rescaled 0.5x and trimmed by 0.5 s."""
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not found")
    src = media("video", TALKING[0])
    out = tmp_path_factory.mktemp("dup") / "aoc_copy.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "0.5", "-i", str(src), "-vf", "scale=iw/2:ih/2",
                    "-c:v", "libx264", "-crf", "30", "-c:a", "aac", str(out)], check=True)
    return out


def _rows(paths, subsets=None, **cols):
    rows = []
    for i, p in enumerate(paths):
        r = {"segment_id": f"c{i:04d}_000000000", "clip_id": f"c{i:04d}", "path": str(p), "start_s": 0.0,
             "end_s": float("inf"), "subset": (subsets[i] if subsets else "lip"), "accepted": True,
             "reasons": [], "stage2_reasons": []}
        r.update({k: v[i] for k, v in cols.items()})
        rows.append(r)
    return rows


def _write_manifest(d, rows):
    write_parquet_atomic(clips_table(rows), d / "clips.parquet")
    return d


# --- near-duplicates ----------------------------------------------------------------------

def _rand_hash(rng):
    return int(rng.integers(0, 2 ** 63)) | (int(rng.integers(0, 2)) << 63)


def _flip(h, bits, rng):
    for b in rng.choice(64, bits, replace=False):
        h ^= 1 << int(b)
    return h


def test_dup_groups_blocking_and_chains():
    rng = np.random.default_rng(0)
    a = [_rand_hash(rng) for _ in range(4)]
    b = [_rand_hash(rng) for _ in range(4)]
    near_a = [_flip(h, 3, rng) for h in a]            # <= 3 bits: a band always matches
    chain = [_flip(h, 3, rng) for h in near_a]         # near near_a, up to 6 bits from a
    unrelated = [[_rand_hash(rng) for _ in range(4)] for _ in range(50)]
    g = dup_groups([a, b, near_a, chain, []] + unrelated, max_distance=4)
    assert g[0] == g[2] == g[3], "near copies and a chain of them are one group (union-find)"
    assert g[1] != g[0] and g[4] not in (g[0], g[1])
    assert len(set(g[5:])) == 50 and not set(g[5:]) & {g[0], g[1], g[4]}
    assert list(g) == list(dup_groups([a, b, near_a, chain, []] + unrelated, max_distance=4))


def test_dup_groups_need_two_matching_frames():
    rng = np.random.default_rng(1)
    a = [_rand_hash(rng) for _ in range(4)]
    one_shared = [a[0]] + [_rand_hash(rng) for _ in range(3)]   # one common frame: not a duplicate
    assert len(set(dup_groups([a, one_shared]))) == 2
    assert len(set(dup_groups([a, one_shared], min_matches=1))) == 1


def test_phash_groups_real_media_and_near_copy(near_copy):
    paths = [media("video", f) for f in TALKING] + [near_copy]
    hashes = [frame_hashes(sample_frames(str(p), 0.0, float("inf"), max_side=256)) for p in paths]
    assert all(len(h) == 8 for h in hashes)
    d_copy = sorted(min(hamming(a, b) for b in hashes[3]) for a in hashes[0])
    d_other = min(hamming(a, b) for i in (1, 2) for a in hashes[0] for b in hashes[i])
    assert d_copy[len(d_copy) // 2] <= 4 and d_other >= 16, (d_copy, d_other)
    g = dup_groups(hashes)
    assert g[3] == g[0], "re-encoded, rescaled, trimmed copy -> same dup_group"
    assert len({g[0], g[1], g[2]}) == 3, "different people's clips -> different groups"


# --- assignment -----------------------------------------------------------------------------

def _synthetic(n=400, seed=0):
    rng = np.random.default_rng(seed)
    ident = np.repeat(rng.integers(0, 120, n // 2), 2)    # 120 people, 2 segments per file
    ident[rng.random(n) < 0.05] = -1                      # no face
    dup = np.arange(n)
    for _ in range(15):                                   # duplicates across people (re-uploads)
        i, j = rng.choice(n, 2, replace=False)
        dup[j] = dup[i]
    subset = rng.choice(["coarse", "lip", "hard", None], n, p=[0.3, 0.4, 0.2, 0.1])
    return pd.DataFrame({"segment_id": [f"s{i}" for i in range(n)], "clip_id": [f"c{i // 2}" for i in range(n)],
                         "identity_id": ident, "dup_group": dup, "subset": subset})


def _assert_disjoint(df, split):
    for key in ("identity_id", "dup_group", "clip_id"):
        vals = df.assign(split=split)
        if key == "identity_id":
            vals = vals[vals[key] >= 0]
        per = vals.groupby(key)["split"].nunique()
        assert (per == 1).all(), f"{key} {per[per > 1].index[:5].tolist()} in two splits"


def test_assign_splits_disjoint_stratified_deterministic():
    df = _synthetic()
    split, comp, _ = assign_splits(df, {"test": 0.1, "val": 0.1}, seed=3)
    _assert_disjoint(df, split)
    assert set(split) == {"train", "val", "test"}
    for s in ("coarse", "lip", "hard"):
        part = split[df["subset"] == s]
        for name in ("val", "test"):
            assert 0.03 <= (part == name).mean() <= 0.2, (s, name, (part == name).mean())
    again, _, _ = assign_splits(df, {"test": 0.1, "val": 0.1}, seed=3)
    assert (again == split).all(), "same seed -> same split"
    other, _, _ = assign_splits(df, {"test": 0.1, "val": 0.1}, seed=4)
    assert not (other == split).all()


def test_assign_splits_rare_subset_gets_its_share():
    """10 'hard' among 200 single-segment groups: every seed puts exactly 1 hard (10%) in test."""
    n = 200
    df = pd.DataFrame({"segment_id": [f"s{i}" for i in range(n)], "clip_id": [f"c{i}" for i in range(n)],
                       "identity_id": np.arange(n), "dup_group": np.arange(n),
                       "subset": ["hard" if i % 20 == 0 else "coarse" for i in range(n)]})
    for seed in range(5):
        split, _, _ = assign_splits(df, {"test": 0.1}, seed=seed)
        test = df.loc[split == "test", "subset"].value_counts()
        assert test.get("hard", 0) == 1 and test.get("coarse", 0) == 19, (seed, dict(test))


def test_assign_splits_tiny_set_still_fills_test():
    df = pd.DataFrame({"segment_id": list("abc"), "clip_id": list("abc"), "identity_id": [0, 1, 2],
                       "dup_group": [0, 1, 2], "subset": ["lip"] * 3})
    split, _, _ = assign_splits(df, {"test": 0.05}, seed=0)
    assert (split == "test").sum() == 1 and (split == "train").sum() == 2


# --- end to end -----------------------------------------------------------------------------

def test_run_split_with_given_annotations_writes_schema(tmp_path):
    df = _synthetic(200, seed=1)
    rows = _rows([f"/nonexistent/{i}.mp4" for i in range(len(df))], subsets=list(df["subset"]))
    for r, (_, x) in zip(rows, df.iterrows()):
        r.update(segment_id=x["segment_id"], clip_id=x["clip_id"], accepted=x["subset"] is not None,
                 identity_id=int(x["identity_id"]), dup_group=int(x["dup_group"]))
    write_parquet_atomic(clips_table(rows), tmp_path / "m" / "clips.parquet")
    s = run_split([tmp_path / "m"], tmp_path / "splits", test_fraction=0.1, seed=0)
    assert set(s["splits"]) == {"train", "test"} and not (tmp_path / "splits" / "val.parquet").exists()
    parts = {n: read_clips(tmp_path / "splits" / f"{n}.parquet") for n in ("train", "test")}
    import pyarrow.parquet as pq
    assert pq.read_schema(tmp_path / "splits" / "test.parquet").names == SPLIT_SCHEMA.names
    both = pd.concat(parts.values(), ignore_index=True)
    assert sorted(both["segment_id"]) == sorted(df["segment_id"])
    _assert_disjoint(both, both["split"])
    assert sum(p["segments"] for p in s["splits"].values()) == 200


def test_cli_split_real_media(tmp_path, near_copy, capsys):
    from ifmdm_data.cli import main

    paths = [media("video", f) for f in TALKING] + [near_copy]
    _write_manifest(tmp_path, _rows(paths, subsets=["lip", "coarse", "lip", "lip"]))
    rc = main(["split", str(tmp_path), "--test-fraction", "0.3", "--seed", "0", "-o", str(tmp_path / "sp"),
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "train" in out and "test" in out and "identities" in out
    df = pd.concat([read_clips(tmp_path / "sp" / f"{n}.parquet") for n in ("train", "test")])
    by_path = df.set_index("path")
    aoc, copy = str(paths[0]), str(near_copy)
    assert by_path.loc[aoc, "dup_group"] == by_path.loc[copy, "dup_group"]
    assert by_path.loc[aoc, "identity_id"] == by_path.loc[copy, "identity_id"] >= 0
    assert by_path.loc[aoc, "split"] == by_path.loc[copy, "split"]
    assert df["identity_id"].nunique() == 3 and df["dup_group"].nunique() == 3
    assert (df["split"] == "test").any()


@pytest.mark.parametrize("args, msg", [
    (["split", "{d}/nope", "-o", "{d}/o"], "no manifest folder {d}/nope: run `ifmdm-data filter INPUTS -o {d}/nope`"),
    (["split", "{d}", "-o", "{d}/o", "--test-fraction", "1.5"], "--test-fraction must be in [0, 1)"),
    (["split", "{d}", "-o", "{d}/o", "--test-fraction", "0.6", "--val-fraction", "0.5"], "must be < 1"),
    (["split", "{d}", "-o", "{d}/o", "--dup-bits", "70"], "--dup-bits"),
])
def test_cli_split_errors_one_line_exit_2(tmp_path, capsys, args, msg):
    from ifmdm_data.cli import main

    _write_manifest(tmp_path, _rows(["/nonexistent.mp4"]))
    rc = main([a.format(d=tmp_path) for a in args])
    err = capsys.readouterr().err
    msg = msg.format(d=tmp_path)
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_missing_manifest_names_the_missing_folder_or_file(tmp_path):
    from ifmdm_data.errors import InputError
    from ifmdm_data.schema import read_clips

    with pytest.raises(InputError, match=f"^no manifest folder {tmp_path}/m: run `ifmdm-data filter INPUTS -o {tmp_path}/m` first$"):
        read_clips(tmp_path / "m")
    with pytest.raises(InputError, match=f"^no manifest folder {tmp_path}/m: "):
        read_clips(tmp_path / "m" / "lip.parquet")
    with pytest.raises(InputError, match=f"^no manifest lip.parquet in {tmp_path}: .* -o {tmp_path}` first$"):
        read_clips(tmp_path / "lip.parquet")
    with pytest.raises(InputError, match=f"^no manifest clips.parquet in {tmp_path}: "):
        read_clips(tmp_path)


# --- a split's manifest downstream: shard, report, train --------------------------------------

@pytest.fixture(scope="module")
def sample_split(sample_manifests, tmp_path_factory):
    """The sample manifests split 70/30 by file (identity and duplicate groups given, no decoding:
    the sample set's face clips all show one person)."""
    import ifmdm_data.split as split_mod

    def given(df, **kw):
        df = df.copy()
        df["identity_id"] = pd.factorize(df["clip_id"])[0]
        df["dup_group"] = np.arange(len(df))
        df.loc[df.index[:2], "dup_group"] = 0               # one duplicate group of two segments
        return df

    out = tmp_path_factory.mktemp("splits")
    orig, split_mod.annotate = split_mod.annotate, given
    try:
        run_split([sample_manifests[0]], out, by="clip", test_fraction=0.3, seed=0)
    finally:
        split_mod.annotate = orig
    return out


def test_split_records_its_source_manifest(sample_manifests, sample_split):
    test = read_clips(sample_split / "test.parquet")
    assert set(test["source_manifest"]) == {str(sample_manifests[0].resolve())}


def test_shard_a_split_file_writes_exactly_its_rows(sample_split, tmp_path):
    from ifmdm_data.shard.segment import ShardConfig
    from ifmdm_data.shard.pipeline import run_shard

    test = read_clips(sample_split / "test.parquet")
    train = read_clips(sample_split / "train.parquet")
    want = set(test.loc[test["accepted"].fillna(False).astype(bool), "segment_id"])
    assert want and set(train["segment_id"]).isdisjoint(want)
    s = run_shard(str(sample_split / "test.parquet"), str(tmp_path / "shards"),
                  cfg=ShardConfig(size=64, preset="veryfast", target_shard_bytes=1), workers=2, progress=False)
    idx = pd.read_parquet(tmp_path / "shards" / "index.parquet")
    assert not s["failures"], s["failures"]
    assert set(idx["key"]) == want and len(idx) == len(want)
    by_key = test.set_index("segment_id")
    assert all(by_key.loc[k, "subset"] == sub for k, sub in zip(idx["key"], idx["subset"]))


def test_shard_a_split_whose_manifests_moved_is_one_line(sample_split, tmp_path, capsys):
    from ifmdm_data.cli import main
    from ifmdm_data.schema import split_table

    df = read_clips(sample_split / "test.parquet")
    df["source_manifest"] = str(tmp_path / "moved")
    write_parquet_atomic(split_table(df), tmp_path / "test.parquet")
    rc = main(["shard", str(tmp_path / "test.parquet"), "-o", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"made from the manifests {tmp_path / 'moved'}, which hold no tracks/" in err
    df["source_manifest"] = None                          # a split file of an older `split`
    write_parquet_atomic(split_table(df), tmp_path / "test.parquet")
    rc = main(["shard", str(tmp_path / "test.parquet"), "-o", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "a split file without source_manifest" in err, err
    rc = main(["shard", str(sample_split), "-o", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"give one of them, e.g. {sample_split / 'train.parquet'}" in err, err


def test_report_of_a_split_shows_identities_and_duplicates(sample_split, sample_manifests, tmp_path):
    from ifmdm_data.report import identity_section, write_report

    page = write_report(sample_split / "train.parquet", tmp_path / "r", examples_per_subset=1).read_text()
    assert "Identities per subset" in page and "Duplicate groups" in page
    assert "<h1>ifmdm-data split report</h1>" in page            # not "filter report"
    train = read_clips(sample_split / "train.parquet")
    n_ids = train.loc[train["identity_id"] >= 0, "identity_id"].nunique()
    no_face = int((train["identity_faces"] == 0).sum())          # looked and found none (noface_texture)
    assert f"<td>train</td><td>all</td><td>{len(train)}</td><td>{n_ids}</td><td>{no_face}</td>" in page
    assert "1 near-duplicate group of two or more segments (2 segments)" in page
    assert "no tracks file" not in page and "source missing" not in page, "tracks from source_manifest"
    # a manifest without identities (identity.enabled: false, older versions): no section, no error
    bare = read_clips(sample_manifests[0]).assign(group="lip", identity_id=None, dup_group=None)
    assert identity_section(bare) == ""
    assert "Identities per subset" in identity_section(read_clips(sample_manifests[0]).assign(group="lip"))


def test_train_on_a_split_file_says_shard_it_first(sample_manifests, sample_split):
    from ifmdm_data.errors import ConfigError
    from ifmdm_model.curriculum import load_curriculum

    for arg in (sample_split / "train.parquet", sample_split):
        with pytest.raises(ConfigError, match=(rf"shard {sample_split / 'train.parquet'} -o shards/train`\), then "
                                               rf"`ifmdm-train --curriculum {sample_manifests[0].resolve()} "
                                               rf"--shards shards/train")):
            load_curriculum(arg)


def test_train_and_eval_given_a_split_file_as_shards_say_shard_it(sample_manifests, sample_split, tmp_path, capsys):
    from ifmdm_data.loaders import list_shards
    from ifmdm_data.shard.format import ShardFormatError
    from ifmdm_model.cli.train import train_main

    split_file = sample_split / "test.parquet"
    rc = train_main(["--curriculum", str(sample_manifests[0]), "--shards", str(split_file), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and f"run `ifmdm-data shard {split_file} -o shards/test`, then pass --shards shards/test" in err
    with pytest.raises(ShardFormatError, match="is a manifest, not a shard folder: run `ifmdm-data shard"):
        list_shards(split_file)                       # ifmdm-eval stage1 --shards splits/test.parquet


def test_split_summary_shows_the_share_reached_beside_the_one_asked(tmp_path, capsys):
    from ifmdm_data.cli import print_split_summary

    df = _synthetic(200, seed=1)
    rows = _rows([f"/nonexistent/{i}.mp4" for i in range(len(df))], subsets=list(df["subset"]))
    for r, (_, x) in zip(rows, df.iterrows()):
        r.update(segment_id=x["segment_id"], clip_id=x["clip_id"], accepted=x["subset"] is not None,
                 identity_id=int(x["identity_id"]), dup_group=int(x["dup_group"]))
    _write_manifest(tmp_path, rows)
    s = run_split([tmp_path], tmp_path / "sp", test_fraction=0.1, val_fraction=0.05, seed=0)
    assert {n: p["fraction"] for n, p in s["splits"].items()} == pytest.approx({"train": 0.85, "val": 0.05, "test": 0.1})
    print_split_summary(s, str(tmp_path / "sp"))
    out = capsys.readouterr().out
    for name, asked in (("train", 85), ("val", 5), ("test", 10)):
        n = s["splits"][name]["segments"]
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert f"{100 * n / 200:.1f}% of segments (asked {asked}%)" in line, line
