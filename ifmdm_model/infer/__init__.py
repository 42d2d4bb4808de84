"""Inference: one portrait + speech -> a talking-head mp4 (`ifmdm-infer`), and motion transfer
from a driving video through stage 1 alone (`ifmdm-infer --driving-video`).

Modules (the public names are re-exported here: `from ifmdm_model.infer import generate`):

    models      the device, the EMA models of a run folder (`load_models`), the speech extractor
    chunks      the recursive chunk sampler `sample_motion_chunks` and its options `ChunkSampling`
    generation  `generate` (portrait + speech) and `reenact` (portrait + driving video)
    options     checks of the options (--motion-mean, --dtype, --fps/--size, the output path)
    media_io    reading the portrait / audio / driving video, writing the mp4

The command line is `ifmdm_model.cli.infer`.

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
   They are computed lazily, as motion chunks need them (`ifmdm_data.features.align.FrameStream`):
   log-mel in 2 s blocks, wav2vec2 in the extractor's 60 s overlapping chunks, each computed
   when the first frame that needs it is generated; equal to the whole-clip computation.
3. Motion is generated chunk by chunk (`chunks.sample_motion_chunks`; n_f frames, the stage-2
   model's `n_frames`): the first chunk's hint is m', each next chunk's hint is the last
   generated motion vector; m_mu is m' ("input"), the previous chunk's mean ("previous") or a
   user .npy; m_sigma = motion_std for every dimension. DDIM over `steps` respaced steps with
   classifier-free guidance on speech (both passes batched) and guidance rescale
   (`guidance_rescale`, default 1: the guided x0 is rescaled to the conditional prediction's
   std over frames, so CFG does not inflate the motion std m_sigma asks for;
   `diffusion.rescale_guided_x0`), noise from a seeded CPU torch.Generator (same seed, same
   output on any device). The last chunk is padded (speech repeated) to n_f frames and trimmed.
4. Frames are decoded in batches of `batch_frames` by the stage-1 EMA decoder with the
   appearance tensors of step 1, converted to uint8 and written to H.264 (yuv420p) as they
   are produced (resized to `size` when given); the 16 kHz mono input audio is muxed as AAC
   alongside. The file is written under a temporary name next to the output and renamed at
   the end.

Memory is bounded by one block / chunk of speech features + one motion chunk + one decode
batch; only the decoded input audio (64 KB per second) is held whole (and the generated
motion when `return_motion`).
"""
from ifmdm_data.shard.crop import square_resize  # noqa: F401 - one definition (eval.video imports it from here)
from ifmdm_model.infer.chunks import ChunkSampling, sample_motion_chunks  # noqa: F401
from ifmdm_model.infer.generation import SILENCE_DBFS, generate, reenact  # noqa: F401
from ifmdm_model.infer.media_io import (AUDIO_RATE, InferenceError, VideoWriter, check_face,  # noqa: F401
                                        load_image, read_audio, resize_frames, to_tensor, to_uint8,
                                        video_fps, video_frames)
from ifmdm_model.infer.models import (Models, choose_device, load_models, load_stage1,  # noqa: F401
                                      speech_extractor)
# moved to infer.models.choose_device; the old name stays for tune.stage1
from ifmdm_model.infer.models import choose_device as _device  # noqa: F401
from ifmdm_model.infer.options import DTYPES, autocast_for, motion_mean_arg  # noqa: F401

__all__ = ["AUDIO_RATE", "DTYPES", "SILENCE_DBFS", "ChunkSampling", "InferenceError", "Models", "VideoWriter",
           "autocast_for", "check_face", "choose_device", "generate", "load_image", "load_models", "load_stage1",
           "motion_mean_arg", "read_audio", "reenact", "resize_frames", "sample_motion_chunks", "speech_extractor",
           "square_resize", "to_tensor", "to_uint8", "video_fps", "video_frames"]
