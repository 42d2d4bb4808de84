"""Issue 12 item 4: one tracks file per work unit (one row group per segment), read per segment
by `schema.read_segment_tracks`; older runs' per-segment files still read; resume stays correct."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ifmdm_data.filter import analyse
from ifmdm_data.filter.config import FilterConfig
from ifmdm_data.schema import read_segment_tracks, tracks_table, unit_tracks_index, write_parquet_atomic
from ifmdm_data.filter.work import PartStore, run_unit


def _tracks(n, seed):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.random((n, *s)).astype(np.float32)  # noqa: E731
    return dict(t=np.arange(n, dtype=np.float64) / 6.25 + seed, n_faces=np.ones(n, np.int32), box=f(4),
                landmarks=f(5, 3), pose=f(6), mouth_open=f(), eye_open=f(), lip_energy=f(),
                head_speed=f(), camera_motion=f(), sharpness=f())


SEGS = [dict(start_s=20.0, end_s=27.5, duration_s=7.5), dict(start_s=27.5, end_s=30.0, duration_s=2.5),
        dict(start_s=30.0, end_s=40.0, duration_s=10.0)]
SIZES = [4, 1, 7]


def _unit(cid="c", window=1):
    probe = dict(width=640, height=480, fps=25.0, rotation=0, duration_s=60.0)
    return dict(unit_id=f"{cid}_w{window:04d}", clip_id=cid, path=f"/v/{cid}.mp4", start_s=20.0, end_s=40.0,
                probe=probe)


@pytest.fixture
def fake_analyse(monkeypatch):
    seed = [0]

    def fake(unit, *a):
        seed[0] += 1
        return [dict(row=dict(r), tracks=_tracks(n, seed[0] * 10 + k)) for k, (r, n) in enumerate(zip(SEGS, SIZES))]
    monkeypatch.setattr(analyse, "analyse_unit", fake)
    return seed


def _want(seed, k):
    return tracks_table(_tracks(SIZES[k], seed * 10 + k), {}).to_pandas()


def test_one_tracks_file_per_unit_one_row_group_per_segment(tmp_path, fake_analyse):
    store = PartStore(tmp_path)
    rows = run_unit(_unit(), FilterConfig(), None, None, store)
    segs = [r["segment_id"] for r in rows]
    assert [p.name for p in store.tracks.iterdir()] == ["c_w0001.parquet"]      # not one per segment
    with pq.ParquetFile(store.tracks / "c_w0001.parquet") as f:
        assert f.num_row_groups == 3
        idx = unit_tracks_index(f)
        assert list(idx) == segs and [idx[s][0] for s in segs] == [0, 1, 2]
        assert [f.metadata.row_group(i).num_rows for i in range(3)] == SIZES
    for k, seg in enumerate(segs):
        got, meta = read_segment_tracks(tmp_path, seg)
        assert got.equals(_want(1, k)), seg                   # what the unit computed, this segment only
        assert meta["segment_id"] == seg and meta["width"] == "640"
    with pytest.raises(FileNotFoundError):
        read_segment_tracks(tmp_path, "c_000099000")


def test_old_layout_and_look_alike_clip_ids_still_read(tmp_path, fake_analyse):
    """A run resumed from an older version: some segments have their own tracks/<segment>.parquet,
    others are in unit files; a clip id that is another's unit-file prefix is not confused."""
    store = PartStore(tmp_path)
    write_parquet_atomic(tracks_table(_tracks(3, 99), {"segment_id": "old_000000000"}),
                         store.tracks / "old_000000000.parquet")
    rows_a = run_unit(_unit("a"), FilterConfig(), None, None, store)          # tracks/a_w0001.parquet
    rows_b = run_unit(_unit("a_w0001"), FilterConfig(), None, None, store)    # tracks/a_w0001_w0001.parquet
    got, meta = read_segment_tracks(str(tmp_path), "old_000000000")
    assert got.equals(tracks_table(_tracks(3, 99), {}).to_pandas()) and meta["segment_id"] == "old_000000000"
    assert read_segment_tracks(tmp_path, rows_a[2]["segment_id"])[0].equals(_want(1, 2))
    assert read_segment_tracks(tmp_path, rows_b[2]["segment_id"])[0].equals(_want(2, 2))


def test_a_unit_killed_between_its_tracks_and_its_part_is_redone(tmp_path, fake_analyse, monkeypatch):
    store = PartStore(tmp_path)

    class Killed(Exception):
        pass

    def killed(uid, rows):
        raise Killed(uid)
    monkeypatch.setattr(store, "write", killed)
    with pytest.raises(Killed):
        run_unit(_unit(), FilterConfig(), None, None, store)
    assert (store.tracks / "c_w0001.parquet").is_file() and store.done() == set()   # not done
    store = PartStore(tmp_path)                                # the re-run redoes the unit
    rows = run_unit(_unit(), FilterConfig(), None, None, store)
    assert store.done() == {"c_w0001"}
    assert [p.name for p in store.tracks.iterdir()] == ["c_w0001.parquet"]
    for k, r in enumerate(rows):                               # the redone unit's tracks, not the first try's
        assert read_segment_tracks(tmp_path, r["segment_id"])[0].equals(_want(2, k))


def test_the_filter_run_writes_one_tracks_file_per_unit(sample_manifests):
    import pandas as pd

    out, _ = sample_manifests
    parts = {p.name for p in (out / "_work" / "parts").glob("*.parquet")}
    tracks = {p.name for p in (out / "tracks").glob("*.parquet")}
    assert tracks and tracks <= parts                          # named by unit, at most one per unit
    df = pd.read_parquet(out / "clips.parquet")
    analysed = df[df["n_analysed"].fillna(0) > 0]
    assert len(tracks) <= len(analysed)
    for r in analysed.itertuples():
        t, meta = read_segment_tracks(out, r.segment_id)
        assert len(t) == r.n_analysed and meta["segment_id"] == r.segment_id
