"""Speech features for stage 2 (log-mel or wav2vec2), aligned to video frames.

The public API of the former `ifmdm_data.features` module is importable from here as before
(`from ifmdm_data.features import build_features`).

- speech: `build_features` (picks the extractor)
- common: the 16 kHz input rate, `FeatureError`
- logmel: `LogMelFeatures` (numpy only, the default)
- wav2vec2: `Wav2Vec2Features` (a local transformers checkpoint; batched, chunked, streamed)
- wav2vec2_checkpoint: the checkpoint folder's checks, the frozen-GroupNorm surgery
- align: native-rate features -> one row per video frame (`align_to_frames`, `FrameStream`)
- mfcc: syncnet_python's MFCC (the SyncNet sync check's audio input)
"""
from ifmdm_data.features.align import FrameStream, align_to_frames, stream_frames
from ifmdm_data.features.common import SAMPLE_RATE, FeatureError
from ifmdm_data.features.logmel import LogMelFeatures, mel_filterbank
from ifmdm_data.features.speech import build_features
from ifmdm_data.features.wav2vec2 import Wav2Vec2Features
from ifmdm_data.features.wav2vec2_checkpoint import WEIGHT_FILES, WEIGHT_INDEX_FILES, check_wav2vec2_dir

__all__ = ["SAMPLE_RATE", "FeatureError", "FrameStream", "LogMelFeatures", "WEIGHT_FILES",
           "WEIGHT_INDEX_FILES", "Wav2Vec2Features",
           "align_to_frames", "build_features", "check_wav2vec2_dir", "mel_filterbank",
           "stream_frames"]
