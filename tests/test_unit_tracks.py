"""Issue 12 item 4: the tracks of a batch of work units in one file (one row group per segment),
read per segment by `schema.read_segment_tracks`; older runs' per-unit and per-segment files
still read; resume stays correct."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ifmdm_data.filter import analyse
from ifmdm_data.filter.config import FilterConfig
from ifmdm_data.schema import (read_segment_tracks, tracks_table, unit_tracks_index, write_parquet_atomic,
                               write_unit_tracks)
from ifmdm_data.filter.work import CollectingStore, PartStore, run_unit


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


def _collect(unit):
    col = CollectingStore()
    rows = run_unit(unit, FilterConfig(), None, None, col)
    return rows, col.payload()


def test_one_tracks_file_per_batch_one_row_group_per_segment(tmp_path, fake_analyse, monkeypatch):
    store = PartStore(tmp_path)
    rows_c, pc = _collect(_unit("c"))
    rows_d, pd_ = _collect(_unit("d"))
    assert store.commit_payloads([pc, pd_]) == ["c_w0001", "d_w0001"]
    (tracks,) = [p.name for p in store.tracks.iterdir()]                      # not one per unit
    assert tracks.startswith("batch-") and [p.name for p in store.parts.iterdir()] == [tracks]
    segs = [r["segment_id"] for r in rows_c + rows_d]
    with pq.ParquetFile(store.tracks / tracks) as f:
        assert f.num_row_groups == 6
        idx = unit_tracks_index(f)
        assert list(idx) == segs and [idx[s][0] for s in segs] == list(range(6))
        assert [f.metadata.row_group(i).num_rows for i in range(6)] == SIZES * 2
    # a segment's read reads its row group only
    read = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, *a, **k: read.append(i) or real(self, i, *a, **k))
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read the whole file"))
    for k, seg in enumerate(segs):
        got, meta = read_segment_tracks(tmp_path, seg)
        assert got.equals(_want(1 + k // 3, k % 3)), seg        # what the unit computed, this segment only
        assert meta["segment_id"] == seg and meta["width"] == "640"
    assert read == list(range(6))
    with pytest.raises(FileNotFoundError):
        read_segment_tracks(tmp_path, "c_000099000")


def test_old_layouts_and_look_alike_clip_ids_still_read(tmp_path, fake_analyse):
    """A run resumed from older versions: some segments have their own tracks/<segment>.parquet,
    others are in per-unit files tracks/<unit_id>.parquet, the new ones in batch files; a clip id
    that is another's unit-file prefix is not confused."""
    store = PartStore(tmp_path)
    write_parquet_atomic(tracks_table(_tracks(3, 99), {"segment_id": "old_000000000"}),
                         store.tracks / "old_000000000.parquet")
    rows_a, pa_ = _collect(_unit("a"))
    got = {}                                    # a per-unit file of a's unit: tracks/a_w0001.parquet
    for k, r in enumerate(rows_a):
        got[r["segment_id"]] = tracks_table(_tracks(SIZES[k], 10 + k), {"segment_id": r["segment_id"]})
    write_unit_tracks(got, store.tracks / "a_w0001.parquet")
    rows_b = run_unit(_unit("a_w0001"), FilterConfig(), None, None, store)    # a batch file
    assert len(list(store.tracks.glob("batch-*.parquet"))) == 1
    got, meta = read_segment_tracks(str(tmp_path), "old_000000000")
    assert got.equals(tracks_table(_tracks(3, 99), {}).to_pandas()) and meta["segment_id"] == "old_000000000"
    assert read_segment_tracks(tmp_path, rows_a[2]["segment_id"])[0].equals(_want(1, 2))
    assert read_segment_tracks(tmp_path, rows_b[2]["segment_id"])[0].equals(_want(2, 2))


def test_a_unit_killed_between_its_tracks_and_its_part_is_redone(tmp_path, fake_analyse, monkeypatch):
    from ifmdm_data.filter import work

    store = PartStore(tmp_path)

    class Killed(Exception):
        pass

    def killed(table, path):
        raise Killed(path)
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(work, "write_parquet_atomic", killed)                   # the part, after the tracks
        run_unit(_unit(), FilterConfig(), None, None, store)
    (orphan,) = list(store.tracks.iterdir())
    assert store.done() == set() and list(store.parts.iterdir()) == []   # not done
    assert read_segment_tracks(tmp_path, "c_000020000")[0].equals(_want(1, 0))   # (read before the re-run)
    store = PartStore(tmp_path)                                # the re-run redoes the unit
    rows = run_unit(_unit(), FilterConfig(), None, None, store)
    assert store.done() == {"c_w0001"}
    (part,) = [p.name for p in store.parts.iterdir()]
    assert sorted(p.name for p in store.tracks.iterdir()) == sorted([orphan.name, part]) and orphan.name < part
    for k, r in enumerate(rows):                               # the redone unit's tracks, not the first try's
        assert read_segment_tracks(tmp_path, r["segment_id"])[0].equals(_want(2, k))


def test_the_filter_run_writes_one_tracks_file_per_batch(sample_manifests):
    import pandas as pd

    out, _ = sample_manifests
    parts = {p.name for p in (out / "_work" / "parts").glob("*.parquet")}
    tracks = {p.name for p in (out / "tracks").glob("*.parquet")}
    assert tracks and tracks <= parts and all(n.startswith("batch-") for n in parts)   # a batch: one name
    df = pd.read_parquet(out / "clips.parquet")
    # 10 units: one batch of the 64, or a few when the driver closed one after BATCH_SECONDS
    assert len(parts) < df["clip_id"].nunique()
    analysed = df[df["n_analysed"].fillna(0) > 0]
    for r in analysed.itertuples():
        t, meta = read_segment_tracks(out, r.segment_id)
        assert len(t) == r.n_analysed and meta["segment_id"] == r.segment_id
