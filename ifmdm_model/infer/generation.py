"""Talking-head generation and driving-video reenactment: `generate` (portrait + speech ->
mp4) and `reenact` (portrait + driving video -> mp4, stage 1 alone), streaming motion chunks
to the stage-1 decoder and the mp4 writer, with per-stage timing and a progress line.

The steps are described in the package docstring (`ifmdm_model.infer`); the motion comes from
the recursive chunk sampler (`infer.chunks.sample_motion_chunks`), the models from
`infer.models`, the media I/O from `infer.media_io`, option checks from `infer.options`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ifmdm_model.infer.chunks import ChunkSampling, sample_motion_chunks
from ifmdm_model.infer.media_io import (AUDIO_RATE, InferenceError, VideoWriter, check_face, load_image,
                                        read_audio, resize_frames, to_tensor, to_uint8, video_fps,
                                        video_frames)
from ifmdm_model.infer.models import Models, load_models, speech_extractor
from ifmdm_model.infer.options import autocast_for, check_output_options, motion_mean_arg, output_path
from ifmdm_data.shard.crop import square_resize

log = logging.getLogger("ifmdm_model")

SILENCE_DBFS = -60.0


class _Timer:
    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.t: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name):
        if self.sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0


def _maybe_compile(fn, compile: bool):
    if not compile:
        return fn
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as e:  # noqa: BLE001 - compile is an optimisation only
        log.warning("torch.compile unavailable (%s); running eagerly", e)
        return fn


class _Progress:
    """One progress line on stderr: redrawn in a terminal; in a log (not a TTY) one line per
    10% of the total, so piped output has no carriage returns."""

    def __init__(self, total: int, enabled: bool, what: str = "frames"):
        self.total, self.enabled, self.what = total, enabled and total > 0, what
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.next_tenth = 1

    def update(self, n: int):
        if not self.enabled:
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        line = f"{n}/{self.total} {self.what} ({n / dt:.1f} fps)"
        if self.tty:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif n * 10 >= self.next_tenth * self.total:
            print(line, file=sys.stderr, flush=True)
            self.next_tenth = n * 10 // self.total + 1

    def close(self):
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)



def _decode_batch(decode, appearance, m: torch.Tensor, batch: int, pad: bool) -> torch.Tensor:
    """decode(appearance, m) -> images; with `pad` (torch.compile, static shapes) a short last
    batch is padded to `batch` (repeating its last motion) and the extra frames dropped."""
    n = m.shape[0]
    if pad and n < batch:
        m = torch.cat([m, m[-1:].expand(batch - n, -1)])
    return decode(appearance, m)[:n]


def _encode_image(models, image, face_check: bool, amp):
    """E_v on the input image once: (appearance tensors A_l in float32, m' (1, D))."""
    rgb = load_image(image)
    if face_check:
        check_face(rgb)
    img = to_tensor(square_resize(rgb, models.image_size)[None], models.device)
    with amp:
        appearance, m_in = models.stage1.encode(img)
    return [a.float() for a in appearance], m_in


@torch.inference_mode()
def generate(run_dir, image, audio, out_path, fps: float = 25.0, steps: int = 25, cfg: float = 2.5,
             motion_std: float = 0.1, motion_mean="input", seed: int = 0, size: Optional[int] = None,
             device="auto", dtype: str = "fp32", compile: bool = False, overwrite: bool = False,
             batch_frames: int = 16, progress: bool = True, wav2vec2: Optional[str] = None,
             face_check: bool = True, return_motion: bool = False, models: Optional[Models] = None,
             eta: float = 0.0, first_hint: str = "input", features=None,
             guidance_rescale: float = 1.0, lora=None) -> dict:
    """Image + speech -> talking-head mp4 at `out_path`. Returns stats: frames, seconds (audio),
    fps (frames per second of wall time after the models are loaded), first_frame_latency_s
    (from the start of the request, models loaded, to the first frame handed to the encoder),
    load_s, per-stage seconds {encode, features, motion, decode, write}, and with
    `return_motion` the generated motion (frames, D) float32. `models`: preloaded
    `load_models(...)` (benchmarks, servers); `features`: a preloaded speech feature
    extractor (`ifmdm_data.features.speech.build_features(...)`, the one the stage-2 checkpoint was
    trained with; default: built from the checkpoint's record). `first_hint`: "input"
    (DESIGN.md: the first chunk's hint is m') or "learned" (the null hint embedding that
    stage 2 trains on clip-start windows); `eta`: DDIM eta (0: deterministic given x_T).
    `guidance_rescale` in [0, 1]: 1 (default) rescales the speech-guided prediction to the
    conditional prediction's std over frames so that the generated motion std follows
    `motion_std` at any `cfg` (without it, w = 2.5 inflated the std 1.5-1.7x on a toy where
    m_sigma is the clip std); 0: plain CFG (`ifmdm-infer --cfg-rescale 0`). The motion options
    (steps, cfg, guidance_rescale, eta, motion_std, motion_mean, first_hint, seed) go to the
    recursive chunk sampler as one `ChunkSampling` (`chunks.sample_motion_chunks`).

    Streaming: speech features are computed lazily (`ifmdm_data.features.align.FrameStream`): motion
    chunk k reads the per-frame features of its n_f frames, which computes only the native
    features those frames need (log-mel: 2 s blocks; wav2vec2: the extractor's next 60 s
    chunk, `Wav2Vec2Features.stream`), equal to the whole-clip computation up to float
    error. So the first frame is written after one block / chunk of features, one motion
    chunk and one decode batch, whatever the length of the audio.
    Memory: bounded (independent of the audio length) for features (one block / chunk of
    native features), motion (one chunk + one decode batch) and frames (one decode batch);
    what scales with the audio length is the decoded input audio, held whole (float32 16 kHz
    mono, 64 KB per second: 38 MB for 10 minutes; the writer muxes it as frames are written),
    and with `return_motion` the returned motion (D floats per frame). Before the first frame
    the whole audio is read once more for cheap statistics: its loudness, its mean / variance
    (wav2vec2 normalisation) and, for wav2vec2 checkpoints with GroupNorm ("group": base,
    base-960h), a pass of the first conv layer (~7% of a forward), so for those the first
    frame latency grows slowly with the audio length."""
    from ifmdm_data.media.loudness import loudness_dbfs
    from ifmdm_data.features import stream_frames

    t_load = time.perf_counter()
    if models is None:
        models = load_models(run_dir, device, lora=lora)
    load_s = time.perf_counter() - t_load
    dev, s1, s2 = models.device, models.stage1, models.stage2
    check_output_options(fps, batch_frames, size, models.image_size)
    n_f, D = s2.cfg.n_frames, models.motion_dim
    if not isinstance(steps, int) or not 1 <= steps <= models.schedule.num_timesteps:
        raise InferenceError(f"--steps must be an integer in [1, {models.schedule.num_timesteps}], got {steps!r}")
    if not (math.isfinite(float(motion_std)) and float(motion_std) >= 0):
        raise InferenceError(f"--motion-std must be >= 0, got {motion_std!r}")
    if not math.isfinite(float(cfg)):
        raise InferenceError(f"--cfg must be finite, got {cfg!r}")
    if not (math.isfinite(float(guidance_rescale)) and 0.0 <= float(guidance_rescale) <= 1.0):
        raise InferenceError(f"--cfg-rescale must be in [0, 1], got {guidance_rescale!r}")
    mean_mode = motion_mean_arg(motion_mean, D)
    if first_hint not in ("input", "learned"):
        raise InferenceError(f"--first-hint must be input or learned, got {first_hint!r}")
    amp = autocast_for(dev, dtype)
    out = output_path(out_path, overwrite)
    timer = _Timer(dev)
    t0 = time.perf_counter()

    # inputs: image -> A_l, m'
    with timer("encode"):
        appearance, m_in = _encode_image(models, image, face_check, amp)
        m_in = m_in.float()                                            # (1, D)

    # audio -> per-frame speech features
    with timer("features"):
        wav = read_audio(audio)
        if wav.size == 0:
            raise InferenceError(f"audio {audio} is empty")
        if loudness_dbfs(wav) < SILENCE_DBFS:
            raise InferenceError(f"audio {audio} is silent (below {SILENCE_DBFS:.0f} dBFS): nothing to lip-sync")
        seconds = wav.size / AUDIO_RATE
        n_frames = int(round(seconds * fps))
        if n_frames < 1:
            raise InferenceError(f"audio {audio} is too short ({seconds:.3f} s) for one frame at {fps} fps")
        feats = features
        if feats is None:
            feats = speech_extractor(models.speech_feature, s2.cfg.speech_dim, wav2vec2, device=str(dev))
        elif int(feats.dim) != int(s2.cfg.speech_dim):
            raise InferenceError(f"speech features have dim {feats.dim} but the stage-2 model expects "
                                 f"{s2.cfg.speech_dim}: use the extractor it was trained with")
        speech = stream_frames(feats, wav, n_frames, fps)       # read(n): the next n frames (n, S)

    sampling = ChunkSampling(steps=steps, cfg=cfg, guidance_rescale=guidance_rescale, eta=eta,
                             motion_std=motion_std, motion_mean=mean_mode, first_hint=first_hint, seed=seed)
    model_fn = _maybe_compile(s2, compile)
    decode = _maybe_compile(s1.decode, compile)

    writer = VideoWriter(out, size or models.image_size, fps, wav, overwrite=overwrite)
    bar = _Progress(n_frames, progress)
    first_frame = None
    motions: List[np.ndarray] = []
    chunks = sample_motion_chunks(model_fn, models.schedule, speech, n_frames, n_f, m_in, sampling,
                                  device=dev, amp=amp, timer=timer)
    pending: List[torch.Tensor] = []                                   # generated, not yet decoded
    done = 0
    try:
        for start, x in zip(range(0, n_frames, n_f), chunks):        # x: (length, D)
            length = x.shape[0]
            with timer("motion"):
                if return_motion:
                    motions.append(x.cpu().numpy())
                pending.append(x)
            queued = torch.cat(pending) if len(pending) > 1 else pending[0]
            last = start + length >= n_frames
            while queued.shape[0] >= batch_frames or (last and queued.shape[0] > 0):
                m = queued[:batch_frames]
                queued = queued[batch_frames:]
                with timer("decode"):
                    with amp:
                        frames = _decode_batch(decode, appearance, m, batch_frames, compile)
                    frames = resize_frames(to_uint8(frames), size)
                with timer("write"):
                    writer.write(frames)
                done += len(frames)
                if first_frame is None:
                    first_frame = time.perf_counter() - t0
                bar.update(done)
            pending = [queued] if queued.shape[0] else []
        with timer("write"):
            writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    total = time.perf_counter() - t0
    stats = {"output": str(out), "frames": done, "seconds": seconds, "fps_video": float(fps),
             "wall_s": total, "fps": done / total if total > 0 else float("inf"),
             "first_frame_latency_s": first_frame, "load_s": load_s,
             "stages_s": {k: timer.t.get(k, 0.0) for k in ("encode", "features", "motion", "decode", "write")},
             "steps": steps, "cfg": float(cfg), "cfg_rescale": float(guidance_rescale),
             "motion_std": float(motion_std), "seed": int(seed),
             "chunk_frames": n_f, "device": str(dev), "dtype": dtype,
             "stage1_checkpoint": str(models.stage1_ckpt), "stage2_checkpoint": str(models.stage2_ckpt),
             "lora": {f"stage{k}": v for k, v in models.adapters.items()}}
    if return_motion:
        stats["motion"] = np.concatenate(motions) if motions else np.zeros((0, D), np.float32)
    return stats


@torch.inference_mode()
def reenact(run_dir, image, driving_video, out_path, size: Optional[int] = None, device="auto",
            dtype: str = "fp32", compile: bool = False, overwrite: bool = False, batch_frames: int = 16,
            progress: bool = True, face_check: bool = True, models: Optional[Models] = None, lora=None) -> dict:
    """Motion transfer through stage 1 alone: the motion m of every driving frame (E_v) decoded
    with the appearance of `image`; the driving video's frame rate and audio (when present)."""
    from ifmdm_data.media.audio import load_audio
    from ifmdm_data.errors import ClipError

    t_load = time.perf_counter()
    if models is None:
        models = load_models(run_dir, device, need_stage2=False, lora=lora)
    load_s = time.perf_counter() - t_load
    dev, s1 = models.device, models.stage1
    p = Path(driving_video)
    if not p.is_file():
        raise InferenceError(f"driving video {p} does not exist")
    fps = video_fps(p)
    check_output_options(fps, batch_frames, size, models.image_size)
    amp = autocast_for(dev, dtype)
    out = output_path(out_path, overwrite)
    timer = _Timer(dev)
    t0 = time.perf_counter()
    with timer("encode"):
        appearance, _ = _encode_image(models, image, face_check, amp)
    with timer("features"):
        try:
            wav = load_audio(p, sample_rate=AUDIO_RATE)
        except ClipError:
            wav = None                                                 # no (decodable) audio: silent video
    decode = _maybe_compile(s1.decode, compile)
    writer = VideoWriter(out, size or models.image_size, fps, wav, overwrite=overwrite)
    bar = _Progress(0, False)
    done, first_frame = 0, None
    try:
        for batch in video_frames(p, models.image_size, batch_frames):
            with timer("motion"):
                with amp:
                    _, m = s1.encode(to_tensor(batch, dev))
            with timer("decode"):
                with amp:
                    frames = _decode_batch(decode, appearance, m.float(), batch_frames, compile)
                frames = resize_frames(to_uint8(frames), size)
            with timer("write"):
                writer.write(frames)
            done += len(frames)
            if first_frame is None:
                first_frame = time.perf_counter() - t0
            if progress and sys.stderr.isatty():
                print(f"\r{done} frames", end="", file=sys.stderr, flush=True)
        if done == 0:
            raise InferenceError(f"driving video {p} has no decodable frames")
        with timer("write"):
            writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if progress and done:
            print(("" if sys.stderr.isatty() else f"{done} frames"), file=sys.stderr)
        bar.close()
    total = time.perf_counter() - t0
    return {"output": str(out), "frames": done, "seconds": done / fps, "fps_video": fps, "wall_s": total,
            "fps": done / total if total > 0 else float("inf"), "first_frame_latency_s": first_frame,
            "load_s": load_s,
            "stages_s": {k: timer.t.get(k, 0.0) for k in ("encode", "features", "motion", "decode", "write")},
            "device": str(dev), "dtype": dtype, "stage1_checkpoint": str(models.stage1_ckpt),
            "lora": {f"stage{k}": v for k, v in models.adapters.items()}}
