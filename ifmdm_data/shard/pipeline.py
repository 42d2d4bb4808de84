"""`shard` on Ray Data: accepted segments -> WebDataset tars (one Ray task per shard on an
actor pool whose actors load the speech-feature model once), then index + summary on the driver.

Resumable at shard granularity:
- the plan (which samples go into which shard) is fixed on the first run in
  OUT/_work/plan.json and reused, so shard contents are stable across re-runs; samples that
  appear later (a re-run of `filter`/`decide`, another --subsets) go into new shards appended
  after the planned ones;
- a shard is written to OUT/{subset}/.{name}.tmp and renamed when complete: a final name
  means a finished shard (skipped on re-run); a leftover .tmp is deleted and the shard redone;
- next to every finished tar, OUT/_work/shards/{subset}/{name}.json records its samples
  (index rows) and the samples that failed, so the index and summary need no tar scan.

Only small records travel through Ray: each task reads the source videos and tracks itself
and writes its tar directly to the output: a folder every node shares, or object storage
(`ifmdm_data/io/storage.py`: the tar is written to a local temporary file, uploaded and committed under its
final name). `preflight.check_nodes` checks every node before any work.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ifmdm_data.shard import format as sf
from ifmdm_data.io import storage
from ifmdm_data.io.console import StageBar, ray_remote_args
from ifmdm_data.errors import ClipError, InputError
from ifmdm_data.io.atomic import write_json_atomic
from ifmdm_data.reasons import SUBSETS, Reason
from ifmdm_data.schema import manifest_folder, read_clips, read_segment_tracks, tracks_folders, write_parquet_atomic
from ifmdm_data.shard.plan import make_plan
from ifmdm_data.shard.segment import ShardConfig, make_sample
from ifmdm_data.shard.tar_writer import TarShardWriter

log = logging.getLogger("ifmdm_data")

# manifest columns a shard task needs (the rest of the row stays on the driver)
ROW_FIELDS = ("segment_id", "path", "start_s", "end_s", "duration_s", "subset", "width", "height",
              "rotation", "fps", "has_audio", "stage2_ok", "stage2_reasons", "landmark_scheme",
              "head_speed_mean", "head_speed_std", "mouth_open_mean", "mouth_open_std",
              "tracks_dir")   # the manifest folder holding the row's tracks/ (schema.tracks_folders)
FAIL_MISSING_TRACKS = "missing_tracks"
FAIL_SHARD_ERROR = "shard_error"


def _py(v):
    if isinstance(v, np.ndarray):
        return [_py(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_py(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def _row_dict(r: dict) -> dict:
    return {k: _py(r.get(k)) for k in ROW_FIELDS}


def tmp_name(name: str) -> str:
    return f".{name}.tmp"


# ------------------------------------------------------------------------------------------
# one shard (runs inside an actor)


def _failure(row: dict, subset: str, shard: str, reason, detail: str) -> dict:
    return {"key": row.get("segment_id"), "subset": subset, "shard": shard,
            "path": row.get("path"), "reason": str(getattr(reason, "value", reason)),
            "detail": str(detail)[:500]}


def build_shard(spec: dict, out_dir: str, manifest_dir: str, cfg: ShardConfig, features) -> dict:
    """Write one shard (unless its final tar exists). Returns its record (also saved as
    OUT/_work/shards/{subset}/{name}.json before the tar gets its final name). OUT and the
    manifest folder may be object-storage URLs; source videos in object storage are read
    through a local spool (`storage.spool`)."""
    from ifmdm_data.io.paths import fs_path

    subset, name = spec["subset"], spec["name"]
    rel = f"{subset}/{name}"
    final = storage.join(out_dir, subset, name)
    if storage.exists(final):
        return {"shard": rel, "status": "skipped"}
    remote = storage.is_url(out_dir)
    # object storage: the tar is built in a local temporary folder, then uploaded
    local_dir = tempfile.mkdtemp(prefix="ifmdm-shard-") if remote else None
    local_final = os.path.join(local_dir, name) if remote else final
    tmp = os.path.join(local_dir, tmp_name(name)) if remote else storage.join(out_dir, subset, tmp_name(name))
    if os.path.exists(tmp):
        os.unlink(tmp)
    t0 = time.perf_counter()
    samples, failures = [], []
    try:
        with TarShardWriter(local_final, tmp) as writer:
            for row in spec["rows"]:
                key = row["segment_id"]
                src = row.get("path")
                if not src or not storage.exists(src if storage.is_url(src) else fs_path(src)):
                    failures.append(_failure(row, subset, rel, Reason.UNREADABLE,
                                             f"source video not found: {src}"))
                    continue
                tdir = row.get("tracks_dir") or manifest_dir
                try:
                    tracks, _ = read_segment_tracks(tdir, key)
                except FileNotFoundError:
                    failures.append(_failure(row, subset, rel, FAIL_MISSING_TRACKS,
                                             f"no tracks of {key} in {storage.join(tdir, 'tracks')} "
                                             f"(re-run `ifmdm-data filter`)"))
                    continue
                except Exception as e:  # noqa: BLE001 - a broken track file fails this sample only
                    failures.append(_failure(row, subset, rel, FAIL_MISSING_TRACKS,
                                             f"unreadable tracks of {key} in {storage.join(tdir, 'tracks')}: "
                                             f"{type(e).__name__}: {e}"))
                    continue
                try:
                    with storage.spool(src) as local_src:
                        sample = make_sample(dict(row, path=local_src) if storage.is_url(src) else row,
                                             tracks, cfg, features,
                                             source=src if storage.is_url(src) else None)
                except ClipError as e:
                    failures.append(_failure(row, subset, rel, e.reason, e.detail))
                    continue
                except storage.SpoolLimitError as e:
                    failures.append(_failure(row, subset, rel, Reason.UNREADABLE, str(e)))
                    continue
                except storage.StorageError:
                    raise
                except Exception as e:  # noqa: BLE001 - our bug on one sample must not stop the run
                    detail = f"{type(e).__name__}: {e} | " + traceback.format_exc(limit=3).replace("\n", " ")
                    failures.append(_failure(row, subset, rel, FAIL_SHARD_ERROR, detail))
                    continue
                nbytes = writer.write(key, sample)
                meta = json.loads(sample["json"])
                feat = meta["speech_feature"] or {}
                samples.append({"key": key, "shard": rel, "subset": subset,
                                "n_frames": int(meta["n_frames"]), "fps": float(meta["fps"]),
                                "stage2_ok": bool(meta["stage2_ok"]), "has_audio": bool(meta["has_audio"]),
                                "feature_type": feat.get("type"), "feature_dim": feat.get("dim"),
                                "bytes": int(nbytes)})
            record = {"shard": rel, "status": "written", "samples": samples, "failures": failures,
                      "seconds": 0.0, "feature": _py_info(features)}

            def save_record(tar_bytes: int) -> None:
                record["bytes"] = int(tar_bytes)
                record["seconds"] = round(time.perf_counter() - t0, 3)
                write_json_atomic(record, storage.join(out_dir, "_work", "shards", subset, f"{name}.json"))

            writer.commit(before_replace=save_record)
        if remote:   # upload under a temporary key, then move to the final one
            storage.commit_file(local_final, final)
    finally:
        if local_dir:
            shutil.rmtree(local_dir, ignore_errors=True)
    return record


def _py_info(features) -> dict:
    try:
        return json.loads(json.dumps(features.info(), default=str))
    except Exception:  # noqa: BLE001
        return {"type": getattr(features, "type", None), "dim": getattr(features, "dim", None)}


class ShardActor:
    """Holds one speech-feature model per actor; writes one shard per call."""

    def __init__(self, cfg: dict, out_dir: str, manifest_dir: str, wav2vec2_dir: str | None,
                 layers: list, env: dict | None = None):
        import cv2

        from ifmdm_data.features.speech import build_features

        cv2.setNumThreads(1)
        storage.apply_env(env)
        if wav2vec2_dir:  # log-mel needs no torch (importing it costs ~1 s per actor)
            import torch
            torch.set_num_threads(1)
        self.cfg = ShardConfig.from_dict(cfg)
        self.out_dir, self.manifest_dir = out_dir, manifest_dir
        self.features = build_features(wav2vec2_dir=wav2vec2_dir, layers=tuple(layers), device="auto")

    def __call__(self, batch: dict) -> dict:
        out = {"shard": [], "status": [], "storage_error": []}
        for spec_json in batch["spec_json"]:
            spec = json.loads(spec_json)
            try:
                rec, err = build_shard(spec, self.out_dir, self.manifest_dir, self.cfg, self.features), ""
            except storage.StorageError as e:   # reported by the driver, never a worker_crash
                rec, err = {"shard": f"{spec['subset']}/{spec['name']}", "status": "storage_error"}, str(e)
            out["shard"].append(rec["shard"])
            out["status"].append(rec["status"])
            out["storage_error"].append(err)
        return out


# ------------------------------------------------------------------------------------------
# driver


def _fingerprint(cfg: ShardConfig, wav2vec2_dir, layers) -> dict:
    d = cfg.to_dict()
    d.pop("subsets")
    d.pop("threads")
    d.pop("target_shard_bytes")   # planning only: a change applies to shards planned later
    return {"config": d, "wav2vec2_dir": os.path.abspath(wav2vec2_dir) if wav2vec2_dir else None,
            "layers": [int(x) for x in layers]}


def _clear(out) -> None:
    storage.remove_tree(storage.join(out, "_work"))
    for subset in SUBSETS:
        d = storage.join(out, subset)
        for n in storage.list_names(d, ".tar"):
            storage.remove(storage.join(d, n))
        if not storage.is_url(out) and Path(d).is_dir():
            for p in Path(d).glob(".*.tmp"):
                p.unlink()
    for name in ("index.parquet", "summary.json"):
        storage.remove(storage.join(out, name))


def _run_pool(specs: list[dict], actor_kwargs: dict, n_workers: int, num_gpus: float, in_flight: int,
              progress: bool = False) -> None:
    import ray

    ds = ray.data.from_items([{"spec_json": json.dumps(s)} for s in specs],
                             override_num_blocks=len(specs))
    with ray_remote_args():             # max_task_retries has no named parameter in Ray 2.60
        ds = ds.map_batches(
            ShardActor, batch_size=1, num_cpus=1, num_gpus=num_gpus or None,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(n_workers, len(specs))),
                                               max_tasks_in_flight_per_actor=in_flight),
            fn_constructor_kwargs=actor_kwargs, max_restarts=-1, max_task_retries=0)
    samples = {f"{s['subset']}/{s['name']}": len(s["rows"]) for s in specs}
    bar = StageBar("shard", len(specs), "shards", enabled=progress, rate_unit="clips")
    for batch in ds.iter_batches(batch_size=None):
        for err in batch["storage_error"]:
            if err:
                raise storage.StorageError(f"a worker could not use the storage: {err}")
        n = sum(samples.get(sh, 0) for sh in batch["shard"])
        bar.update(len(batch["shard"]), rated=n, samples=n)
    bar.close()


def _records_from_tar(path, rel: str, subset: str) -> list[dict]:
    """Index rows of a finished tar whose record file is gone (reads only the json members)."""
    import tarfile

    rows: dict[str, dict] = {}
    with storage.open_read(path) as f, tarfile.open(fileobj=f) as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            r = rows.setdefault(key, {"key": key, "shard": rel, "subset": subset, "bytes": 0})
            r["bytes"] += m.size
            if ext == "json":
                meta = json.loads(tar.extractfile(m).read())
                feat = meta.get("speech_feature") or {}
                r.update(n_frames=int(meta["n_frames"]), fps=float(meta["fps"]),
                         stage2_ok=bool(meta["stage2_ok"]), has_audio=bool(meta["has_audio"]),
                         feature_type=feat.get("type"), feature_dim=feat.get("dim"))
    return list(rows.values())


def _absolute(loc) -> str:
    return str(loc) if storage.is_url(loc) else str(Path(loc).resolve())


def _clips_file(manifest) -> str:
    loc = _absolute(manifest)
    return loc if loc.endswith(".parquet") else storage.join(loc, "clips.parquet")


def _check_tracks(acc: pd.DataFrame, manifest) -> None:
    """One line when a manifest folder that selected rows need has no tracks/ folder (a split
    file whose source manifests moved, or a clips file copied away from its folder)."""
    for folder in sorted(set(acc["tracks_dir"])):
        if storage.isdir(storage.join(folder, "tracks")):
            continue
        if "split" in acc and folder == manifest_folder(manifest):   # no source_manifest
            raise InputError(f"{manifest} is a split file without source_manifest (made by an older "
                             f"`ifmdm-data split`): run `ifmdm-data split` again on its manifests")
        if str(manifest).endswith(".parquet") and manifest_folder(manifest) != folder:
            raise InputError(f"{manifest} was made from the manifests {folder}, which hold no tracks/ "
                             f"now: put the `filter` output back there, or run `ifmdm-data split` "
                             f"again on the manifests where they are")
        raise InputError(f"no tracks folder {storage.join(folder, 'tracks')} for the segments of {manifest}: "
                         f"run `ifmdm-data filter INPUTS -o {folder}` (it writes the tracks)")


def run_shard(manifest_dir: str, out_dir: str, subsets=SUBSETS, cfg: ShardConfig | None = None,
              wav2vec2_dir: str | None = None, layers=(-1,), workers: int | None = None,
              ray_address: str | None = None, overwrite: bool = False, progress: bool = True,
              num_gpus: float | None = None) -> dict:
    """The whole `shard` stage. Returns the summary (also saved as OUT/summary.json).

    `subsets` chooses which curriculum subsets to write (default all three); `cfg` sets size,
    fps, encoder and crop; `wav2vec2_dir` a local wav2vec2 checkpoint (log-mel without);
    `num_gpus` per actor (default: 1 when wav2vec2 is used and the Ray cluster has GPUs).
    `manifest_dir` may also be a .parquet file: a clips.parquet, or a split file of
    `ifmdm-data split` (exactly its rows are sharded; each row's tracks are read from the
    manifest folder it was split from, its `source_manifest`).
    """
    import ray

    from ifmdm_data.io.ray_runtime import init_ray

    t_start = time.time()
    cfg = cfg or ShardConfig()
    if isinstance(subsets, str):
        subsets = [s.strip() for s in subsets.split(",") if s.strip()]
    subsets = tuple(subsets) if subsets else cfg.subsets
    bad = [s for s in subsets if s not in SUBSETS]
    if bad:
        raise InputError(f"unknown subset(s) {', '.join(bad)}: choose from {', '.join(SUBSETS)}")
    if wav2vec2_dir:  # fail before starting Ray: a clear message naming the missing file
        from ifmdm_data.features import check_wav2vec2_dir
        check_wav2vec2_dir(wav2vec2_dir)
    layers = [int(x) for x in layers]
    manifest = str(manifest_dir).rstrip("/") if storage.is_url(manifest_dir) else Path(manifest_dir)
    clips = read_clips(manifest)
    chosen = clips["accepted"].fillna(False).astype(bool) & clips["subset"].isin(subsets)
    if not chosen.any():            # before any output exists: a run that writes nothing is an error
        raise InputError(f"nothing to shard: {manifest_dir} has no accepted segment in {', '.join(subsets)} "
                         f"({len(clips)} segment{'' if len(clips) == 1 else 's'}, none accepted there)")
    out = storage.prepare_output(out_dir)
    if overwrite:
        _clear(out)
    work = storage.join(out, "_work")
    fp = _fingerprint(cfg, wav2vec2_dir, layers)
    marker = storage.join(work, "run.json")
    if storage.exists(marker) and json.loads(storage.read_text(marker)) != fp:
        old_fp = json.loads(storage.read_text(marker))
        flat_old = {**old_fp.get("config", {}), **{k: v for k, v in old_fp.items() if k != "config"}}
        flat_new = {**fp["config"], **{k: v for k, v in fp.items() if k != "config"}}
        diff = ", ".join(f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}"
                         for k in sorted(set(flat_old) | set(flat_new)) if flat_old.get(k) != flat_new.get(k))
        raise InputError(f"{out} holds shards made with other settings ({diff}); use --overwrite "
                         f"to start again, or another -o folder")
    write_json_atomic(fp, marker)

    # 1. selection and plan
    acc = clips[clips["accepted"].fillna(False).astype(bool) & clips["subset"].isin(subsets)]
    acc = acc.drop_duplicates("segment_id")
    acc = acc.assign(tracks_dir=tracks_folders(acc, manifest))
    _check_tracks(acc, manifest)
    plan_path = storage.join(work, "plan.json")
    old = json.loads(storage.read_text(plan_path)) if storage.exists(plan_path) else None
    plan, n_new = make_plan(acc, cfg, 768 if wav2vec2_dir else 80, old)
    if old is None or n_new:
        write_json_atomic(plan, plan_path)
    rows = {r["segment_id"]: r for r in acc.to_dict("records")}
    if cfg.fix_av_offset:
        offs = pd.to_numeric(acc.get("sync_offset_frames", pd.Series(dtype=float)), errors="coerce")
        n_off = int(np.isfinite(offs.to_numpy(float)).sum()) if len(offs) else 0
        if n_off == 0:
            log.warning("--fix-av-offset: no segment of %s has a SyncNet offset (run `ifmdm-data filter "
                        "--syncnet`): the audio is not shifted", manifest)
        else:
            log.info("--fix-av-offset: %d of %d segments have a SyncNet offset to undo", n_off, len(acc))

    # 2. shards to write: planned, of a chosen subset, no final tar yet
    for subset in subsets:  # stale temporaries of a killed run (object storage: none, see build_shard)
        d = Path(storage.local(storage.join(out, subset)))
        for p in d.glob(".*.tmp") if not storage.is_url(out) and d.is_dir() else []:
            p.unlink()
    finished = {sub: set(storage.list_names(storage.join(out, sub), ".tar")) for sub in SUBSETS}
    todo, skipped, dropped = [], 0, []
    for subset in subsets:
        for s in plan["subsets"].get(subset, []):
            if s["name"] in finished[subset]:
                skipped += 1
                continue
            keep = [rows[k] for k in s["keys"] if k in rows]
            dropped += [k for k in s["keys"] if k not in rows]
            todo.append({"subset": subset, "name": s["name"], "rows": [_row_dict(r) for r in keep]})
    if dropped:
        log.warning("%d planned samples are no longer accepted in %s and are left out: %s",
                    len(dropped), manifest, ", ".join(dropped[:5]))
    log.info("%d shards to write, %d already done", len(todo), skipped)

    # 3. write shards on an actor pool
    t_work = time.time()
    n_workers = workers
    crashed: list[dict] = []
    if todo:
        init_ray(ray_address, workers, verbose=log.isEnabledFor(logging.INFO))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False     # one line of our own instead (console.StageBar)
        ctx.max_errored_blocks = -1
        n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        if num_gpus is None:
            num_gpus = 1.0 if (wav2vec2_dir and ray.cluster_resources().get("GPU", 0) >= 1) else 0.0
        kwargs = {"cfg": cfg.to_dict(), "out_dir": _absolute(out),
                  "manifest_dir": manifest_folder(manifest), "wav2vec2_dir": wav2vec2_dir,
                  "layers": layers, "env": storage.forward_env()}
        from ifmdm_data.filter.preflight import check_nodes   # every node reads the manifest and reaches OUT
        check_nodes(read=[_clips_file(manifest)], write=_absolute(out) if storage.is_url(out) else None,
                    shared=None if storage.is_url(out) else _absolute(out))
        _run_pool(todo, kwargs, n_workers, num_gpus, in_flight=2, progress=progress)
        lost = [s for s in todo if not storage.exists(storage.join(out, s["subset"], s["name"]))]
        if lost:
            log.warning("%d shards lost to a worker crash: retrying them one at a time", len(lost))
            _run_pool(lost, kwargs, n_workers, num_gpus, in_flight=1)
            crashed = [s for s in lost if not storage.exists(storage.join(out, s["subset"], s["name"]))]
    t_done = time.time()

    # 4. index + summary over every finished shard of the plan
    index_rows, failures, feature, written = [], [], None, {"shards": 0, "samples": 0, "bytes": 0}
    todo_names = {(s["subset"], s["name"]) for s in todo}
    shard_counts = {}
    finished = {sub: set(storage.list_names(storage.join(out, sub), ".tar")) for sub in SUBSETS}
    tar_sizes = {}
    for subset in SUBSETS:
        for s in plan["subsets"].get(subset, []):
            tar = storage.join(out, subset, s["name"])
            if s["name"] not in finished[subset]:
                continue
            tar_sizes[tar] = storage.size(tar)
            shard_counts[subset] = shard_counts.get(subset, 0) + 1
            rec_path = storage.join(work, "shards", subset, f"{s['name']}.json")
            if storage.exists(rec_path):
                rec = json.loads(storage.read_text(rec_path))
            else:
                rec = {"samples": _records_from_tar(tar, f"{subset}/{s['name']}", subset),
                       "failures": [], "bytes": tar_sizes[tar]}
            index_rows += rec["samples"]
            failures += rec.get("failures", [])
            feature = rec.get("feature") or feature
            if (subset, s["name"]) in todo_names:
                written["shards"] += 1
                written["samples"] += len(rec["samples"])
                written["bytes"] += int(rec.get("bytes") or tar_sizes[tar])
    for s in crashed:
        failures += [_failure(r, s["subset"], f"{s['subset']}/{s['name']}", Reason.WORKER_CRASH,
                              "the worker process died on this shard twice") for r in s["rows"]]
    table = pa.Table.from_pylist([{k: r.get(k) for k in sf.INDEX_SCHEMA.names} for r in index_rows],
                                 schema=sf.INDEX_SCHEMA)
    write_parquet_atomic(table, storage.join(out, "index.parquet"))
    idx = table.to_pandas()

    tar_bytes = sum(tar_sizes.values())
    work_s = t_done - t_work
    elapsed = time.time() - t_start
    samples = {sub: int((idx["subset"] == sub).sum()) for sub in SUBSETS if (idx["subset"] == sub).any()}
    summary = {
        "samples": samples, "samples_total": int(len(idx)),
        "shards": shard_counts, "bytes": int(tar_bytes),
        "written": written, "shards_skipped": skipped,
        "elapsed_s": round(elapsed, 2), "shard_s": round(work_s, 2),
        "clips_per_s": round(written["samples"] / work_s, 3) if work_s > 0 and written["samples"] else None,
        "mb_per_s": round(written["bytes"] / 1e6 / work_s, 3) if work_s > 0 and written["bytes"] else None,
        "speech_feature": feature,
        "feature_type": (feature or {}).get("type"), "feature_dim": (feature or {}).get("dim"),
        "failed": len(failures), "failures": failures, "not_in_manifest": dropped,
        "subsets": list(subsets), "workers": n_workers, "config": cfg.to_dict(),
        "wav2vec2_dir": os.path.abspath(wav2vec2_dir) if wav2vec2_dir else None, "layers": layers,
    }
    write_json_atomic(summary, storage.join(out, "summary.json"))
    return summary
