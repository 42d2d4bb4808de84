"""Speech features for stage 2: log-mel (the default) or wav2vec2 from a local checkpoint.

Both extractors take float32 mono 16 kHz audio (`audio.load_audio`) and return float32
(T_native, dim) at their own native rate; `align_to_frames` resamples that to the video
frame rate, and `ifmdm-data shard` stores the result as `key.speech.npy` (float16) with
`info()` in the sample metadata (`speech_feature`).

Time convention (all extractors): native feature frame i is centred at
``offset_s + i / rate_hz`` seconds from the start of the audio (sample n spans
[n / sr, (n + 1) / sr)). `offset_s` is an attribute of every extractor and is in `info()`:

- log-mel: frame i's window is centred at (i + 0.5) * hop, so offset_s = 0.5 / rate_hz
  (5 ms at the default 10 ms hop): frames tile the audio, frame i "is" [i*hop, (i+1)*hop).
- wav2vec2: frame j is the convolution stack's output j; its receptive field is samples
  [j * S, j * S + RF) (S = product of conv strides, RF = receptive field), so
  offset_s = RF / 2 / sr (12.5 ms for the standard config: RF = 400, S = 320, 50 Hz).

Video frame f is at time f / fps and gets the mean of the native frames whose centres fall in
[f / fps - 0.5 / fps, f / fps + 0.5 / fps) (see `align_to_frames`). Typical use:

    fx = build_features(wav2vec2_dir)              # once per worker (loads the model once)
    native = fx(wav)                                # or fx.batch([wav, ...]) for wav2vec2
    speech = align_to_frames(native, fx.rate_hz, n_frames, fps, offset_s=fx.offset_s)
    meta["speech_feature"] = fx.info()

Streaming (`ifmdm-infer` on long audio): `fx.stream(wav)` yields the native frames of
`fx(wav)` as consecutive blocks, each computed when asked for (log-mel: blocks of 2 s;
wav2vec2: one block per chunk of its long-audio chunk plan), and `stream_frames(fx, wav,
n_frames, fps)` is a `FrameStream` whose `read(n)` returns the next n rows of the
`align_to_frames` result, pulling only the native blocks those rows need:

    speech = stream_frames(fx, wav, n_frames, fps)
    for start in range(0, n_frames, 32):
        chunk = speech.read(32)                     # (<= 32, dim), equal to the rows above

Nothing here downloads anything: a wav2vec2 checkpoint is a local folder holding
`config.json` and `model.safetensors` (or `pytorch_model.bin`), e.g. written by
`Wav2Vec2Model.save_pretrained(DIR)` on a machine with internet.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ifmdm_data.features.align import FrameStream, align_to_frames, stream_frames  # noqa: F401 - re-exported
from ifmdm_data.media.audio import _as_mono
from ifmdm_data.errors import IfmdmError, MissingWeightsError

SAMPLE_RATE = 16000

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WHAT = "wav2vec2 speech features (--wav2vec2 DIR)"
_HINT = ("a local Wav2Vec2 checkpoint folder: save one with Wav2Vec2Model.save_pretrained(DIR), "
         "or copy config.json + model.safetensors of e.g. facebook/wav2vec2-base-960h "
         "downloaded elsewhere; nothing is downloaded at run time")


class FeatureError(IfmdmError):
    """A speech-feature extractor cannot be built (bad checkpoint, bad layers, bad device)."""


# --------------------------------------------------------------------------------------------
# log-mel


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters on the HTK mel scale, peak 1, no area
    normalisation (torchaudio's `melscale_fbanks(..., norm=None, mel_scale="htk")`)."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    pts = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None, :] - lo) / np.maximum(mid - lo, 1e-12)
    down = (hi - freqs[None, :]) / np.maximum(hi - mid, 1e-12)
    return np.maximum(0.0, np.minimum(up, down))


class LogMelFeatures:
    """log(mel power + eps) of 25 ms Hann windows every 10 ms (defaults), numpy only.

    Frame i's window is centred at (i + 0.5) * hop samples (the audio is zero-padded at both
    ends as needed), so there are ceil(n_samples / hop) frames and frame i is centred at
    (i + 0.5) / rate_hz seconds. Power spectrum of an n_fft-point real FFT (n_fft = the next
    power of two >= the window), HTK mel filters from 0 Hz to sr / 2, natural log.
    """

    type = "logmel"

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_mels: int = 80, win_s: float = 0.025,
                 hop_s: float = 0.01, eps: float = 1e-6):
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.win = int(round(float(win_s) * self.sample_rate))
        self.hop = int(round(float(hop_s) * self.sample_rate))
        if self.sample_rate <= 0 or self.n_mels <= 0 or self.win <= 0 or self.hop <= 0:
            raise FeatureError(f"log-mel: invalid settings sample_rate={sample_rate} "
                               f"n_mels={n_mels} win_s={win_s} hop_s={hop_s}")
        self.win_s = self.win / self.sample_rate
        self.hop_s = self.hop / self.sample_rate
        self.eps = float(eps)
        self.n_fft = 1 << max(0, (self.win - 1).bit_length())
        self.dim = self.n_mels
        self.rate_hz = self.sample_rate / self.hop
        self.offset_s = 0.5 / self.rate_hz
        # periodic Hann (torch.hann_window's default)
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.win) / self.win))
        self._fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels).T.astype(np.float32)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        a = _as_mono(wav)
        return self._frames(a, 0, -(-a.size // self.hop))  # ceil(n / hop) frames

    def stream(self, wav: np.ndarray, block_s: float = 2.0):
        """The frames of `__call__(wav)` as consecutive blocks of `block_s` seconds, each
        computed when asked for (log-mel is frame-local: a block reads only its own windows)."""
        a = _mono_view(wav)
        n_frames = -(-a.size // self.hop)
        block = max(1, int(round(float(block_s) * self.rate_hz)))
        for i0 in range(0, n_frames, block):
            yield self._frames(a, i0, min(n_frames, i0 + block))

    def _frames(self, a: np.ndarray, i0: int, i1: int) -> np.ndarray:
        """Frames i0..i1-1 of the clip `a`: frame i's window is samples
        [i * hop - front, i * hop - front + win), front = win // 2 - hop // 2 (centred at
        (i + 0.5) * hop), zero outside the clip."""
        if i1 <= i0:
            return np.zeros((0, self.dim), dtype=np.float32)
        front = self.win // 2 - self.hop // 2
        s0 = i0 * self.hop - front
        s1 = (i1 - 1) * self.hop - front + self.win
        seg = np.zeros(s1 - s0, dtype=np.float32)
        lo, hi = max(s0, 0), min(s1, a.size)
        if hi > lo:
            seg[lo - s0:hi - s0] = _clean(a[lo:hi])
        frames = np.lib.stride_tricks.sliding_window_view(seg, self.win)[::self.hop]  # (i1-i0, win)
        spec = np.fft.rfft(frames * self._window, n=self.n_fft, axis=-1)
        power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
        return np.log(power @ self._fb + self.eps).astype(np.float32)

    def info(self) -> dict:
        return {"type": self.type, "dim": int(self.dim), "rate_hz": float(self.rate_hz),
                "layers": None, "checkpoint": None, "offset_s": float(self.offset_s),
                "sample_rate": self.sample_rate, "n_mels": self.n_mels,
                "win_s": float(self.win_s), "hop_s": float(self.hop_s), "n_fft": self.n_fft,
                "eps": self.eps, "mel_scale": "htk", "log": "natural"}


# --------------------------------------------------------------------------------------------
# wav2vec2


def _check_checkpoint_dir(checkpoint_dir) -> Path:
    """The folder as an absolute path, or MissingWeightsError / FeatureError."""
    folder = Path(os.path.expanduser(str(checkpoint_dir))).absolute()
    if not folder.exists():
        raise MissingWeightsError("config.json", str(folder), _WHAT,
                                  f"the folder does not exist; {_HINT}")
    if not folder.is_dir():
        raise FeatureError(f"--wav2vec2 {folder}: is a file, not a checkpoint folder ({_HINT})")
    if not (folder / "config.json").is_file():
        raise MissingWeightsError("config.json", str(folder), _WHAT, _HINT)
    if not any((folder / f).is_file() for f in WEIGHT_FILES + WEIGHT_INDEX_FILES):
        raise MissingWeightsError(WEIGHT_FILES[0], str(folder), _WHAT,
                                  f"or {WEIGHT_FILES[1]}; {_HINT}")
    return folder


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FeatureError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise FeatureError(f"{path}: expected a JSON object")
    return data


def _out_len(n: int, kernels, strides) -> int:
    """Frames of the conv feature encoder for n samples (no padding): 0 when too short."""
    for k, s in zip(kernels, strides):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return int(n)


def _mono_view(wav) -> np.ndarray:
    """float32 1-D audio without a copy when it already is (`_as_mono` otherwise); NaN/inf
    are zeroed later, block by block (`_clean`), so a long clip is not copied whole."""
    a = np.asarray(wav, dtype=np.float32)
    return a if a.ndim == 1 else _as_mono(a)


def _clean(a: np.ndarray) -> np.ndarray:
    """NaN/inf -> 0, as `_as_mono` does (a copy)."""
    return np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


def _norm_stats(a: np.ndarray, block: int = 1 << 20) -> tuple[float, float]:
    """(mean, sqrt(var + 1e-7)) of the clip for `_normalise`, float64 sums over blocks of
    `block` samples (two passes), so a long clip needs no float64 copy."""
    n = a.size
    if n == 0:
        return 0.0, 1.0
    total = 0.0
    for i in range(0, n, block):
        total += float(_clean(a[i:i + block]).sum(dtype=np.float64))
    mean = total / n
    ss = 0.0
    for i in range(0, n, block):
        d = _clean(a[i:i + block]).astype(np.float64) - mean
        ss += float(np.dot(d, d))
    return mean, math.sqrt(ss / n + 1e-7)


def _normalise(a: np.ndarray, stats: tuple[float, float] | None = None) -> np.ndarray:
    """Zero mean, unit variance over the utterance (Wav2Vec2FeatureExtractor's
    zero_mean_unit_var_norm: (x - mean) / sqrt(var + 1e-7)). `stats`: the (mean, std) of the
    whole clip when `a` is a piece of it (`_norm_stats`)."""
    if a.size == 0:
        return _clean(a)
    mean, std = _norm_stats(a) if stats is None else stats
    return ((_clean(a).astype(np.float64) - mean) / std).astype(np.float32)


class Wav2Vec2Features:
    """Hidden states of a local `transformers.Wav2Vec2Model` checkpoint, float32 (T, hidden).

    - Input: the audio is normalised per utterance (zero mean / unit variance, as
      `Wav2Vec2FeatureExtractor(do_normalize=True)`); when the folder has a
      `preprocessor_config.json`, its `do_normalize` is honoured and its `sampling_rate`
      must be 16000. Normalisation uses the whole clip, also when it is processed in chunks.
    - `layers`: indices into the hidden states: 0 = the input of the first transformer layer,
      k = the output of layer k, num_layers (= -1) = the model output `last_hidden_state`
      (for stable-layer-norm checkpoints that includes the final layer norm). Negative indices
      count from the end (valid: -(num_layers + 1) .. num_layers). Several layers are
      AVERAGED (the dimension stays hidden_size); duplicates count once. Layers after the
      highest requested one are dropped from the model (not computed). A checkpoint's
      adapter (`add_adapter`) is not used: features keep the conv encoder's rate.
    - Rate: 16000 / prod(config.conv_stride) (50 Hz for the standard config); frame j is
      centred at offset_s + j / rate_hz, offset_s = receptive field / 2 / 16000.
    - Device "auto": CUDA when available, else CPU. On CUDA the forward runs under
      torch.autocast (bfloat16 where supported, else float16); always eval + inference_mode.
      The model is loaded once, in __init__.
    - Long audio: a clip longer than `batch_seconds` is cut into chunks of `batch_seconds`
      that overlap by `overlap_s` (default min(4 s, batch_seconds / 4)); chunk starts are
      multiples of the conv stride product, so chunk frames fall on the global frame grid,
      and consecutive chunks are stitched at the middle of their overlap: every kept frame
      has at least overlap_s / 2 (2 s at the defaults) of audio context on each side that
      its chunk saw. The result has exactly as many frames as an unchunked run.
    - Batching (`batch`): one forward pass sees at most `batch_seconds` of audio, padding
      included; pieces (clips or chunks) are sorted by length and batched when the longest
      is at most 1.25x the shortest, right-padded with zeros plus an attention_mask.
      Checkpoints with `feat_extract_norm == "layer"` (wav2vec2-large-lv60, XLSR) support
      that as is. Checkpoints with `feat_extract_norm == "group"` (wav2vec2-base,
      -base-960h, -large-960h) normalise the first conv layer over time (GroupNorm), so
      padding (or chunking) would change every frame: for them, whenever a clip is padded
      or chunked, the GroupNorm statistics are computed beforehand on the whole, unpadded
      clip (a pass of the first conv layer alone, ~7% of a CPU forward of wav2vec2-base)
      and applied as fixed per-sample statistics in the batched forward; a clip that runs
      alone and whole uses the model's own GroupNorm.
      The frames of a padded piece then see exactly what they would see unpadded (the convs
      have no padding, padded frames are zeroed before the positional conv and masked in
      attention), so `batch` equals calling the extractor clip by clip up to float error,
      and chunked clips use the statistics of the whole clip. (Should a future transformers
      change that layer's structure, group checkpoints fall back to batching only pieces of
      identical length and running the rest one by one.)
    """

    type = "wav2vec2"

    def __init__(self, checkpoint_dir: str, layers: tuple[int, ...] = (-1,),
                 device: str = "auto", batch_seconds: float = 60.0,
                 overlap_s: float | None = None):
        folder = _check_checkpoint_dir(checkpoint_dir)
        self.checkpoint = str(folder)
        cfg_json = _read_json(folder / "config.json")
        model_type = cfg_json.get("model_type")
        if model_type != "wav2vec2":
            raise FeatureError(f"--wav2vec2 {folder}: config.json is not a Wav2Vec2 config "
                               f"(model_type={model_type!r}, expected 'wav2vec2')")
        self.do_normalize = True
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            pj = _read_json(pre)
            self.do_normalize = bool(pj.get("do_normalize", True))
            sr = int(pj.get("sampling_rate", SAMPLE_RATE))
            if sr != SAMPLE_RATE:
                raise FeatureError(f"{pre}: sampling_rate is {sr}, the toolkit's audio is "
                                   f"{SAMPLE_RATE} Hz")

        import torch
        self._torch = torch
        self.device = self._resolve_device(device)
        config = self._load_config(folder)
        self.config = config
        self.num_layers = int(config.num_hidden_layers)
        self.hidden_size = int(config.hidden_size)
        self.dim = self.hidden_size
        self.layers = self._resolve_layers(layers, self.num_layers)
        self.kernels = tuple(int(k) for k in config.conv_kernel)
        self.strides = tuple(int(s) for s in config.conv_stride)
        self.stride = int(np.prod(self.strides))
        rf, jump = 1, 1
        for k, s in zip(self.kernels, self.strides):
            rf += (k - 1) * jump
            jump *= s
        self.receptive_field = rf
        self.rate_hz = SAMPLE_RATE / self.stride
        self.offset_s = rf / 2.0 / SAMPLE_RATE

        self.batch_seconds = float(batch_seconds)
        if overlap_s is None:
            overlap_s = min(4.0, self.batch_seconds / 4.0)
        self.overlap_s = float(overlap_s)
        ok = math.isfinite(self.batch_seconds) and math.isfinite(self.overlap_s)
        self.chunk = int(round(self.batch_seconds * SAMPLE_RATE)) if ok else 0
        self.overlap = max(int(round(self.overlap_s * SAMPLE_RATE)) if ok else 0,
                           rf + 2 * self.stride)
        if not (ok and self.chunk - self.overlap >= self.stride and self.chunk >= 2 * rf):
            raise FeatureError(
                f"wav2vec2: batch_seconds={batch_seconds} is too small for the chunk overlap "
                f"({self.overlap / SAMPLE_RATE:.3f} s); it must exceed the overlap by at "
                f"least {self.stride / SAMPLE_RATE:.3f} s")

        self.model = self._load_weights(folder, config)
        # "group" checkpoints: the first conv layer's GroupNorm normalises over time, so its
        # statistics are computed per clip on the unpadded audio and frozen (see _GroupNorm).
        self._gn = None
        if getattr(config, "feat_extract_norm", "group") == "group":
            self._gn = _freeze_groupnorm(self.model)
        self.supports_padding = self._gn is not None or config.feat_extract_norm == "layer"
        # Drop the layers after the highest one needed (not computed), and the adapter.
        top = max(self.layers)
        self._need_hidden = any(i < self.num_layers for i in self.layers)
        if top < self.num_layers:
            self.model.encoder.layers = self.model.encoder.layers[:max(1, top)]
        self.model.adapter = None
        self.model.eval()

    # -- loading ---------------------------------------------------------------------------

    def _resolve_device(self, device):
        torch = self._torch
        name = "auto" if device is None else str(device)
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError) as e:
            raise FeatureError(f"wav2vec2: unknown device {device!r} ({e})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise FeatureError(f"wav2vec2: device {device!r} requested but CUDA is not "
                               "available (use --device cpu or auto)")
        return dev

    @staticmethod
    def _load_config(folder: Path):
        try:
            from transformers import Wav2Vec2Config
        except Exception as e:  # noqa: BLE001 - a broken install is a user-fixable problem
            raise FeatureError(f"wav2vec2 needs transformers: import failed ({e})") from None
        try:
            return Wav2Vec2Config.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise FeatureError(f"--wav2vec2 {folder}: config.json is not a valid Wav2Vec2 "
                               f"config ({type(e).__name__}: {e})") from None

    def _load_weights(self, folder: Path, config):
        torch = self._torch
        from transformers import Wav2Vec2Model
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # we report missing keys ourselves
        hf_logging.disable_progress_bar()  # no "Loading weights" bar per worker
        try:
            model, info = Wav2Vec2Model.from_pretrained(
                str(folder), config=config, local_files_only=True, dtype=torch.float32,
                output_loading_info=True)
        except Exception as e:  # noqa: BLE001
            present = [f for f in WEIGHT_FILES + WEIGHT_INDEX_FILES if (folder / f).is_file()]
            raise FeatureError(
                f"--wav2vec2 {folder}: the weights ({', '.join(present)}) failed to load "
                f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
                " - the file is corrupt or does not match config.json") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        missing = sorted(k for k in (info.get("missing_keys") or ())
                         if not k.endswith("masked_spec_embed"))
        mismatched = list(info.get("mismatched_keys") or ())
        if missing or mismatched:
            bad = missing or [str(m) for m in mismatched]
            raise FeatureError(
                f"--wav2vec2 {folder}: the weights do not match config.json "
                f"({len(bad)} {'missing' if missing else 'mismatched'} tensors, e.g. "
                f"{', '.join(bad[:3])}); is it a Wav2Vec2 checkpoint?")
        model.to(self.device)
        model.eval()
        return model

    @staticmethod
    def _resolve_layers(layers, num_layers: int) -> list[int]:
        if isinstance(layers, (int, np.integer)):
            layers = (int(layers),)
        try:
            raw = [int(x) for x in layers]
        except (TypeError, ValueError):
            raise FeatureError(f"wav2vec2: layers must be integers, got {layers!r}") from None
        if not raw:
            raise FeatureError("wav2vec2: layers is empty (use e.g. -1 for the last layer)")
        lo, hi = -(num_layers + 1), num_layers
        bad = [x for x in raw if x < lo or x > hi]
        if bad:
            raise FeatureError(
                f"wav2vec2: layer index {bad} out of range: this checkpoint has "
                f"{num_layers} transformer layers, valid indices are {lo}..{hi} "
                f"(0 = the input of the first layer, {hi} or -1 = the output)")
        return sorted({x % (num_layers + 1) for x in raw})

    # -- running ---------------------------------------------------------------------------

    def _plan(self, n: int) -> list[tuple[int, int]]:
        """(start, end) sample ranges of the chunks of an n-sample clip (starts on the frame
        grid, consecutive chunks overlapping by at least self.overlap samples)."""
        if n <= self.chunk:
            return [(0, n)]
        hop = ((self.chunk - self.overlap) // self.stride) * self.stride
        out, s = [], 0
        while True:
            out.append((s, min(s + self.chunk, n)))
            if s + self.chunk >= n:
                return out
            s += hop

    def _forward(self, pieces: list[np.ndarray], stats=None) -> list[np.ndarray]:
        """One forward pass over pieces (right-padded + attention mask when lengths differ):
        per piece (T_i, dim). `stats`: per piece (mean, rstd) of the frozen GroupNorm."""
        torch = self._torch
        lens = [p.size for p in pieces]
        n_out = [_out_len(n, self.kernels, self.strides) for n in lens]
        width = max(lens)
        x = np.zeros((len(pieces), width), dtype=np.float32)
        for i, p in enumerate(pieces):
            x[i, :p.size] = p
        xt = torch.from_numpy(x).to(self.device)
        mask = None
        if any(n != width for n in lens):
            if not self.supports_padding:  # pragma: no cover - guarded by _batches
                raise AssertionError("this checkpoint must not see padding")
            m = np.zeros((len(pieces), width), dtype=np.int64)
            for i, n in enumerate(lens):
                m[i, :n] = 1
            mask = torch.from_numpy(m).to(self.device)
        if self._gn is not None and stats is not None:
            self._gn.stats = (torch.stack([m for m, _ in stats]).unsqueeze(-1),
                              torch.stack([r for _, r in stats]).unsqueeze(-1))
        try:
            with torch.inference_mode(), self._autocast():
                out = self.model(xt, attention_mask=mask,
                                 output_hidden_states=self._need_hidden)
                chosen = []
                for k in self.layers:
                    h = out.last_hidden_state if k == self.num_layers else out.hidden_states[k]
                    chosen.append(h.float())
                feats = chosen[0] if len(chosen) == 1 else torch.stack(chosen, 0).mean(0)
                feats = feats.cpu().numpy()
        finally:
            if self._gn is not None:
                self._gn.stats = None
        return [np.ascontiguousarray(feats[i, :t], dtype=np.float32)
                for i, t in enumerate(n_out)]

    def _groupnorm_stats(self, a: np.ndarray, norm: tuple[float, float] | None = None):
        """(mean, rstd) per channel of the first conv layer's GroupNorm over the whole clip,
        computed in blocks (float64 sums) so long clips need little memory. `norm`: the
        clip's (mean, std) when `a` is the raw audio (each block is normalised with it),
        None when `a` is the model input already (or is not normalised)."""
        torch = self._torch
        gn = self._gn
        conv = gn.conv
        k, st = int(conv.kernel_size[0]), int(conv.stride[0])
        n_frames = (a.size - k) // st + 1 if a.size >= k else 0
        c = int(conv.out_channels)
        groups = int(gn.gn.num_groups)
        # per-block (count, mean, M2) per group, merged with Chan's parallel formula
        count = 0
        mean = torch.zeros(groups, dtype=torch.float64, device=self.device)
        m2 = torch.zeros(groups, dtype=torch.float64, device=self.device)
        block = max(1, (10 * SAMPLE_RATE) // st)  # frames per block (~10 s of audio)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            for j0 in range(0, n_frames, block):
                j1 = min(n_frames, j0 + block)
                seg = a[j0 * st:(j1 - 1) * st + k]
                seg = torch.from_numpy(np.ascontiguousarray(
                    _normalise(seg, norm) if norm is not None else _clean(seg)))
                h = conv(seg.to(self.device)[None, None])[0].reshape(groups, -1)
                var_b, mean_b = torch.var_mean(h, dim=-1, correction=0)
                n_b = h.shape[1]
                mean_b, var_b = mean_b.double(), var_b.double()
                delta = mean_b - mean
                tot = count + n_b
                mean = mean + delta * (n_b / tot)
                m2 = m2 + var_b * n_b + delta * delta * (count * n_b / tot)
                count = tot
            var = m2 / max(count, 1)
            rstd = 1.0 / torch.sqrt(var + float(gn.gn.eps))
            mean = mean.repeat_interleave(c // groups)
            rstd = rstd.repeat_interleave(c // groups)
        return mean.float(), rstd.float()

    def _autocast(self):
        torch = self._torch
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        import contextlib
        return contextlib.nullcontext()

    def _batches(self, lens: list[int]) -> list[list[int]]:
        """Indices of pieces grouped into forward passes (see the class docstring)."""
        order = sorted(range(len(lens)), key=lambda i: -lens[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            if cur:
                longest = lens[cur[0]]
                fits = (len(cur) + 1) * longest <= self.chunk
                same = (lens[i] * 1.25 >= longest) if self.supports_padding \
                    else lens[i] == longest
                if fits and same:
                    cur.append(i)
                    continue
                batches.append(cur)
            cur = [i]
        if cur:
            batches.append(cur)
        return batches

    def batch(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Features of several clips: a list of float32 (T_i, dim), in input order."""
        clips = [_as_mono(w) for w in wavs]
        if self.do_normalize:
            clips = [_normalise(a) for a in clips]
        pieces: list[np.ndarray] = []
        owner: list[tuple[int, int]] = []  # (clip index, chunk start)
        for ci, a in enumerate(clips):
            for s, e in self._plan(a.size):
                if _out_len(e - s, self.kernels, self.strides) > 0:
                    pieces.append(a[s:e])
                    owner.append((ci, s))
        n_pieces: dict[int, int] = {}
        for ci, _ in owner:
            n_pieces[ci] = n_pieces.get(ci, 0) + 1
        stats: dict[int, tuple] = {}  # per clip, computed only when needed
        results: list[np.ndarray | None] = [None] * len(pieces)
        for b in self._batches([p.size for p in pieces]):
            piece_stats = None
            if self._gn is not None and (len({pieces[i].size for i in b}) > 1
                                         or any(n_pieces[owner[i][0]] > 1 for i in b)):
                # padded or chunked: GroupNorm statistics of the whole clips
                for i in b:
                    ci = owner[i][0]
                    if ci not in stats:
                        stats[ci] = self._groupnorm_stats(clips[ci])
                piece_stats = [stats[owner[i][0]] for i in b]
            for i, f in zip(b, self._forward([pieces[i] for i in b], piece_stats)):
                results[i] = f
        by_clip: dict[int, list[tuple[int, np.ndarray]]] = {}
        for (ci, s), f in zip(owner, results):
            by_clip.setdefault(ci, []).append((s // self.stride, f))
        return [self._stitch(by_clip.get(ci, [])) for ci in range(len(clips))]

    def _stitch(self, parts: list[tuple[int, np.ndarray]]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(parts) == 1:
            return parts[0][1]
        out = []
        lo = 0
        for j, (g0, f) in enumerate(parts):
            if j + 1 < len(parts):
                hi = (parts[j + 1][0] + g0 + len(f)) // 2  # middle of the overlap
            else:
                hi = g0 + len(f)
            out.append(f[lo - g0:hi - g0])
            lo = hi
        return np.concatenate(out, axis=0)

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        return self.batch([wav])[0]

    def stream(self, wav: np.ndarray):
        """The frames of `__call__(wav)` as consecutive blocks, one per chunk of the chunk plan
        (`_plan`), each yielded as soon as its chunk is computed: the frames it keeps, up to
        the middle of its overlap with the next chunk (the next chunk's start is known from
        the plan). Equal to `__call__` up to float error (chunks run one per forward pass
        instead of batched). What needs the whole clip is cheap and done first: the
        normalisation statistics (mean, variance) and, for "group" checkpoints of a chunked
        clip, the GroupNorm statistics (a pass of the first conv layer alone). Memory: one
        chunk's audio and features, never the whole clip's features."""
        a = _mono_view(wav)
        norm = _norm_stats(a) if self.do_normalize else None
        plan = [(s, e) for s, e in self._plan(a.size)
                if _out_len(e - s, self.kernels, self.strides) > 0]
        stats = None
        if self._gn is not None and len(plan) > 1:  # chunked: statistics of the whole clip
            stats = [self._groupnorm_stats(a, norm)]
        lo = 0
        for j, (s, e) in enumerate(plan):
            piece = _normalise(a[s:e], norm) if norm is not None else _clean(a[s:e])
            f = self._forward([piece], stats)[0]
            g0 = s // self.stride
            hi = (plan[j + 1][0] // self.stride + g0 + len(f)) // 2 if j + 1 < len(plan) \
                else g0 + len(f)  # as `_stitch`: the middle of the overlap
            yield f[lo - g0:hi - g0]
            lo = hi

    def info(self) -> dict:
        return {"type": self.type, "dim": int(self.dim), "rate_hz": float(self.rate_hz),
                "layers": list(self.layers), "checkpoint": self.checkpoint,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "offset_s": float(self.offset_s), "layer_reduce": "mean",
                "do_normalize": self.do_normalize}


def _freeze_groupnorm(model):
    """Replace the GroupNorm of the first conv layer of a "group" Wav2Vec2 feature encoder by
    a wrapper that applies per-sample statistics given from outside (computed on the whole,
    unpadded clip) instead of statistics over the padded / chunked input. Returns the
    wrapper, or None when the model does not have the expected structure (then only
    equal-length pieces are batched)."""
    import torch

    class _GroupNorm(torch.nn.Module):
        def __init__(self, gn, conv):
            super().__init__()
            self.gn = gn
            object.__setattr__(self, "conv", conv)  # a reference, not a second submodule
            self.stats = None

        def forward(self, x):
            if self.stats is None:
                return self.gn(x)
            mean, rstd = self.stats
            y = (x.float() - mean) * rstd
            y = y * self.gn.weight.float()[None, :, None] + self.gn.bias.float()[None, :, None]
            return y.to(x.dtype)

    try:
        layer = model.feature_extractor.conv_layers[0]
        gn, conv = layer.layer_norm, layer.conv
    except (AttributeError, IndexError, TypeError):
        return None
    if not isinstance(gn, torch.nn.GroupNorm) or not gn.affine \
            or not isinstance(conv, torch.nn.Conv1d) or conv.padding != (0,):
        return None
    wrapper = _GroupNorm(gn, conv)
    layer.layer_norm = wrapper
    return wrapper


# --------------------------------------------------------------------------------------------
# construction


def build_features(wav2vec2_dir: str | None = None, layers=(-1,), device="auto", **kwargs):
    """LogMelFeatures() when wav2vec2_dir is None (or empty), else Wav2Vec2Features(...)."""
    if wav2vec2_dir is None or str(wav2vec2_dir) == "":
        return LogMelFeatures()
    return Wav2Vec2Features(wav2vec2_dir, layers=layers, device=device, **kwargs)
