"""Inference: one portrait + speech -> a talking-head mp4 (`ifmdm-infer`), and motion transfer
from a driving video through stage 1 alone (`ifmdm-infer --driving-video`).

Talking head (DESIGN.md, "Inference"):

1. The image is read (any format OpenCV or PIL can read), centre-cropped to a square and
   resized to the stage-1 model's `image_size`. There is NO face detection / alignment prior:
   the image is expected to be a frontal, roughly centred portrait framed like the training
   crops. (When mediapipe is installed, its face detector runs only to WARN when it finds zero
   or several faces.) E_v runs on it once: appearance tensors A_l and its motion m'.
2. The audio (any audio file, or the audio track of a video) is decoded to 16 kHz mono, and
   the speech features the stage-2 checkpoint was trained with are computed (log-mel or
   wav2vec2 from the checkpoint's `speech_feature` record; the wav2vec2 folder recorded there
   can be overridden) and aligned to video frames: n_frames = round(audio_seconds * fps).
   They are computed lazily, as motion chunks need them (`ifmdm_data.features.speech.FrameStream`):
   log-mel in 2 s blocks, wav2vec2 in the extractor's 60 s overlapping chunks, each computed
   when the first frame that needs it is generated; equal to the whole-clip computation.
3. Motion is generated chunk by chunk (n_f frames, the stage-2 model's `n_frames`): the first
   chunk's hint is m', each next chunk's hint is the last generated motion vector; m_mu is m'
   ("input"), the previous chunk's mean ("previous") or a user .npy; m_sigma = motion_std for
   every dimension. DDIM over `steps` respaced steps with classifier-free guidance on speech
   (both passes batched) and guidance rescale (`guidance_rescale`, default 1: the guided x0
   is rescaled to the conditional prediction's std over frames, so CFG does not inflate the
   motion std m_sigma asks for; `diffusion.rescale_guided_x0`), noise from a seeded CPU
   torch.Generator (same seed, same output on any device). The last chunk is padded (speech
   repeated) to n_f frames and trimmed.
4. Frames are decoded in batches of `batch_frames` by the stage-1 EMA decoder with the
   appearance tensors of step 1, converted to uint8 and written to H.264 (yuv420p) as they
   are produced (resized to `size` when given); the 16 kHz mono input audio is muxed as AAC
   alongside. The file is written under a temporary name next to the output and renamed at
   the end.

Memory is bounded by one block / chunk of speech features + one motion chunk + one decode
batch; only the decoded input audio (64 KB per second) is held whole (and the generated
motion when `return_motion`). The media I/O (image, audio, mp4 writer, driving video) is in
`media_io.py`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from ifmdm_data.errors import IfmdmError

from ifmdm_model.infer.media_io import (AUDIO_RATE, InferenceError, VideoWriter, check_face, load_image,
                       read_audio, resize_frames, square_resize, to_tensor, to_uint8, video_fps,
                       video_frames)

log = logging.getLogger("ifmdm_model")

SILENCE_DBFS = -60.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------

@dataclass
class Models:
    stage1: torch.nn.Module            # MotionAutoencoder (EMA weights), eval
    stage2: Optional[torch.nn.Module]  # MotionDiT (EMA weights), eval; None for reenactment
    schedule: object                   # DDPMSchedule or None
    speech_feature: dict
    image_size: int
    motion_dim: int
    device: torch.device
    stage1_ckpt: Path
    stage2_ckpt: Optional[Path]
    adapters: dict = field(default_factory=dict)   # {stage: adapter folder} merged in (`--lora`)


def _device(device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InferenceError(f"invalid --device {device!r} ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _read_state(ck: Path) -> dict:
    for f in ("state.json", "ema.safetensors"):
        if not (ck / f).is_file():
            raise InferenceError(f"checkpoint {ck} is incomplete: {f} is missing")
    try:
        state = json.loads((ck / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise InferenceError(f"{ck}/state.json is unreadable ({e})") from None
    if not isinstance(state, dict):
        raise InferenceError(f"{ck}/state.json is not a JSON object")
    return state


def _latest(folder: Path) -> Optional[Path]:
    from ifmdm_model.checkpoint import CheckpointError, latest_checkpoint
    try:
        return latest_checkpoint(folder) if folder.is_dir() else None
    except CheckpointError as e:
        raise InferenceError(str(e)) from None


def _load_ema(ck: Path):
    from safetensors.torch import load_file
    try:
        return load_file(str(ck / "ema.safetensors"))
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt checkpoint
        raise InferenceError(f"checkpoint {ck} is corrupt ({type(e).__name__}: {e})") from None


def _load_into(module, sd, where):
    from ifmdm_model.checkpoint import CheckpointError, load_weights
    try:
        load_weights(module, sd, where)
    except CheckpointError as e:
        raise InferenceError(str(e)) from None


def load_stage1(ck: Path, device: torch.device) -> torch.nn.Module:
    from ifmdm_model.stage1.model import STAGE1_CONFIGS, MotionAutoencoder, Stage1Config
    state = _read_state(ck)
    if isinstance(state.get("model_config"), dict):
        try:
            cfg = Stage1Config.from_dict(state["model_config"], where=f"{ck}/state.json model_config")
        except IfmdmError as e:
            raise InferenceError(str(e)) from None
    elif state.get("model") in STAGE1_CONFIGS:
        cfg = STAGE1_CONFIGS[state["model"]]
    else:
        raise InferenceError(f"{ck}/state.json has neither 'model_config' nor a known 'model'")
    model = MotionAutoencoder(cfg)
    _load_into(model, _load_ema(ck), f"{ck}/ema.safetensors")
    return model.to(device).eval().requires_grad_(False)


def _stage1_of_run(run: Path) -> Path:
    from ifmdm_model.checkpoint import resolve_stage1_checkpoint
    return resolve_stage1_checkpoint(run, error=InferenceError)


def load_models(run_dir, device="auto", need_stage2: bool = True, lora=None) -> Models:
    """The EMA models of a run folder (runs/x with stage1/latest and stage2/latest).

    Stage 1 is the checkpoint stage 2 was trained on (its recorded `stage1_checkpoint`) when it
    still exists, else runs/x/stage1/latest. `lora`: an `ifmdm-tune` output folder whose
    adapters (stage 1: lora/, stage 2: lora-stage2/) are merged in; each must have been tuned
    on exactly these weights."""
    from ifmdm_model.stage2.diffusion import DDPMSchedule
    from ifmdm_model.stage2.model import MotionDiT, Stage2Config

    run = Path(run_dir)
    if not run.is_dir():
        raise InferenceError(f"checkpoint folder {run} does not exist (give the run folder of "
                             f"`ifmdm-train -o`, e.g. runs/x)")
    dev = _device(device)
    s2 = None
    state2: dict = {}
    if need_stage2:
        s2 = _latest(run / "stage2")
        if s2 is None:
            raise InferenceError(f"no stage-2 checkpoint in {run}: expected {run}/stage2/latest "
                                 f"(train stage 2: ifmdm-train --curriculum ... -o {run} --stage 2)")
        state2 = _read_state(s2)
    s1 = None
    rec = state2.get("stage1_checkpoint")
    if rec and (Path(rec) / "ema.safetensors").is_file():
        s1 = Path(rec)
    if s1 is None:
        s1 = _stage1_of_run(run)
    stage1 = load_stage1(s1, dev)
    adapters = {}
    if lora is not None:
        from ifmdm_model.tune.lora import LoraError, apply_adapter, find_adapters
        try:
            adapters = find_adapters(lora)
            if 1 in adapters:
                apply_adapter(stage1, adapters[1], s1 / "ema.safetensors")
        except LoraError as e:
            raise InferenceError(str(e)) from None
        stage1.requires_grad_(False)
    stage2 = schedule = None
    if need_stage2:
        try:
            cfg = Stage2Config.from_dict(state2["model_config"], where=f"{s2}/state.json model_config")
            sch = state2.get("schedule") or {}
            schedule = DDPMSchedule(int(sch.get("num_timesteps", 1000)), sch.get("beta_schedule", "linear"))
        except KeyError as e:
            raise InferenceError(f"{s2}/state.json lacks {e}") from None
        except (IfmdmError, ValueError, TypeError) as e:
            raise InferenceError(f"{s2}/state.json: {e}") from None
        if cfg.motion_dim != stage1.cfg.motion_dim:
            raise InferenceError(f"stage 2 ({s2}) generates {cfg.motion_dim}-d motion but stage 1 "
                                 f"({s1}) has motion_dim {stage1.cfg.motion_dim}")
        stage2 = MotionDiT(cfg)
        _load_into(stage2, _load_ema(s2), f"{s2}/ema.safetensors")
        if 2 in adapters:
            try:
                apply_adapter(stage2, adapters[2], s2 / "ema.safetensors", stage=2)
            except LoraError as e:
                raise InferenceError(str(e)) from None
        stage2 = stage2.to(dev).eval().requires_grad_(False)
    used = {st: str(f) for st, f in adapters.items() if st == 1 or stage2 is not None}
    return Models(stage1, stage2, schedule, state2.get("speech_feature") or {},
                  stage1.cfg.image_size, stage1.cfg.motion_dim, dev, s1, s2, used)


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------

def speech_extractor(info: dict, speech_dim: int, wav2vec2: Optional[str] = None, device="auto"):
    """The speech feature extractor the stage-2 checkpoint was trained with."""
    from ifmdm_data.features.speech import build_features
    kind = (info or {}).get("type")
    if kind is None:
        kind = "wav2vec2" if wav2vec2 else "logmel"
    try:
        if kind == "logmel":
            if wav2vec2:
                raise InferenceError("--wav2vec2 given, but the stage-2 checkpoint was trained on log-mel features")
            feats = build_features(None)
        elif kind == "wav2vec2":
            folder = wav2vec2 or info.get("checkpoint")
            if not folder:
                raise InferenceError("the stage-2 checkpoint was trained on wav2vec2 features but records "
                                     "no model folder: pass --wav2vec2 DIR")
            layers = tuple(info.get("layers") or (-1,))
            feats = build_features(folder, layers=layers, device=device)
        else:
            raise InferenceError(f"unknown speech feature type {kind!r} in the stage-2 checkpoint")
    except IfmdmError as e:
        if isinstance(e, InferenceError):
            raise
        raise InferenceError(f"speech features: {e}") from None
    if int(feats.dim) != int(speech_dim):
        raise InferenceError(f"speech features have dim {feats.dim} ({kind}) but the stage-2 model "
                             f"expects {speech_dim}: use the extractor it was trained with (--wav2vec2 DIR)")
    return feats


def motion_mean_arg(value, dim: int) -> Union[str, np.ndarray]:
    if isinstance(value, np.ndarray):
        arr = value
    elif value in ("input", "previous"):
        return value
    else:
        p = Path(str(value))
        if not p.is_file():
            raise InferenceError(f"--motion-mean must be input, previous or a .npy file; {p} does not exist")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise InferenceError(f"cannot read --motion-mean {p} ({type(e).__name__}: {e})") from None
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 2:
        arr = arr.mean(0)                       # a motion sequence (T, D): its mean
    if arr.shape != (dim,) or not np.all(np.isfinite(arr)):
        raise InferenceError(f"--motion-mean array must be finite with shape ({dim},) or (T, {dim}), "
                             f"got {arr.shape}")
    return arr


# ------------------------------------------------------------------------------------------
# generation
# ------------------------------------------------------------------------------------------

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


def _autocast(device: torch.device, dtype: str):
    if dtype not in DTYPES:
        raise InferenceError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


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


def _check_common(fps, batch_frames, size, image_size):
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 1 <= fps <= 240):
        raise InferenceError(f"--fps must be in [1, 240], got {fps!r}")
    if not isinstance(batch_frames, int) or batch_frames < 1:
        raise InferenceError(f"batch_frames must be an integer >= 1, got {batch_frames!r}")
    if size is not None and (not isinstance(size, int) or size < 16 or size % 2 or size > 4096):
        raise InferenceError(f"--size must be an even integer in [16, 4096], got {size!r} "
                             f"(the model generates {image_size}x{image_size}; frames are resized to --size)")


def _decode_batch(decode, appearance, m: torch.Tensor, batch: int, pad: bool) -> torch.Tensor:
    """decode(appearance, m) -> images; with `pad` (torch.compile, static shapes) a short last
    batch is padded to `batch` (repeating its last motion) and the extra frames dropped."""
    n = m.shape[0]
    if pad and n < batch:
        m = torch.cat([m, m[-1:].expand(batch - n, -1)])
    return decode(appearance, m)[:n]


def _output_path(out_path, overwrite: bool) -> Path:
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise InferenceError(f"{out} exists: pass --overwrite to replace it")
    return out


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
    m_sigma is the clip std); 0: plain CFG (`ifmdm-infer --cfg-rescale 0`).

    Streaming: speech features are computed lazily (`ifmdm_data.features.speech.FrameStream`): motion
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
    from ifmdm_data.media.audio import loudness_dbfs
    from ifmdm_data.features.speech import stream_frames

    from ifmdm_model.stage2.diffusion import cfg_model_fn, ddim_sample

    t_load = time.perf_counter()
    if models is None:
        models = load_models(run_dir, device, lora=lora)
    load_s = time.perf_counter() - t_load
    dev, s1, s2 = models.device, models.stage1, models.stage2
    _check_common(fps, batch_frames, size, models.image_size)
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
    amp = _autocast(dev, dtype)
    out = _output_path(out_path, overwrite)
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

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    sigma = torch.full((1, D), float(motion_std), device=dev)
    user_mu = torch.from_numpy(mean_mode).to(dev)[None] if isinstance(mean_mode, np.ndarray) else None
    model_fn = _maybe_compile(s2, compile)
    decode = _maybe_compile(s1.decode, compile)

    writer = VideoWriter(out, size or models.image_size, fps, wav, overwrite=overwrite)
    bar = _Progress(n_frames, progress)
    first_frame = None
    motions: List[np.ndarray] = []
    hint, prev_mean = (m_in if first_hint == "input" else None), m_in
    pending: List[torch.Tensor] = []                                   # generated, not yet decoded
    done = 0
    try:
        for start in range(0, n_frames, n_f):
            length = min(n_f, n_frames - start)
            with timer("features"):
                sp = speech.read(length)                               # (length, S)
            with timer("motion"):
                if length < n_f:                                       # pad the last chunk
                    sp = np.concatenate([sp, np.repeat(sp[-1:], n_f - length, axis=0)])
                sp_t = torch.from_numpy(sp).to(dev)[None]              # (1, n_f, S)
                mu = user_mu if user_mu is not None else prev_mean if mean_mode == "previous" else m_in
                cond = {"speech": sp_t, "m_mu": mu, "m_sigma": sigma, "hint": hint}
                eps_fn = cfg_model_fn(model_fn, cond, cfg, batched=True,
                                      rescale=float(guidance_rescale), schedule=models.schedule)
                with amp:
                    x = ddim_sample(eps_fn, (1, n_f, D), steps, models.schedule, eta=eta,
                                    generator=gen, device=dev, dtype=torch.float32)
                x = x[0, :length].float()                              # (length, D)
                hint = x[-1:].clone()
                prev_mean = x.mean(0, keepdim=True)
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
    _check_common(fps, batch_frames, size, models.image_size)
    amp = _autocast(dev, dtype)
    out = _output_path(out_path, overwrite)
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


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------

# The command line is in infer_cli.py (arguments are checked before torch is imported); the
# names stay importable from here.
from ifmdm_model.cli.infer import EPILOG, _summary, main, parser  # noqa: E402,F401


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------------------------------
# random-init run folders (tests, benchmarks)
# ------------------------------------------------------------------------------------------

def save_random_run(run_dir, stage1: str = "S1-tiny", stage2: str = "M2-tiny", n_frames: int = 32,
                    speech_dim: int = 80, seed: int = 0, perturb: float = 0.02,
                    num_timesteps: int = 1000, beta_schedule: str = "linear") -> Path:
    """A run folder (stage1/latest, stage2/latest) of random-init models with the state.json
    fields train_stage1/2 write, for tests and benchmarks. `perturb`: std of noise added to
    stage 2's zero-initialised layers (adaLN-Zero gives eps = 0 otherwise, ignoring every
    condition). Log-mel speech features (speech_dim 80) unless told otherwise."""
    from ifmdm_data.features.speech import LogMelFeatures

    from ifmdm_model.checkpoint import save_checkpoint
    from ifmdm_model.stage1.model import build_stage1
    from ifmdm_model.stage2.model import build_stage2

    run = Path(run_dir)
    torch.manual_seed(seed)
    s1 = build_stage1(stage1).eval()
    ck1 = save_checkpoint(run / "stage1", 0, s1, s1, {},
                          {"model": stage1, "model_config": s1.cfg.to_dict(), "global_step": 0})
    s2 = build_stage2(stage2, n_frames=n_frames, speech_dim=speech_dim, motion_dim=s1.cfg.motion_dim).eval()
    if perturb:
        with torch.no_grad():
            for p in s2.parameters():
                if p.abs().max() == 0:
                    p.normal_(0.0, perturb)
    speech = LogMelFeatures().info() if speech_dim == 80 else {}
    save_checkpoint(run / "stage2", 0, s2, s2, {},
                    {"model": stage2, "model_config": s2.cfg.to_dict(), "global_step": 0,
                     "stage1_checkpoint": str(ck1), "speech_feature": speech,
                     "schedule": {"num_timesteps": num_timesteps, "beta_schedule": beta_schedule}})
    return run
