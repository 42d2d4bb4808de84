"""wav2vec2 speech features from a local checkpoint: `Wav2Vec2Features` (batched, chunked for
long audio, streamed).

float32 mono 16 kHz audio in, float32 (T_native, hidden) out at the conv encoder's rate
(50 Hz for the standard config); the time convention is `ifmdm_data.features.speech`'s.
The checkpoint folder's checks and the GroupNorm surgery live in `wav2vec2_checkpoint`.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ifmdm_data.features.common import SAMPLE_RATE, FeatureError
from ifmdm_data.features.wav2vec2_checkpoint import (WEIGHT_FILES, WEIGHT_INDEX_FILES,
                                                     check_wav2vec2_dir, freeze_groupnorm,
                                                     read_json)
from ifmdm_data.media.waveform import as_mono, clean_nonfinite, mono_view


def _out_len(n: int, kernels, strides) -> int:
    """Frames of the conv feature encoder for n samples (no padding): 0 when too short."""
    for k, s in zip(kernels, strides):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return int(n)


def _norm_stats(a: np.ndarray, block: int = 1 << 20) -> tuple[float, float]:
    """(mean, sqrt(var + 1e-7)) of the clip for `_normalise`, float64 sums over blocks of
    `block` samples (two passes), so a long clip needs no float64 copy."""
    n = a.size
    if n == 0:
        return 0.0, 1.0
    total = 0.0
    for i in range(0, n, block):
        total += float(clean_nonfinite(a[i:i + block]).sum(dtype=np.float64))
    mean = total / n
    ss = 0.0
    for i in range(0, n, block):
        d = clean_nonfinite(a[i:i + block]).astype(np.float64) - mean
        ss += float(np.dot(d, d))
    return mean, math.sqrt(ss / n + 1e-7)


def _normalise(a: np.ndarray, stats: tuple[float, float] | None = None) -> np.ndarray:
    """Zero mean, unit variance over the utterance (Wav2Vec2FeatureExtractor's
    zero_mean_unit_var_norm: (x - mean) / sqrt(var + 1e-7)). `stats`: the (mean, std) of the
    whole clip when `a` is a piece of it (`_norm_stats`)."""
    if a.size == 0:
        return clean_nonfinite(a)
    mean, std = _norm_stats(a) if stats is None else stats
    return ((clean_nonfinite(a).astype(np.float64) - mean) / std).astype(np.float32)


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
        folder = check_wav2vec2_dir(checkpoint_dir)
        self.checkpoint = str(folder)
        cfg_json = read_json(folder / "config.json")
        model_type = cfg_json.get("model_type")
        if model_type != "wav2vec2":
            raise FeatureError(f"--wav2vec2 {folder}: config.json is not a Wav2Vec2 config "
                               f"(model_type={model_type!r}, expected 'wav2vec2')")
        self.do_normalize = True
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            pj = read_json(pre)
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
            self._gn = freeze_groupnorm(self.model)
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
                    _normalise(seg, norm) if norm is not None else clean_nonfinite(seg)))
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
        clips = [as_mono(w) for w in wavs]
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
        a = mono_view(wav)
        norm = _norm_stats(a) if self.do_normalize else None
        plan = [(s, e) for s, e in self._plan(a.size)
                if _out_len(e - s, self.kernels, self.strides) > 0]
        stats = None
        if self._gn is not None and len(plan) > 1:  # chunked: statistics of the whole clip
            stats = [self._groupnorm_stats(a, norm)]
        lo = 0
        for j, (s, e) in enumerate(plan):
            piece = _normalise(a[s:e], norm) if norm is not None else clean_nonfinite(a[s:e])
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
