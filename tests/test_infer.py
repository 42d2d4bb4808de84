"""ifmdm-infer: talking-head generation and reenactment end to end on a tiny run (CPU).

The run folder holds random-init S1-tiny / M2-tiny checkpoints written exactly as the
trainers write them (`save_random_run`): training one here (sample set -> filter -> shards ->
stage 1 -> extraction -> stage 2) would cost minutes, and inference only reads the folder.
The motion-statistics test uses an analytic (exact) denoiser for Gaussian motion instead of a
trained DiT, so the expected direction is known.
"""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from ifmdm_model.cli.infer import main
from ifmdm_model.infer import AUDIO_RATE, InferenceError, generate, load_models, reenact
from ifmdm_model.testing import save_random_run

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"


def _write_wav(path: Path, wav: np.ndarray, rate: int = AUDIO_RATE, channels: int = 1, width: int = 2):
    a = np.clip(np.asarray(wav, np.float64), -1, 1)
    if channels > 1:
        a = np.repeat(a[:, None], channels, axis=1)
    scale = 2 ** (8 * width - 1) - 1
    ints = np.round(a * scale).astype("<i4").reshape(-1)
    raw = ints.astype("<i2").tobytes() if width == 2 else b"".join(
        int(v).to_bytes(3, "little", signed=True) for v in ints)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def _speech(seconds: float, rate: int = AUDIO_RATE) -> np.ndarray:
    src = MEDIA / "audio" / "speech_en_16k_mono.wav"
    if src.is_file() and rate == AUDIO_RATE:
        from ifmdm_data.media.audio import load_audio
        wav = load_audio(src, 0.5, 0.5 + seconds)
        if np.sqrt(np.mean(wav ** 2)) > 1e-3:
            return wav
    t = np.arange(int(round(seconds * rate))) / rate          # fallback: a "syllabic" AM tone
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def _decode(path):
    import av
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps = float(v.average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(v)])
    with av.open(str(path)) as c:
        audio = None
        if c.streams.audio:
            a = c.streams.audio[0]                               # the edit list trims AAC padding
            audio = float(a.duration * a.time_base)
    return frames, fps, audio


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return save_random_run(tmp_path_factory.mktemp("infer") / "run", n_frames=8)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    src = MEDIA / "image" / "face_aflw.jpg"
    if src.is_file():
        return src
    import cv2
    from skimage import data
    p = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(p), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    return p


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return _write_wav(tmp_path_factory.mktemp("aud") / "speech.wav", _speech(0.9))


FAST = dict(steps=2, progress=False, face_check=False)


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_generate_mp4(run, image, speech, tmp_path, fps):
    out = tmp_path / "out.mp4"
    st = generate(run, image, speech, out, fps=fps, batch_frames=7, **FAST)
    seconds = 0.9
    want = round(seconds * fps)
    assert st["frames"] == want and abs(st["seconds"] - seconds) < 1e-3
    frames, got_fps, audio_s = _decode(out)
    assert len(frames) == want and frames.shape[1:] == (64, 64, 3)
    assert abs(got_fps - fps) < 1e-3
    assert audio_s is not None and abs(audio_s - seconds) <= 1.0 / fps
    assert st["first_frame_latency_s"] > 0 and set(st["stages_s"]) == {"encode", "features", "motion", "decode", "write"}
    assert not list(tmp_path.glob(".*tmp"))                      # temp file renamed


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision(run, image, speech, tmp_path, dtype):
    """--dtype autocasts the DiT and the decoder (CPU here; the same code path on CUDA).
    End to end: same frame count, finite motion. The random DiT's motion is far out of a
    trained model's range, so closeness is checked on the stage-1 path with motion near the
    image's own: encode + decode under autocast stay close to fp32."""
    low = generate(run, image, speech, tmp_path / f"{dtype}.mp4", seed=3, dtype=dtype,
                   return_motion=True, **FAST)
    assert low["frames"] == round(0.9 * 25) and low["dtype"] == dtype
    assert np.isfinite(low["motion"]).all()
    s1 = load_models(run, device="cpu", need_stage2=False).stage1
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1                 # (1, 3, H, W)
    with torch.no_grad():
        app, m = s1.encode(x)
        motion = m + 0.1 * torch.randn(4, m.shape[-1], generator=g)    # (4, D)
        ref = s1.decode(app, motion)
        with torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]):
            app_l, m_l = s1.encode(x)
            out = s1.decode(app_l, motion)
    assert out.dtype != torch.float32 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_48k_stereo_24bit_input(run, image, tmp_path):
    src = MEDIA / "audio" / "speech_ja_48k_s24.wav"
    if src.is_file():
        import av
        with av.open(str(src)) as c:                              # a 0.6 s cut of the real file
            a = c.streams.audio[0]
            assert a.rate == 48000
        from ifmdm_data.media.audio import load_audio
        wav = load_audio(src, 1.0, 1.6, sample_rate=48000)
    else:
        t = np.arange(int(0.6 * 48000)) / 48000
        wav = 0.3 * np.sin(2 * np.pi * 200 * t)
    p = _write_wav(tmp_path / "s24.wav", wav, rate=48000, channels=2, width=3)
    st = generate(run, image, p, tmp_path / "o.mp4", fps=25, **FAST)
    frames, _, audio_s = _decode(tmp_path / "o.mp4")
    assert st["frames"] == len(frames) == 15 and abs(audio_s - 0.6) <= 0.04


@pytest.mark.parametrize("kind", ["mp3", "m4a", "flac", "video", "png"])
def test_common_audio_and_image_formats(run, image, speech, tmp_path, kind):
    """mp3 / AAC in m4a / FLAC, the audio track of a video, and a PNG image (the image
    fixture is a JPEG): converted with ffmpeg, then generated from like any wav."""
    import shutil
    import subprocess
    import sys
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    audio, img = speech, image
    if kind in ("mp3", "m4a", "flac"):
        audio = tmp_path / f"speech.{kind}"
        codec = {"mp3": "libmp3lame", "m4a": "aac", "flac": "flac"}[kind]
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(speech), "-ar", "44100", "-ac", "2",
                        "-c:a", codec, str(audio)], check=True)
    elif kind == "video":
        audio = tmp_path / "talk.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25:d=0.9",
                        "-i", str(speech), "-c:v", "libx264", "-c:a", "aac", "-shortest", str(audio)],
                       check=True)
    else:
        import cv2
        img = tmp_path / "face.png"
        cv2.imwrite(str(img), cv2.imread(str(image)))
    st = generate(run, img, audio, tmp_path / "o.mp4", fps=25, **FAST)
    frames, _, audio_s = _decode(tmp_path / "o.mp4")
    # 0.9 s of speech: lossy codecs (and a muxed AAC track ending on a 1024-sample frame) may
    # add or trim a few tens of ms
    assert abs(st["seconds"] - 0.9) <= 0.1
    assert st["frames"] == round(st["seconds"] * 25) and len(frames) == st["frames"]
    assert audio_s is not None and abs(audio_s - st["seconds"]) <= 0.05


def test_seed_determinism(run, image, tmp_path, monkeypatch):
    """The guarantee: the same seed gives the same motion, the same rendered frames and the same
    mp4 bytes (one x264 thread); checked layer by layer so a failure names the layer."""
    import ifmdm_model.infer.generation as infer            # where generate finds VideoWriter
    rendered = {}

    class Recording(infer.VideoWriter):
        def write(self, frames):
            rendered.setdefault(self.out.stem, []).append(np.array(frames))
            super().write(frames)
    monkeypatch.setattr(infer, "VideoWriter", Recording)
    p = _write_wav(tmp_path / "s.wav", _speech(0.4))
    a = generate(run, image, p, tmp_path / "a.mp4", seed=3, return_motion=True, **FAST)
    b = generate(run, image, p, tmp_path / "b.mp4", seed=3, return_motion=True, **FAST)
    c = generate(run, image, p, tmp_path / "c.mp4", seed=4, return_motion=True, **FAST)
    np.testing.assert_array_equal(a["motion"], b["motion"])
    assert not np.allclose(a["motion"], c["motion"])
    ra, rb = (np.concatenate(rendered[k]) for k in "ab")
    np.testing.assert_array_equal(ra, rb)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    fa, fc = (_decode(tmp_path / f"{k}.mp4")[0] for k in "ac")
    assert not np.array_equal(fa, fc)


class _Recording:
    """A speech feature extractor whose `stream` records how much of the audio it has turned
    into features so far (native frames yielded, whether it reached the end of the audio)."""

    def __init__(self, fx, whole: bool = False, **stream_kwargs):
        self.fx, self.whole, self.kw = fx, whole, stream_kwargs
        self.dim, self.rate_hz, self.offset_s = fx.dim, fx.rate_hz, fx.offset_s
        self.native, self.finished = 0, False

    def stream(self, wav):
        blocks = [self.fx(wav)] if self.whole else self.fx.stream(wav, **self.kw)  # whole: as before
        for block in blocks:
            self.native += len(block)
            yield block
        self.finished = True


def _probe_first_write(monkeypatch, rec):
    """[(frames written before, seconds of audio turned into features, extractor finished)] at
    the first VideoWriter.write of generate."""
    import ifmdm_model.infer.generation as infer            # where generate finds VideoWriter
    seen = []

    class Probe(infer.VideoWriter):
        def write(self, frames):
            if not seen:
                seen.append((self.n, rec.native / rec.rate_hz, rec.finished))
            super().write(frames)

    monkeypatch.setattr(infer, "VideoWriter", Probe)
    return seen


def test_first_frames_before_the_audio_is_read(run, image, tmp_path, monkeypatch):
    """Streaming: the first frames are written when the features of the first half second of
    a 2 s audio are computed, not the whole audio."""
    from ifmdm_data.features import LogMelFeatures
    p = _write_wav(tmp_path / "s.wav", _speech(2.0))
    rec = _Recording(LogMelFeatures(), block_s=0.5)
    seen = _probe_first_write(monkeypatch, rec)
    st = generate(run, image, p, tmp_path / "a.mp4", features=rec, batch_frames=8, **FAST)
    assert st["frames"] == 50 and rec.native == 200  # 100 Hz: every block was computed in the end
    assert seen == [(0, 0.5, False)]                  # 8 frames (0.32 s) need the first 0.5 s block


def test_wav2vec2_streamed_in_chunks(image, tmp_path, monkeypatch):
    """A wav2vec2 run (tiny random-init wav2vec2 with 0.4 s chunks): the first frames are
    written after its first chunk, and the motion equals the one from whole-clip features."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from ifmdm_data.features import LogMelFeatures, Wav2Vec2Features
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(cfg).eval().save_pretrained(tmp_path / "w2v")
    run = save_random_run(tmp_path / "run", n_frames=8, speech_dim=32)
    fx = Wav2Vec2Features(str(tmp_path / "w2v"), device="cpu", batch_seconds=0.4)
    p = _write_wav(tmp_path / "s.wav", _speech(1.2))
    rec = _Recording(fx)
    seen = _probe_first_write(monkeypatch, rec)
    st = generate(run, image, p, tmp_path / "a.mp4", features=rec, batch_frames=8, return_motion=True, **FAST)
    assert st["frames"] == 30 and rec.native == 1919 and len(fx._plan(19200)) == 4
    (n, secs, finished), = seen
    assert n == 0 and not finished and secs < 0.4    # the first chunk's kept frames only
    whole = generate(run, image, p, tmp_path / "b.mp4", features=_Recording(fx, whole=True),
                     batch_frames=8, return_motion=True, **FAST)
    np.testing.assert_allclose(st["motion"], whole["motion"], atol=1e-4)
    with pytest.raises(InferenceError, match="dim 80"):
        generate(run, image, p, tmp_path / "c.mp4", features=LogMelFeatures(), **FAST)


class GaussianDenoiser(torch.nn.Module):
    """The exact eps predictor for motion x0 ~ N(m_mu, m_sigma^2) i.i.d. per frame:
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a sigma^2 + 1 - a); ignores speech."""

    def __init__(self, cfg, schedule):
        super().__init__()
        self.cfg, self.abar = cfg, schedule.alphas_cumprod.float()

    def forward(self, x, t, speech, m_mu, m_sigma, hint, **drops):
        a = self.abar[t.cpu()].to(x)[:, None, None]
        mu, s = m_mu[:, None, :], m_sigma[:, None, :]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s ** 2 + 1 - a)


def test_motion_statistics(run, image, tmp_path):
    p = _write_wav(tmp_path / "s.wav", _speech(1.0))
    models = load_models(run, "cpu")
    models.stage2 = GaussianDenoiser(models.stage2.cfg, models.schedule)

    def motion(i, **kw):
        kw = {**FAST, "steps": 20, "cfg": 1.0, **kw}
        return generate(run, image, p, tmp_path / f"{i}.mp4", models=models, return_motion=True, **kw)["motion"]

    calm, lively = motion(0, motion_std=0.0), motion(1, motion_std=0.5)
    assert calm.shape == (25, models.motion_dim)
    assert calm.std(0).mean() < 0.05 and 0.3 < lively.std(0).mean() < 0.7
    target = np.full(models.motion_dim, 2.0, np.float32)
    np.save(tmp_path / "mu.npy", target)
    shifted = motion(2, motion_std=0.0, motion_mean=str(tmp_path / "mu.npy"))
    assert np.abs(shifted - 2.0).max() < 0.05
    prev = motion(3, motion_std=0.2, motion_mean="previous", first_hint="learned")
    assert np.isfinite(prev).all()


def test_face_check_warns(caplog):
    """Skips only when mediapipe (the named optional dependency) is missing: any other failure
    of the check (check_face returns None when the detector breaks) fails the test."""
    pytest.importorskip("mediapipe", reason="mediapipe (the face check's detector) is not installed")
    import cv2
    from skimage import data
    from ifmdm_model.infer import check_face, load_image
    p = MEDIA / "image" / "grass_noface.jpg"
    noface = load_image(p) if p.is_file() else cv2.GaussianBlur(           # no ../shared/media:
        (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8), (9, 9), 0)  # a texture
    assert check_face(noface) == 0 and "no face" in caplog.text
    caplog.clear()
    assert check_face(np.ascontiguousarray(data.astronaut()[:, :, :3])) == 1   # one portrait
    assert "face" not in caplog.text


def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ifmdm-infer: error:") and needle in err, err


def test_bad_inputs(run, image, speech, tmp_path, capsys):
    out = str(tmp_path / "o.mp4")
    base = ["--checkpoint", str(run), "--no-face-check", "-q", "--steps", "2", "-o", out]
    bad_img = tmp_path / "bad.png"
    bad_img.write_bytes(b"not an image")
    _one_line_error(capsys, base + ["--image", str(bad_img), "--audio", str(speech)], "cannot read image")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    _one_line_error(capsys, base + ["--image", str(image), "--audio", str(garbage)], "cannot read audio")
    silent = _write_wav(tmp_path / "silent.wav", np.zeros(AUDIO_RATE))
    _one_line_error(capsys, base + ["--image", str(image), "--audio", str(silent)], "silent")
    Path(out).write_bytes(b"x")
    _one_line_error(capsys, base + ["--image", str(image), "--audio", str(speech)], "--overwrite")
    assert Path(out).read_bytes() == b"x"
    only1 = tmp_path / "only1"
    only1.mkdir()
    (only1 / "stage1").symlink_to(run / "stage1")
    _one_line_error(capsys, ["--checkpoint", str(only1), "--image", str(image), "--audio", str(speech),
                             "-o", str(tmp_path / "p.mp4")], "no stage-2 checkpoint")
    _one_line_error(capsys, base[:-1] + [str(tmp_path / "q.mp4"), "--image", str(image), "--audio",
                                         str(speech), "--size", "127"], "--size")
    with pytest.raises(InferenceError, match="--motion-mean"):
        generate(run, image, speech, tmp_path / "r.mp4", motion_mean="nope.npy", **FAST)


def test_cli_and_reenactment(run, image, speech, tmp_path, capsys):
    talk = tmp_path / "talk.mp4"
    assert main(["--checkpoint", str(run), "--image", str(image), "--audio", str(speech), "-o", str(talk),
                 "--steps", "2", "--fps", "20", "--no-face-check", "-q"]) == 0
    assert "18 frames" in capsys.readouterr().out
    out = tmp_path / "re.mp4"
    assert main(["--checkpoint", str(run), "--image", str(image), "--driving-video", str(talk),
                 "-o", str(out), "--no-face-check", "-q"]) == 0
    frames, fps, audio_s = _decode(out)
    assert len(frames) == 18 and abs(fps - 20) < 1e-3 and audio_s is not None
    st = reenact(run, image, talk, out, overwrite=True, progress=False, face_check=False, batch_frames=5,
                 size=96)
    frames, _, _ = _decode(out)
    assert st["frames"] == len(frames) == 18 and frames.shape[1:] == (96, 96, 3)


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--driving-video" in capsys.readouterr().out


CURRICULUM = """\
shards: {shards}
stage1:
  model: S1-tiny
  batch_size: 2
  pairs_per_clip: 4
  num_workers: 0
  warmup_steps: 1
  log_every: 100
  image_every: 100
  checkpoint_every: 100
  levels:
    - {{name: coarse, subsets: [coarse], steps: 1, lr: 1.0e-3}}
stage2:
  model: M2-tiny
  batch_size: 2
  window: 8
  steps: 2
  lr: 1.0e-3
  warmup_steps: 1
  num_workers: 0
  log_every: 100
  checkpoint_every: 100
  extract_batch: 16
"""


@pytest.fixture(scope="module")
def trained_run(sample_shards, tmp_path_factory):
    """A real (tiny) run: the trainer test's recipe, stage 1 then stage 2 on the sample shards."""
    from ifmdm_model.cli.train import train_main

    d = tmp_path_factory.mktemp("trained")
    (d / "manifests").mkdir()
    (d / "manifests" / "curriculum.yaml").write_text(CURRICULUM.format(shards=sample_shards))
    assert train_main(["--curriculum", str(d / "manifests"), "-o", str(d / "run")]) == 0
    return d / "run"


@pytest.mark.slow
def test_generate_from_trained_run(trained_run, sample_dir, image, tmp_path, capsys):
    """The speech track of the sample set's lip_talk.mp4 (a video as --audio) with a trained run."""
    talk = sample_dir / "lip_talk.mp4"
    out = tmp_path / "o.mp4"
    assert main(["--checkpoint", str(trained_run), "--image", str(image), "--audio", str(talk), "-o", str(out),
                 "--steps", "2", "--no-face-check", "-q", "--json"]) == 0
    import json
    st = json.loads(capsys.readouterr().out)
    frames, _, audio_s = _decode(out)
    assert len(frames) == st["frames"] == round(st["seconds"] * 25) and frames.shape[1:] == (64, 64, 3)
    assert abs(audio_s - st["seconds"]) <= 0.04


def test_video_writer_background_thread(tmp_path):
    """The encoder thread writes the same video as the synchronous path, and an encoder error
    reaches the caller (next write or close) as an InferenceError; abort leaves no file."""
    from ifmdm_model.infer.media_io import VideoWriter

    rng = np.random.default_rng(0)
    # 64 px: below that x264 reads uninitialised memory and the bytes vary (see VideoWriter)
    batches = [rng.integers(0, 255, (5, 64, 64, 3), dtype=np.uint8) for _ in range(4)]
    wav = np.zeros(int(20 / 25 * AUDIO_RATE), np.float32)
    outs = {}
    for bg in (True, False):
        w = VideoWriter(tmp_path / f"bg{bg}.mp4", 64, 25.0, wav, background=bg, queue_batches=1)
        for b in batches:
            w.write(b)
        outs[bg] = _decode(w.close())
    assert len(outs[True][0]) == len(outs[False][0]) == 20
    np.testing.assert_array_equal(outs[True][0], outs[False][0])
    assert outs[True][2] == pytest.approx(outs[False][2])

    w = VideoWriter(tmp_path / "bad.mp4", 32, 25.0, wav)

    def boom(frames):
        raise RuntimeError("disk full")
    w._encode = boom
    w.write(batches[0])
    with pytest.raises(InferenceError, match="disk full"):
        w.write(batches[1])
        w.close()
    w.abort()
    assert not (tmp_path / "bad.mp4").exists() and not list(tmp_path.glob(".bad.mp4*"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_dtype_really_runs_the_models_in_that_dtype(run, image, speech, tmp_path, dtype):
    """--dtype bf16|fp16 must not silently run fp32: forward hooks on the weighted layers of
    the stage-1 model (encoder, decoder) and the stage-2 DiT see the activations' dtype during
    `generate` (the same models object the CLI path builds with load_models)."""
    want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    models = load_models(run, device="cpu")
    seen: dict = {"stage1": set(), "stage2": set()}
    handles = []
    for name, model in (("stage1", models.stage1), ("stage2", models.stage2)):
        for mod in model.modules():
            if isinstance(getattr(mod, "weight", None), torch.nn.Parameter):   # Linear, convs
                def hook(m, args, out, name=name):
                    if isinstance(out, torch.Tensor) and out.is_floating_point():
                        seen[name].add(out.dtype)
                handles.append(mod.register_forward_hook(hook))
    try:
        generate(run, image, speech, tmp_path / f"{dtype}.mp4", seed=3, dtype=dtype, models=models, **FAST)
    finally:
        for h in handles:
            h.remove()
    for model in ("stage1", "stage2"):
        assert seen[model], model                         # the hooks saw the model run
        if dtype == "fp32":
            assert seen[model] == {torch.float32}, (model, seen[model])
        else:
            assert want in seen[model], (model, seen[model])


@pytest.mark.parametrize("extra, needle", [
    (["--checkpoint", "{d}/nope"], "checkpoint folder {d}/nope does not exist"),
    (["--image", "{d}/nope.png"], "image {d}/nope.png does not exist"),
    (["--audio", "{d}/nope.wav"], "audio {d}/nope.wav does not exist"),
    (["--cfg-rescale", "2"], "--cfg-rescale must be in [0, 1]"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--fps", "0"], "--fps must be in [1, 240]"),
    (["--size", "127"], "--size must be an even integer"),
    (["--motion-std", "-1"], "--motion-std must be >= 0"),
    (["-o", "{d}/no/out.mp4"], "output folder {d}/no does not exist"),
])
def test_bad_arguments_rejected_before_torch_is_imported(tmp_path, extra, needle):
    """`ifmdm-infer` checks its arguments before importing torch and the models (issue: ~7 s
    to reject a typo): one error line, exit 2, and torch never imported."""
    import subprocess
    import sys
    (tmp_path / "run").mkdir()
    (tmp_path / "face.png").write_bytes(b"x")
    (tmp_path / "speech.wav").write_bytes(b"x")
    args = {"--checkpoint": "{d}/run", "--image": "{d}/face.png", "--audio": "{d}/speech.wav", "-o": "{d}/o.mp4"}
    opts = dict(zip(extra[::2], extra[1::2]))
    argv = [x.format(d=tmp_path) for k, v in {**args, **opts}.items() for x in (k, v)]
    code = ("import sys; from ifmdm_model.cli.infer import main; rc = main(sys.argv[1:]); "
            "sys.exit(rc if 'torch' not in sys.modules else 99)")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, (r.returncode, err)
    assert err.startswith("ifmdm-infer: error:") and needle.format(d=tmp_path) in err, err


# --- argument handling of ifmdm-infer, in process (issue 16: bash scripts/mutation.sh infer_cli) ---

def _args(*extra, audio=True):
    from ifmdm_model.cli.infer import parser
    base = ["--checkpoint", "c", "--image", "i.png", "-o", "o.mp4"] + (["--audio", "a.wav"] if audio else [])
    return parser().parse_args(base + list(extra))


@pytest.mark.parametrize("extra", [
    [], ["--steps", "1"], ["--motion-std", "0"], ["--cfg", "-1"], ["--cfg", "0"],
    ["--cfg-rescale", "0"], ["--cfg-rescale", "1"], ["--fps", "1"], ["--fps", "240"],
    ["--batch-frames", "1"], ["--size", "16"], ["--size", "4096"], ["--size", "512"]])
def test_args_values_at_their_bounds_are_accepted(extra):
    from ifmdm_model.cli.infer import check_values
    check_values(_args(*extra))


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "0"], "--steps"), (["--motion-std", "-0.01"], "--motion-std"),
    (["--motion-std", "nan"], "--motion-std"), (["--motion-std", "inf"], "--motion-std"),
    (["--cfg", "inf"], "--cfg must be finite"), (["--cfg", "nan"], "--cfg must be finite"),
    (["--cfg-rescale", "-0.01"], "--cfg-rescale"), (["--cfg-rescale", "1.01"], "--cfg-rescale"),
    (["--cfg-rescale", "nan"], "--cfg-rescale"), (["--fps", "0.99"], "--fps"), (["--fps", "240.5"], "--fps"),
    (["--fps", "nan"], "--fps"), (["--batch-frames", "0"], "--batch-frames"), (["--size", "14"], "--size"),
    (["--size", "17"], "--size"), (["--size", "4098"], "--size")])
def test_args_values_past_their_bounds_are_one_error_naming_the_option(extra, needle):
    from ifmdm_data.errors import InputError
    from ifmdm_model.cli.infer import check_values
    with pytest.raises(InputError) as e:
        check_values(_args(*extra))
    assert needle in str(e.value) and extra[1] in str(e.value)


def test_args_paths_are_checked_with_a_message_naming_the_input(tmp_path):
    from ifmdm_data.errors import InputError
    from ifmdm_model.cli.infer import check_paths, parser

    d = tmp_path
    (d / "run").mkdir()
    (d / "lora").mkdir()
    (d / "w2v").mkdir()
    for f in ("face.png", "a.wav", "drive.mp4", "mean.npy", "old.mp4"):
        (d / f).write_bytes(b"x")
    ok = {"--checkpoint": d / "run", "--image": d / "face.png", "--audio": d / "a.wav", "-o": d / "new.mp4"}

    def check(**change):
        opts = {**ok, **{k.replace("_", "-") if k.startswith("--") else k: v for k, v in change.items()}}
        argv = [str(x) for k, v in opts.items() if v is not None for x in ((k, v) if v is not True else (k,))]
        check_paths(parser().parse_args(argv))

    def bad(needle, **change):
        with pytest.raises(InputError) as e:
            check(**change)
        assert needle in str(e.value), str(e.value)

    check()
    check(**{"--lora": d / "lora", "--wav2vec2": d / "w2v", "--motion-mean": d / "mean.npy"})
    check(**{"--motion-mean": "previous"})
    check(**{"--audio": None, "--driving-video": d / "drive.mp4"})
    check(**{"-o": d / "old.mp4", "--overwrite": True})
    bad(f"checkpoint folder {d / 'nope'} does not exist", **{"--checkpoint": d / "nope"})
    bad(f"checkpoint folder {d / 'face.png'} does not exist", **{"--checkpoint": d / "face.png"})
    bad(f"image {d / 'nope.png'} does not exist", **{"--image": d / "nope.png"})
    bad(f"image {d / 'run'} is not a file", **{"--image": d / "run"})
    bad(f"audio {d / 'nope.wav'} does not exist", **{"--audio": d / "nope.wav"})
    bad(f"driving video {d / 'nope.mp4'} does not exist", **{"--audio": None, "--driving-video": d / "nope.mp4"})
    bad(f"--lora folder {d / 'face.png'} does not exist", **{"--lora": d / "face.png"})
    bad(f"--wav2vec2 folder {d / 'nope'} does not exist", **{"--wav2vec2": d / "nope"})
    bad("--motion-mean must be input, previous or a .npy file", **{"--motion-mean": d / "nope.npy"})
    bad(f"{d / 'run'} is a folder", **{"-o": d / "run"})
    bad("exists: pass --overwrite", **{"-o": d / "old.mp4"})
    bad(f"output folder {d / 'no'} does not exist", **{"-o": d / "no" / "o.mp4"})


_STATS = {"output": "o.mp4", "frames": 50, "seconds": 2.0, "fps_video": 25.0, "wall_s": 4.0, "fps": 12.5,
          "first_frame_latency_s": 0.5, "load_s": 1.25, "stages_s": {"speech": 0.5, "decode": 2.0}}


def _cli(tmp_path, monkeypatch, argv, result=None):
    """main(argv) with generate / reenact replaced by recorders: (exit code, calls)."""
    import ifmdm_model.infer as infer_mod
    from ifmdm_model.cli.infer import main as cli_main

    calls = []

    def rec(name):
        def f(*a, **k):
            calls.append((name, a, k))
            if isinstance(result, BaseException):
                raise result
            return dict(_STATS)
        return f
    monkeypatch.setattr(infer_mod, "generate", rec("generate"))
    monkeypatch.setattr(infer_mod, "reenact", rec("reenact"))
    return cli_main(argv), calls


def _paths(tmp_path):
    (tmp_path / "run").mkdir(exist_ok=True)
    for f in ("face.png", "a.wav", "drive.mp4"):
        (tmp_path / f).write_bytes(b"x")
    return ["--checkpoint", str(tmp_path / "run"), "--image", str(tmp_path / "face.png"), "-o", str(tmp_path / "o.mp4")]


def test_args_defaults_reach_generate(tmp_path, monkeypatch, capsys):
    base = _paths(tmp_path)
    rc, calls = _cli(tmp_path, monkeypatch, base + ["--audio", str(tmp_path / "a.wav")])
    assert rc == 0 and [c[0] for c in calls] == ["generate"]
    _, a, k = calls[0]
    assert a == (str(tmp_path / "run"), str(tmp_path / "face.png"), str(tmp_path / "a.wav"), str(tmp_path / "o.mp4"))
    assert k == dict(fps=25.0, steps=25, cfg=2.5, motion_std=0.1, motion_mean="input", seed=0, wav2vec2=None,
                     first_hint="input", guidance_rescale=1.0, size=None, device="auto", dtype="fp32",
                     compile=False, overwrite=False, batch_frames=16, progress=True, face_check=True, lora=None)
    out = capsys.readouterr().out.strip()
    assert out == ("wrote o.mp4: 50 frames (2.00 s at 25 fps) in 4.00 s = 12.5 fps; first frame after 0.50 s; "
                   "load 1.25 s; speech 0.50 s, decode 2.00 s")


def test_args_every_option_reaches_generate_and_reenact(tmp_path, monkeypatch, capsys):
    import json
    base = _paths(tmp_path)
    (tmp_path / "lora").mkdir()
    (tmp_path / "w2v").mkdir()
    opts = ["--fps", "30", "--steps", "7", "--cfg", "1.5", "--motion-std", "0.2", "--motion-mean", "previous",
            "--seed", "3", "--wav2vec2", str(tmp_path / "w2v"), "--first-hint", "learned", "--cfg-rescale", "0.5",
            "--size", "96", "--device", "cpu", "--dtype", "bf16", "--compile", "--overwrite",
            "--batch-frames", "4", "-q", "--no-face-check", "--lora", str(tmp_path / "lora"), "--json"]
    rc, calls = _cli(tmp_path, monkeypatch, base + ["--audio", str(tmp_path / "a.wav")] + opts)
    assert rc == 0
    _, _, k = calls[0]
    assert k == dict(fps=30.0, steps=7, cfg=1.5, motion_std=0.2, motion_mean="previous", seed=3,
                     wav2vec2=str(tmp_path / "w2v"), first_hint="learned", guidance_rescale=0.5, size=96,
                     device="cpu", dtype="bf16", compile=True, overwrite=True, batch_frames=4, progress=False,
                     face_check=False, lora=str(tmp_path / "lora"))
    assert json.loads(capsys.readouterr().out) == _STATS
    rc, calls = _cli(tmp_path, monkeypatch, base + ["--driving-video", str(tmp_path / "drive.mp4"), "--size", "96",
                                                     "--device", "cpu", "--batch-frames", "4", "-q"])
    assert rc == 0 and [c[0] for c in calls] == ["reenact"]
    _, a, k = calls[0]
    assert a == (str(tmp_path / "run"), str(tmp_path / "face.png"), str(tmp_path / "drive.mp4"), str(tmp_path / "o.mp4"))
    assert k == dict(size=96, device="cpu", dtype="fp32", compile=False, overwrite=False, batch_frames=4,
                     progress=False, face_check=True, lora=None)


def test_args_errors_and_interrupts_are_one_line_and_an_exit_code(tmp_path, monkeypatch, capsys):
    base = _paths(tmp_path) + ["--audio", str(tmp_path / "a.wav")]
    rc, calls = _cli(tmp_path, monkeypatch, base, result=InferenceError("the audio is silent"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(calls) == 1 and err == "ifmdm-infer: error: the audio is silent"
    rc, _ = _cli(tmp_path, monkeypatch, base, result=KeyboardInterrupt())
    assert rc == 130 and capsys.readouterr().err.strip() == "ifmdm-infer: interrupted; no output written"
    rc, calls = _cli(tmp_path, monkeypatch, base + ["--steps", "0"])       # checked before generate
    assert rc == 2 and calls == [] and "--steps" in capsys.readouterr().err


def test_args_usage_needs_one_speech_source_and_documents_every_option(capsys):
    """Exactly one of --audio / --driving-video; a usage error names the program; every option
    has a help line and the help ends with the notes on the image (EPILOG)."""
    from ifmdm_model.cli.infer import EPILOG, parser

    base = ["--checkpoint", "c", "--image", "i.png", "-o", "o.mp4"]
    for argv in (base, base + ["--audio", "a.wav", "--driving-video", "d.mp4"], ["--image", "i", "-o", "o", "--audio", "a"],
                 ["--checkpoint", "c", "-o", "o", "--audio", "a"], ["--checkpoint", "c", "--image", "i", "--audio", "a"]):
        with pytest.raises(SystemExit) as e:
            parser().parse_args(argv)
        assert e.value.code == 2
        assert capsys.readouterr().err.startswith("usage: ifmdm-infer "), argv
    for hint in ("input", "learned"):
        assert parser().parse_args(base + ["--audio", "a.wav", "--first-hint", hint]).first_hint == hint
    for extra in (["--first-hint", "zero"], ["--dtype", "fp64"]):
        with pytest.raises(SystemExit):
            parser().parse_args(base + ["--audio", "a.wav"] + extra)
        assert "invalid choice" in capsys.readouterr().err
    ap = parser()
    assert ap.prog == "ifmdm-infer" and ap.description and ap.epilog == EPILOG
    undocumented = [a.option_strings for a in ap._actions if not a.help]
    assert undocumented == [], undocumented
    text = ap.format_help()
    assert EPILOG.strip().splitlines()[0] in text
