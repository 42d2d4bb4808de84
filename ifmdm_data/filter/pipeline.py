"""`filter` on Ray Data: probe every file (tasks), analyse every work unit (an actor pool
whose actors load the face models once), then finalise the manifests on the driver.

Only small records travel through Ray: frames are decoded and analysed inside one task.
The results (rows and tracks, a few hundred KB per unit) are written to object storage by the
worker when OUT is a URL (one batch per actor call of up to `work.BATCH_UNITS` units), and travel
back to the driver through Ray when OUT is a local folder (the driver writes them in batches of
up to `work.BATCH_UNITS` units, `work.py`), so nodes need not share a file system; `preflight.check_nodes` makes sure, before
any work, that every node can read the inputs (and reach an object-storage output).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pandas as pd

from ifmdm_data.io import storage
from ifmdm_data.filter.config import FilterConfig
from ifmdm_data.io.console import StageBar, ray_remote_args
from ifmdm_data.errors import ClipError, InputError
from ifmdm_data.filter.decide import provisional_decisions
from ifmdm_data.filter.inputs import resolve_keyed
from ifmdm_data.io.paths import clip_id
from ifmdm_data.filter.finalise import write_manifests
from ifmdm_data.io.atomic import write_json_atomic
from ifmdm_data.io.ray_runtime import init_ray
from ifmdm_data.reasons import Reason
from ifmdm_data.filter import work
from ifmdm_data.filter.work import CollectingStore, PartStore, failure_row, plan_units, run_unit

log = logging.getLogger("ifmdm_data")


# ------------------------------------------------------------------------------------------
# Ray stages (thin wrappers over work.py / media/probe.py)
# ------------------------------------------------------------------------------------------

def _probe_row(item: dict, env: dict | None = None) -> dict:
    from ifmdm_data.media.probe import probe_file

    storage.apply_env(env)
    try:
        try:
            with storage.spool(item["path"]) as local_path:   # objects: a local temporary copy
                rec, err, detail = probe_file(local_path), "", ""
        except FileNotFoundError:
            raise ClipError(Reason.UNREADABLE, "file not found") from None
        except storage.SpoolLimitError as e:
            raise ClipError(Reason.UNREADABLE, str(e)) from None
    except ClipError as e:
        rec, err, detail = e.record, str(e.reason), e.detail
    return {"path": item["path"], "clip_id": item["clip_id"], "probe_json": json.dumps(rec),
            "probe_error": err, "probe_detail": detail}


class AnalyseActor:
    """Holds one set of face models, the VAD and (--syncnet) the SyncNet per actor, on CUDA
    when the actor was given a GPU; analyses the units of a call one after the other. Object
    storage OUT: writes them there as batches (`PartStore.commit_units`: the call's units, a
    new batch after work.BATCH_SECONDS); a local OUT: returns each unit's payload for the driver."""

    def __init__(self, cfg: dict, out_dir: str, weights_dir: str | None, syncnet: str | None = None,
                 syncnet_gpus: float = 0.0, env: dict | None = None):
        import cv2
        import torch

        from ifmdm_data.filter.analyse import load_models
        from ifmdm_data.filter.config import config_from_dict

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        storage.apply_env(env)
        self.cfg = config_from_dict(cfg)
        # object storage: write there; a local folder: send the results to the driver
        self.store = PartStore(out_dir) if storage.is_url(out_dir) else None
        self.models, self.speech = load_models(self.cfg, weights_dir)
        self.identify = None
        if self.cfg.identity.enabled:     # face descriptors, pHashes, audio fingerprints per segment
            from ifmdm_data.filter.identify import identifier
            self.identify = identifier(self.cfg.identity, self.cfg.audio.sample_rate)
        self.backend = "/".join(self.models.names.values())
        self.syncnet = None
        if syncnet:
            from ifmdm_data.faces.syncnet import load_filter_syncnet
            device = "cuda" if syncnet_gpus > 0 and torch.cuda.is_available() else "cpu"
            self.syncnet = load_filter_syncnet(syncnet, device)

    def __call__(self, batch: dict) -> dict:
        out = {"unit_id": [], "segments": [], "accepted": [], "rejected": [], "payload": [], "storage_error": []}
        pending, since = [], time.monotonic()     # object storage: this call's units not yet written

        def flush():
            try:
                self.store.commit_units([u for _, u in pending])
            except storage.StorageError as e:     # reported by the driver, never a worker_crash
                for k, _ in pending:
                    out["storage_error"][k] = out["storage_error"][k] or str(e)
            pending.clear()

        for unit_json in batch["unit_json"]:
            unit = json.loads(unit_json)
            store = CollectingStore()
            try:
                rows = run_unit(unit, self.cfg, self.models, self.speech, store, self.backend,
                                self.syncnet, self.identify)
                err = ""
            except storage.StorageError as e:   # reported by the driver, never a worker_crash
                rows, err = [], str(e)
            out["unit_id"].append(unit["unit_id"])
            out["segments"].append(len(rows))
            acc, rej = provisional_decisions(rows, self.cfg)   # for the progress line only
            out["accepted"].append(-1 if acc is None else acc)
            out["rejected"].append(-1 if rej is None else rej)
            local = self.store is None and not err
            out["payload"].append(store.payload() if local else b"")
            out["storage_error"].append(err)
            if self.store is not None and not err and store.unit() is not None:
                if not pending:
                    since = time.monotonic()
                pending.append((len(out["unit_id"]) - 1, store.unit()))
                if len(pending) >= work.BATCH_UNITS or time.monotonic() - since >= work.BATCH_SECONDS:
                    flush()
        if pending:
            flush()
        return out


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------

def _fingerprint(cfg: FilterConfig, backend_weights: str | None, syncnet: str | None = None) -> dict:
    """What the analysis results depend on (a re-run with another fingerprint must not mix in
    old parts). The SyncNet window spacing only matters with --syncnet; the identity threshold
    and pHash distance only act when the manifests are written (`decide` re-clusters)."""
    d = cfg.to_dict()
    audio = dict(d["audio"])
    if not syncnet:
        audio.pop("sync_every_s", None)
    ident = {k: v for k, v in d["identity"].items() if k not in ("threshold", "max_phash_distance")}
    fp = {"segment": d["segment"], "analysis": d["analysis"], "audio": audio, "identity": ident,
          "weights_dir": os.path.abspath(backend_weights) if backend_weights else None}
    if syncnet:
        fp["syncnet"] = os.path.abspath(syncnet)
    return fp


def _check_resume(out, fp: dict, overwrite: bool) -> None:
    marker = storage.join(out, "_work", "run.json")
    if overwrite and storage.exists(out):
        for name in ("_work", "tracks"):
            storage.remove_tree(storage.join(out, name))
    if storage.exists(marker):
        old = json.loads(storage.read_text(marker))
        if old != fp:
            raise InputError(f"{out} holds results of a different analysis configuration; "
                             f"use --overwrite to start again, or another -o folder "
                             f"(decision thresholds alone can change: `ifmdm-data decide {out}`)")
    write_json_atomic(fp, marker)


def _units_per_call(out, n_units: int, n_workers: int, in_flight: int) -> int:
    """Units per actor call: 1 with a local OUT (the driver batches what comes back) and on the
    retry round (in_flight 1: one unit per call isolates a unit that kills its worker); with
    object storage (one batch per call) up to work.BATCH_UNITS, keeping >= 4 calls per worker."""
    if not storage.is_url(out) or in_flight <= 1:
        return 1
    return max(1, min(work.BATCH_UNITS, n_units // (4 * max(1, n_workers))))


def _analyse(units: list[dict], cfg: FilterConfig, out, weights_dir, n_workers: int,
             in_flight: int, store: PartStore, syncnet: str | None = None,
             syncnet_gpus: float = 0.0, bar: StageBar | None = None) -> None:
    """Run the units on the actor pool; commit the results that come back (local OUT) in
    batches of up to work.BATCH_UNITS units, a batch at the latest when its first unit has waited
    work.BATCH_SECONDS, the rest at the end. Raises StorageError when a worker could not read or
    write object storage."""
    import ray

    per_call = _units_per_call(out, len(units), n_workers, in_flight)
    ds = ray.data.from_items([{"unit_json": json.dumps(u)} for u in units],
                             override_num_blocks=-(-len(units) // per_call))
    with ray_remote_args():             # max_task_retries has no named parameter in Ray 2.60
        ds = ds.map_batches(
            AnalyseActor, batch_size=per_call, num_cpus=1, **({"num_gpus": syncnet_gpus} if syncnet_gpus else {}),
            compute=ray.data.ActorPoolStrategy(min_size=min(n_workers, len(units)), max_size=min(n_workers, len(units)),
                                               max_tasks_in_flight_per_actor=in_flight),
            fn_constructor_kwargs={"cfg": cfg.to_dict(),
                                   "out_dir": str(out) if storage.is_url(out) else str(Path(out).resolve()),
                                   "weights_dir": weights_dir, "syncnet": syncnet,
                                   "syncnet_gpus": syncnet_gpus, "env": storage.forward_env()},
            max_restarts=-1, max_task_retries=0)
    unit_file = {u["unit_id"]: u["clip_id"] for u in units}
    left = {}
    for u in units:
        left[u["clip_id"]] = left.get(u["clip_id"], 0) + 1
    pending, since = [], time.monotonic()

    def flush():
        try:
            store.commit_payloads(pending)
        except storage.StorageError:
            raise
        except OSError as e:
            raise storage.StorageError(f"cannot write the results to {out}: {e}") from None
        pending.clear()

    try:
        for batch in ds.iter_batches(batch_size=None):
            for payload in batch["payload"]:
                if payload:
                    if not pending:
                        since = time.monotonic()
                    pending.append(payload)
                    if len(pending) >= work.BATCH_UNITS:
                        flush()
            for err in batch["storage_error"]:
                if err:
                    raise storage.StorageError(f"a worker could not use the storage: {err}")
            if pending and time.monotonic() - since >= work.BATCH_SECONDS:
                flush()
            if bar is not None:
                _update_bar(bar, batch, unit_file, left)
    except BaseException:
        if pending:                # keep what came back (a stopped run resumes after it)
            try:
                flush()
            except Exception as e:  # noqa: BLE001 - the first error is the one to report
                log.warning("could not write %d finished units: %s", len(pending), e)
        raise
    if pending:
        flush()


def _update_bar(bar: StageBar, batch: dict, unit_file: dict, left: dict) -> None:
    """Progress of the analysis: units, files whose every unit is done, segments, and the
    provisional accepted / rejected counts (-1 from a worker: a quantile threshold, unknown)."""
    files = 0
    for uid in batch["unit_id"]:
        f = unit_file.get(uid)
        if f is not None:
            left[f] -= 1
            files += left[f] == 0
    acc, rej = [int(x) for x in batch["accepted"]], [int(x) for x in batch["rejected"]]
    bar.update(len(batch["unit_id"]), rated=files, files=files, segments=int(sum(batch["segments"])),
               accepted=None if min(acc, default=0) < 0 else sum(acc),
               rejected=None if min(rej, default=0) < 0 else sum(rej))


def _readable_sample(paths: list[str], tries: int = 20) -> list[str]:
    """One input the driver can read (a list may name missing files: those are rows, not a
    storage problem), for the node check; [] when none of the first `tries` exists."""
    from ifmdm_data.io.paths import fs_path

    for p in paths[:tries]:
        if storage.exists(p if storage.is_url(p) else fs_path(p)):
            return [p]
    return []


def run_filter(inputs: list[str], out_dir: str, cfg: FilterConfig, workers: int | None = None,
               ray_address: str | None = None, weights_dir: str | None = None,
               overwrite: bool = False, progress: bool = True, syncnet: str | None = None,
               syncnet_gpus: float = 0.0) -> dict:
    """The whole `filter` stage. Returns the run summary (also saved as OUT/summary.json).

    syncnet: syncnet_python's `syncnet_v2.model` for the SyncNet sync check (checked here,
    before any Ray work); syncnet_gpus: Ray GPUs per analysis actor (0: SyncNet on CPU)."""
    import ray

    t_start = time.time()
    keyed = resolve_keyed(inputs)
    paths = [p for p, _ in keyed]
    ids = {p: clip_id(k) for p, k in keyed}
    if syncnet_gpus < 0 or (syncnet_gpus and not syncnet):
        raise InputError("--syncnet-gpus must be >= 0 and needs --syncnet")
    if syncnet:                          # a bad weights file fails before any work
        from ifmdm_data.faces.syncnet import load_filter_syncnet
        load_filter_syncnet(syncnet)
    out = storage.prepare_output(out_dir)
    _check_resume(out, _fingerprint(cfg, weights_dir, syncnet), overwrite)
    if cfg.identity.enabled:                 # dlib's weights and Chromaprint, before any work
        from ifmdm_data.filter.identify import check_available
        check_available(cfg.identity)
    if cfg.analysis.backend != "mediapipe":  # fail before starting Ray when weights are missing
        from ifmdm_data.faces.backends.weights import check_weights
        check_weights(cfg.analysis.backend, weights_dir)
    store = PartStore(out)
    init_ray(ray_address, workers, verbose=log.isEnabledFor(logging.INFO))
    if syncnet_gpus and ray.cluster_resources().get("GPU", 0) < syncnet_gpus:
        # actors asking for GPUs that do not exist would wait forever
        raise InputError(f"--syncnet-gpus {syncnet_gpus:g}: the Ray cluster has "
                         f"{ray.cluster_resources().get('GPU', 0):g} GPUs; drop --syncnet-gpus "
                         f"to run SyncNet on the workers' CPUs")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False     # one line per stage of our own instead (console.StageBar)
    ctx.max_errored_blocks = -1          # a unit whose worker keeps crashing becomes a row
    n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    from ifmdm_data.filter.preflight import check_nodes    # every node reads the inputs (and reaches the bucket)
    check_nodes(read=_readable_sample(paths), write=str(out) if storage.is_url(out) else None)

    # 1. probe (cached: OUT/_work/probe.parquet)
    probe_cache = storage.join(out, "_work", "probe.parquet")
    probed = storage.read_parquet(probe_cache).to_pandas() if storage.exists(probe_cache) else pd.DataFrame(
        columns=["path", "clip_id", "probe_json", "probe_error", "probe_detail"])
    todo = sorted(set(paths) - set(probed["path"]))
    if todo:
        log.info("probing %d files", len(todo))
        items = [{"path": p, "clip_id": ids[p]} for p in todo]
        ds = ray.data.from_items(items, override_num_blocks=min(len(items), 8 * n_workers))
        bar = StageBar("probe", len(items), "files", enabled=progress)
        new = []
        for b in ds.map(_probe_row, num_cpus=0.5, fn_kwargs={"env": storage.forward_env()}).iter_batches(
                batch_size=None, batch_format="pandas"):
            new.append(b)
            bar.update(len(b), unreadable=int((b["probe_error"] != "").sum()))
        bar.close()
        probed = pd.concat([probed, *new], ignore_index=True)
        from ifmdm_data.schema import write_parquet_atomic
        import pyarrow as pa
        write_parquet_atomic(pa.Table.from_pandas(probed, preserve_index=False), probe_cache)
    probed = probed[probed["path"].isin(paths)].copy()
    probed["clip_id"] = probed["path"].map(ids)   # a cache of other input roots: today's ids

    # 2. plan work units; files that failed the probe are rows at once
    done = store.done()
    done_before = set(done)
    units, failed = [], []
    for r in probed.itertuples():
        rec = json.loads(r.probe_json)
        if r.probe_error:
            uid = f"{r.clip_id}_w0000"
            if uid not in done:
                failed.append((uid, [failure_row(r.clip_id, r.path, r.probe_error, r.probe_detail, rec)]))
            continue
        units += [u for u in plan_units(r.clip_id, r.path, rec, cfg.segment.max_duration_s)
                  if u["unit_id"] not in done]
    store.write_many(failed)                  # in batches, like the analysed units
    log.info("%d files, %d work units to analyse (%d already done)", len(paths), len(units), len(done))

    # 3. analyse on an actor pool. Units lost to a dying worker (it takes the units in flight
    #    on that actor with it) get a second round, one unit per actor call at a time; a unit
    #    that kills its worker again becomes a `worker_crash` row.
    if units:
        bar = StageBar("analyse", len(units), "units", enabled=progress, rate_unit="clips")
        _analyse(units, cfg, out, weights_dir, n_workers, in_flight=2, store=store, syncnet=syncnet,
                 syncnet_gpus=syncnet_gpus, bar=bar)
        bar.close()
        done = store.done()
        lost = [u for u in units if u["unit_id"] not in done]
        if lost:
            log.warning("%d work units lost to a worker crash: retrying them one at a time", len(lost))
            _analyse(lost, cfg, out, weights_dir, n_workers, in_flight=1, store=store, syncnet=syncnet,
                     syncnet_gpus=syncnet_gpus)
            done = store.done()
        store.write_many([(u["unit_id"], [failure_row(u["clip_id"], u["path"], Reason.WORKER_CRASH,
                                                      "the worker process died on this unit twice",
                                                      u["probe"], u["start_s"], u["end_s"])])
                          for u in units if u["unit_id"] not in done])

    # 4. finalise (identity_id and dup_group are clustered there, from the units' signals)
    df = store.read_all()
    # this run's inputs by clip id (ids survive a move: parts analysed under another mount
    # point or input folder are this run's files at their new paths)
    path_of = {cid: p for p, cid in ids.items()}
    df = df[df["clip_id"].isin(path_of)].copy()
    df["path"] = df["clip_id"].map(path_of)
    counts = write_manifests(df, out, cfg)
    elapsed = time.time() - t_start
    summary = {"inputs": len(paths), **counts, "units_analysed": len(units),
               "units_skipped": len(done_before), "elapsed_s": round(elapsed, 2),
               "files_per_s": round(len(paths) / elapsed, 3) if elapsed else None,
               "workers": n_workers, "backend": cfg.analysis.backend,
               "syncnet": os.path.abspath(syncnet) if syncnet else None, "config": cfg.to_dict()}
    write_json_atomic(summary, storage.join(out, "summary.json"))
    # the trainer's levels, fitted to the subsets found, unless a curriculum.yaml is there
    from ifmdm_data.filter.curriculum_template import write_curriculum
    written, notes = write_curriculum(out, counts["subsets"])
    if notes:
        log.warning("%s fitted to the subsets found: %s", written, "; ".join(notes))
    return summary
