"""Finalise at scale: the vectorised near-duplicate grouping (`dedup.dup_groups`) against a
brute-force reference, the audio pairs that only join pHash groups, and the bulk reading of the
part files (`work.concat_parts`) against one `pd.concat` of every part. Fast (no media)."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ifmdm_data.filter import dedup
from ifmdm_data.filter.dedup import dup_groups, popcount64
from ifmdm_data.filter.fingerprint import audio_dup_pairs
from ifmdm_data.filter import work
from ifmdm_data.filter.work import PartStore, concat_parts, part_table
from ifmdm_data.schema import write_parquet_atomic


def _reference(hashes, max_distance, min_matches=2, bands=4, max_bucket=5000):
    """The rule of dedup's docstring, spelled out over all pairs: i < j are candidates when one
    (band, band value) holds a frame of both and at most max_bucket segments in all; a candidate
    is a duplicate when at least min(min_matches, len_i, len_j) frames of the shorter list (i's
    when equal) have a frame of the other within max_distance bits. Groups = connected
    components, numbered in order of first appearance."""
    n, width = len(hashes), 64 // bands
    keys = [{(b, (h >> (b * width)) & ((1 << width) - 1)) for h in hs for b in range(bands)} for hs in hashes]
    holders: dict = {}
    for i, ks in enumerate(keys):
        for k in ks:
            holders.setdefault(k, set()).add(i)
    adj = {i: set() for i in range(n)}
    for i in range(n):
        for j in range(i + 1, n):
            if not any(2 <= len(holders[k]) <= max_bucket for k in keys[i] & keys[j]):
                continue
            a, b = (hashes[j], hashes[i]) if len(hashes[i]) > len(hashes[j]) else (hashes[i], hashes[j])
            count = sum(1 for x in a if min(bin(x ^ y).count("1") for y in b) <= max_distance)
            need = min(min_matches, len(a), len(b))
            if need and count >= need:
                adj[i].add(j)
                adj[j].add(i)
    label, out = {}, []
    for i in range(n):
        if i not in label:
            stack, label[i] = [i], len(set(label.values()))
            while stack:
                for j in adj[stack.pop()]:
                    if j not in label:
                        label[j] = label[i]
                        stack.append(j)
        out.append(label[i])
    return out


def _flip(h, k, rng, bits=range(16, 64)):
    """h with k distinct bits flipped, chosen among `bits` (default: band 0, bits 0-15, kept)."""
    for b in rng.sample(list(bits), k):
        h ^= 1 << b
    return h


def _planted(seed, d):
    """Random segments plus near-duplicates planted at exactly d and d + 1 bits (band 0 kept, so
    they are always candidates), of other lengths, and chains of them."""
    rng = random.Random(seed)
    hashes, at_d, past_d = [], [], []
    for _ in range(12):
        base = [rng.getrandbits(64) for _ in range(rng.randint(1, 8))]
        i = len(hashes)
        hashes.append(base)
        hashes.append([_flip(h, d, rng) for h in base[:rng.randint(1, len(base))]])     # within d
        at_d.append((i, i + 1))
        hashes.append([_flip(h, d + 1, rng) for h in base])                           # just past d
        past_d.append((i, i + 2))
        hashes.append([_flip(h, rng.randint(0, d + 3), rng) for h in hashes[-1]])     # a chain
        hashes.append([rng.getrandbits(64) for _ in range(rng.randint(0, 8))])        # unrelated
    order = list(range(len(hashes)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    return ([hashes[k] for k in order], [(where[a], where[b]) for a, b in at_d],
            [(where[a], where[b]) for a, b in past_d])


@pytest.mark.parametrize("seed,d,min_matches,bands", [(0, 10, 2, 4), (1, 4, 2, 4), (2, 10, 1, 4),
                                                     (3, 6, 3, 8), (4, 10, 2, 2), (5, 0, 2, 4)])
def test_dup_groups_equal_brute_force(seed, d, min_matches, bands):
    hashes, at_d, past_d = _planted(seed, d)
    got = dup_groups(hashes, max_distance=d, min_matches=min_matches, bands=bands)
    assert got.dtype == np.int64
    assert list(got) == _reference(hashes, d, min_matches, bands)
    if bands == 4:   # band 0 is shared, so the planted pairs are candidates
        assert all(got[a] == got[b] for a, b in at_d), "frames exactly max_distance bits apart match"
        assert any(got[a] != got[b] for a, b in past_d), "max_distance + 1 bits apart do not"


def test_dup_groups_equal_brute_force_large_buckets_and_equal_lengths():
    """Many copies (large buckets, groups joined early and not checked again), buckets over
    MAX_BUCKET skipped, and equal-length pairs where only i's side of the count reaches the need."""
    rng = random.Random(7)
    base = [[rng.getrandbits(64) for _ in range(8)] for _ in range(6)]
    hashes = [[_flip(h, rng.randint(0, 12), rng, range(64)) for h in rng.choice(base)] for _ in range(150)]
    a = [rng.getrandbits(64) for _ in range(2)]
    hashes += [a, [_flip(a[0], 1, rng), rng.getrandbits(64)],  # equal lengths, each with one frame near a[0]:
               [_flip(a[0], 2, rng), rng.getrandbits(64)],     # counted on the first one's side (1 < need 2),
               a[:1] * 2]                                      # from this one's side they would match (2)
    for max_distance in (8, 10, 12):
        assert list(dup_groups(hashes, max_distance=max_distance)) == _reference(hashes, max_distance)
    old = dedup.MAX_BUCKET
    try:
        dedup.MAX_BUCKET = 20
        assert list(dup_groups(hashes)) == _reference(hashes, 10, max_bucket=20)
    finally:
        dedup.MAX_BUCKET = old


def test_popcount64():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 1000, dtype=np.uint64)
    x = np.r_[x, np.uint64(0), np.uint64(2**64 - 1)].reshape(2, -1)
    assert popcount64(x).tolist() == [[bin(int(v)).count("1") for v in row] for row in x]


def test_audio_pairs_joining_groups_give_the_same_groups():
    rng = np.random.default_rng(3)
    src = [rng.integers(0, 2**32, 120, dtype=np.uint64).tolist() for _ in range(5)]
    fps = []
    for k in range(40):
        s = src[k % 5]
        off = int(rng.integers(0, 30))
        fps.append([v ^ (1 << int(rng.integers(0, 32))) if rng.random() < 0.1 else v for v in s[off:off + 80]])
    hashes = [[int(k % 5) * 1000 + k] * 2 if k % 3 else [] for k in range(40)]   # a few pHash groups
    hashes = [[h * 0x9E3779B97F4A7C15 % 2**64 for h in hs] for hs in hashes]
    g0 = dup_groups(hashes)
    every = audio_dup_pairs(fps)
    few = audio_dup_pairs(fps, groups=g0)
    assert len(every) > len(few) > 0 and set(few) <= set(every)
    assert list(dup_groups(hashes, extra_pairs=few)) == list(dup_groups(hashes, extra_pairs=every))


def test_read_all_equals_concat_of_every_part(tmp_path, monkeypatch):
    """Parts of several schemas (columns missing, all-null, int with and without nulls, bools,
    lists) read in bulk: the same frame, rows and columns in the same order, same dtypes."""
    rng = random.Random(0)
    store = PartStore(tmp_path)
    rows_of = {}
    for k in range(60):
        rows = []
        for s in range(rng.randint(1, 3)):
            r = {"segment_id": f"c{k:03d}_{s}", "clip_id": f"c{k:03d}", "start_s": float(s)}
            kind = rng.randrange(4)
            if kind:
                r.update(n_faces=rng.choice([1, 2, None]) if kind == 1 else rng.randint(0, 3),
                         ok=rng.choice([True, False]), phash=[f"{rng.getrandbits(64):016x}"] * rng.randint(0, 3),
                         note=None if kind == 2 else "x")
            else:
                r.update(reasons=["probe_failed"], error="boom")
            rows.append(r)
        name = f"{rng.getrandbits(32):08x}_w0000"
        rows_of[name] = rows
    # written in batches of 7 units (the layout since 2026-12-01); the reference: one part per
    # unit (the layout before), each read back on its own
    monkeypatch.setattr(work, "BATCH_UNITS", 7)
    store.write_many(list(rows_of.items()))
    assert len(list(store.parts.glob("*.parquet"))) == 9
    for n, rows in rows_of.items():
        write_parquet_atomic(part_table(rows), tmp_path / "old" / f"{n}.parquet")
    got = store.read_all()
    want = pd.concat([pq.read_table(tmp_path / "old" / f"{n}.parquet").to_pandas() for n in sorted(rows_of)],
                     ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got["segment_id"]) == [r["segment_id"] for n in sorted(rows_of) for r in rows_of[n]]
    assert concat_parts([]).empty and PartStore(tmp_path / "none").read_all().empty
