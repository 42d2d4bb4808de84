"""Work units and their results on disk (the resumable part of `filter`).

A work unit is one input file, or one window of a file longer than `segment.max_duration_s`.
Its result is a Parquet "part" under `OUT/_work/parts/` holding one row per segment (after
scene-cut splitting), written atomically after the unit's tracks file `OUT/tracks/<unit_id>.parquet`
(one row group per segment: `schema.write_unit_tracks`, read by `schema.read_segment_tracks`).
A unit whose part exists is done; re-running `filter` on the same output skips it (a unit
killed between its tracks file and its part is redone, its tracks file written again).
Per-clip failures become rows.

OUT is a local folder or an object-storage URL (`ifmdm_data/io/storage.py`). Where the results are written:
with object storage every worker writes its tracks and part there itself (`PartStore`); with a
local OUT a worker keeps them in memory (`CollectingStore`) and they travel back through Ray to
the driver, which writes them (`PartStore.commit`): a node that cannot see the driver's folder
still delivers its results, and nothing lands on a node's private disk.
"""
from __future__ import annotations

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
from ifmdm_data.schema import tracks_table, write_parquet_atomic, write_unit_tracks

log = logging.getLogger(__name__)

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


class PartStore:
    """OUT/_work/parts/<unit_id>.parquet and OUT/tracks/<unit_id>.parquet (one row group per
    segment), OUT a local folder (`parts`/`tracks` are Paths) or an object-storage URL (they
    are URL strs)."""

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

    def done(self) -> set[str]:
        return {n[:-len(".parquet")] for n in storage.list_names(self.parts, ".parquet")}

    def write(self, uid: str, rows: list[dict]) -> None:
        write_parquet_atomic(part_table(rows), storage.join(self.parts, f"{uid}.parquet"))

    def write_tracks(self, uid: str, tables: dict) -> None:
        """The unit's tracks file (before its part): {segment_id: tracks_table}; none when the
        unit has no segment."""
        if tables:
            write_unit_tracks(tables, storage.join(self.tracks, f"{uid}.parquet"))

    def commit(self, payload: bytes) -> str | None:
        """Write what a `CollectingStore` gathered on a worker: the unit's tracks file, then the
        part (the unit's "done" mark). Returns the unit id (None for an empty payload)."""
        if not payload:
            return None
        got = pickle.loads(payload)
        self.write_tracks(got["uid"], got["tracks"])
        write_parquet_atomic(got["part"], storage.join(self.parts, f"{got['uid']}.parquet"))
        return got["uid"]

    def read_all(self) -> pd.DataFrame:
        """All parts as one DataFrame, the parts' rows in part-name order (the same frame as
        `pd.concat` of each part's `to_pandas()`, `ignore_index=True`)."""
        names = storage.list_names(self.parts, ".parquet")
        locs = [storage.join(self.parts, n) for n in names]
        read = storage.read_parquet if self.remote else _read_local
        # one GET each (object storage) or a small local file each: overlap them (Parquet
        # decoding releases the GIL)
        with ThreadPoolExecutor(16 if self.remote else min(8, (os.cpu_count() or 1) + 2)) as ex:
            tables = list(ex.map(read, locs))
        return concat_parts(tables)


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
    """`run_unit`'s store on a worker whose results go back to the driver through Ray: keeps
    the tracks and the part as Arrow tables; `payload()` is their pickle (a few hundred KB
    per unit) for `PartStore.commit` on the driver."""

    def __init__(self):
        self.uid, self.part, self.tracks = None, None, {}

    def write(self, uid: str, rows: list[dict]) -> None:
        self.uid, self.part = uid, part_table(rows)

    def write_tracks(self, uid: str, tables: dict) -> None:
        self.tracks = dict(tables)

    def payload(self) -> bytes:
        if self.part is None:
            return b""
        return pickle.dumps({"uid": self.uid, "part": self.part, "tracks": self.tracks},
                            protocol=pickle.HIGHEST_PROTOCOL)


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
    """Analyse a unit, write its tracks (one file, `store.write_tracks`) then its part to
    `store` (a PartStore or CollectingStore);
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
