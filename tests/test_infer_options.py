"""ifmdm-infer --motion-mean previous and --first-hint learned: what reaches the stage-2 model.

The stage-2 model's forward is wrapped to record the m_mu and hint of every call, and
`diffusion.cfg_model_fn` (built once per chunk) to mark where each chunk starts, so each chunk's
conditioning is compared with the motion the previous chunk generated (DESIGN.md: the first
chunk's hint is m', each next chunk's hint the last generated motion vector; m_mu is m', or
with "previous" the previous chunk's mean motion).
"""
from __future__ import annotations

import pytest
import torch

import ifmdm_model.stage2.diffusion as diffusion
import ifmdm_model.infer.generation as infer                   # where generate finds _encode_image
from ifmdm_model.infer import generate, load_models
from ifmdm_model.testing import save_random_run
from test_infer import _speech, _write_wav, image  # noqa: F401 - `image` is a fixture

FAST = dict(steps=2, progress=False, face_check=False)
N_F = 8                                          # frames per chunk of the tiny stage-2 model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(save_random_run(tmp_path_factory.mktemp("opts") / "run", n_frames=N_F))


@pytest.fixture(scope="module")
def speech3(tmp_path_factory):
    # 0.84 s at 25 fps: 21 frames = chunks of 8, 8 and 5 (the last one padded)
    return _write_wav(tmp_path_factory.mktemp("aud") / "speech3.wav", _speech(0.84))


def _run(models, image, audio, out, monkeypatch, **kw):
    """generate(...) recording, per chunk, the (m_mu, hint) of every stage-2 forward, and the
    image's m'. Returns (chunks, m_in, motions)."""
    chunks, m_in = [], []
    s2 = models.stage2
    fwd = s2.forward

    def forward(x_t, t, *a, **k):
        assert not a, "cfg_model_fn passes the conditioning by keyword"
        hint = k.get("hint")
        chunks[-1].append((k["m_mu"].detach().float().cpu().clone(),
                           None if hint is None else hint.detach().float().cpu().clone()))
        return fwd(x_t, t, **k)

    real_cfg, real_encode = diffusion.cfg_model_fn, infer._encode_image

    def cfg_model_fn(*a, **k):
        chunks.append([])
        return real_cfg(*a, **k)

    def encode(*a, **k):
        app, m = real_encode(*a, **k)
        m_in.append(m.detach().float().cpu().clone())
        return app, m

    monkeypatch.setattr(s2, "forward", forward)
    monkeypatch.setattr(diffusion, "cfg_model_fn", cfg_model_fn)   # generate imports it per call
    monkeypatch.setattr(infer, "_encode_image", encode)
    try:
        st = generate(None, image, audio, out, models=models, return_motion=True, **FAST, **kw)
    finally:
        monkeypatch.undo()
    assert st["frames"] == 21 and len(chunks) == 3 and all(chunks), "expected 3 chunks, each with forwards"
    motions = list(torch.from_numpy(st["motion"]).float().split([N_F, N_F, 5]))
    assert [len(m) for m in motions] == [8, 8, 5]
    return chunks, m_in[0], motions


def _rows(v, n):
    """Each of the n rows of a batched conditioning tensor (CFG runs 2 samples per forward)."""
    assert v.ndim == 2 and v.shape[0] == n, tuple(v.shape)
    return list(v)


def _all_equal(calls, which, want, atol=1e-6):
    for mu, hint in calls:
        v = mu if which == "m_mu" else hint
        assert v is not None, f"{which} is None, expected a vector"
        for row in _rows(v, v.shape[0]):
            torch.testing.assert_close(row, want.reshape(-1), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("mode", ["input", "previous"])
def test_motion_mean_per_chunk(models, image, speech3, tmp_path, monkeypatch, mode):  # noqa: F811
    chunks, m_in, motions = _run(models, image, speech3, tmp_path / f"{mode}.mp4", monkeypatch,
                                 motion_mean=mode)
    _all_equal(chunks[0], "m_mu", m_in)                       # chunk 0: the image's m' either way
    for k in (1, 2):
        want = m_in if mode == "input" else motions[k - 1].mean(0)
        _all_equal(chunks[k], "m_mu", want)
        if mode == "previous":                                # and it really differs from m'
            assert not torch.allclose(want.reshape(-1), m_in.reshape(-1), atol=1e-3)


@pytest.mark.parametrize("first", ["input", "learned"])
def test_first_hint_and_later_hints(models, image, speech3, tmp_path, monkeypatch, first):  # noqa: F811
    chunks, m_in, motions = _run(models, image, speech3, tmp_path / f"{first}.mp4", monkeypatch,
                                 first_hint=first)
    if first == "learned":                                    # the model's learned (null) hint token
        assert all(hint is None for _, hint in chunks[0])
    else:
        _all_equal(chunks[0], "hint", m_in)
    for k in (1, 2):                                          # the previous chunk's last frame
        _all_equal(chunks[k], "hint", motions[k - 1][-1])
        assert not torch.allclose(motions[k - 1][-1], m_in.reshape(-1), atol=1e-3)


# --- option parsing, directly (issue 16: bash scripts/mutation.sh infer) -----------------------

def test_option_motion_mean_values(tmp_path):
    import numpy as np
    from ifmdm_model.infer import InferenceError, motion_mean_arg

    assert motion_mean_arg("input", 4) == "input" and motion_mean_arg("previous", 4) == "previous"
    v = motion_mean_arg(np.arange(4, dtype=np.float64), 4)
    assert v.dtype == np.float32 and v.tolist() == [0, 1, 2, 3]
    seq = np.stack([np.zeros(4), np.full(4, 2.0), np.arange(4) * 3.0])    # (T=3, D=4): its mean over T
    np.testing.assert_allclose(motion_mean_arg(seq, 4), [2 / 3, 1 + 2 / 3, 2 + 2 / 3, 3 + 2 / 3], rtol=1e-6)
    np.save(tmp_path / "m.npy", seq)
    np.testing.assert_allclose(motion_mean_arg(str(tmp_path / "m.npy"), 4), seq.mean(0), rtol=1e-6)
    np.testing.assert_allclose(motion_mean_arg(tmp_path / "m.npy", 4), seq.mean(0), rtol=1e-6)
    for bad, needle in [(np.zeros(5), "shape (4,)"), (np.zeros((2, 5)), "(T, 4)"), (np.zeros((2, 2, 4)), "got (2, 2, 4)"),
                        (np.array([0, 1, np.nan, 0]), "finite"), (np.array([[0, 1, 2, np.inf]]), "finite"),
                        (str(tmp_path / "nope.npy"), "does not exist"), ("learned", "input, previous or a .npy")]:
        with pytest.raises(InferenceError, match="--motion-mean") as e:
            motion_mean_arg(bad, 4)
        assert needle in str(e.value), str(e.value)
    (tmp_path / "text.npy").write_text("not numpy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for f in ("text.npy", "obj.npy"):                  # unreadable, or pickled objects (never loaded)
        with pytest.raises(InferenceError, match=f"cannot read --motion-mean {tmp_path / f}") as e:
            motion_mean_arg(str(tmp_path / f), 4)
        assert "(ValueError: " in str(e.value), str(e.value)       # names what went wrong


def test_option_dtype_autocast():
    from ifmdm_model.infer import InferenceError
    from ifmdm_model.infer.options import autocast_for as _autocast

    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # fp32 is no autocast at all: not even a warning
        with _autocast(cpu, "fp32"):
            assert (a @ b).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with _autocast(cpu, name):
            assert torch.is_autocast_enabled("cpu") and (a @ b).dtype == dt, name
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(InferenceError, match=r"--dtype must be one of \['bf16', 'fp16', 'fp32'\], got 'fp64'"):
        _autocast(cpu, "fp64")
