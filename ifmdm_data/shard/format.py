"""The one definition of the shard artefacts (`ifmdm-data shard` writes them, the loaders and
the trainer read them, tests check them).

Layout under `shards/`:

    shards/{coarse,lip,hard}/{subset}-{000000..}.tar    WebDataset tars (plain, uncompressed)
    shards/index.parquet                                one row per sample (INDEX_SCHEMA)
    shards/summary.json                                 counts, sizes, time, feature type
    shards/motion/<encoder_id>/{subset}/{same name}.tar stage-2 sidecars (same keys), written by
                                                        the stage-2 trainer's extraction step

One sample = one accepted clip segment; its key is the manifest's `segment_id` (no dots).
Members of a sample in a main shard (`key.ext`; WebDataset splits at the first dot):

    key.mp4            H.264 yuv420p, SIZE x SIZE, constant frame rate `fps`, n_frames frames,
                       the stabilised large-field-of-view crop (head and upper torso)
    key.wav            16 kHz mono PCM16, the segment's audio (absent when has_audio is false)
    key.speech.npy     float16 (n_frames, feature_dim): speech features of frame f computed from
                       the audio around f / fps (absent when has_audio is false)
    key.landmarks.npy  float16 (n_frames, P, 2): landmarks in crop pixels (NaN without a face)
    key.json           metadata, the keys of META_KEYS (json)

Members of a sample in a stage-2 sidecar:

    key.motion.npy     float32 (n_frames, D): stage-1 encoder motion vector of every frame
    key.motion.json    {"encoder": encoder_id, "dim": D, "mean": [D], "std": [D]}
"""
from __future__ import annotations

import io
import json
import posixpath

import numpy as np
import pyarrow as pa

from ifmdm_data.errors import IfmdmError

SHARD_NAME = "{subset}-{index:06d}.tar"
MAIN_MEMBERS = ("mp4", "wav", "speech.npy", "landmarks.npy", "json")
REQUIRED_MEMBERS = ("mp4", "landmarks.npy", "json")
SIDECAR_MEMBERS = ("motion.npy", "motion.json")

META_KEYS = {
    "key": "segment_id of the manifest",
    "source": "absolute path of the source video",
    "start_s": "segment start in the source, seconds",
    "end_s": "segment end in the source, seconds",
    "fps": "frame rate of key.mp4 (constant)",
    "n_frames": "frames in key.mp4 (= rows of speech.npy and landmarks.npy)",
    "size": "crop side in pixels",
    "subset": "coarse | lip | hard",
    "stage2_ok": "usable for stage 2 (speech, in sync)",
    "stage2_reasons": "list of stage-2 reason codes",
    "has_audio": "key.wav and key.speech.npy are present",
    "crop_box": "[x0, y0, x1, y1] of the crop in source pixels (may extend past the frame: padded)",
    "landmark_scheme": "mp478 or ibug68",
    "motion_stats": "{head_speed_mean, head_speed_std, mouth_open_mean, mouth_open_std}",
    "speech_feature": "{type: wav2vec2 | logmel, dim, rate_hz (native), layers, checkpoint}",
    "audio_shift_s": "the audio window starts this much after start_s (shard --fix-av-offset; 0 otherwise)",
}

INDEX_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("shard", pa.string(), metadata={"description": "tar path relative to shards/"}),
    pa.field("subset", pa.string()),
    pa.field("n_frames", pa.int32()),
    pa.field("fps", pa.float32()),
    pa.field("stage2_ok", pa.bool_()),
    pa.field("has_audio", pa.bool_()),
    pa.field("feature_type", pa.string()),
    pa.field("feature_dim", pa.int32()),
    pa.field("bytes", pa.int64()),
])


class ShardFormatError(IfmdmError):
    """A shard member is missing, unsafe or has the wrong shape / dtype."""


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ShardFormatError(f"{where}: not a valid .npy array ({e})") from None


def check_member_name(name: str, shard: str) -> None:
    """Refuse tar member names that could escape an extraction folder or hide a key."""
    if (name.startswith("/") or name.startswith("\\") or ".." in name.split("/")
            or posixpath.normpath(name) != name or "\x00" in name):
        raise ShardFormatError(f"{shard}: unsafe member name {name!r} (absolute or contains '..')")


def check_sample(sample: dict, shard: str) -> dict:
    """Validate one decoded main-shard sample {'__key__', 'json': dict, 'speech.npy': arr, ...}.

    Raises ShardFormatError naming shard and key on a missing member or a wrong shape/dtype.
    """
    key = sample.get("__key__", "?")
    where = f"{shard}: sample {key}"
    for m in REQUIRED_MEMBERS:
        if m not in sample:
            raise ShardFormatError(f"{where}: missing member .{m}")
    meta = sample["json"]
    n = int(meta["n_frames"])
    lm = sample["landmarks.npy"]
    if lm.dtype != np.float16 or lm.ndim != 3 or lm.shape[0] != n or lm.shape[2] != 2:
        raise ShardFormatError(f"{where}: landmarks.npy must be float16 (n_frames={n}, P, 2), "
                               f"got {lm.dtype} {lm.shape}")
    if meta.get("has_audio"):
        sp = sample.get("speech.npy")
        dim = int(meta["speech_feature"]["dim"])
        if sp is None or sp.dtype != np.float16 or sp.shape != (n, dim):
            got = None if sp is None else (sp.dtype, sp.shape)
            raise ShardFormatError(f"{where}: speech.npy must be float16 ({n}, {dim}), got {got}")
    return sample


def check_motion(motion: np.ndarray, meta: dict, n_frames: int, where: str) -> np.ndarray:
    d = int(meta["dim"])
    if motion.dtype != np.float32 or motion.shape != (n_frames, d):
        raise ShardFormatError(f"{where}: motion.npy must be float32 ({n_frames}, {d}), "
                               f"got {motion.dtype} {motion.shape}")
    return motion


def decode_member(ext: str, data: bytes, where: str):
    if ext.endswith(".npy"):
        return load_npy(data, f"{where}.{ext}")
    if ext.endswith("json"):
        try:
            return json.loads(data)
        except ValueError as e:
            raise ShardFormatError(f"{where}.{ext}: invalid JSON ({e})") from None
    return data  # mp4 / wav bytes: decoded by the loaders
