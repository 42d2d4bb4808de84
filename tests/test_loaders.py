"""Stage-1 / stage-2 loaders on tiny shards built here, in the format of ifmdm_data/shard/format.py.

Every frame of a test clip carries its frame index and its clip id as four flat grey
quadrants (base-7 digits), so a test can read back which frame of which clip was decoded.
speech.npy row f and motion.npy row f hold f, so alignment is checkable too.
"""
from __future__ import annotations

import io
import json
import tarfile
import wave
from collections import Counter
from types import SimpleNamespace

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from ifmdm_data.loaders import (TarShard, decode_frames, jitter_pair, read_motion,
                                stage1_dataset, stage1_loader, stage2_dataset, stage2_loader,
                                write_motion_sidecar)
from ifmdm_data.shard.format import INDEX_SCHEMA, ShardFormatError, npy_bytes

SIZE, DIM, D = 64, 6, 4
SUBSETS = ("coarse", "lip", "hard")
LENGTHS = (20, 24, 31, 40)   # with window 24, stride 8: short, 1, 1, 3 windows


# ---------------------------------------------------------------------------------------------
# Building shards
# ---------------------------------------------------------------------------------------------

def level(d: int) -> int:
    return 20 + 35 * d


def encode_clip(n: int, clip_id: int, size: int = SIZE) -> bytes:
    """H.264 mp4 bytes; quadrants: frame index (TL, TR) and clip id (BL, BR) in base 7."""
    buf = io.BytesIO()
    h = size // 2
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            img = np.empty((size, size, 3), np.uint8)
            img[:h, :h] = level(i % 7)
            img[:h, h:] = level(i // 7)
            img[h:, :h] = level(clip_id % 7)
            img[h:, h:] = level(clip_id // 7)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def read_code(t: torch.Tensor) -> tuple[int, int]:
    """(frame index, clip id) drawn into a decoded frame (3, H, W) in [-1, 1]."""
    img = ((t.numpy() + 1) * 127.5).mean(0)
    q = img.shape[0] // 4

    def digit(y, x):
        return int(round((img[y - q // 2:y + q // 2, x - q // 2:x + q // 2].mean() - 20) / 35))

    return digit(q, q) + 7 * digit(q, 3 * q), digit(3 * q, q) + 7 * digit(3 * q, 3 * q)


def wav_bytes(n_frames: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(640 * n_frames, np.int16).tobytes())
    return buf.getvalue()


def main_sample(key, clip_id, n, subset, audio=True, landmarks_dtype=np.float16) -> dict:
    meta = {"key": key, "source": f"/src/{key}.mp4", "start_s": 0.0, "end_s": n / 25,
            "fps": 25.0, "n_frames": n, "size": SIZE, "subset": subset, "stage2_ok": audio,
            "stage2_reasons": [] if audio else ["no_audio"], "has_audio": audio,
            "crop_box": [0, 0, SIZE, SIZE], "landmark_scheme": "mp478",
            "motion_stats": {}, "speech_feature": {"type": "logmel", "dim": DIM}}
    s = {"__key__": key, "mp4": encode_clip(n, clip_id), "json": json.dumps(meta).encode(),
         "landmarks.npy": npy_bytes(np.zeros((n, 5, 2), landmarks_dtype))}
    if audio:
        speech = np.repeat(np.arange(n, dtype=np.float16)[:, None], DIM, axis=1)   # row f = f
        s["speech.npy"], s["wav"] = npy_bytes(speech), wav_bytes(n)
    return s


def motion_of(n: int, clip_id: int) -> np.ndarray:
    f = np.arange(n, dtype=np.float32)
    return np.stack([f, np.full(n, clip_id, np.float32), 0.5 * f, -f], axis=1)   # (n, D)


def write_tar(path, samples):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """shards/{subset}/{subset}-00000{0,1}.tar (2 clips each) + index.parquet + sidecars."""
    root = tmp_path_factory.mktemp("loaders")
    shards, motion = root / "shards", root / "motion" / "enc"
    clips, rows, cid = {}, [], 0
    for subset in SUBSETS:
        for j in range(2):
            tar = shards / subset / f"{subset}-{j:06d}.tar"
            samples, side = [], []
            for c in range(2):
                key, n = f"{subset}_s{j}_c{c}", LENGTHS[(cid + j) % 4]
                audio = not (subset == "lip" and j == 0 and c == 0)   # one stage-1-only clip
                samples.append(main_sample(key, cid, n, subset, audio))
                clips[key] = SimpleNamespace(id=cid, n=n, usable=audio)
                rows.append({"key": key, "shard": f"{subset}/{tar.name}", "subset": subset,
                             "n_frames": n, "fps": 25.0, "stage2_ok": audio, "has_audio": audio,
                             "feature_type": "logmel", "feature_dim": DIM, "bytes": 0})
                # the sidecar of lip-0 omits the stage-1-only key (a subsequence is fine)
                if audio or subset != "lip":
                    side.append((key, motion_of(n, cid), "enc"))
                cid += 1
            write_tar(tar, samples)
            write_motion_sidecar(motion / subset / tar.name, side)
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), shards / "index.parquet")
    return SimpleNamespace(shards=shards, motion=motion, clips=clips)


# ---------------------------------------------------------------------------------------------
# Stage 1
# ---------------------------------------------------------------------------------------------

def test_stage1_pairs_are_decoded_frames_of_one_clip(data):
    ds = stage1_dataset(data.shards, size=32, pairs_per_clip=3, shuffle_buffer=8)
    items = list(ds)
    assert len(items) == 3 * len(data.clips)
    per_key = Counter(it["key"] for it in items)
    assert set(per_key) == set(data.clips) and set(per_key.values()) == {3}
    for it in items:
        clip = data.clips[it["key"]]
        i_a, i_m = it["frames"]
        assert i_a != i_m and 0 <= i_a < clip.n and 0 <= i_m < clip.n
        for name, idx in (("appearance", i_a), ("motion", i_m)):
            t = it[name]
            assert t.shape == (3, 32, 32) and t.dtype == torch.float32
            assert -1.0 <= t.min() and t.max() <= 1.0
            assert read_code(t) == (idx, clip.id), (it["key"], name, idx)
    assert ds.stats["clips_decoded"] == len(data.clips)


def test_decode_frames_skips_unneeded_pictures_bit_exactly():
    mp4 = encode_clip(40, 5)
    with av.open(io.BytesIO(mp4)) as c:
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    stats = Counter()
    got = decode_frames(mp4, [3, 17, 38, 17], SIZE, "clip", stats=stats)
    assert sorted(got) == [3, 17, 38] and stats["frames_decoded"] < 40
    assert all(np.array_equal(got[i], full[i]) for i in got)
    with pytest.raises(ShardFormatError, match="clip.mp4: no frame 40"):
        decode_frames(mp4, [2, 40], SIZE, "clip")


def test_stage1_augment_keeps_shapes_and_range(data):
    ds = stage1_dataset([data.shards / "coarse" / "coarse-000000.tar"], size=SIZE,
                        pairs_per_clip=4, augment=True, seed=3)
    items = list(ds)
    assert len(items) == 8
    for it in items:
        assert it["appearance"].shape == it["motion"].shape == (3, SIZE, SIZE)
        assert it["appearance"].min() >= -1 and it["motion"].max() <= 1


def test_jitter_applies_one_transform_to_both_frames():
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, 4:] = 200
    flips = set()
    for seed in range(8):
        a, m = jitter_pair(img, img.copy(), np.random.default_rng(seed))
        assert np.array_equal(a, m) and a.dtype == np.uint8
        flips.add(bool(a[0, 0, 1] > 100))   # flipped: the bright half is on the left
    assert flips == {True, False}


def test_ddp_ranks_see_every_clip_once_and_disjoint(data):
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            ds = stage1_dataset(data.shards, size=16, pairs_per_clip=1, shuffle_buffer=0,
                                rank=rank, world_size=2, epoch=epoch)
            seen.append([it["key"] for it in ds])
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(data.clips)


def test_dataloader_workers_no_duplicates_and_set_epoch_reaches_them(data):
    loader = stage1_loader(data.shards, batch_size=4, num_workers=2, size=16,
                           pairs_per_clip=2, shuffle_buffer=4)
    assert loader.persistent_workers
    epochs = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        pairs = []
        for b in loader:
            assert b["appearance"].shape[1:] == (3, 16, 16)
            pairs += [(k, int(a), int(m)) for k, a, m in zip(b["key"], *b["frames"])]
        counts = Counter(k for k, _, _ in pairs)
        assert set(counts) == set(data.clips) and set(counts.values()) == {2}
        epochs.append(set(pairs))
    assert epochs[0] != epochs[1]   # new epoch, new random pairs, in persistent workers too


def test_fewer_shards_than_ranks_warns_and_reads_nothing_twice(data):
    with pytest.warns(UserWarning, match="some ranks get no data"):
        ds = stage1_dataset(data.shards, rank=7, world_size=8)
    with pytest.warns(UserWarning, match="no shard this epoch"):
        assert list(ds) == []


# ---------------------------------------------------------------------------------------------
# Stage 2
# ---------------------------------------------------------------------------------------------

def test_stage2_windows_are_aligned(data):
    ds = stage2_dataset(data.shards, data.motion, window=24, stride=8)
    windows = list(ds)
    usable = {k: c for k, c in data.clips.items() if c.usable}
    expect = {k: list(range(0, c.n - 23, 8)) for k, c in usable.items() if c.n >= 24}
    got = {}
    for w in windows:
        got.setdefault(w["key"], []).append(w["start"])
        clip, start = usable[w["key"]], w["start"]
        assert w["motion"].shape == (24, D) and w["speech"].shape == (24, DIM)
        assert w["motion"].dtype == w["speech"].dtype == torch.float32
        frames = torch.arange(start, start + 24, dtype=torch.float32)
        assert torch.equal(w["speech"][:, 0], frames) and torch.equal(w["motion"][:, 0], frames)
        assert torch.all(w["motion"][:, 1] == clip.id)
        assert w["hint_is_first"] == (start == 0)
        assert w["hint"][0] == (start - 1 if start > 0 else 0) and w["hint"][1] == clip.id
        full = motion_of(clip.n, clip.id)
        assert np.allclose(w["motion_mean"], full.mean(0))
        assert np.allclose(w["motion_std"], full.std(0))
    assert {k: sorted(v) for k, v in got.items()} == expect
    assert ds.stats["clips_too_short"] == sum(c.n < 24 for c in usable.values())
    assert ds.stats["clips_not_stage2"] == 1


def test_stage2_epoch_changes_shard_order(data):
    ds = stage2_dataset(data.shards, data.motion, window=8, shuffle_buffer=0)
    order = {}
    for epoch in (0, 1, 0):
        ds.set_epoch(epoch)
        keys = [w["key"] for w in ds]
        order.setdefault(epoch, keys)
        assert keys == order[epoch]          # same epoch, same order
    assert ds.worker_shards(0) != ds.worker_shards(1)
    assert order[0] != order[1] and sorted(order[0]) == sorted(order[1])


def test_stage2_loader_batches(data):
    loader = stage2_loader(data.shards, data.motion, batch_size=3, num_workers=0, window=16)
    b = next(iter(loader))
    assert b["motion"].shape == (3, 16, D) and b["speech"].shape == (3, 16, DIM)
    assert b["hint"].shape == b["motion_mean"].shape == b["motion_std"].shape == (3, D)


# ---------------------------------------------------------------------------------------------
# Bad shards
# ---------------------------------------------------------------------------------------------

def one_shard(tmp_path, samples, name="coarse"):
    tar = tmp_path / "shards" / name / f"{name}-000000.tar"
    write_tar(tar, samples)
    return tar


@pytest.mark.parametrize("member", ["../evil.mp4", "/abs.json", "a/../../x.json"])
def test_escaping_member_names_fail_before_any_sample(tmp_path, member):
    tar = one_shard(tmp_path, [main_sample("good", 0, 20, "coarse")])
    with tarfile.open(tar, "a") as t:
        info = tarfile.TarInfo(member)
        info.size = 2
        t.addfile(info, io.BytesIO(b"{}"))
    assert member in tarfile.open(tar).getnames()
    it = iter(stage1_dataset(tmp_path / "shards", size=16))
    with pytest.raises(ShardFormatError) as e:
        next(it)   # the good sample before it is not yielded either
    assert str(tar) in str(e.value) and repr(member) in str(e.value)
    assert not list(tmp_path.rglob("evil.mp4")) and not list(tmp_path.rglob("abs.json"))


def test_link_members_are_refused(tmp_path):
    tar = tmp_path / "shards" / "lip" / "lip-000000.tar"
    tar.parent.mkdir(parents=True)
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("k.mp4")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(ShardFormatError, match="not a regular file"):
        list(stage1_dataset(tmp_path / "shards"))


def test_wrong_dtype_landmarks_names_shard_and_key(tmp_path):
    tar = one_shard(tmp_path, [main_sample("bad_lm", 0, 20, "coarse", landmarks_dtype=np.float32)])
    with pytest.raises(ShardFormatError, match="landmarks.npy must be float16") as e:
        list(stage1_dataset(tmp_path / "shards", size=16))
    assert str(tar) in str(e.value) and "bad_lm" in str(e.value)


def stage2_root(tmp_path, side_items):
    one_shard(tmp_path, [main_sample("a", 0, 20, "hard"), main_sample("b", 1, 24, "hard")],
              name="hard")
    side = tmp_path / "motion" / "hard" / "hard-000000.tar"
    write_motion_sidecar(side, side_items)
    return side


def test_missing_sidecar_key_is_a_clear_error(tmp_path):
    side = stage2_root(tmp_path, [("b", motion_of(24, 1), "enc")])
    with pytest.raises(ShardFormatError, match="no motion for key 'a'") as e:
        list(stage2_dataset(tmp_path / "shards", tmp_path / "motion", window=8))
    assert str(side) in str(e.value)


def test_extra_sidecar_key_and_missing_sidecar_file(tmp_path):
    stage2_root(tmp_path, [("a", motion_of(20, 0), "enc"), ("b", motion_of(24, 1), "enc"),
                           ("c", motion_of(4, 2), "enc")])
    with pytest.raises(ShardFormatError, match="key 'c' is not in"):
        list(stage2_dataset(tmp_path / "shards", tmp_path / "motion", window=8))
    with pytest.raises(ShardFormatError, match="motion sidecar.*missing"):
        stage2_dataset(tmp_path / "shards", tmp_path / "elsewhere")


def test_wrong_motion_shape_names_key(tmp_path):
    stage2_root(tmp_path, [("a", motion_of(19, 0), "enc"), ("b", motion_of(24, 1), "enc")])
    with pytest.raises(ShardFormatError, match=r"sample a: motion.npy must be float32 \(20, 4\)"):
        list(stage2_dataset(tmp_path / "shards", tmp_path / "motion", window=8))


# ---------------------------------------------------------------------------------------------
# Sidecar writer
# ---------------------------------------------------------------------------------------------

def test_write_motion_sidecar_roundtrip_and_atomic(tmp_path):
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(10, D)).astype(np.float32), rng.normal(size=(7, D)).astype(np.float32)
    path = tmp_path / "motion" / "coarse" / "coarse-000000.tar"
    info = write_motion_sidecar(path, [("k1", m1, "enc-a"), ("k2", m2, "enc-a")])
    assert info == {"path": str(path), "clips": 2, "dim": D, "encoder": "enc-a"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    with TarShard(path) as t:
        assert t.keys() == ["k1", "k2"]
        motion, stats = read_motion(t, "k2", 7)
        assert np.array_equal(motion, m2) and stats["encoder"] == "enc-a"
        assert np.allclose(stats["mean"], m2.mean(0)) and np.allclose(stats["std"], m2.std(0))
    bad = tmp_path / "motion" / "coarse" / "coarse-000001.tar"
    with pytest.raises(ShardFormatError, match="sample k3: motion must be float32"):
        write_motion_sidecar(bad, [("k1", m1, "enc-a"), ("k3", m2.astype(np.float64), "enc-a")])
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # nothing half-written


def test_too_few_shards_warnings_say_1_shard_1_worker():
    with pytest.warns(UserWarning, match=r"^1 shard for 2 ranks: some ranks get no data"):
        ds = stage1_dataset(["/nonexistent/a.tar"], rank=1, world_size=2)
    with pytest.warns(UserWarning, match=r"\(1 shard for 2 ranks x 1 worker\)"):
        assert list(ds) == []
