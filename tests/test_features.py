"""Tests for ifmdm_data.features.speech: log-mel, wav2vec2 (tiny random-init checkpoints saved to a
temp dir and loaded through the real loading code), frame alignment, user-facing errors.

Everything runs on the CPU in a few seconds. The tiny Wav2Vec2 configs have conv strides
(5, 2), so their native rate is 16000 / 10 = 1600 Hz and their receptive field is
10 + (3 - 1) * 5 = 20 samples (offset_s = 10 / 16000).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from ifmdm_data.errors import IfmdmError, MissingWeightsError
from ifmdm_data.features import FeatureError, FrameStream, LogMelFeatures, Wav2Vec2Features, align_to_frames, stream_frames
from ifmdm_data.features.speech import build_features

SR = 16000
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def _signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: an amplitude-modulated tone plus a little noise."""
    t = np.arange(int(round(seconds * SR))) / SR
    rng = np.random.default_rng(seed)
    x = np.sin(2 * np.pi * (180 + 40 * seed) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t))
    return (0.3 * x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# log-mel


def test_logmel_shape_rate_info():
    fx = LogMelFeatures()
    assert (fx.dim, fx.rate_hz, fx.offset_s) == (80, 100.0, 0.005)
    out = fx(_signal(1.0))
    assert out.shape == (100, 80) and out.dtype == np.float32 and np.isfinite(out).all()
    assert fx(_signal(1.005)).shape == (101, 80)  # ceil(n / hop): the tail gets a frame
    assert fx(np.zeros(0, np.float32)).shape == (0, 80)
    info = fx.info()
    assert info["type"] == "logmel" and info["dim"] == 80 and info["rate_hz"] == 100.0
    assert info["layers"] is None and info["checkpoint"] is None
    json.dumps(info)
    assert build_features(None).info() == info


@pytest.mark.parametrize("fps,frame", [(25.0, 30), (30.0, 47), (29.97, 61)])
def test_logmel_tone_burst_lands_on_its_frame(fps, frame):
    """A 20 ms 1 kHz burst centred at video frame `frame`'s time peaks at that frame."""
    n = int(3.0 * SR)
    wav = np.zeros(n, np.float32)
    t0 = frame / fps
    i0, i1 = int(round((t0 - 0.01) * SR)), int(round((t0 + 0.01) * SR))
    wav[i0:i1] = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(i1 - i0) / SR)
    fx = LogMelFeatures()
    native = fx(wav)
    tone_bin = int(np.argmax(native.max(axis=0)))
    centre_hz = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 82)[1:-1]
                              / 2595) - 1)
    assert abs(centre_hz[tone_bin] - 1000.0) < 60.0  # the 1 kHz mel band lights up
    aligned = align_to_frames(native, fx.rate_hz, int(3.0 * fps), fps)
    assert aligned.shape == (int(3.0 * fps), 80)
    assert int(np.argmax(aligned[:, tone_bin])) == frame
    # silence vs tone: silent frames are exactly log(eps), the burst frame far above
    floor = np.log(np.float32(fx.eps))
    assert np.allclose(aligned[:frame - 2], floor, atol=1e-4)
    assert np.allclose(aligned[frame + 3:], floor, atol=1e-4)
    assert aligned[frame, tone_bin] > floor + 15.0


# --------------------------------------------------------------------------------------------
# alignment


def test_align_window_mean_convention():
    """rate 100 Hz, 25 fps: native centres (i + 0.5) / 100; frame f averages i = 4f-2 .. 4f+1
    (centres in [f/25 - 0.02, f/25 + 0.02)), i.e. value 4f - 0.5 for a ramp; frame 0's window
    is cut at the start (i = 0, 1)."""
    ramp = np.arange(400, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    out = align_to_frames(ramp, 100.0, 100, 25.0)
    assert out.shape == (100, 3) and out.dtype == np.float32
    f = np.arange(1, 100)
    np.testing.assert_allclose(out[1:, 0], 4 * f - 0.5, atol=1e-4)
    assert out[0, 0] == pytest.approx(0.5)
    # an explicit offset shifts which native frames fall in the window
    out2 = align_to_frames(ramp, 100.0, 10, 25.0, offset_s=0.012)  # centres .012 + i/100
    np.testing.assert_allclose(out2[1:, 0], 4 * np.arange(1, 10) - 1.5, atol=1e-4)  # 4f-3..4f
    # frames past the end of the audio: clamped to the last native frame
    tail = align_to_frames(ramp[:10], 100.0, 5, 25.0)
    assert tail[4, 0] == pytest.approx(9.0)


def test_align_interpolates_below_fps_and_handles_empty():
    feats = np.array([[0.0], [10.0], [20.0]], np.float32)  # 10 Hz, centres 0.05, 0.15, 0.25
    out = align_to_frames(feats, 10.0, 8, 25.0)  # t = 0, 0.04, ..., 0.28
    np.testing.assert_allclose(out[:, 0], np.interp(np.arange(8) / 25, [0.05, 0.15, 0.25],
                                                    [0, 10, 20]), atol=1e-5)
    assert align_to_frames(np.zeros((0, 4), np.float32), 50.0, 6, 25.0).shape == (6, 4)
    assert not align_to_frames(np.zeros((0, 4), np.float32), 50.0, 6, 25.0).any()
    assert align_to_frames(feats, 10.0, 0, 25.0).shape == (0, 1)


def _read_all(stream: FrameStream, sizes) -> np.ndarray:
    """Read a FrameStream to its end in reads of the given sizes (cycled), as generation does."""
    out, k = [], 0
    while stream.pos < stream.n_frames:
        out.append(stream.read(sizes[k % len(sizes)]))
        k += 1
    assert stream.read(5).shape[0] == 0  # past the last frame: nothing
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [10.0, 50.0, 100.0, 29.97])
def test_frame_stream_equals_align_to_frames(rate):
    """Any split of the native frames into blocks, any read sizes, frames past the end of the
    audio (clamped), native rate below fps (interpolated): the rows of align_to_frames."""
    rng = np.random.default_rng(int(rate))
    for fps in (25.0, 30.0):
        for T in (0, 1, 7, 240):
            native = rng.standard_normal((T, 3)).astype(np.float32)
            n_frames = int(T / rate * fps) + 6
            want = align_to_frames(native, rate, n_frames, fps, offset_s=0.013)
            for cuts in ([], [1], sorted(rng.integers(0, T + 1, 5))):
                blocks = iter(np.split(native, cuts))
                got = _read_all(FrameStream(blocks, rate, n_frames, fps, offset_s=0.013, dim=3),
                                [1, 8, 3])
                np.testing.assert_allclose(got, want, atol=1e-5)


def test_frame_stream_is_lazy_and_bounded():
    """Reading the first frames pulls only the first blocks; held native frames stay at about
    one block however long the audio."""
    native = np.random.default_rng(0).standard_normal((60000, 4)).astype(np.float32)  # 10 min
    pulled = []

    def blocks():
        for i in range(0, len(native), 200):
            pulled.append(i)
            yield native[i:i + 200]

    fs = FrameStream(blocks(), 100.0, 15000, 25.0, dim=4)
    first = fs.read(32)                               # 1.28 s of video: the first block only
    assert len(pulled) == 1 and fs.native_read == 200 and not fs.exhausted
    np.testing.assert_allclose(first, align_to_frames(native[:400], 100.0, 32, 25.0), atol=1e-6)
    held = []
    while fs.pos < fs.n_frames:
        fs.read(32)
        held.append(sum(len(h) for h in fs._held))
    assert fs.native_read == len(native) and max(held) <= 2 * 200


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_logmel_stream_equals_whole_clip(fps):
    fx = LogMelFeatures()
    wav = _signal(3.3, seed=1)
    whole = fx(wav)
    np.testing.assert_allclose(np.concatenate(list(fx.stream(wav, block_s=0.37))), whole, atol=1e-5)
    n_frames = int(round(3.3 * fps))
    want = align_to_frames(whole, fx.rate_hz, n_frames, fps, offset_s=fx.offset_s)
    got = _read_all(stream_frames(fx, wav, n_frames, fps, block_s=0.37), [8, 32, 5])
    assert got.shape == want.shape == (n_frames, 80)
    np.testing.assert_allclose(got, want, atol=1e-5)


# --------------------------------------------------------------------------------------------
# wav2vec2 (tiny random-init checkpoints)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster on a busy 2-core box
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("w2v")
    out = {}
    for norm, stable in (("group", False), ("layer", True)):
        cfg = Wav2Vec2Config(feat_extract_norm=norm, do_stable_layer_norm=stable, **TINY)
        model = Wav2Vec2Model(cfg).eval()
        model.save_pretrained(root / norm)
        out[norm] = (root / norm, model)
    yield out
    torch.set_num_threads(threads)


def _reference(model, wav, layers=None):
    """Direct transformers output on the utterance-normalised audio."""
    import torch
    x = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)
    with torch.inference_mode():
        o = model(torch.from_numpy(x.astype(np.float32))[None], output_hidden_states=True)
    if layers is None:
        return o.last_hidden_state[0].numpy()
    return torch.stack([o.hidden_states[k] for k in layers]).mean(0)[0].numpy()


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_wav2vec2_shapes_rate_and_reference(ckpts, norm):
    path, model = ckpts[norm]
    fx = Wav2Vec2Features(str(path), device="cpu")
    assert fx.rate_hz == 1600.0 and fx.dim == 32 and fx.offset_s == pytest.approx(10 / SR)
    wav = _signal(0.5)
    out = fx(wav)
    assert out.dtype == np.float32 and out.shape == (799, 32)  # (8000-10)//5+1=1599 -> 799
    np.testing.assert_allclose(out, _reference(model, wav), atol=2e-4)
    assert fx(np.zeros(15, np.float32)).shape == (0, 32)  # shorter than the receptive field
    info = fx.info()
    assert info == {**info, "type": "wav2vec2", "dim": 32, "rate_hz": 1600.0, "layers": [2],
                    "checkpoint": str(path.absolute()), "hidden_size": 32, "num_layers": 2}
    json.dumps(info)


def test_wav2vec2_layers_are_averaged(ckpts):
    path, model = ckpts["group"]
    wav = _signal(0.4, seed=1)
    both = Wav2Vec2Features(str(path), layers=(0, -1), device="cpu")
    assert both.info()["layers"] == [0, 2] and both.dim == 32
    np.testing.assert_allclose(both(wav), _reference(model, wav, [0, 2]), atol=2e-4)
    first = Wav2Vec2Features(str(path), layers=(-3,), device="cpu")  # -3 == 0
    assert first.info()["layers"] == [0]
    np.testing.assert_allclose(first(wav), _reference(model, wav, [0]), atol=2e-4)
    for norm in ("group", "layer"):  # layer 1 of 2: the model is cut after layer 1
        path, model = ckpts[norm]
        mid = Wav2Vec2Features(str(path), layers=(1,), device="cpu")
        assert len(mid.model.encoder.layers) == 1 and mid.info()["num_layers"] == 2
        np.testing.assert_allclose(mid(wav), _reference(model, wav, [1]), atol=2e-4)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_wav2vec2_batch_equals_one_by_one(ckpts, norm):
    path, _ = ckpts[norm]
    fx = Wav2Vec2Features(str(path), device="cpu", batch_seconds=2.0)
    wavs = [_signal(s, seed=i) for i, s in enumerate([0.20, 0.30, 0.33, 0.21, 0.22, 0.001])]
    lens = [w.size for w in wavs]
    assert any(len(b) > 1 and len({lens[i] for i in b}) > 1 for b in fx._batches(lens))
    batched = fx.batch(wavs)
    assert len(batched) == len(wavs) and batched[-1].shape == (0, 32)
    for w, b in zip(wavs, batched):
        np.testing.assert_allclose(b, fx(w), atol=1e-4)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_wav2vec2_chunked_long_audio_matches_unchunked(ckpts, norm):
    path, _ = ckpts[norm]
    wav = _signal(1.2, seed=2)
    for layers, atol in (((0,), 1e-4), ((-1,), 3e-2)):
        whole = Wav2Vec2Features(str(path), layers=layers, device="cpu", batch_seconds=10.0)
        chunked = Wav2Vec2Features(str(path), layers=layers, device="cpu", batch_seconds=0.4)
        plan = chunked._plan(wav.size)
        # 0.4 s chunks overlapping by 0.1 s (batch_seconds / 4), the last one ends at the end
        assert plan == [(0, 6400), (4800, 11200), (9600, 16000), (14400, 19200)]
        a, b = whole(wav), chunked(wav)
        assert a.shape == b.shape == (1919, 32)
        if layers == (0,):
            # the input of the first transformer layer only sees local context (the conv
            # stack + the positional conv, 16 frames): identical everywhere, stitching points
            # (frames 560, 1040, 1520, the middle of each overlap) included
            np.testing.assert_allclose(b, a, atol=atol)
        else:
            # the output layer attends to the whole input; a chunk sees less of it, so only
            # closeness is expected (random-init attention is broad: the worst case)
            keep = np.ones(len(a), bool)
            for c in (560, 1040, 1520):
                keep[c - 20:c + 20] = False
            np.testing.assert_allclose(b[keep], a[keep], atol=atol)
            assert np.abs(b - a).mean() < 0.1 * atol


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_wav2vec2_stream_equals_whole_clip(ckpts, norm, fps):
    """Chunk by chunk (0.4 s chunks: 4 of them for 1.2 s), each chunk's kept frames yielded as
    soon as it is computed; per video frame equal to align_to_frames on the whole clip's
    features (GroupNorm statistics of "group" checkpoints from the whole clip, as `__call__`)."""
    path, _ = ckpts[norm]
    fx = Wav2Vec2Features(str(path), device="cpu", batch_seconds=0.4)
    wav = _signal(1.2, seed=3)
    assert len(fx._plan(wav.size)) == 4
    whole = fx(wav)
    blocks = list(fx.stream(wav))
    assert len(blocks) == 4 and [len(b) for b in blocks[:3]] == [559, 480, 480]  # stitch points
    np.testing.assert_allclose(np.concatenate(blocks), whole, atol=1e-5)
    n_frames = int(round(1.2 * fps))
    want = align_to_frames(whole, fx.rate_hz, n_frames, fps, offset_s=fx.offset_s)
    stream = stream_frames(fx, wav, n_frames, fps)
    first = stream.read(8)                        # the first chunk suffices for 0.3 s of video
    assert not stream.exhausted and stream.native_read == 559
    got = np.concatenate([first, _read_all(stream, [8])])
    assert got.shape == want.shape == (n_frames, 32)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_wav2vec2_stream_without_normalisation(ckpts, tmp_path):
    import shutil
    d = tmp_path / "ck"
    shutil.copytree(ckpts["group"][0], d)
    (d / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    fx = Wav2Vec2Features(str(d), device="cpu", batch_seconds=0.4)
    wav = _signal(1.0, seed=4)
    wav[100] = np.nan                             # zeroed, as the whole-clip path does
    np.testing.assert_allclose(np.concatenate(list(fx.stream(wav))), fx(wav), atol=1e-5)


def test_wav2vec2_honours_preprocessor_config(ckpts, tmp_path):
    import shutil
    import torch
    path, model = ckpts["layer"]
    d = tmp_path / "ck"
    shutil.copytree(path, d)
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": False, "sampling_rate": 16000, "feature_size": 1}))
    wav = _signal(0.3)
    with torch.inference_mode():
        ref = model(torch.from_numpy(wav)[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(Wav2Vec2Features(str(d), device="cpu")(wav), ref, atol=2e-4)
    (d / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 8000}))
    with pytest.raises(FeatureError, match="sampling_rate"):
        Wav2Vec2Features(str(d), device="cpu")


def test_build_features_offline(ckpts, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert isinstance(build_features(), LogMelFeatures)
    fx = build_features(str(ckpts["group"][0]), layers=(1,), device="cpu")
    assert isinstance(fx, Wav2Vec2Features) and fx.info()["layers"] == [1]


# --------------------------------------------------------------------------------------------
# errors


def test_missing_checkpoint_files(ckpts, tmp_path):
    import shutil
    missing = tmp_path / "nope"
    with pytest.raises(MissingWeightsError, match="config.json") as e:
        build_features(str(missing))
    assert str(missing) in str(e.value) and "save_pretrained" in str(e.value)

    no_cfg = tmp_path / "no_cfg"
    shutil.copytree(ckpts["group"][0], no_cfg)
    (no_cfg / "config.json").unlink()
    with pytest.raises(MissingWeightsError, match="config.json") as e:
        Wav2Vec2Features(str(no_cfg))
    assert e.value.folder == str(no_cfg)

    no_w = tmp_path / "no_weights"
    shutil.copytree(ckpts["group"][0], no_w)
    (no_w / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="model.safetensors") as e:
        Wav2Vec2Features(str(no_w))
    assert "pytorch_model.bin" in str(e.value) and str(no_w) in str(e.value)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_garbage_weights(ckpts, tmp_path, weights):
    import shutil
    d = tmp_path / "garbage"
    shutil.copytree(ckpts["group"][0], d)
    (d / "model.safetensors").unlink()
    (d / weights).write_bytes(b"\x00\x01 this is not a checkpoint " * 50)
    with pytest.raises(FeatureError, match=weights) as e:
        Wav2Vec2Features(str(d), device="cpu")
    assert str(d) in str(e.value)


def test_wrong_config_or_mismatched_weights(ckpts, tmp_path):
    import shutil
    src = ckpts["group"][0]
    d = tmp_path / "bert"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(FeatureError, match="not a Wav2Vec2 config") as e:
        Wav2Vec2Features(str(d), device="cpu")
    assert str(d) in str(e.value)

    (d / "config.json").write_text("{not json")
    with pytest.raises(FeatureError, match="config.json"):
        Wav2Vec2Features(str(d), device="cpu")

    (d / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48}))
    with pytest.raises(FeatureError, match=str(d)):
        Wav2Vec2Features(str(d), device="cpu")


def test_bad_layers_and_device(ckpts):
    path = str(ckpts["group"][0])
    with pytest.raises(FeatureError, match=r"-3\.\.2"):
        Wav2Vec2Features(path, layers=(3,), device="cpu")
    with pytest.raises(FeatureError, match=r"-3\.\.2"):
        Wav2Vec2Features(path, layers=(0, -4), device="cpu")
    with pytest.raises(FeatureError):
        Wav2Vec2Features(path, layers=(), device="cpu")
    with pytest.raises(FeatureError, match="device"):
        Wav2Vec2Features(path, device="nonsense")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(FeatureError, match="CUDA is not available"):
            Wav2Vec2Features(path, device="cuda")
    with pytest.raises(FeatureError, match="batch_seconds"):
        Wav2Vec2Features(path, device="cpu", batch_seconds=0.001)
    assert issubclass(FeatureError, IfmdmError)
