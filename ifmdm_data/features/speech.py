"""Speech features for stage 2: `build_features` picks log-mel (the default) or wav2vec2 from
a local checkpoint; the extractors themselves live in logmel / wav2vec2.

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

from ifmdm_data.features.logmel import LogMelFeatures
from ifmdm_data.features.wav2vec2 import Wav2Vec2Features


def build_features(wav2vec2_dir: str | None = None, layers=(-1,), device="auto", **kwargs):
    """LogMelFeatures() when wav2vec2_dir is None (or empty), else Wav2Vec2Features(...)."""
    if wav2vec2_dir is None or str(wav2vec2_dir) == "":
        return LogMelFeatures()
    return Wav2Vec2Features(wav2vec2_dir, layers=layers, device=device, **kwargs)
