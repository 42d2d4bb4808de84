"""Work units and their results on disk (the resumable part of `filter`).

A work unit is one input file, or one window of a file longer than `segment.max_duration_s`.
Its result is its rows (one per segment, after scene-cut splitting) and its segments' tracks.
Results land in BATCHES of up to `BATCH_UNITS` units (and at least every `BATCH_SECONDS`): one
Parquet "part" `OUT/_work/parts/batch-<time_ns>-<random>.parquet` holding the batch's rows (the
unit ids and row counts in its metadata, key PART_UNITS_KEY), written atomically after the
batch's tracks file `OUT/tracks/<same name>.parquet` (one row group per segment:
`schema.write_unit_tracks`, read by `schema.read_segment_tracks`). A unit is done iff it is in a
part (`PartStore.done` reads each part's footer once); re-running `filter` on the same output
skips it; a batch killed between its tracks file and its part is redone, in a new batch whose
files sort after the old ones (a unit in several parts: the last part in name order wins, in
`read_all` and for the tracks). Runs made before the batches have one part per unit,
`_work/parts/<unit_id>.parquet`; they are read as batches of one (older than any batch).
Per-clip failures become rows.

OUT is a local folder or an object-storage URL (`ifmdm_data/io/storage.py`). Where the results are written:
with object storage every worker writes the batch of units of one actor call there itself
(`PartStore.commit_units`); with a local OUT a worker keeps each unit's results in memory
(`CollectingStore`) and they travel back through Ray to the driver, which writes them a batch
at a time (`PartStore.commit_payloads`): a node that cannot see the driver's folder still
delivers its results, and nothing lands on a node's private disk.
"""
from __future__ import annotations

import base64
import json
import logging
import math
import os
import pickle
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ifmdm_data.io import storage
from ifmdm_data.errors import ClipError
from ifmdm_data.reasons import Reason
from ifmdm_data.schema import (BATCH_PREFIX, forget_track_listings, tracks_table, write_parquet_atomic,
                               write_unit_tracks)

log = logging.getLogger(__name__)

# A batch (one part file and one tracks file) holds at most BATCH_UNITS units, and a batch is
# committed once its oldest unit has waited BATCH_SECONDS (checked as results arrive), so a
# crash loses at most that much finished work. 80,000 clips: ~1,250 parts and ~1,250 tracks files.
# The environment variables IFMDM_BATCH_UNITS / IFMDM_BATCH_SECONDS override them (the driver's
# environment, which Ray's local workers inherit; tests use small batches).
BATCH_UNITS = max(1, int(os.environ.get("IFMDM_BATCH_UNITS", "64")))
BATCH_SECONDS = float(os.environ.get("IFMDM_BATCH_SECONDS", "30"))
PART_UNITS_KEY = b"ifmdm_part_units"       # JSON [[unit_id, n_rows, schema k], ...] in the unit order
PART_SCHEMAS_KEY = b"ifmdm_part_schemas"   # JSON [{"schema": base64 Arrow schema, "columns": [stored names]}]

PROBE_FIELDS = ("file_size", "container_duration_s", "fps", "vfr", "width", "height", "rotation",
                "vcodec", "has_audio", "acodec", "audio_sr", "n_video_streams", "n_audio_streams")


def segment_id(cid: str, start_s: float) -> str:
    return f"{cid}_{int(round(start_s * 1000)):09d}"


def unit_id(cid: str, window: int) -> str:
    return f"{cid}_w{window:04d}"


def plan_units(cid: str, path: str, probe: dict, max_duration_s: float) -> list[dict]:
    """Windows of at most max_duration_s (equal lengths) covering the probed duration."""
    dur = probe.get("duration_s", float("nan"))
    if not (isinstance(dur, (int, float)) and math.isfinite(dur) and dur > 0):
        return [dict(unit_id=unit_id(cid, 0), clip_id=cid, path=path, start_s=0.0,
                     end_s=float("inf"), probe=probe)]
    n = max(1, math.ceil(dur / max_duration_s - 1e-9))
    step = dur / n
    return [dict(unit_id=unit_id(cid, w), clip_id=cid, path=path, start_s=w * step,
                 end_s=dur if w == n - 1 else (w + 1) * step, probe=probe) for w in range(n)]


def failure_row(cid: str, path: str, reason, detail: str, record: dict | None = None,
                start_s: float = 0.0, end_s: float = float("nan")) -> dict:
    row = {k: v for k, v in (record or {}).items() if k in PROBE_FIELDS}
    dur = (record or {}).get("duration_s", float("nan"))
    end = end_s if math.isfinite(end_s) else (dur if isinstance(dur, float) else float("nan"))
    row.update(segment_id=segment_id(cid, start_s), clip_id=cid, path=path, start_s=start_s,
               end_s=end, duration_s=end - start_s if math.isfinite(end) else float("nan"),
               reasons=[str(reason)], error=detail[:500])
    return row


def part_table(rows: list[dict]) -> pa.Table:
    """The Parquet table of one unit's rows."""
    df = pd.DataFrame(rows)
    for col in ("reasons",):
        if col in df:
            df[col] = [list(v) if isinstance(v, (list, tuple)) else [] for v in df[col]]
    return pa.Table.from_pandas(df, preserve_index=False)


def batch_name() -> str:
    """A new batch's file name (without .parquet): sorts after every batch named before it on
    this clock (nanoseconds since the epoch), random so that two writers never collide."""
    return f"{BATCH_PREFIX}{time.time_ns():020d}-{os.urandom(4).hex()}"


def batch_part_table(units: list[tuple[str, pa.Table]]) -> pa.Table:
    """One part table for a batch of (unit_id, unit part table): their rows in that order, and
    in the metadata each unit's id, row count and exact Arrow schema, so `unit_tables` gives the
    units' tables back unchanged (types, pandas metadata: `read_all` is what it was with one
    part per unit). A column whose type differs between units (int64 in one, double in
    another) is stored once per type (`name#t1`, ...); all-null (`null` type) columns are not
    stored apart."""
    stored: dict[str, dict] = {}         # column -> {type: stored name}
    schemas: dict[bytes, int] = {}
    entries, index, tables = [], [], []
    for uid, t in units:
        key = t.schema.serialize().to_pybytes()
        if key not in schemas:
            cols = []
            for f in t.schema:
                if pa.types.is_null(f.type):
                    cols.append(f.name)
                    continue
                by_type = stored.setdefault(f.name, {})
                if f.type not in by_type:
                    by_type[f.type] = f.name if not by_type else f"{f.name}#t{len(by_type)}"
                cols.append(by_type[f.type])
            schemas[key] = len(entries)
            entries.append({"schema": base64.b64encode(key).decode(), "columns": cols})
        k = schemas[key]
        index.append([uid, t.num_rows, k])
        tables.append(t.rename_columns(entries[k]["columns"]).replace_schema_metadata(None))
    big = pa.concat_tables(tables, promote_options="default")   # missing / null columns: nulls
    return big.replace_schema_metadata({PART_UNITS_KEY: json.dumps(index).encode(),
                                        PART_SCHEMAS_KEY: json.dumps(entries).encode()})


def part_units(metadata: dict | None) -> list | None:
    """[[unit_id, n_rows, schema k], ...] from a part's key-value metadata; None: a part of the
    one-part-per-unit layout."""
    raw = (metadata or {}).get(PART_UNITS_KEY)
    return None if raw is None else json.loads(raw)


def unit_tables(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """The units of a batch part (`batch_part_table`), each with its own table as it was."""
    meta = table.schema.metadata or {}
    index = part_units(meta)
    entries = json.loads(meta[PART_SCHEMAS_KEY])
    schemas = [pa.ipc.read_schema(pa.py_buffer(base64.b64decode(e["schema"]))) for e in entries]
    out, row = [], 0
    for uid, n, k in index:
        sl = table.slice(row, n)
        row += n
        cols = []
        for f, name in zip(schemas[k], entries[k]["columns"]):
            if pa.types.is_null(f.type):
                cols.append(pa.nulls(n, pa.null()))
                continue
            c = sl.column(name)
            cols.append(c if c.type == f.type else c.cast(f.type))
        out.append((uid, pa.Table.from_arrays(cols, schema=schemas[k])))
    return out


class PartStore:
    """OUT/_work/parts/ and OUT/tracks/ (batch files, see the module doc), OUT a local folder
    (`parts`/`tracks` are Paths) or an object-storage URL (they are URL strs)."""

    def __init__(self, out_dir):
        self.remote = storage.is_url(out_dir)
        if self.remote:
            self.out = str(out_dir).rstrip("/")
            self.parts = storage.join(self.out, "_work", "parts")
            self.tracks = storage.join(self.out, "tracks")
        else:
            self.out = Path(out_dir)
            self.parts = self.out / "_work" / "parts"
            self.tracks = self.out / "tracks"
            self.parts.mkdir(parents=True, exist_ok=True)
            self.tracks.mkdir(parents=True, exist_ok=True)
        self._units: dict[str, list[str]] = {}      # part name -> its unit ids (parts never change)
        self._pending_tracks: dict[str, dict] = {}

    def _pool(self) -> ThreadPoolExecutor:
        # one GET each (object storage) or a small local file each: overlap them (Parquet
        # decoding releases the GIL)
        return ThreadPoolExecutor(16 if self.remote else min(8, (os.cpu_count() or 1) + 2))

    def _footer_units(self, name: str) -> list[str]:
        loc = storage.join(self.parts, name)
        if self.remote:
            with storage.open_read(loc) as raw, pq.ParquetFile(raw) as f:
                kv = f.metadata.metadata
        else:
            kv = pq.read_metadata(loc).metadata
        index = part_units(kv)
        return [name[:-len(".parquet")]] if index is None else [e[0] for e in index]

    def done(self) -> set[str]:
        """The units in a committed part: a batch part's unit ids from its footer (read once per
        part and store), a part of the one-part-per-unit layout from its name."""
        names = storage.list_names(self.parts, ".parquet")
        new = [n for n in names if n not in self._units]
        legacy = [n for n in new if not n.startswith(BATCH_PREFIX)]
        for n in legacy:
            self._units[n] = [n[:-len(".parquet")]]
        batches = [n for n in new if n.startswith(BATCH_PREFIX)]
        if batches:
            with self._pool() as ex:
                for n, uids in zip(batches, ex.map(self._footer_units, batches)):
                    self._units[n] = uids
        return {u for n in names for u in self._units[n]}

    def commit_units(self, units: list[dict]) -> str | None:
        """Write a batch: [{"uid", "part": the unit's part table, "tracks": {segment_id:
        tracks_table}}] -> one tracks file (when a unit has segments), then one part (the
        batch's "done" mark), both named `batch_name()`. A unit given twice: its last result.
        Returns the batch name (None for no units)."""
        last = {u["uid"]: u for u in units}
        if not last:
            return None
        units = list(last.values())
        part = batch_part_table([(u["uid"], u["part"]) for u in units])   # before any write
        name = batch_name()
        tables, owner = {}, {}
        for u in units:
            for seg, t in u["tracks"].items():
                tables[seg], owner[seg] = t, u["uid"]
        if tables:
            write_unit_tracks(tables, storage.join(self.tracks, f"{name}.parquet"), units=owner)
            forget_track_listings()     # this process reads the new batch, not a superseded one
        write_parquet_atomic(part, storage.join(self.parts, f"{name}.parquet"))
        self._units[f"{name}.parquet"] = [u["uid"] for u in units]
        return name

    def commit_payloads(self, payloads: list[bytes]) -> list[str]:
        """Write what `CollectingStore`s gathered on workers as one batch. Returns the unit ids."""
        units = [pickle.loads(p) for p in payloads if p]
        for k in range(0, len(units), BATCH_UNITS):
            self.commit_units(units[k:k + BATCH_UNITS])
        return [u["uid"] for u in units]

    def commit(self, payload: bytes) -> str | None:
        """One `CollectingStore` payload as a batch of one. Returns the unit id (None for an
        empty payload)."""
        got = self.commit_payloads([payload])
        return got[0] if got else None

    def write_many(self, units: list[tuple[str, list[dict]]]) -> None:
        """Units without tracks (failure rows the driver makes), [(unit_id, rows)], in batches."""
        for k in range(0, len(units), BATCH_UNITS):
            self.commit_units([{"uid": uid, "part": part_table(rows), "tracks": {}}
                               for uid, rows in units[k:k + BATCH_UNITS]])

    def write_tracks(self, uid: str, tables: dict) -> None:
        """`run_unit` with a PartStore: the unit's tracks, written with its part by `write`."""
        self._pending_tracks[uid] = dict(tables)

    def write(self, uid: str, rows: list[dict]) -> None:
        """One unit as a batch of one: its tracks (`write_tracks`, if any) then its part."""
        self.commit_units([{"uid": uid, "part": part_table(rows),
                            "tracks": self._pending_tracks.pop(uid, {})}])

    def read_all(self) -> pd.DataFrame:
        """All units' rows as one DataFrame, in unit id order (the same frame as `pd.concat` of
        each unit's part table `to_pandas()`, `ignore_index=True`: what one part per unit gave).
        A unit in several parts: the rows of the last part in name order (a batch part is newer
        than a part of the one-part-per-unit layout)."""
        names = storage.list_names(self.parts, ".parquet")
        names = sorted(names, key=lambda n: (n.startswith(BATCH_PREFIX), n))
        locs = [storage.join(self.parts, n) for n in names]
        read = storage.read_parquet if self.remote else _read_local
        with self._pool() as ex:
            tables = list(ex.map(read, locs))
        units: dict[str, pa.Table] = {}
        for n, t in zip(names, tables):
            if part_units(t.schema.metadata) is None:
                units[n[:-len(".parquet")]] = t
            else:
                units.update(unit_tables(t))            # later parts replace earlier ones
        return concat_parts([units[u] for u in sorted(units)])


def _read_local(path) -> pa.Table:
    """One local part (`pq.ParquetFile.read`: the table `pq.read_table` gives for one file,
    without its dataset set-up, about half the time on a small part)."""
    with pq.ParquetFile(path) as f:
        return f.read()


def concat_parts(tables: list[pa.Table]) -> pd.DataFrame:
    """`pd.concat([t.to_pandas() for t in tables], ignore_index=True)`, faster: the tables with
    byte-identical schemas (Arrow types and pandas metadata: one `to_pandas` of their
    concatenation is the concatenation of theirs) are converted together, then the groups are
    concatenated with pandas and put back in the tables' order (rows and columns)."""
    if not tables:
        return pd.DataFrame()
    by_schema: dict[bytes, list[int]] = {}
    for k, t in enumerate(tables):
        by_schema.setdefault(t.schema.serialize().to_pybytes(), []).append(k)
    if len(by_schema) == len(tables):
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    columns: dict[str, None] = {}       # pd.concat's column order: first appearance
    for t in tables:
        columns.update(dict.fromkeys(t.schema.names))
    row0 = np.cumsum([0] + [t.num_rows for t in tables])
    frames, rows = [], []
    for ks in by_schema.values():
        frames.append(pa.concat_tables([tables[k] for k in ks]).to_pandas())
        rows.append(np.concatenate([np.arange(row0[k], row0[k + 1]) for k in ks]))
    df = pd.concat(frames, ignore_index=True)
    df = df.iloc[np.argsort(np.concatenate(rows), kind="stable")].reset_index(drop=True)
    return df[list(columns)] if list(df.columns) != list(columns) else df


class CollectingStore:
    """`run_unit`'s store on a worker: keeps the unit's tracks and part as Arrow tables;
    `unit()` is them as one `PartStore.commit_units` entry, `payload()` its pickle (a few
    hundred KB per unit) for `PartStore.commit_payloads` on the driver."""

    def __init__(self):
        self.uid, self.part, self.tracks = None, None, {}

    def write(self, uid: str, rows: list[dict]) -> None:
        self.uid, self.part = uid, part_table(rows)

    def write_tracks(self, uid: str, tables: dict) -> None:
        self.tracks = dict(tables)

    def unit(self) -> dict | None:
        return None if self.part is None else {"uid": self.uid, "part": self.part, "tracks": self.tracks}

    def payload(self) -> bytes:
        if self.part is None:
            return b""
        return pickle.dumps(self.unit(), protocol=pickle.HIGHEST_PROTOCOL)


def _signals(identify, local_path: str, row: dict, probe: dict, frames=None) -> dict:
    from ifmdm_data.filter.identify import failed_signals

    rot = probe.get("rotation") or 0
    try:
        return identify(local_path, float(row["start_s"]), float(row["end_s"]), int(rot), face_rel=row.get("face_rel"),
                        frames=frames or None)
    except Exception as e:  # noqa: BLE001 - the segment keeps its analysis; its signals are "not computed"
        log.warning("identify failed on %s [%s, %s): %s: %s (signals left null: `split` computes them again)",
                    local_path, row.get("start_s"), row.get("end_s"), type(e).__name__, e)
        return failed_signals()


def run_unit(unit: dict, cfg, models, speech, store, backend_name: str = "",
             syncnet=None, identify=None) -> list[dict]:
    """Analyse a unit, give its tracks (`store.write_tracks`) then its rows (`store.write`) to
    `store` (a CollectingStore, or a PartStore: a batch of one);
    per-clip failures become rows. Returns the rows. Raises storage.StorageError when the
    store or the object storage holding the video fails (not a property of the clip).
    `identify(local_path, start_s, end_s, rotation) -> dict` (identify.identifier): each
    segment's identity / near-duplicate signals, added to its row (an error there leaves the
    signals null, "not computed", with a warning in the log; it never fails the segment)."""
    from ifmdm_data.filter.analyse import analyse_unit

    cid, path, probe = unit["clip_id"], unit["path"], unit["probe"]
    t0 = time.perf_counter()
    tables = {}                        # segment id -> tracks table
    try:
        # a video in object storage is copied to a local temporary file for the decoders
        # (removed when the block ends); a local path is used as it is
        with storage.spool(path) as local_path:
            results = analyse_unit(dict(unit, path=local_path), cfg, models, speech, syncnet)
            signals = ([_signals(identify, local_path, r["row"], probe, r.get("frames")) for r in results]
                       if identify else [{}] * len(results))
    except storage.SpoolLimitError as e:
        rows = [failure_row(cid, path, Reason.UNREADABLE, str(e), probe, unit["start_s"], unit["end_s"])]
    except storage.StorageError:
        raise                          # the store, not the clip: the driver stops the run
    except FileNotFoundError:
        rows = [failure_row(cid, path, Reason.UNREADABLE, "file not found", probe,
                            unit["start_s"], unit["end_s"])]
    except ClipError as e:
        rows = [failure_row(cid, path, e.reason, e.detail, probe, unit["start_s"], unit["end_s"])]
    except Exception as e:  # noqa: BLE001 - our bug on one clip must not stop the run
        detail = f"{type(e).__name__}: {e} | " + traceback.format_exc(limit=3).replace("\n", " ")
        rows = [failure_row(cid, path, Reason.ANALYSIS_ERROR, detail, probe, unit["start_s"], unit["end_s"])]
    else:
        rows = []
        for res, sig in zip(results, signals):
            row = {k: probe.get(k) for k in PROBE_FIELDS}
            row.update(res["row"])
            row.update(sig)
            seg = segment_id(cid, row["start_s"])
            row.update(segment_id=seg, clip_id=cid, path=path, reasons=[], error="",
                       backend=backend_name)
            tables[seg] = tracks_table(res["tracks"], {
                "segment_id": seg, "path": path, "width": probe["width"], "height": probe["height"],
                "landmark_scheme": row.get("landmark_scheme", ""), "analysis_fps": cfg.analysis.fps})
            rows.append(row)
    dt = time.perf_counter() - t0
    for r in rows:
        r["analysis_s"] = dt
    store.write_tracks(unit["unit_id"], tables)    # the tracks first: the part marks the unit done
    store.write(unit["unit_id"], rows)
    return rows
