"""Identity and near-duplicate signals of one segment, and their clustering over a collection.

Per segment (`segment_signals`, a pure function of a file and a time range): `n_frames` frames
spread over [start_s, end_s) (`dedup.sample_frames`, the file's time 0 of `timeline`), the pHash
of each (`dedup.frame_hashes`), the dlib face descriptor of every `id_every`-th one
(`identity.describe_segment`: mean, spread, mixed) and the Chromaprint fingerprint of the
segment's audio (`fingerprint.audio_fingerprint` over `audio.load_audio`, same time 0).

Over a collection (`collection_ids`): `identity_id` by leader clustering of the descriptors
(`identity.cluster_identities`, O(N*K)) and `dup_group` as the connected components of
"near-duplicate pictures" (`dedup.dup_groups`, banded pHash blocking) or "same audio"
(`fingerprint.audio_dup_pairs`, inverted index of fingerprint values): no all-pairs matrix.
Rows are processed in `segment_id` order, so ids do not depend on the order results came in.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)


def empty_signals() -> dict:
    """The signals of a segment that could not be decoded: no face, no hash, no audio."""
    return {"face_descriptor": [], "identity_spread": float("nan"), "identity_mixed": False,
            "identity_faces": 0, "phash": [], "audio_fingerprint": []}


def segment_signals(path: str, start_s: float, end_s: float, rotation: int = 0,
                    encoder: Optional[Callable] = None, n_frames: int = 8, id_every: int = 2,
                    max_side: int = 1280, threshold: float = 0.6, audio: bool = True,
                    sample_rate: int = 16000) -> dict:
    """One segment -> {face_descriptor: list of 128 floats ([]: no face), identity_spread,
    identity_mixed, identity_faces, phash: list of 16-hex-digit strings, audio_fingerprint:
    list of uint32}. `encoder`: RGB frame -> (128,) or None (None here: no identity).
    Raises ClipError / av errors when the file cannot be decoded (the caller decides)."""
    from .dedup import frame_hashes, hash_to_hex, sample_frames
    from .identity import describe_segment

    out = empty_signals()
    frames = sample_frames(path, start_s, end_s, n=n_frames, rotation=rotation, max_side=max_side)
    out["phash"] = [hash_to_hex(h) for h in frame_hashes(frames)]
    if encoder is not None and frames:
        s = describe_segment(frames[::max(1, id_every)], encoder, threshold)
        if s["descriptor"] is not None:
            out["face_descriptor"] = [float(v) for v in s["descriptor"]]
        out.update(identity_spread=s["spread"], identity_mixed=s["mixed"], identity_faces=s["n_faces"])
    if audio:
        from .audio import load_audio
        from .fingerprint import audio_fingerprint
        try:
            x = load_audio(path, start_s, end_s, sample_rate)
        except Exception as e:  # noqa: BLE001 - no audio stream / undecodable audio: no fingerprint
            log.debug("fingerprint: %s: %s", path, e)
            x = np.zeros(0, np.float32)
        out["audio_fingerprint"] = audio_fingerprint(x, sample_rate)
    return out


def identifier(cfg, sample_rate: int = 16000) -> Callable:
    """The filter's per-segment function for an IdentityConfig: (path, start_s, end_s,
    rotation) -> `segment_signals` dict, with one dlib encoder loaded here (MissingWeightsError
    when dlib or its weights are not installed)."""
    from functools import partial

    from .identity import DlibFaceEncoder

    return partial(segment_signals, encoder=DlibFaceEncoder(), n_frames=cfg.frames, id_every=cfg.face_every,
                   max_side=cfg.max_side, threshold=cfg.threshold, audio=cfg.audio_fingerprint,
                   sample_rate=sample_rate)


def check_available(cfg) -> None:
    """Fail before any work when the identify step's libraries or weights are missing
    (MissingWeightsError for dlib's models, MissingDependencyError for Chromaprint)."""
    from .identity import DlibFaceEncoder

    DlibFaceEncoder()
    if cfg.audio_fingerprint:
        from .fingerprint import _chromaprint
        _chromaprint()


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and v != v)


def collection_ids(df, threshold: float = 0.6, max_distance: int = 10, audio: bool = True):
    """A manifest DataFrame with the signal columns -> ((N,) identity_id, (N,) dup_group), int64,
    aligned with df's rows. Rows without signals (null) get identity -1 and a group of their own."""
    from .dedup import dup_groups, hex_to_hash
    from .fingerprint import audio_dup_pairs
    from .identity import cluster_identities

    order = np.argsort(df["segment_id"].astype(str).to_numpy(), kind="stable")
    descs = [np.asarray(v, np.float32) if _present(v) and len(v) else None
             for v in df["face_descriptor"].to_numpy()[order]]
    ids_sorted = cluster_identities(descs, threshold)
    hashes = [[hex_to_hash(h) for h in v] if _present(v) else []
              for v in df["phash"].to_numpy()[order]]
    pairs = []
    if audio and "audio_fingerprint" in df:
        fps = [list(v) if _present(v) else [] for v in df["audio_fingerprint"].to_numpy()[order]]
        pairs = audio_dup_pairs(fps)
    groups_sorted = dup_groups(hashes, max_distance=max_distance, extra_pairs=pairs)
    ids = np.empty(len(df), np.int64)
    groups = np.empty(len(df), np.int64)
    ids[order] = ids_sorted
    groups[order] = groups_sorted
    return ids, groups
