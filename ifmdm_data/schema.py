"""The one definition of the `filter` artefacts: the clips manifest and the per-frame tracks.

Writer (`ifmdm_data/filter/finalise.py`), readers (`ifmdm-data shard`, the trainer, the report)
and tests use these schemas. Every column is documented here; the Parquet files carry the
descriptions as field metadata, so `pyarrow.parquet.read_schema(path)` shows them too.
"""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


F32, F64, I32, I64, STR, BOOL = pa.float32(), pa.float64(), pa.int32(), pa.int64(), pa.string(), pa.bool_()

_CLIP_COLUMNS = [
    # identity
    ("segment_id", STR, "stable id: <clip_id>_<start in ms, 9 digits>; no dots (WebDataset key)"),
    ("clip_id", STR, "stable id of the input file: first 16 hex of sha1(its path relative to the input "
                     "root, or id:<value> of a list's id column); survives a move (inputs.py)"),
    ("path", STR, "absolute path or object-storage URL (s3://...) of the input file"),
    ("segment_index", I32, "index of the segment within its file, in time order"),
    ("n_segments", I32, "number of segments of its file"),
    ("start_s", F64, "segment start in seconds (stream time, from 0)"),
    ("end_s", F64, "segment end in seconds"),
    ("duration_s", F64, "end_s - start_s"),
    ("scene_cut_before", BOOL, "the segment starts at a detected scene cut"),
    # probe
    ("file_size", I64, "bytes"),
    ("container_duration_s", F64, "duration of the whole file (container)"),
    ("fps", F64, "average video frame rate"),
    ("vfr", BOOL, "variable frame rate (average and nominal rates differ)"),
    ("width", I32, "displayed width in pixels (after rotation)"),
    ("height", I32, "displayed height in pixels (after rotation)"),
    ("rotation", I32, "display rotation applied, degrees clockwise"),
    ("vcodec", STR, "video codec"),
    ("has_audio", BOOL, "the file has an audio stream"),
    ("acodec", STR, "audio codec"),
    ("audio_sr", I32, "audio sample rate of the file"),
    ("n_video_streams", I32, "video streams in the file, cover images not counted (the main one is analysed)"),
    ("n_audio_streams", I32, "audio streams in the file (the main one, default track first, is used)"),
    # analysis
    ("n_analysed", I32, "frames analysed (at analysis_fps)"),
    ("analysis_fps", F32, "analysis frame rate"),
    ("landmark_scheme", STR, "mp478 (mediapipe mesh) or ibug68 (FAN)"),
    ("face_fraction", F32, "fraction of analysed frames with a landmark track"),
    ("detected_face_fraction", F32, "fraction of detector frames with at least one face"),
    ("multi_face_fraction", F32, "fraction of detector frames with two or more faces"),
    ("max_faces", I32, "most faces seen in one frame"),
    ("face_px", F32, "median face-box height, source pixels"),
    ("face_rel", F32, "median face-box height / frame height"),
    ("out_of_frame_fraction", F32, "fraction of face frames whose box leaves the frame"),
    ("sharpness", F32, "median Laplacian variance of the face crop (128 px)"),
    ("camera_motion", F32, "median background shift, fraction of the frame diagonal per second"),
    ("head_motion", F32, "mean head speed: rigid landmarks, face sizes per second over 0.4 s"),
    ("head_extent", F32, "RMS displacement of rigid landmarks from their mean, face sizes"),
    ("head_speed_mean", F32, "stage-2 motion statistic: mean head speed (face sizes / s)"),
    ("head_speed_std", F32, "stage-2 motion statistic: std of head speed"),
    ("yaw_mean", F32, "mean yaw relative to the segment's median face, degrees"),
    ("pitch_mean", F32, "mean pitch, degrees"),
    ("yaw_std", F32, "std of yaw, degrees"),
    ("pitch_std", F32, "std of pitch, degrees"),
    ("roll_std", F32, "std of roll, degrees"),
    ("mouth_open_mean", F32, "mean pose-normalised inner-lip gap, face sizes"),
    ("mouth_open_std", F32, "std of the mouth opening: the lip-motion statistic"),
    ("lip_energy", F32, "mean frame difference inside the pose-normalised mouth crop, [0, 1]"),
    ("eye_open_mean", F32, "mean lid gap / eye width"),
    # audio
    ("speech_ratio", F32, "fraction of the segment with speech (silero-vad)"),
    ("loudness_db", F32, "RMS level, dBFS"),
    ("audio_coverage", F32, "fraction of [start_s, end_s) covered by decoded audio samples on the "
                            "file's timeline (0..1; < 1: audio shorter than the video); NaN without audio"),
    ("av_corr", F32, "best correlation of mouth opening and speech envelope within +-max lag"),
    ("av_lag_s", F32, "lag of av_corr; positive: audio lags video"),
    ("av_corr_zero", F32, "correlation at lag 0"),
    ("sync_conf", F32, "--syncnet: SyncNet confidence (LSE-C) = median - min over offsets +-15 of the "
                       "mean window distance; NaN without --syncnet, audio or a face window"),
    ("sync_dist", F32, "--syncnet: min over offsets of the mean SyncNet window distance (LSE-D); NaN as sync_conf"),
    ("sync_offset_frames", F32, "--syncnet: syncnet_python's AV offset at the best distance, 25 fps frames "
                                "(whole numbers; negative: audio lags video); NaN as sync_conf"),
    ("sync_windows", I32, "--syncnet: 5-frame windows scored (one every audio.sync_every_s with a face); 0 when none"),
    ("audio_error", STR, "audio problem found by the analysis (no_audio, audio_decode_error)"),
    # decisions
    ("head_moves", BOOL, "head_motion >= decide.head_motion_min"),
    ("lip_moves", BOOL, "mouth_open_std >= decide.lip_motion_min"),
    ("subset", STR, "coarse | lip | hard; null when rejected"),
    ("accepted", BOOL, "in a stage-1 subset"),
    ("reasons", pa.list_(STR), "rejection reason codes (Reason), empty when accepted"),
    ("stage2_ok", BOOL, "usable for stage 2 (audio covers it, speech, in sync)"),
    ("stage2_reasons", pa.list_(STR), "stage-2 reason codes (Stage2Reason)"),
    ("error", STR, "detail of a decode / analysis failure"),
    ("backend", STR, "face models used: detector/landmarks/segmenter"),
    ("analysis_s", F32, "seconds spent analysing this segment's work unit"),
    # identity and near-duplicates (filter's identify stage: filter/identify.py, faces/identity.py,
    # filter/dedup.py, filter/fingerprint.py); null where not computed (identity.enabled: false,
    # manifests of older versions)
    ("face_descriptor", pa.list_(F32), "mean dlib 128-d face descriptor of the sampled frames; empty: no face"),
    ("identity_spread", F32, "mean distance of the frame descriptors to their mean (dlib units); NaN: no face"),
    ("identity_mixed", BOOL, "two sampled frames' descriptors more than the identity threshold apart "
                             "(two people alternating, or a wrong detection)"),
    ("identity_faces", I32, "sampled frames with a face"),
    ("frame_descriptors", pa.list_(pa.list_(F32)), "the sampled frames' descriptors of a mixed segment (else empty)"),
    ("identity_id", I64, "face identity across the run's segments (leader clustering of face_descriptor "
                         "at identity.threshold; a mixed segment: the identity of most of its frames); -1: no face"),
    ("identity_ids", pa.list_(I64), "every identity the segment shows (several for a mixed segment); "
                                    "`split` keeps all of them on one side"),
    ("phash", pa.list_(STR), "64-bit pHash (16 hex digits) of each sampled non-flat frame"),
    ("audio_fingerprint", pa.list_(pa.uint32()), "Chromaprint sub-fingerprints of the segment's audio "
                                                 "(~8.1 per second); empty: no audio or under ~2 s"),
    ("dup_group", I64, "near-duplicate group: segments joined by pHash (frames within identity.max_phash_distance "
                       "bits) or by the same audio (fingerprint BER <= 0.35), union-find"),
]

CLIPS_SCHEMA = pa.schema([pa.field(n, t, metadata={"description": d}) for n, t, d in _CLIP_COLUMNS])
CLIP_COLUMNS = [n for n, _, _ in _CLIP_COLUMNS]
# columns added after the first manifests: older manifests read with these values
ADDED_COLUMNS = {"audio_coverage": float("nan"), "sync_conf": float("nan"), "sync_dist": float("nan"), "sync_offset_frames": float("nan"),
                 "sync_windows": 0, "face_descriptor": None, "identity_spread": float("nan"),
                 "identity_mixed": None, "identity_faces": None, "frame_descriptors": None, "identity_id": None,
                 "identity_ids": None, "phash": None,
                 "audio_fingerprint": None, "dup_group": None}
IDENTITY_SIGNALS = ("face_descriptor", "identity_spread", "identity_mixed", "identity_faces", "frame_descriptors",
                    "phash", "audio_fingerprint")   # per segment (identify.segment_signals)
DECISION_COLUMNS = ["head_moves", "lip_moves", "subset", "accepted", "reasons", "stage2_ok",
                    "stage2_reasons"]

_TRACK_COLUMNS = [
    ("t", F64, "frame time, seconds from the start of the file"),
    ("n_faces", pa.int16(), "faces counted by the detector; -1 where it did not run"),
    ("box", pa.list_(F32, 4), "face box [x0, y0, x1, y1], source pixels; NaN without a face"),
    ("landmarks", pa.list_(F32), "flattened (P, 3) landmarks, source pixels; NaN without a face"),
    ("pose", pa.list_(F32, 6), "[yaw, pitch, roll (deg), tx, ty (face sizes), log scale]"),
    ("mouth_open", F32, "pose-normalised inner-lip gap, face sizes"),
    ("eye_open", F32, "lid gap / eye width"),
    ("lip_energy", F32, "mouth-crop difference to the previous frame"),
    ("head_speed", F32, "face sizes per second over 0.4 s"),
    ("camera_motion", F32, "background shift to the previous frame, fraction of diagonal"),
    ("sharpness", F32, "Laplacian variance of the face crop (detector frames only)"),
]
TRACKS_SCHEMA = pa.schema([pa.field(n, t, metadata={"description": d}) for n, t, d in _TRACK_COLUMNS])


def clips_table(rows) -> pa.Table:
    """Rows (dicts with any subset of the columns), or a DataFrame with any subset of the
    columns, -> a table with exactly CLIPS_SCHEMA. A DataFrame is converted column by column
    (no per-row dicts: `finalise` holds every segment of a run at once)."""
    if hasattr(rows, "columns"):
        cols = {n: (rows[n].tolist() if n in rows.columns else [None] * len(rows)) for n in CLIP_COLUMNS}
    else:
        cols = {n: [r.get(n) for r in rows] for n in CLIP_COLUMNS}
    for f in CLIPS_SCHEMA:
        if not pa.types.is_floating(f.type):   # NaN stands for "missing" in pandas: null here
            cols[f.name] = [None if isinstance(v, float) and v != v else v for v in cols[f.name]]
    for n in ("reasons", "stage2_reasons"):
        cols[n] = [list(v) if v is not None else [] for v in cols[n]]
    return pa.Table.from_pydict(cols, schema=CLIPS_SCHEMA)


def tracks_table(tracks: dict, meta: dict) -> pa.Table:
    import numpy as np

    n = len(tracks["t"])
    lms = np.asarray(tracks["landmarks"], np.float32).reshape(n, -1)
    cols = {
        "t": tracks["t"], "n_faces": tracks["n_faces"],
        "box": list(np.asarray(tracks["box"], np.float32)), "landmarks": list(lms),
        "pose": list(np.asarray(tracks["pose"], np.float32)),
    }
    for k in ("mouth_open", "eye_open", "lip_energy", "head_speed", "camera_motion", "sharpness"):
        cols[k] = np.asarray(tracks[k], np.float32)
    table = pa.Table.from_pydict(cols, schema=TRACKS_SCHEMA)
    return table.replace_schema_metadata({k.encode(): str(v).encode() for k, v in meta.items()})


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    """Write to a hidden temporary file in the same folder, then rename: a reader never sees
    a half-written file under the final name, and a killed writer leaves only a .tmp file.
    `path` may be an object-storage URL (`storage.atomic_local`: upload, then commit)."""
    from ifmdm_data.io import storage

    with storage.atomic_local(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _missing_manifest_message(path: Path) -> str:
    """One line naming what is missing (the folder, or the file in an existing folder) and the
    command that makes it."""
    folder = path.parent if path.suffix == ".parquet" else path
    make = f"run `ifmdm-data filter INPUTS -o {folder}` first"
    if not folder.is_dir():
        return f"no manifest folder {folder}: {make}"
    if path.name == "clips.parquet" and (folder / "train.parquet").is_file():
        return (f"{folder} holds the split files of `ifmdm-data split`, not a clips.parquet: "
                f"give one of them, e.g. {folder / 'train.parquet'}")
    return f"no manifest {path.name} in {folder}: {make}"


def read_clips(path: str | Path):
    """Read clips.parquet (or a subset file) as a pandas DataFrame, checking the schema."""
    from ifmdm_data.errors import InputError

    from ifmdm_data.io import storage

    if storage.is_url(path):                 # object storage: s3://bucket/manifests[/x.parquet]
        path = str(path)
        if not path.endswith(".parquet"):
            path = storage.join(path, "clips.parquet")
        if not storage.isfile(path):
            raise InputError(f"no manifest at {path}: run `ifmdm-data filter INPUTS -o "
                             f"{storage.parent(path)}` first")
        table = storage.read_parquet(path)
    else:
        path = Path(path)
        if path.is_dir():
            path = path / "clips.parquet"
        if not path.is_file():
            raise InputError(_missing_manifest_message(path))
        table = pq.read_table(path)
    missing = [n for n in CLIP_COLUMNS if n not in table.column_names and n not in ADDED_COLUMNS]
    if missing:
        raise InputError(f"{path} is not a clips manifest of this version (missing: {', '.join(missing[:5])})")
    df = table.to_pandas()
    for n, v in ADDED_COLUMNS.items():      # manifests written before these columns existed
        if n not in df:
            df[n] = v
    return df


def read_tracks(path: str | Path):
    """Read one per-segment tracks file (the layout before issue 12: tracks/<segment_id>.parquet):
    (DataFrame, metadata dict). `read_segment_tracks` finds a segment's tracks in either layout."""
    from ifmdm_data.io import storage

    table = storage.read_parquet(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table.to_pandas(), meta


# The tracks of a batch of work units: OUT/tracks/batch-<time_ns>-<random>.parquet (the layout
# since 2026-12-01, `work.PartStore.commit_units`), one row group per segment (in segment order;
# an empty segment is an empty row group); the file's schema metadata key UNIT_TRACKS_KEY holds
# the JSON list [{"segment_id", "row_group", "meta", "unit_id"}] (meta: the segment's metadata,
# the schema metadata of a per-segment file of the oldest layout). Runs of 2026-12-01 before the
# batches wrote the same file per work unit, OUT/tracks/<unit_id>.parquet (no "unit_id" key),
# and older runs one OUT/tracks/<segment_id>.parquet per segment; `read_segment_tracks` reads
# all three. A segment in several batch files (a unit redone by a re-run after a crash between
# a batch's tracks and its part) is read from the last one in name order (the newest).
UNIT_TRACKS_KEY = b"ifmdm_unit_tracks"
BATCH_PREFIX = "batch-"                                 # batch files: tracks/ and _work/parts/
_UNIT_FILE = re.compile(r"(.+)_w\d{4,}\.parquet")      # <clip_id>_w<window>.parquet


def write_unit_tracks(tables: dict, path: str | Path, units: dict | None = None) -> None:
    """Write segment tables (`tracks_table` results, by segment id) of one unit or of a batch of
    units as one Parquet file, one row group per segment, atomically (`storage.atomic_local`:
    local rename, or upload then commit on object storage). units: {segment_id: unit_id}, kept
    in the index (a batch file)."""
    import json

    from ifmdm_data.io import storage

    index, schema = [], TRACKS_SCHEMA.remove_metadata()
    for k, (seg, table) in enumerate(tables.items()):
        meta = {a.decode(): b.decode() for a, b in (table.schema.metadata or {}).items()}
        index.append({"segment_id": seg, "row_group": k, "meta": meta,
                      **({"unit_id": units[seg]} if units and seg in units else {})})
    schema = schema.with_metadata({UNIT_TRACKS_KEY: json.dumps(index).encode()})
    with storage.atomic_local(path) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for table in tables.values():
                # one write per segment: one row group each (a segment is far below the
                # writer's row-group size)
                w.write_table(table.replace_schema_metadata(None).cast(schema), row_group_size=max(1, table.num_rows))


def unit_tracks_index(f) -> dict:
    """{segment_id: (row_group, meta)} of an open unit or batch tracks file (pq.ParquetFile); {}
    for a file without the index (not such a file)."""
    import json

    raw = (f.schema_arrow.metadata or {}).get(UNIT_TRACKS_KEY)
    if raw is None:
        return {}
    return {e["segment_id"]: (int(e["row_group"]), dict(e["meta"])) for e in json.loads(raw)}


def _footer_index(loc) -> dict:
    """{segment_id: row_group} of one batch tracks file (its footer only; {} when it is gone)."""
    import json

    from ifmdm_data.io import storage

    try:
        if storage.is_url(loc):
            with storage.open_read(loc) as raw, pq.ParquetFile(raw) as f:
                kv = f.metadata.metadata or {}
        else:
            kv = pq.read_metadata(storage.local(loc)).metadata or {}
    except FileNotFoundError:
        return {}
    raw = kv.get(UNIT_TRACKS_KEY)
    return {e["segment_id"]: int(e["row_group"]) for e in json.loads(raw)} if raw else {}


class _TrackListing:
    """One tracks folder as this process knows it: the names in it, {clip_id: its unit files}
    and {segment_id: the batch file holding it} (from the batch files' footers, each read once,
    a few at a time; the last file in name order wins)."""

    def __init__(self, tracks_dir: str):
        self.dir, self.names, self.by_clip, self.batch_of, self.scanned = tracks_dir, set(), {}, {}, set()

    def refresh(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from ifmdm_data.io import storage

        names = storage.list_names(self.dir, ".parquet")
        by_clip: dict[str, list] = {}
        for n in names:
            m = _UNIT_FILE.fullmatch(n)
            if m:
                by_clip.setdefault(m.group(1), []).append(n)
        self.names, self.by_clip = set(names), by_clip
        new = [n for n in names if n.startswith(BATCH_PREFIX) and n not in self.scanned]
        if new:
            with ThreadPoolExecutor(16 if storage.is_url(self.dir) else 4) as ex:
                found = list(ex.map(lambda n: _footer_index(storage.join(self.dir, n)), new))
            for n, idx in zip(new, found):
                self.scanned.add(n)
                for seg in idx:
                    if seg not in self.batch_of or self.batch_of[seg] < n:
                        self.batch_of[seg] = n


_TRACK_LISTINGS: dict[str, _TrackListing] = {}


def forget_track_listings() -> None:
    """Drop this process's tracks listings (`filter` calls it after writing a tracks file)."""
    _TRACK_LISTINGS.clear()


def _track_listing(tracks_dir: str, fresh: bool = False) -> _TrackListing:
    """The listing of tracks_dir, kept per process (listed again when `fresh`)."""
    got = _TRACK_LISTINGS.get(tracks_dir)
    if got is None:
        if len(_TRACK_LISTINGS) > 64:
            _TRACK_LISTINGS.clear()
        got = _TRACK_LISTINGS[tracks_dir] = _TrackListing(tracks_dir)
        got.refresh()
    elif fresh:
        got.refresh()
    return got


def _read_from_unit_files(tracks_dir: str, unit_files: list, segment_id: str):
    from ifmdm_data.io import storage

    for n in unit_files:
        loc = storage.join(tracks_dir, n)
        try:
            with storage.open_read(loc) as raw, pq.ParquetFile(raw) as f:
                hit = unit_tracks_index(f).get(segment_id)
                if hit is not None:       # only this segment's row group is read
                    return f.read_row_group(hit[0]).to_pandas(), hit[1]
        except FileNotFoundError:
            continue
    return None


def read_segment_tracks(folder, segment_id: str):
    """A segment's tracks (DataFrame, metadata dict) from the `filter` manifest folder `folder`
    (local or object storage) holding tracks/: the segment's row group of the batch file
    tracks/batch-*.parquet holding it (found from the batch files' footers), else of its unit's
    file tracks/<unit_id>.parquet, else (runs of older versions, resumed or not) its own file
    tracks/<segment_id>.parquet. Raises FileNotFoundError when the segment has no tracks.
    The folder's listing and batch index are kept per process (listed again, and the new batch
    files' footers read, when a segment is not in them)."""
    from ifmdm_data.io import storage

    tracks_dir = storage.join(str(folder).rstrip("/") if storage.is_url(folder) else folder, "tracks")
    for fresh in (False, True):
        lst = _track_listing(tracks_dir, fresh)
        batch = lst.batch_of.get(segment_id)
        got = _read_from_unit_files(tracks_dir, [batch], segment_id) if batch else None
        if got is None:
            got = _read_from_unit_files(tracks_dir, lst.by_clip.get(segment_id.rsplit("_", 1)[0], []), segment_id)
        if got is not None:
            return got
        if f"{segment_id}.parquet" in lst.names:
            try:
                return read_tracks(storage.join(tracks_dir, f"{segment_id}.parquet"))
            except FileNotFoundError:
                pass
    raise FileNotFoundError(f"no tracks for segment {segment_id} in {tracks_dir}")


# `ifmdm-data split` columns: appended to the clips columns in the split manifests
# (train/val/test.parquet).
_ANNOTATION_COLUMNS = [
    ("split_group", I64, "connected component of identity_id / dup_group / clip_id: one split each"),
    ("split", STR, "train | val | test"),
    ("source_manifest", STR, "absolute path or URL of the `filter` manifest folder the row came from: "
                             "`shard` and `report` read its tracks/ there (schema.read_segment_tracks)"),
]
ANNOTATION_COLUMNS = [n for n, _, _ in _ANNOTATION_COLUMNS]
IDENTITY_COLUMNS = ("identity_id", "dup_group")   # what `report` shows per subset when present


def manifest_folder(loc) -> str:
    """The `filter` manifest folder of a manifest location: the folder itself, or the folder
    holding a .parquet file (clips.parquet or a split file); absolute (URLs unchanged)."""
    from ifmdm_data.io import storage

    s = str(loc).rstrip("/")
    if s.endswith(".parquet"):
        s = storage.parent(s)
    return s if storage.is_url(s) else str(Path(storage.local(s)).resolve())


def tracks_folders(df, loc) -> list:
    """Per row of a manifest read from `loc`: the folder holding its tracks/ (a split file's
    `source_manifest`, else the manifest folder of `loc`)."""
    base = manifest_folder(loc)
    if "source_manifest" not in df:
        return [base] * len(df)
    return [v if isinstance(v, str) and v else base for v in df["source_manifest"].tolist()]
SPLIT_SCHEMA = pa.schema(list(CLIPS_SCHEMA) + [pa.field(n, t, metadata={"description": d})
                                               for n, t, d in _ANNOTATION_COLUMNS])


def split_table(df) -> pa.Table:
    """A split manifest (clips columns + annotations, any extra columns dropped) -> a table with
    exactly SPLIT_SCHEMA. `read_clips` reads it back (it keeps the extra columns)."""
    import numpy as np

    base = clips_table([{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}
                        for r in df[[c for c in CLIP_COLUMNS if c in df]].to_dict("records")])
    cols = [base.column(n) for n in CLIP_COLUMNS]
    for f in SPLIT_SCHEMA:
        if f.name in CLIP_COLUMNS:
            continue
        vals = df[f.name].tolist() if f.name in df else [None] * len(df)
        if pa.types.is_list(f.type):
            vals = [list(v) if v is not None and not (isinstance(v, float) and v != v) else [] for v in vals]
        elif not pa.types.is_floating(f.type):
            vals = [None if isinstance(v, float) and v != v else v for v in vals]
        cols.append(pa.array(vals, type=f.type))
    return pa.Table.from_arrays(cols, schema=SPLIT_SCHEMA)
