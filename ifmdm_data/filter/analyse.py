"""Per-segment analysis: one decode pass over a work unit (a file, or a window of a long file),
split at scene cuts, face models on the analysis grid, per-frame signals, segment statistics.

Pure with respect to Ray: `analyse_unit(unit, cfg, models, speech, syncnet)` takes a plain record and
returns plain records; the Ray actor in `pipeline.py` only holds the models.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from ifmdm_data.faces import signals as sig
from ifmdm_data.faces.backends.base import FaceModels
from ifmdm_data.faces.counting import detect_faces
from ifmdm_data.filter.config import FilterConfig
from ifmdm_data.errors import ClipError
from ifmdm_data.reasons import Reason, Stage2Reason
from ifmdm_data.filter.scenes import SceneCutDetector, frame_histogram
from ifmdm_data.media.video import analysis_size, iter_frames


@dataclass
class _Accumulator:
    """Per-frame signals of one segment while it is being decoded."""

    start_s: float
    cut_before: bool
    t: list = field(default_factory=list)
    n_faces: list = field(default_factory=list)       # -1 where the detector did not run
    det_h: list = field(default_factory=list)         # tallest detector box (px), NaN if none/not run
    lms: list = field(default_factory=list)           # (P, 3) or None
    box: list = field(default_factory=list)
    sharp: list = field(default_factory=list)
    lip_energy: list = field(default_factory=list)
    eye: list = field(default_factory=list)
    cam: list = field(default_factory=list)
    oof: list = field(default_factory=list)
    prev_crop: Optional[np.ndarray] = None
    sync: Optional[tuple] = None                      # SyncNet windows: (crops, times) or None
    dense: Optional[tuple] = None                     # lip motion of every decoded frame: (t, energy)
    keep: list = field(default_factory=list)          # (t, RGB) analysed frames for the identify step
    keep_every: float = 0.0                           # their spacing (s): doubles to stay <= KEEP_MAX


KEEP_MAX = 32           # analysed frames kept per segment for the identify step (~22 MB at 640x360)


def keep_frame(acc: "_Accumulator", t: float, rgb: np.ndarray) -> None:
    """Keep analysed frames evenly spaced over the segment, at most KEEP_MAX: every analysed
    frame at first; when full, every second one is dropped and the spacing doubles."""
    if acc.keep and t < acc.keep[-1][0] + acc.keep_every - 1e-6:
        return
    acc.keep.append((t, rgb))
    if len(acc.keep) > KEEP_MAX:
        acc.keep = acc.keep[::2]
        acc.keep_every = max(acc.keep_every, acc.keep[1][0] - acc.keep[0][0]) if len(acc.keep) > 1 else acc.keep_every


def identity_frames(keep: list, n: int) -> list:
    """`n` RGB frames spread evenly over a segment's kept (t, RGB) frames (all when fewer)."""
    if len(keep) > n:
        keep = [keep[int(i)] for i in np.linspace(0, len(keep) - 1, n).round().astype(int)]
    return [rgb for _, rgb in keep]


def _nan_stat(fn, x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(fn(x)) if x.size else float("nan")


def _every(rate_hz: float, fps: float) -> int:
    return max(1, int(round(fps / rate_hz)))


def _sync_collector(cfg: FilterConfig, probe: dict):
    """The SyncNet window collector of a unit: crops from the full-resolution decoded frames,
    converting only the crop region (`video.frame_region_bgr`)."""
    from ifmdm_data.faces.syncnet import SyncWindowCollector, syncnet_face_crop_from
    from ifmdm_data.media.video import frame_region_bgr

    w, h, rot = int(probe["width"]), int(probe["height"]), int(probe.get("rotation", 0) or 0)

    def crop(frame, box):
        return syncnet_face_crop_from(lambda *r: frame_region_bgr(frame, *r, rotation=rot), w, h, *box)
    return SyncWindowCollector(cfg.audio.sync_every_s, crop)


def analyse_unit(unit: dict, cfg: FilterConfig, models: FaceModels, speech=None, syncnet=None) -> list[dict]:
    """Analyse one work unit. Returns one result per segment: {'row': stats, 'tracks': arrays}.

    unit: {clip_id, path, start_s, end_s, probe: {...}} (probe as `probe.probe_file` returns).
    syncnet: a `syncnet.SyncNetPython` (`filter --syncnet`) or None: with it, every decoded
    frame is a candidate for the sparse SyncNet windows (`syncnet.SyncWindowCollector`, face
    box of the latest analysed frame with a face), scored per segment in `_audio_stats`.
    A per-clip failure raises ClipError; the caller turns it into a rejection row.
    """
    a = cfg.analysis
    probe = unit["probe"]
    src_w, src_h = int(probe["width"]), int(probe["height"])
    size = analysis_size(src_w, src_h, a.max_side)
    to_src = src_w / size[0]
    scheme = models.landmarks.scheme
    det_every = _every(a.detect_fps, a.fps)
    seg_every = _every(a.segmentation_fps, a.fps)
    # scene cuts are looked for on every decoded frame, so their times do not depend on the
    # analysis rate; `cut_at` holds the latest cut not yet applied to the analysed frames
    cut_at: list[float] = []
    sync_closed: list = []              # SyncNet windows of the segment a cut just ended
    cuts = SceneCutDetector(cfg.segment.scene_threshold, min_gap_s=0.25) if cfg.segment.scene_cut else None
    collector = _sync_collector(cfg, probe) if syncnet is not None else None
    if collector is not None:
        collector.start(unit["start_s"])
    # lip motion at the video's own rate for the AV-sync score (issue 11)
    dense = sig.DenseMouth(scheme, a.lip_crop_px, size, probe.get("rotation", 0)) if a.dense_mouth else None
    dense_closed: list = []

    def on_decoded(t, frame):
        if cuts is not None and cuts.feed(frame_histogram(frame), t)[0]:
            cut_at[:] = [t]
            if collector is not None:
                sync_closed[:] = [collector.close()]
                collector.start(t)
            if dense is not None:
                dense_closed[:] = [dense.close()]
        if collector is not None:
            collector.feed(t, frame)
        if dense is not None:
            dense.feed(t, frame)
    cam = sig.CameraMotion()
    models.landmarks.reset()

    segments: list[_Accumulator] = []
    acc = _Accumulator(start_s=unit["start_s"], cut_before=False)
    person = None
    k = 0
    # decode only reference frames when the source has at least ~2 frames per analysed frame
    # (not with SyncNet: its windows need consecutive frames)
    skip = bool(a.skip_nonref) and collector is None and float(probe.get("fps") or 0) >= 1.9 * a.fps
    for t, rgb in iter_frames(unit["path"], unit["start_s"], unit["end_s"], a.fps, size,
                              probe.get("rotation", 0), skip_nonref=skip,
                              on_decoded=on_decoded if cuts is not None or collector is not None
                              or dense is not None else None):
        if cut_at:
            if acc.t:
                acc.sync = sync_closed[0] if sync_closed else None
                acc.dense = dense_closed[0] if dense_closed else None
                segments.append(acc)
                acc = _Accumulator(start_s=cut_at[0], cut_before=True)
                models.landmarks.reset()
                cam.reset()
                person = None
                k = 0
            cut_at.clear()
            sync_closed.clear()
            dense_closed.clear()
        if cfg.identity.enabled:          # frames for the identify step: no second decode
            keep_frame(acc, t, rgb)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        n_faces, det_h = -1, np.nan
        if k % det_every == 0:
            # full frame, then 2x2 tiles when it finds no face or only small ones (issue 11;
            # analysis.second_pass / second_pass_small_frac / tile_frac)
            faces = detect_faces(models.detector, rgb, a.second_pass, a.second_pass_small_frac, a.tile_frac)
            n_faces = int(len(faces))
            if n_faces:
                det_h = float((faces[:, 3] - faces[:, 1]).max())
        if k % seg_every == 0 or person is None:
            person = models.segmenter.person_mask(rgb)
        lm = models.landmarks.landmarks(rgb)
        acc.t.append(t)
        acc.n_faces.append(n_faces)
        acc.det_h.append(det_h)
        # camera motion between detector frames (0.4 s apart at the defaults): a pan or a
        # shake lasts longer than that, and LK flow every analysed frame cost ~2 ms a frame
        acc.cam.append(cam(gray, person) if k % det_every == 0 else np.nan)
        if lm is not None:
            box = sig.landmark_box(lm, scheme)
            crop = sig.mouth_crop(gray, lm, scheme, a.lip_crop_px)
            acc.lms.append(lm)
            acc.box.append(box)
            acc.oof.append(sig.out_of_frame(box, size[0], size[1]))
            acc.sharp.append(sig.sharpness(gray, box, a.face_crop_px) if k % det_every == 0 else np.nan)
            acc.lip_energy.append(sig.crop_energy(acc.prev_crop, crop))
            acc.prev_crop = crop
            acc.eye.append(sig.eye_openness(lm, scheme))
            if dense is not None:
                dense.set_landmarks(lm)
            if collector is not None:       # the box of all landmarks, as ifmdm-eval's LSE crops
                lo, hi = lm[:, :2].min(0) * to_src, lm[:, :2].max(0) * to_src
                collector.set_box(*((lo + hi) / 2), max(hi - lo) / 2)
        else:
            acc.lms.append(None)
            acc.box.append(np.full(4, np.nan, np.float32))
            acc.oof.append(False)
            acc.sharp.append(np.nan)
            acc.lip_energy.append(np.nan)
            acc.prev_crop = None
            acc.eye.append(np.nan)
            if dense is not None:
                dense.set_landmarks(None)
        k += 1
    if acc.t or not segments:
        acc.sync = collector.close() if collector is not None else None
        acc.dense = dense.close() if dense is not None else None
        segments.append(acc)
    if not segments[0].t:
        raise ClipError(Reason.TOO_FEW_FRAMES, "no frame decoded in the segment range")

    results = []
    for i, s in enumerate(segments):
        end = segments[i + 1].start_s if i + 1 < len(segments) else unit["end_s"]
        results.append(_summarise(s, end, unit, cfg, scheme, size, to_src, speech, syncnet))
    return results


def _summarise(s: _Accumulator, end_s: float, unit: dict, cfg: FilterConfig, scheme, size,
               to_src: float, speech, syncnet=None) -> dict:
    a = cfg.analysis
    det_every = _every(a.detect_fps, a.fps)
    n = len(s.t)
    t = np.asarray(s.t, np.float64)
    P = scheme.n_points
    lms = np.full((n, P, 3), np.nan, np.float32)                  # (T, P, 3)
    for i, lm in enumerate(s.lms):
        if lm is not None:
            lms[i] = lm
    has = np.isfinite(lms[:, 0, 0])
    n_face = int(has.sum())
    det = np.asarray(s.n_faces)
    det_ran = det >= 0
    row = {
        "start_s": float(s.start_s), "end_s": float(end_s), "duration_s": float(end_s - s.start_s),
        "scene_cut_before": bool(s.cut_before),
        "n_analysed": n, "analysis_fps": float(a.fps),
        "analysis_width": int(size[0]), "analysis_height": int(size[1]),
        "landmark_scheme": scheme.name,
        "face_fraction": n_face / n if n else 0.0,
        "detected_face_fraction": float(np.mean(det[det_ran] >= 1)) if det_ran.any() else 0.0,
        "multi_face_fraction": float(np.mean(det[det_ran] >= 2)) if det_ran.any() else 0.0,
        "max_faces": int(det.max()) if n else 0,
    }
    pose = np.full((n, 6), np.nan, np.float32)
    mouth = np.full(n, np.nan, np.float32)
    disp = np.full(n, np.nan, np.float32)
    sizes = np.full(n, np.nan, np.float32)
    if n_face >= 2:
        ref = np.nanmedian(lms[has], axis=0)                      # (P, 3) the segment's mean face
        ref_size = sig.face_size(ref, scheme)
        for i in np.flatnonzero(has):
            pose[i] = sig.head_pose(lms[i], ref, scheme)
            mouth[i] = sig.mouth_opening(sig.pose_normalise(lms[i], ref, scheme), scheme, ref_size)
            sizes[i] = sig.face_size(lms[i], scheme)
        disp = sig.rigid_displacement(lms, scheme, sizes).astype(np.float32)
    boxes = np.asarray(s.box, np.float32)                          # (T, 4) analysis px
    box_h = boxes[:, 3] - boxes[:, 1]
    # Head speed: RMS displacement of the rigid points over a ~0.4 s lag, in face sizes per
    # second. The lag keeps landmark jitter (frame to frame) from looking like motion.
    lag = max(1, int(round(0.4 * a.fps)))
    speed = np.full(n, np.nan, np.float32)
    if n > lag:
        idx = list(scheme.rigid)
        d = np.sqrt(np.mean(np.sum((lms[lag:, idx, :2] - lms[:-lag, idx, :2]) ** 2, -1), -1))
        fs = np.nanmedian(sizes) if np.isfinite(sizes).any() else np.nan
        speed[lag:] = d / fs / np.maximum(t[lag:] - t[:-lag], 1e-3)
    lip_e = np.asarray(s.lip_energy, np.float32)
    cam = np.asarray(s.cam, np.float32)
    row.update({
        # when the mesh never found the face (too small for it), the detector's boxes give the
        # size, so decide() can say face_too_small instead of no_face
        "face_px": (_nan_stat(np.median, box_h) if n_face else _nan_stat(np.median, s.det_h)) * to_src,
        "face_rel": _nan_stat(np.median, box_h) / size[1],
        "out_of_frame_fraction": float(np.mean(np.asarray(s.oof)[has])) if n_face else 0.0,
        "sharpness": _nan_stat(np.median, s.sharp),
        "camera_motion": _nan_stat(np.median, cam) * a.fps / det_every,
        "head_motion": _nan_stat(np.mean, speed),
        "head_extent": _nan_stat(lambda x: np.sqrt(np.mean(x ** 2)), disp),
        "head_speed_mean": _nan_stat(np.mean, speed),
        "head_speed_std": _nan_stat(np.std, speed),
        "yaw_std": _nan_stat(np.std, pose[:, 0]), "pitch_std": _nan_stat(np.std, pose[:, 1]),
        "roll_std": _nan_stat(np.std, pose[:, 2]),
        "yaw_mean": _nan_stat(np.mean, pose[:, 0]), "pitch_mean": _nan_stat(np.mean, pose[:, 1]),
        "mouth_open_mean": _nan_stat(np.mean, mouth), "mouth_open_std": _nan_stat(np.std, mouth),
        "lip_energy": _nan_stat(np.mean, lip_e),
        "eye_open_mean": _nan_stat(np.mean, s.eye),
    })
    row.update(_audio_stats(unit, s.start_s, end_s, t, mouth, cfg, speech, syncnet, s.sync, s.dense))
    tracks = {
        "t": t, "n_faces": det.astype(np.int16),
        "box": boxes * to_src, "landmarks": lms * to_src, "pose": pose,
        "mouth_open": mouth, "eye_open": np.asarray(s.eye, np.float32),
        "lip_energy": lip_e, "head_displacement": disp, "head_speed": speed, "camera_motion": cam,
        "sharpness": np.asarray(s.sharp, np.float32),
        # lip motion of every decoded frame (AV sync; not written to the tracks file)
        "motion_t": s.dense[0] if s.dense is not None else np.zeros(0),
        "mouth_motion": s.dense[1] if s.dense is not None else np.zeros(0),
    }
    return {"row": row, "tracks": tracks, "frames": identity_frames(s.keep, cfg.identity.frames)}


def _audio_stats(unit, start_s, end_s, t, mouth, cfg: FilterConfig, speech, syncnet=None,
                 sync=None, dense=None) -> dict:
    """Speech presence, loudness, audio coverage (fraction of [start_s, end_s) with decoded
    audio, not padding) and audio-visual agreement: `av_score` (the lip motion of every
    decoded frame `dense` = (times, energy) from `signals.DenseMouth`, and the landmark mouth
    opening, against the speech envelope), and SyncNet scores of the segment's windows
    `sync` = (crops, times) when `syncnet` is given; `audio_error` holds a stage-2 reason."""
    from ifmdm_data.media import audio as au, loudness
    from ifmdm_data.faces.syncnet import SYNC_NONE

    out = {"speech_ratio": float("nan"), "loudness_db": float("nan"), "audio_coverage": float("nan"),
           "av_corr": float("nan"), "av_lag_s": float("nan"), "av_corr_zero": float("nan"), "audio_error": "", **SYNC_NONE}
    if not unit["probe"].get("has_audio"):
        out["audio_error"] = Stage2Reason.NO_AUDIO.value
        return out
    sr = cfg.audio.sample_rate
    try:
        wav, out["audio_coverage"] = au.load_audio(unit["path"], start_s, end_s, sr,
                                                   return_coverage=True)
    except ClipError as e:
        out["audio_error"] = str(e.reason)
        return out
    out["loudness_db"] = loudness.loudness_dbfs(wav)
    if speech is not None:
        out["speech_ratio"] = speech.speech_ratio(wav, sr)
    out.update(av_score(t, mouth, dense, wav, start_s, end_s, cfg))
    if syncnet is not None and sync is not None and len(sync[0]):
        from ifmdm_data.faces.syncnet import SYNCNET_PY_FPS, sync_scores
        crops, times = sync
        starts = np.round((times - start_s) * SYNCNET_PY_FPS).astype(np.int64)   # 25 fps frames
        out.update(sync_scores(syncnet, crops, starts, wav))
    return out


def av_score(t, mouth, dense, wav, start_s, end_s, cfg: FilterConfig) -> dict:
    """The built-in AV-sync score of a segment (see `_audio_stats`): {'av_corr', 'av_lag_s',
    'av_corr_zero'}. `wav` starts at start_s; `t`, `mouth`: the analysed frames' times and
    mouth opening; `dense`: (times, lip-motion energy) of every decoded frame, or None.
    With `dense`: av_corr = (1 - w) * lip-motion score (`avsync.motion_sync`) + w * landmark
    score (`avsync.av_sync` at the analysis fps), w = `avsync.AV_LANDMARK_WEIGHT` (the
    lip-motion score alone when the landmark one is NaN; NaN when the lip-motion one is),
    av_lag_s the lip-motion score's. Without `dense` (`analysis.dense_mouth` off, or a pixel
    format without a luma plane): the landmark score."""
    from ifmdm_data.media import avsync, loudness

    env = loudness.envelope(wav, cfg.audio.sample_rate, np.asarray(t, np.float64) - start_s)
    lm = avsync.av_sync(mouth, env, cfg.analysis.fps, cfg.audio.max_lag_s)
    if dense is None or len(dense[0]) < 2:
        return lm
    mo = avsync.motion_sync(dense[0], dense[1], wav, cfg.audio.sample_rate, start_s, end_s,
                        cfg.audio.max_lag_s)
    w = avsync.AV_LANDMARK_WEIGHT
    out = dict(mo)                     # the lag is the lip-motion score's (25 Hz steps)
    for k in ("av_corr", "av_corr_zero"):
        if np.isfinite(mo[k]) and np.isfinite(lm[k]):
            out[k] = float((1 - w) * mo[k] + w * lm[k])
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def load_models(cfg: FilterConfig, weights_dir: Optional[str] = None):
    """(FaceModels, SpeechDetector) for one worker: call once per actor."""
    from ifmdm_data.media.vad import SpeechDetector
    from ifmdm_data.faces.backends import build_models

    models = build_models(cfg.analysis.backend, weights_dir, cfg.analysis.min_detection_confidence)
    return models, SpeechDetector(cfg.audio.vad_threshold)
