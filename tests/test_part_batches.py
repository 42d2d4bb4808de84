"""Issue 12 item 4, fewer small files: `filter`'s results land in batches (one part file and one
tracks file per batch of up to `work.BATCH_UNITS` units). A unit is done iff it is in a
committed part (read from the parts' footers); a unit in several parts is read once (the last
part wins); old runs' one-part-per-unit layout is still read. Fast (no media, no Ray)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ifmdm_data.filter import work
from ifmdm_data.filter.work import (CollectingStore, PartStore, batch_part_table, failure_row, part_table,
                                    unit_tables)
from ifmdm_data.schema import read_segment_tracks, tracks_table, write_parquet_atomic


def _tracks(n, seed):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.random((n, *s)).astype(np.float32)  # noqa: E731
    return dict(t=np.arange(n, dtype=np.float64), n_faces=np.ones(n, np.int32), box=f(4), landmarks=f(5, 3),
                pose=f(6), mouth_open=f(), eye_open=f(), lip_energy=f(), head_speed=f(), camera_motion=f(),
                sharpness=f())


def _unit(cid: str, n_segs: int = 2, seed: int = 0, value: float = 1.0) -> dict:
    """One unit's result as a worker's CollectingStore gives it: rows and tracks."""
    col = CollectingStore()
    rows, tables = [], {}
    for k in range(n_segs):
        seg = f"{cid}_{k * 1000:09d}"
        rows.append(dict(segment_id=seg, clip_id=cid, path=f"/v/{cid}.mp4", start_s=float(k), end_s=k + 1.0,
                         reasons=[], error="", value=value))
        tables[seg] = tracks_table(_tracks(3 + k, seed * 100 + k), {"segment_id": seg})
    col.write_tracks(f"{cid}_w0000", tables)
    col.write(f"{cid}_w0000", rows)
    return col.unit()


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_done_is_read_from_the_part_footers_once(tmp_path, monkeypatch):
    """done(): the unit ids of each batch part from its footer only (never its rows), each part
    read once per store; parts of the one-part-per-unit layout by name."""
    store = PartStore(tmp_path)
    store.commit_units([_unit("a"), _unit("b")])
    write_parquet_atomic(part_table([failure_row("old", "/v/old.mp4", "decode_error", "x")]),
                         store.parts / "old_w0000.parquet")                  # a run of before the batches
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("read a whole part"))
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read a whole part"))
    fresh = PartStore(tmp_path)
    footers = []
    real = work.PartStore._footer_units
    monkeypatch.setattr(work.PartStore, "_footer_units", lambda self, n: footers.append(n) or real(self, n))
    assert fresh.done() == {"a_w0000", "b_w0000", "old_w0000"}
    assert fresh.done() == {"a_w0000", "b_w0000", "old_w0000"} and len(footers) == 1   # cached
    monkeypatch.undo()
    fresh.commit_units([_unit("c")])
    assert fresh.done() == {"a_w0000", "b_w0000", "c_w0000", "old_w0000"}
    assert sorted(PartStore(tmp_path).read_all()["clip_id"].unique()) == ["a", "b", "c", "old"]


def test_batches_are_capped_and_name_tracks_and_part_alike(tmp_path, monkeypatch):
    """commit_payloads / write_many write at most BATCH_UNITS units a batch; a batch's tracks
    file and part have one name, batch names sort in the order they were written."""
    monkeypatch.setattr(work, "BATCH_UNITS", 3)
    store = PartStore(tmp_path)
    payloads = [CollectingStore().payload()]              # an empty payload: nothing
    for k in range(7):
        col = CollectingStore()
        u = _unit(f"u{k}")
        col.write_tracks(u["uid"], u["tracks"])
        col.uid, col.part = u["uid"], u["part"]
        payloads.append(col.payload())
    assert store.commit_payloads(payloads) == [f"u{k}_w0000" for k in range(7)]
    parts = _files(store.parts)
    assert len(parts) == 3 and _files(store.tracks) == parts
    assert [len(pq.read_table(store.parts / n)) for n in parts] == [6, 6, 2]   # written in that order
    store.write_many([(f"f{k}_w0000", [failure_row(f"f{k}", f"/v/f{k}.mp4", "decode_error", "x")])
                      for k in range(4)])
    assert len(_files(store.parts)) == 5 and len(_files(store.tracks)) == 3   # failures: no tracks
    assert len(store.done()) == 11 and len(store.read_all()) == 18


def test_a_redone_unit_in_a_newer_overlapping_batch_is_read_once(tmp_path):
    """A batch that partly overlaps an older one (units redone after a crash, or by a second
    writer): each unit's rows and tracks come from the newest batch holding it; nothing is
    duplicated; a unit given twice in one batch is written once (its last result)."""
    store = PartStore(tmp_path)
    store.commit_units([_unit("a", seed=1, value=1.0), _unit("b", seed=1, value=1.0), _unit("c", seed=1, value=1.0)])
    store.commit_units([_unit("b", seed=2, value=2.0), _unit("d", seed=2, value=2.0),
                        _unit("d", n_segs=1, seed=3, value=3.0)])
    df = store.read_all()
    assert df["segment_id"].is_unique and len(df) == 2 + 2 + 2 + 1
    got = dict(zip(df["segment_id"], df["value"]))
    assert got == {"a_000000000": 1.0, "a_000001000": 1.0, "b_000000000": 2.0, "b_000001000": 2.0,
                   "c_000000000": 1.0, "c_000001000": 1.0, "d_000000000": 3.0}
    assert list(df["clip_id"]) == ["a", "a", "b", "b", "c", "c", "d"]          # unit order, as before
    want = lambda seed, k: tracks_table(_tracks(3 + k, seed * 100 + k), {}).to_pandas()  # noqa: E731
    assert read_segment_tracks(tmp_path, "a_000001000")[0].equals(want(1, 1))
    assert read_segment_tracks(tmp_path, "b_000001000")[0].equals(want(2, 1))     # the newer batch's
    assert read_segment_tracks(tmp_path, "d_000000000")[0].equals(want(3, 0))
    assert store.done() == {"a_w0000", "b_w0000", "c_w0000", "d_w0000"}
    # the newer batch has the bigger name, also when written by another store (process)
    PartStore(tmp_path).commit_units([_unit("a", seed=4, value=4.0)])
    assert PartStore(tmp_path).read_all().set_index("segment_id")["value"]["a_000000000"] == 4.0
    assert read_segment_tracks(tmp_path, "a_000000000")[0].equals(want(4, 0))


def test_a_batch_part_gives_each_unit_its_table_back_exactly():
    """Units whose part tables disagree on column types (int64 and double, a big int64 that a
    double would round, all-null columns, list<null>, a missing column, no rows at all) come
    back from one batch part with their own schemas, byte for byte."""
    big = 2**62 + 1
    tables = [
        ("a", part_table([dict(segment_id="a_0", n=big, x=None, l=[], s="x")])),
        ("b", part_table([dict(segment_id="b_0", n=1.5, x=2.0, l=[1.0], s=None),
                          dict(segment_id="b_1", n=None, x=None, l=None, s="y")])),
        ("c", part_table([dict(segment_id="c_0", reasons=["decode_error"], error="boom")])),
        ("e", part_table([])),
        ("f", part_table([dict(segment_id="f_0", n=3, x="text", l=["s"], s="z")])),
    ]
    table = batch_part_table(tables)
    back = unit_tables(pa.Table.from_batches(table.to_batches(), table.schema))
    assert [u for u, _ in back] == [u for u, _ in tables]
    for (_, want), (_, got) in zip(tables, back):
        assert got.schema.serialize().to_pybytes() == want.schema.serialize().to_pybytes()
        assert got.equals(want)
    assert back[0][1].column("n").to_pylist() == [big]


def test_a_batch_part_round_trips_through_parquet(tmp_path):
    """read_all of a batch written to disk equals the one-part-per-unit reading (pd.concat of
    each unit part read back from its own file)."""
    rows = {"a_w0000": [dict(segment_id="a_0", clip_id="a", n=1, ok=True, l=[1.0])],
            "b_w0000": [failure_row("b", "/v/b.mp4", "decode_error", "x")],
            "c_w0000": [dict(segment_id="c_0", clip_id="c", n=None, ok=None, l=[]),
                        dict(segment_id="c_1", clip_id="c", n=2.5, ok=False, l=None)]}
    store = PartStore(tmp_path / "new")
    store.write_many(list(rows.items()))
    for uid, r in rows.items():
        write_parquet_atomic(part_table(r), tmp_path / "old" / f"{uid}.parquet")
    want = pd.concat([pq.read_table(tmp_path / "old" / f"{u}.parquet").to_pandas() for u in sorted(rows)],
                     ignore_index=True)
    pd.testing.assert_frame_equal(store.read_all(), want, check_exact=True)


def test_an_actor_on_object_storage_writes_one_batch_per_call(tmp_path, monkeypatch):
    """With an object-storage OUT the actor writes its call's units itself, as batches of at
    most BATCH_UNITS (here a local PartStore stands for the bucket); a store failure marks the
    batch's units as storage errors (the driver stops the run), never worker crashes."""
    from ifmdm_data.filter import pipeline
    from ifmdm_data.filter.config import FilterConfig
    from ifmdm_data.io import storage
    import json

    def fake_run_unit(unit, cfg, models, speech, store, *a):
        u = _unit(unit["clip_id"])
        store.write_tracks(u["uid"], u["tracks"])
        store.write(u["uid"], [dict(r) for r in u["part"].to_pylist()])
        return u["part"].to_pylist()
    monkeypatch.setattr(pipeline, "run_unit", fake_run_unit)
    monkeypatch.setattr(work, "BATCH_UNITS", 2)
    actor = pipeline.AnalyseActor.__new__(pipeline.AnalyseActor)
    actor.cfg, actor.models, actor.speech, actor.backend, actor.syncnet, actor.identify = FilterConfig(), None, None, "", None, None
    actor.store = PartStore(tmp_path)
    batch = {"unit_json": [json.dumps({"unit_id": f"u{k}_w0000", "clip_id": f"u{k}"}) for k in range(5)]}
    out = actor(batch)
    assert out["payload"] == [b""] * 5 and out["storage_error"] == [""] * 5
    assert len(_files(actor.store.parts)) == 3 and _files(actor.store.tracks) == _files(actor.store.parts)
    assert actor.store.done() == {f"u{k}_w0000" for k in range(5)}

    def refuse(units):
        raise storage.StorageError("bucket gone")
    monkeypatch.setattr(actor.store, "commit_units", refuse)
    out = actor({"unit_json": batch["unit_json"][:3]})
    assert out["storage_error"] == ["bucket gone"] * 3
    monkeypatch.setattr(work, "BATCH_UNITS", 64)
    assert pipeline._units_per_call("s3://b/o", 10_000, 8, in_flight=2) == 64
    assert pipeline._units_per_call("s3://b/o", 10_000, 8, in_flight=1) == 1      # the retry round
    assert pipeline._units_per_call("s3://b/o", 20, 8, in_flight=2) == 1
    assert pipeline._units_per_call(str(tmp_path), 10_000, 8, in_flight=2) == 1   # the driver batches


def test_batches_on_object_storage(tmp_path):
    """The same batches on an S3 API (moto's server on 127.0.0.1): written by atomic uploads,
    done() from the parts' footers (ranged reads), read_all, one segment's tracks, the
    one-part-per-unit layout beside it."""
    from conftest import moto_s3

    from ifmdm_data.io import storage

    with moto_s3("batches"):
        out = "s3://batches/run/out"
        store = PartStore(out)
        store.commit_units([_unit("a", seed=1), _unit("b", seed=1)])
        store.commit_units([_unit("b", seed=2, value=2.0), _unit("c", seed=2)])
        write_parquet_atomic(part_table([failure_row("old", "/v/old.mp4", "decode_error", "x")]),
                             f"{out}/_work/parts/old_w0000.parquet")
        assert len(storage.list_names(f"{out}/_work/parts", ".parquet")) == 3
        assert len(storage.list_names(f"{out}/tracks", ".parquet")) == 2
        fresh = PartStore(out)
        assert fresh.done() == {"a_w0000", "b_w0000", "c_w0000", "old_w0000"}
        df = fresh.read_all()
        assert df["segment_id"].is_unique and len(df) == 7
        assert df.set_index("segment_id")["value"]["b_000001000"] == 2.0
        want = tracks_table(_tracks(4, 201), {}).to_pandas()
        assert read_segment_tracks(out, "b_000001000")[0].equals(want)
        assert not list(tmp_path.iterdir())                   # nothing written locally
