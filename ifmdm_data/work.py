"""Work units and their results on disk (the resumable part of `filter`).

A work unit is one input file, or one window of a file longer than `segment.max_duration_s`.
Its result is a Parquet "part" under `OUT/_work/parts/` holding one row per segment (after
scene-cut splitting), written atomically after the segment tracks. A unit whose part exists
is done; re-running `filter` on the same output skips it. Per-clip failures become rows.
"""
from __future__ import annotations

import math
import os
import time
import traceback
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ClipError
from .reasons import Reason
from .schema import tracks_table, write_parquet_atomic

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


class PartStore:
    """OUT/_work/parts/<unit_id>.parquet and OUT/tracks/<segment_id>.parquet."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.parts = self.out / "_work" / "parts"
        self.tracks = self.out / "tracks"
        self.parts.mkdir(parents=True, exist_ok=True)
        self.tracks.mkdir(parents=True, exist_ok=True)

    def done(self) -> set[str]:
        return {p.name[:-len(".parquet")] for p in self.parts.glob("*.parquet")}

    def write(self, uid: str, rows: list[dict]) -> None:
        df = pd.DataFrame(rows)
        for col in ("reasons",):
            if col in df:
                df[col] = [list(v) if isinstance(v, (list, tuple)) else [] for v in df[col]]
        write_parquet_atomic(pa.Table.from_pandas(df, preserve_index=False), self.parts / f"{uid}.parquet")

    def write_tracks(self, seg_id: str, tracks: dict, meta: dict) -> None:
        write_parquet_atomic(tracks_table(tracks, meta), self.tracks / f"{seg_id}.parquet")

    def read_all(self) -> pd.DataFrame:
        frames = [pq.read_table(p).to_pandas() for p in sorted(self.parts.glob("*.parquet"))]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_unit(unit: dict, cfg, models, speech, store: PartStore, backend_name: str = "",
             syncnet=None) -> list[dict]:
    """Analyse a unit, write its tracks and part; per-clip failures become rows. Returns rows."""
    from .analyse import analyse_unit

    cid, path, probe = unit["clip_id"], unit["path"], unit["probe"]
    fault = os.environ.get("IFMDM_FAULT_CRASH")  # fault injection for tests: kill this worker
    if fault and fault in os.path.basename(path):
        os._exit(17)
    t0 = time.perf_counter()
    try:
        results = analyse_unit(unit, cfg, models, speech, syncnet)
    except ClipError as e:
        rows = [failure_row(cid, path, e.reason, e.detail, probe, unit["start_s"], unit["end_s"])]
    except Exception as e:  # noqa: BLE001 - our bug on one clip must not stop the run
        detail = f"{type(e).__name__}: {e} | " + traceback.format_exc(limit=3).replace("\n", " ")
        rows = [failure_row(cid, path, Reason.ANALYSIS_ERROR, detail, probe, unit["start_s"], unit["end_s"])]
    else:
        rows = []
        for res in results:
            row = {k: probe.get(k) for k in PROBE_FIELDS}
            row.update(res["row"])
            seg = segment_id(cid, row["start_s"])
            row.update(segment_id=seg, clip_id=cid, path=path, reasons=[], error="",
                       backend=backend_name)
            store.write_tracks(seg, res["tracks"], {
                "segment_id": seg, "path": path, "width": probe["width"], "height": probe["height"],
                "landmark_scheme": row.get("landmark_scheme", ""), "analysis_fps": cfg.analysis.fps})
            rows.append(row)
    dt = time.perf_counter() - t0
    for r in rows:
        r["analysis_s"] = dt
    store.write(unit["unit_id"], rows)
    return rows
