"""The recursive chunk sampler on its own (`ifmdm_model.infer.chunks.sample_motion_chunks`): the
motion `generate` writes is the sampler's, chunk by chunk, for the same options and seed; the
speech may be a whole (T, S) array instead of a lazy stream."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ifmdm_data.features.speech import build_features
from ifmdm_data.features import stream_frames
from ifmdm_data.shard.crop import square_resize
from ifmdm_model.infer import ChunkSampling, generate, load_models, sample_motion_chunks
from ifmdm_model.infer.media_io import load_image, read_audio, to_tensor
from ifmdm_model.testing import save_random_run
from test_infer import _speech, _write_wav, image  # noqa: F401 - `image` is a fixture

N_F = 8                                          # frames per chunk of the tiny stage-2 model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return load_models(save_random_run(tmp_path_factory.mktemp("chunks") / "run", n_frames=N_F), "cpu")


@torch.inference_mode()
def test_generate_motion_is_the_chunk_samplers(models, image, tmp_path):  # noqa: F811
    wav_path = _write_wav(tmp_path / "s.wav", _speech(0.84))           # 21 frames: chunks 8, 8, 5
    opts = ChunkSampling(steps=2, cfg=2.0, motion_mean="previous", eta=0.5, seed=7)
    st = generate(None, image, wav_path, tmp_path / "a.mp4", models=models, return_motion=True,
                  progress=False, face_check=False, steps=opts.steps, cfg=opts.cfg,
                  motion_mean=opts.motion_mean, eta=opts.eta, seed=opts.seed)

    img = to_tensor(square_resize(load_image(image), models.image_size)[None], models.device)
    m_in = models.stage1.encode(img)[1].float()                        # m' (1, D)
    speech = stream_frames(build_features(None), read_audio(wav_path), 21, 25.0).read(21)   # (21, S)
    chunks = list(sample_motion_chunks(models.stage2, models.schedule, speech, 21, N_F, m_in, opts))
    assert [tuple(c.shape) for c in chunks] == [(N_F, models.motion_dim)] * 2 + [(5, models.motion_dim)]
    np.testing.assert_allclose(torch.cat(chunks).numpy(), st["motion"], rtol=0, atol=1e-6)
    again = sample_motion_chunks(models.stage2, models.schedule, speech, 21, N_F, m_in, opts)
    np.testing.assert_array_equal(torch.cat(list(again)).numpy(), torch.cat(chunks).numpy())
