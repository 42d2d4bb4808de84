"""`ifmdm-data shard`: crop rule, sample members, WebDataset round trip, index, resume, failures.

One run of `run_shard` on the filtered sample set at 128 px (module fixture); the resume and
failure tests re-run it on copies.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ifmdm_data.shard import format as sf
from ifmdm_data.shard.crop import crop_box, crop_frame, landmarks_to_crop
from ifmdm_data.shard.segment import ShardConfig, interp_landmarks
from ifmdm_data.shard.pipeline import run_shard

SIZE = 128
# ~370 KB per 4 s sample at 128 px (landmarks and wav dominate): two samples per shard
CFG = dict(size=SIZE, target_shard_bytes=800_000)
MEMBER_RE = re.compile(r"^([^./]+)\.(mp4|wav|speech\.npy|landmarks\.npy|json)$")


# ----------------------------------------------------------------------------- crop (pure)

def _boxes(centres, h=100.0, w=80.0):
    c = np.asarray(centres, float)
    return np.stack([c[:, 0] - w / 2, c[:, 1] - h / 2, c[:, 0] + w / 2, c[:, 1] + h / 2], 1)


def test_crop_box_static_face_is_nominal_and_shifted_down():
    b = _boxes([[500, 300]] * 20)
    b[3] = np.nan                                           # a frame without a face
    x0, y0, x1, y1 = crop_box(b, 1000, 1000, scale=2.6, down=0.3)
    assert x1 - x0 == y1 - y0 == 260                        # 2.6 face heights, square
    assert abs((x0 + x1) / 2 - 500) <= 1
    assert abs((y0 + y1) / 2 - 330) <= 1                    # centre 0.3 face heights lower
    assert crop_box(b, 1000, 1000, scale=3.0)[2] - crop_box(b, 1000, 1000, scale=3.0)[0] == 300


def test_crop_box_grows_to_hold_the_motion_and_may_leave_the_frame():
    xs = np.linspace(200, 800, 40)                          # the head travels 6 face heights
    b = _boxes(np.stack([xs, np.full(40, 300)], 1))
    x0, y0, x1, y1 = crop_box(b, 640, 480, margin=0.15)
    assert x1 - x0 == y1 - y0 > 2 * 260                     # far above nominal: still used
    assert x0 <= b[:, 0].min() and x1 >= b[:, 2].max()      # every face box inside
    assert x0 < 0 or x1 > 640                               # extends past the frame
    assert crop_box(np.full((5, 4), np.nan), 640, 480) == (80, 0, 560, 480)   # no face


def test_crop_frame_pads_and_landmarks_map_to_crop_pixels():
    rgb = np.full((100, 200, 3), 200, np.uint8)
    out = crop_frame(rgb, (-50, -50, 50, 50), 64, pad="black")
    assert out.shape == (64, 64, 3)
    assert out[:16, :16].max() == 0 and out[40:, 40:].min() == 200
    rep = crop_frame(rgb, (-50, -50, 50, 50), 64, pad="replicate")
    assert rep.min() == 200
    lm = np.array([[[-50.0, -50.0, 0], [0.0, 0.0, 0], [50.0, 25.0, 1], [np.nan, np.nan, np.nan]]])
    got = landmarks_to_crop(lm, (-50, -50, 50, 50), 64)
    assert got.shape == (1, 4, 2)
    np.testing.assert_allclose(got[0, :3], [[0, 0], [32, 32], [64, 48]])
    assert np.isnan(got[0, 3]).all()


def test_interp_landmarks_to_output_frames():
    t = np.array([0.0, 0.08, 0.16, 0.24])
    lm = np.array([0.0, 8.0, np.nan, 24.0], np.float32).reshape(4, 1, 1) * np.ones((1, 2, 3), np.float32)
    got = interp_landmarks(t, lm, np.array([0.0, 0.04, 0.08, 0.17, 0.20, 0.30]))
    np.testing.assert_allclose(got[:3, 0, 0], [0.0, 4.0, 8.0], atol=1e-5)
    assert np.isnan(got[3]).all()                           # nearest analysed frame: no face
    np.testing.assert_allclose(got[4:, 0, 0], [20.0, 24.0], atol=1e-4)


# ----------------------------------------------------------------------------- the stage

@pytest.fixture(scope="module")
def shards(sample_manifests, tmp_path_factory):
    man, _ = sample_manifests
    out = tmp_path_factory.mktemp("shards")
    summary = run_shard(str(man), str(out), cfg=ShardConfig(**CFG), workers=2, progress=False)
    return man, out, summary


def _tars(out: Path) -> list[Path]:
    return sorted(out.glob("*/*.tar"))


def _read_wds(urls: list[str]) -> list[dict]:
    import webdataset as wds

    samples = []
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        d = {"__key__": s["__key__"], "__url__": s["__url__"]}
        for ext, data in s.items():
            if not ext.startswith("__"):
                d[ext] = sf.decode_member(ext, data, s["__key__"])
        samples.append(d)
    return samples


def _frames(mp4: bytes) -> list[np.ndarray]:
    import av

    with av.open(io.BytesIO(mp4)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_run_writes_every_accepted_segment(shards):
    man, out, summary = shards
    clips = pd.read_parquet(man / "clips.parquet")
    acc = clips[clips["accepted"]]
    assert summary["failed"] == 0, summary["failures"]
    assert summary["samples"] == acc["subset"].value_counts().to_dict()
    assert summary["feature_type"] == "logmel" and summary["feature_dim"] == 80
    assert summary["written"]["samples"] == len(acc) and summary["clips_per_s"] > 0
    assert json.loads((out / "summary.json").read_text())["samples_total"] == len(acc)
    assert len(_tars(out)) >= 4                              # several shards per the target size
    for tar in _tars(out):
        assert re.fullmatch(r"(coarse|lip|hard)-\d{6}\.tar", tar.name)
        assert tar.parent.name == tar.name.split("-")[0]
        names = subprocess.run(["tar", "tf", str(tar)], capture_output=True, text=True,
                               check=True).stdout.split()
        assert names and all(MEMBER_RE.match(n) for n in names), names
    assert not list(out.glob("*/.*.tmp"))


def test_webdataset_reads_valid_samples(shards):
    man, out, _ = shards
    clips = pd.read_parquet(man / "clips.parquet").set_index("segment_id")
    samples = _read_wds([str(t) for t in _tars(out)])
    assert len(samples) == int(clips["accepted"].sum())
    for s in samples:
        sf.check_sample(s, s["__url__"])
        meta, key = s["json"], s["__key__"]
        row = clips.loc[key]
        assert set(meta) == set(sf.META_KEYS) and meta["key"] == key and meta["size"] == SIZE
        n = meta["n_frames"]
        assert abs(n - round(row["duration_s"] * meta["fps"])) <= 1
        frames = _frames(s["mp4"])
        assert len(frames) == n and frames[0].shape == (SIZE, SIZE, 3)
        assert meta["subset"] == row["subset"] and meta["source"] == row["path"]
        x0, y0, x1, y1 = meta["crop_box"]
        assert x1 - x0 == y1 - y0 > row["face_px"] * 2
        assert meta["has_audio"] == bool(row["has_audio"]) == ("wav" in s) == ("speech.npy" in s)
        if meta["has_audio"]:
            with wave.open(io.BytesIO(s["wav"])) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
                assert w.getnframes() == round(n / meta["fps"] * 16000)
            sp = s["speech.npy"]
            assert sp.dtype == np.float16 and sp.shape == (n, 80) and np.isfinite(sp).all()
        else:
            assert "no_audio" in meta["stage2_reasons"] and not meta["stage2_ok"]
        lm = s["landmarks.npy"].astype(np.float32)
        assert lm.shape == (n, 478, 2)
        face = np.isfinite(lm).all(axis=(1, 2))
        assert face.mean() > 0.9                             # the sample faces are always found
        assert lm[face].min() >= 0 and lm[face].max() <= SIZE   # inside the crop
        assert set(meta["motion_stats"]) == {"head_speed_mean", "head_speed_std",
                                             "mouth_open_mean", "mouth_open_std"}


def test_index_matches_tars(shards):
    _, out, _ = shards
    schema = pq.read_schema(out / "index.parquet")
    assert schema.remove_metadata().equals(sf.INDEX_SCHEMA.remove_metadata())
    idx = pd.read_parquet(out / "index.parquet").set_index("key")
    seen = {}
    for tar in _tars(out):
        with tarfile.open(tar) as t:
            for m in t:
                key, _, ext = m.name.partition(".")
                r = seen.setdefault(key, {"shard": tar.relative_to(out).as_posix(), "bytes": 0})
                r["bytes"] += m.size
                if ext == "json":
                    r["meta"] = json.loads(t.extractfile(m).read())
    assert set(idx.index) == set(seen)
    for key, r in seen.items():
        row = idx.loc[key]
        assert row["shard"] == r["shard"] and row["bytes"] == r["bytes"]
        assert row["n_frames"] == r["meta"]["n_frames"] and row["subset"] == r["meta"]["subset"]
        assert row["has_audio"] == r["meta"]["has_audio"] and row["stage2_ok"] == r["meta"]["stage2_ok"]
        assert row["feature_type"] == "logmel" and row["feature_dim"] == 80


def test_speech_features_are_aligned_to_frames(shards):
    from ifmdm_data.media.loudness import envelope

    man, out, _ = shards
    clips = pd.read_parquet(man / "clips.parquet")
    key = clips[clips["path"].str.endswith("lip_talk.mp4")]["segment_id"].iloc[0]
    s = [x for x in _read_wds([str(t) for t in _tars(out)]) if x["__key__"] == key][0]
    with wave.open(io.BytesIO(s["wav"])) as w:
        wav = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    energy = s["speech.npy"].astype(np.float32).mean(axis=1)       # frame-wise log-mel level
    n = len(energy)
    env = envelope(wav, 16000, np.arange(n) / s["json"]["fps"])    # log RMS around f / fps

    def r(lag):
        a, b = energy[max(0, lag):n + min(0, lag)], env[max(0, -lag):n - max(0, lag)]
        return np.corrcoef(a, b)[0, 1]

    corr = {lag: r(lag) for lag in range(-3, 4)}
    assert corr[0] > 0.8, corr
    assert max(corr, key=corr.get) == 0, corr                      # not shifted by a frame


def _snapshot(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, hashlib.md5(p.read_bytes()).hexdigest())
            for p in _tars(out)}


def test_rerun_skips_finished_shards_and_redoes_leftovers(shards):
    man, out, first = shards
    before = _snapshot(out)
    again = run_shard(str(man), str(out), cfg=ShardConfig(**CFG), workers=2, progress=False)
    assert _snapshot(out) == before                        # nothing rewritten
    assert again["written"]["shards"] == 0 and again["shards_skipped"] == len(before)
    assert again["samples"] == first["samples"]

    # a killed run: one shard never got its final name, its temporary is left behind
    victim = _tars(out)[-1]
    rel = victim.relative_to(out).as_posix()
    victim.unlink()
    tmp = victim.parent / f".{victim.name}.tmp"
    tmp.write_bytes(b"half a tar")
    third = run_shard(str(man), str(out), cfg=ShardConfig(**CFG), workers=2, progress=False)
    assert not tmp.exists() and victim.exists()
    after = _snapshot(out)
    assert third["written"]["shards"] == 1
    assert after[rel][1] == before[rel][1]                 # same plan, same bytes
    assert {k: v for k, v in after.items() if k != rel} == {k: v for k, v in before.items() if k != rel}
    assert pd.read_parquet(out / "index.parquet").shape[0] == sum(first["samples"].values())


def _drop_tracks(folder, seg):
    """Rewrite the unit tracks file holding `seg` without it (the unit's other segments stay)."""
    import pyarrow.parquet as pq
    from ifmdm_data.schema import unit_tracks_index, write_unit_tracks

    for p in sorted((folder / "tracks").glob("*.parquet")):
        with pq.ParquetFile(p) as f:
            idx = unit_tracks_index(f)
            keep = {s: f.read_row_group(rg).replace_schema_metadata(meta) for s, (rg, meta) in idx.items()
                    if s != seg}
        if seg in idx:
            write_unit_tracks(keep, p)
            return
    raise AssertionError(f"no tracks of {seg}")


def test_missing_source_and_tracks_are_listed_not_fatal(sample_manifests, tmp_path):
    from ifmdm_data.schema import clips_table, write_parquet_atomic

    man, _ = sample_manifests
    man2 = tmp_path / "manifests"
    shutil.copytree(man / "tracks", man2 / "tracks")
    clips = pd.read_parquet(man / "clips.parquet")
    lip = clips[clips["path"].str.endswith("lip_talk.mp4")].index[0]
    gone = tmp_path / "lip_talk.mp4"
    shutil.copy(clips.loc[lip, "path"], gone)
    clips.loc[lip, "path"] = str(gone)
    gone.unlink()                                          # the source was deleted
    coarse = clips[clips["path"].str.endswith("coarse_head.mp4")]["segment_id"].iloc[0]
    _drop_tracks(man2, coarse)                             # and a segment's tracks are missing
    write_parquet_atomic(clips_table(clips.to_dict("records")), man2 / "clips.parquet")

    out = tmp_path / "shards"
    summary = run_shard(str(man2), str(out), subsets=("lip", "coarse"), cfg=ShardConfig(**CFG),
                        workers=2, progress=False)
    reasons = {f["key"]: f["reason"] for f in summary["failures"]}
    assert reasons == {clips.loc[lip, "segment_id"]: "unreadable", coarse: "missing_tracks"}
    want = clips[clips["subset"].isin(["lip", "coarse"]) & clips["accepted"]]
    idx = pd.read_parquet(out / "index.parquet")
    assert len(idx) == len(want) - 2 > 0
    assert not (set(idx["key"]) & set(reasons))
    assert len(_read_wds([str(t) for t in _tars(out)])) == len(idx)
    assert json.loads((out / "summary.json").read_text())["failed"] == 2


def test_make_sample_with_a_local_wav2vec2(sample_manifests, tmp_path):
    """The --wav2vec2 path: speech.npy has the checkpoint's width, json says which features."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from ifmdm_data.features.speech import build_features
    from ifmdm_data.schema import read_segment_tracks
    from ifmdm_data.shard.segment import make_sample

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(cfg).save_pretrained(tmp_path / "w2v")
    man, _ = sample_manifests
    clips = pd.read_parquet(man / "clips.parquet")
    row = clips[clips["path"].str.endswith("lip_talk.mp4")].iloc[0].to_dict()
    tracks, _ = read_segment_tracks(man, row["segment_id"])
    feats = build_features(str(tmp_path / "w2v"), layers=(-1,), device="cpu")
    members = make_sample(row, tracks, ShardConfig(size=64), feats)
    assert list(members) == list(sf.MAIN_MEMBERS)
    meta = json.loads(members["json"])
    sample = {"__key__": row["segment_id"], "json": meta, "mp4": members["mp4"],
              **{m: sf.load_npy(members[m], m) for m in ("speech.npy", "landmarks.npy")}}
    sf.check_sample(sample, "in memory")
    assert meta["speech_feature"]["type"] == "wav2vec2" and meta["speech_feature"]["dim"] == 32
    assert sample["speech.npy"].shape == (meta["n_frames"], 32)


def test_other_settings_on_the_same_output_are_refused(shards):
    from ifmdm_data.errors import InputError

    man, out, _ = shards
    with pytest.raises(InputError, match="size: 128 -> 256"):
        run_shard(str(man), str(out), cfg=ShardConfig(size=256, target_shard_bytes=800_000),
                  progress=False)
    with pytest.raises(InputError, match="unknown subset"):
        run_shard(str(man), str(out), subsets="coarse,static", cfg=ShardConfig(**CFG))


@pytest.mark.parametrize("offset", [-3.0, 2.0, float("nan")])
def test_fix_av_offset_shifts_the_audio_window(sample_manifests, offset):
    """--fix-av-offset: the wav starts at start_s - sync_offset_frames / 25 (an audio lag,
    negative offset, takes later audio; before the file start: zeros); no offset, no shift;
    without the option the offset is ignored."""
    from ifmdm_data.media.audio import load_audio
    from ifmdm_data.features.speech import build_features
    from ifmdm_data.schema import read_segment_tracks
    from ifmdm_data.shard.segment import AUDIO_RATE, make_sample

    man, _ = sample_manifests
    clips = pd.read_parquet(man / "clips.parquet")
    row = clips[clips["path"].str.endswith("lip_talk.mp4")].iloc[0].to_dict()
    row["sync_offset_frames"] = offset
    tracks, _ = read_segment_tracks(man, row["segment_id"])
    feats = build_features(None)

    def wav_of(members):
        with wave.open(io.BytesIO(members["wav"])) as w:
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767

    plain = make_sample(row, tracks, ShardConfig(size=64), feats)
    fixed = make_sample(row, tracks, ShardConfig(size=64, fix_av_offset=True), feats)
    meta = json.loads(fixed["json"])
    assert json.loads(plain["json"])["audio_shift_s"] == 0.0
    n = meta["n_frames"]
    start = float(row["start_s"])
    shift = 0.0 if np.isnan(offset) else -offset / 25.0
    assert meta["audio_shift_s"] == pytest.approx(shift)
    got = wav_of(fixed)
    assert len(got) == len(wav_of(plain)) == round(n / 25 * AUDIO_RATE)
    if shift >= 0:
        want = load_audio(row["path"], start + shift, start + shift + n / 25, AUDIO_RATE)
    else:                                   # the segment starts at 0: zeros before the file
        assert start == 0.0
        lead = round(-shift * AUDIO_RATE)
        want = np.concatenate([np.zeros(lead, np.float32),
                               load_audio(row["path"], 0.0, n / 25 + shift, AUDIO_RATE)])
        assert not got[:lead].any()
    np.testing.assert_allclose(got, want, atol=2 / 32767)
    if shift:
        assert np.abs(got - wav_of(plain)).max() > 0.01


def test_fix_av_offset_without_syncnet_offsets_warns(sample_manifests, tmp_path, caplog):
    """--fix-av-offset on manifests filtered without --syncnet: says so, shifts nothing."""
    import logging

    man, _ = sample_manifests
    with caplog.at_level(logging.WARNING, logger="ifmdm_data"):
        summary = run_shard(str(man), str(tmp_path / "s"), subsets=("lip",),
                            cfg=ShardConfig(**{**CFG, "fix_av_offset": True}), workers=1, progress=False)
    assert list((tmp_path / "s" / "lip").glob("*.tar")) and summary["config"]["fix_av_offset"]
    assert any("no segment" in r.getMessage() and "--syncnet" in r.getMessage() for r in caplog.records)
