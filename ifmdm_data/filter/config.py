"""Filter configuration: dataclasses with defaults, loaded from YAML and validated.

The shipped defaults are `ifmdm_data/configs/filter.yaml` (the same values as the
dataclass defaults below, with comments). A user file overrides any subset of keys.

Thresholds in `decide` are either absolute numbers or dataset quantiles written as
`{quantile: 0.3}`: the value is then the 0.3-quantile of that statistic over the segments of
this run that passed the face checks (computed at the end of `filter`, and again by
`ifmdm-data decide` when a user re-decides without re-running the analysis).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ifmdm_data.errors import ConfigError

Threshold = Union[float, dict]


@dataclass
class SegmentConfig:
    max_duration_s: float = 20.0      # longer videos are cut into windows of at most this
    min_duration_s: float = 2.5       # shorter segments are rejected `too_short`
    scene_cut: bool = True            # split segments at detected scene cuts
    scene_threshold: float = 0.4      # HSV-histogram distance between analysed frames
    min_short_side: int = 128         # smaller videos are rejected `low_resolution`


@dataclass
class AnalysisConfig:
    backend: str = "mediapipe"        # mediapipe | fan | facexlib (see backends.build_models)
    fps: float = 6.25                 # face mesh and lip motion rate
    skip_nonref: bool = True          # sources >= 1.9x fps: decode reference frames only
    max_side: int = 640               # frames are downscaled so their long side is at most this
    detect_fps: float = 1.25          # face counting (full-range detector) rate
    second_pass: bool = True          # detector again on 2x2 tiles when it finds no face or only small ones
    second_pass_small_frac: float = 0.25  # "small": box height under this fraction of the frame's short side
    tile_frac: float = 0.6            # each tile's width and height, fraction of the frame's, in [0.5, 1)
    segmentation_fps: float = 1.25    # person segmentation rate
    min_detection_confidence: float = 0.5
    lip_crop_px: int = 32             # pose-normalised mouth crop used for lip motion energy
    dense_mouth: bool = True          # AV sync: mouth crops on every decoded frame, not only analysed ones
    face_crop_px: int = 128           # face crop used for sharpness


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    vad_threshold: float = 0.8        # silero speech probability (0.8 keeps music out)
    max_lag_s: float = 0.4            # AV sync: search lags in [-max_lag_s, max_lag_s]
    sync_every_s: float = 0.4         # --syncnet: one 5-frame SyncNet window every this many seconds


@dataclass
class DecideConfig:
    min_face_fraction: float = 0.8         # a face in at least this fraction of analysed frames
    max_multi_face_fraction: float = 0.2   # two or more faces in at most this fraction
    min_face_px: float = 64.0              # median face-box height in source pixels
    max_out_of_frame_fraction: float = 0.2
    min_sharpness: Threshold = 15.0        # median Laplacian variance of the face crop
    max_camera_motion: Threshold = 0.05    # median background shift, fraction of diagonal / s
    head_motion_min: Threshold = 0.14      # head moves: mean head speed, face sizes / s
    lip_motion_min: Threshold = 0.02       # lips move: std of mouth opening, face sizes
    min_speech_ratio: float = 0.3          # stage 2: fraction of the segment with speech
    min_audio_coverage: float = 0.95       # stage 2: fraction of the segment covered by decoded audio
    min_av_corr: float = 0.25              # stage 2: lip-motion / speech-envelope correlation (benchmarks/av_sync_bench.py)
    max_av_lag_s: float = 0.4              # stage 2: |best lag| above this is out of sync
    min_sync_conf: float = 3.0             # stage 2 (--syncnet): SyncNet confidence (LSE-C) at least this
    max_sync_offset_frames: int = 3        # stage 2 (--syncnet): |SyncNet AV offset| at most this (25 fps frames)


@dataclass
class IdentityConfig:
    enabled: bool = True              # filter's identify stage (identity_id, dup_group per segment)
    frames: int = 8                   # frames sampled per segment: a pHash of each
    face_every: int = 4               # a dlib face descriptor on every this-many-th sampled frame (2 of 8)
    max_side: int = 640               # sampled frames are downscaled so their long side is at most this
    threshold: float = 0.6            # dlib descriptor distance: the same person below this
    max_phash_distance: int = 10      # bits of 64: frames this close are the same picture
    audio_fingerprint: bool = True    # Chromaprint fingerprints: the same audio joins a dup group


@dataclass
class FilterConfig:
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    decide: DecideConfig = field(default_factory=DecideConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "filter.yaml"


def _check_threshold(value: Any, key: str, source: str) -> Threshold:
    if isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be a number or {{quantile: q}}, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict) and set(value) == {"quantile"}:
        q = value["quantile"]
        if not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise ConfigError(f"{source}: '{key}.quantile' must be in [0, 1], got {q!r}")
        return {"quantile": float(q)}
    raise ConfigError(f"{source}: '{key}' must be a number or {{quantile: q}}, got {value!r}")


def _build(cls, data: Any, prefix: str, source: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(known)})")
    kwargs = {}
    defaults = cls()
    for name, f in known.items():
        if name not in data:
            continue
        key = f"{prefix}{name}"
        value = data[name]
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key + ".", source)
        elif f.type in ("Threshold", Threshold):
            kwargs[name] = _check_threshold(value, key, source)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
            if value < 0:
                raise ConfigError(f"{source}: '{key}' must be >= 0, got {value!r}")
            if isinstance(default, int) and (value != value or value in (float('inf'),) or value != int(value)):
                raise ConfigError(f"{source}: '{key}' must be a whole number, got {value!r}")
            kwargs[name] = type(default)(value)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
            kwargs[name] = value
        else:  # pragma: no cover - all fields are covered above
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: Any, source: str = "<dict>") -> FilterConfig:
    cfg = _build(FilterConfig, data, "", source)
    if cfg.analysis.backend not in ("mediapipe", "fan", "facexlib"):
        raise ConfigError(f"{source}: 'analysis.backend' must be mediapipe, fan or facexlib, "
                          f"got {cfg.analysis.backend!r}")
    if cfg.analysis.fps <= 0 or cfg.analysis.detect_fps <= 0 or cfg.analysis.segmentation_fps <= 0:
        raise ConfigError(f"{source}: analysis rates (fps, detect_fps, segmentation_fps) must be > 0")
    if not 0.0 <= cfg.analysis.second_pass_small_frac <= 1.0:
        raise ConfigError(f"{source}: 'analysis.second_pass_small_frac' must be in [0, 1], "
                          f"got {cfg.analysis.second_pass_small_frac!r}")
    if not 0.5 <= cfg.analysis.tile_frac < 1.0:
        raise ConfigError(f"{source}: 'analysis.tile_frac' must be in [0.5, 1) (2x2 tiles that cover "
                          f"the frame), got {cfg.analysis.tile_frac!r}")
    if cfg.audio.sync_every_s <= 0:
        raise ConfigError(f"{source}: 'audio.sync_every_s' must be > 0")
    if cfg.identity.frames < 1 or cfg.identity.face_every < 1 or cfg.identity.max_side < 64:
        raise ConfigError(f"{source}: 'identity.frames' and 'identity.face_every' must be >= 1 and "
                          f"'identity.max_side' >= 64")
    if not 0 < cfg.identity.threshold < 2 or cfg.identity.max_phash_distance > 64:
        raise ConfigError(f"{source}: 'identity.threshold' must be in (0, 2) (dlib distance) and "
                          f"'identity.max_phash_distance' at most 64 bits")
    if cfg.segment.max_duration_s <= cfg.segment.min_duration_s:
        raise ConfigError(f"{source}: 'segment.max_duration_s' must be larger than 'segment.min_duration_s'")
    return cfg


def _overlay(base: dict, over: Any) -> Any:
    """`over` on top of `base`, mapping by mapping (any non-mapping value replaces)."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    out = dict(base)
    for k, v in over.items():
        out[k] = _overlay(base.get(k), v) if k in base else v
    return out


def load_config(path: str | Path | None = None, base: dict | None = None) -> FilterConfig:
    """Load the shipped defaults, then the user's file (any subset of keys) on top. With
    `base` (a stored `FilterConfig.to_dict()`, e.g. a run's summary.json), the user's file goes
    on top of that instead: `decide` keeps what the run used unless the file changes it."""
    if path is None and base is None:
        path = DEFAULT_CONFIG_PATH
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if base is not None:
        known = FilterConfig().to_dict()      # keys of this version only (a newer run may have more)
        base = {k: {kk: vv for kk, vv in v.items() if kk in known[k]} for k, v in base.items()
                if k in known and isinstance(v, dict)}
        data = _overlay(base, data)
    return config_from_dict(data, str(path) if path is not None else "the run's summary.json")
