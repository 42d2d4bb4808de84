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
            "identity_faces": 0, "frame_descriptors": [], "phash": [], "audio_fingerprint": []}


def failed_signals() -> dict:
    """The signals of a segment whose identify step failed (our bug or an odd file): all null,
    as "not computed" (`split` computes them again; the report does not count it as no face)."""
    return {**NOT_COMPUTED, "phash": None, "audio_fingerprint": None}


NOT_COMPUTED = {"face_descriptor": None, "identity_spread": float("nan"), "identity_mixed": None,
                "identity_faces": None, "frame_descriptors": None}


def segment_signals(path: str, start_s: float, end_s: float, rotation: int = 0,
                    encoder: Optional[Callable] = None, n_frames: int = 8, id_every: int = 4,
                    max_side: int = 640, threshold: float = 0.6, audio: bool = True,
                    sample_rate: int = 16000, face_rel: Optional[float] = None,
                    frames: Optional[list] = None) -> dict:
    """One segment -> {face_descriptor: list of 128 floats ([]: no face), identity_spread,
    identity_mixed, identity_faces, frame_descriptors: the frames' descriptors when the
    segment is mixed (else []), phash: list of 16-hex-digit strings, audio_fingerprint: list
    of uint32}. `encoder`: RGB frame -> (128,) or None; without one the face fields are None
    (not computed, unlike [] = no face); `audio=False` leaves audio_fingerprint None.
    `face_rel`: the tracked face's height / frame height (filter's `face_rel`), a detection hint;
    NaN (the filter tracked no face: the segment is rejected `no_face` anyway) skips the
    descriptors (face fields as for a segment without a face). `frames`: RGB frames of the
    segment already decoded (the filter's analysed frames, `analyse.identity_frames`): used
    instead of decoding `n_frames` from the file.
    Raises ClipError / av errors when the file cannot be decoded (the caller decides)."""
    from ifmdm_data.filter.dedup import frame_hashes, hash_to_hex, sample_frames
    from ifmdm_data.faces.identity import describe_segment

    out = {**empty_signals(), **(NOT_COMPUTED if encoder is None else {}),
           "audio_fingerprint": [] if audio else None}
    if frames is None:
        frames = sample_frames(path, start_s, end_s, n=n_frames, rotation=rotation, max_side=max_side)
    out["phash"] = [hash_to_hex(h) for h in frame_hashes(frames)]
    no_face = face_rel is not None and not face_rel == face_rel     # NaN: filter found no face
    if encoder is not None and frames and not no_face:
        hint = face_rel * frames[0].shape[0] if face_rel and face_rel == face_rel and face_rel > 0 else None
        s = describe_segment(frames[::max(1, id_every)], encoder, threshold, face_px=hint)
        if s["descriptor"] is not None:
            out["face_descriptor"] = [float(v) for v in s["descriptor"]]
        if s["mixed"]:        # kept so that every person of the segment gets linked (collection_ids)
            out["frame_descriptors"] = [[float(v) for v in f] for f in s["frames"]]
        out.update(identity_spread=s["spread"], identity_mixed=s["mixed"], identity_faces=s["n_faces"])
    if audio:
        from ifmdm_data.media.audio import load_audio
        from ifmdm_data.filter.fingerprint import audio_fingerprint
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

    from ifmdm_data.faces.identity import DlibFaceEncoder

    return partial(segment_signals, encoder=DlibFaceEncoder(), n_frames=cfg.frames, id_every=cfg.face_every,
                   max_side=cfg.max_side, threshold=cfg.threshold, audio=cfg.audio_fingerprint,
                   sample_rate=sample_rate)


def check_available(cfg) -> None:
    """Fail before any work when the identify step's libraries or weights are missing
    (MissingWeightsError for dlib's models, MissingDependencyError for Chromaprint)."""
    from ifmdm_data.faces.identity import DlibFaceEncoder

    DlibFaceEncoder()
    if cfg.audio_fingerprint:
        from ifmdm_data.filter.fingerprint import load_chromaprint
        load_chromaprint()


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and v != v)


def _mixed(flag, frames) -> bool:
    """A mixed segment whose frame descriptors are stored."""
    return _present(flag) and bool(flag) and _present(frames) and len(frames) > 0


def collection_ids(df, threshold: float = 0.6, max_distance: int = 10, audio: bool = True):
    """A manifest DataFrame with the signal columns -> ((N,) identity_id, (N,) dup_group, N lists
    identity_ids), aligned with df's rows. Rows without signals (null) get identity -1, [] and a
    group of their own.

    Leader clustering runs over the mean descriptors of the segments that show one person
    first, then over the frame descriptors of the mixed segments (two people alternating), so a
    mixed segment's mean (between two people) never pulls two identities together; a mixed
    segment gets every identity its frames have (`identity_ids`) and, as `identity_id`, the one
    most of its frames have. Rows are taken in `segment_id` order."""
    from ifmdm_data.filter.dedup import dup_groups, hex_to_hash
    from ifmdm_data.filter.fingerprint import audio_dup_pairs
    from ifmdm_data.faces.identity import cluster_identities

    n = len(df)
    order = np.argsort(df["segment_id"].astype(str).to_numpy(), kind="stable")
    means = df["face_descriptor"].to_numpy()
    mixed = df["identity_mixed"].to_numpy() if "identity_mixed" in df else np.zeros(n, object)
    frames = df["frame_descriptors"].to_numpy() if "frame_descriptors" in df else np.full(n, None, object)
    owner, points = [], []
    for i in order:                                   # one person: the mean
        m = means[i]
        if _present(m) and len(m) and not _mixed(mixed[i], frames[i]):
            owner.append(i)
            points.append(np.asarray(m, np.float32))
    for i in order:                                   # mixed: each frame
        if _mixed(mixed[i], frames[i]) and _present(means[i]) and len(means[i]):
            for f in frames[i]:
                owner.append(i)
                points.append(np.asarray(f, np.float32))
    labels = cluster_identities(points, threshold) if points else np.zeros(0, np.int64)
    per_row: dict[int, list[int]] = {}
    for i, lab in zip(owner, labels):
        per_row.setdefault(int(i), []).append(int(lab))
    ids = np.full(n, -1, np.int64)
    id_lists = [[] for _ in range(n)]
    for i, labs in per_row.items():
        vals, counts = np.unique(labs, return_counts=True)
        ids[i] = int(vals[np.argmax(counts)])           # most frames; ties: the smallest id
        id_lists[i] = [int(v) for v in vals]
    hashes = [[hex_to_hash(h) for h in v] if _present(v) else []
              for v in df["phash"].to_numpy()[order]]
    groups_sorted = dup_groups(hashes, max_distance=max_distance)
    if audio and "audio_fingerprint" in df:
        fps = [list(v) if _present(v) else [] for v in df["audio_fingerprint"].to_numpy()[order]]
        pairs = audio_dup_pairs(fps, groups=groups_sorted)   # only those joining two pHash groups
        if pairs:
            groups_sorted = dup_groups(hashes, max_distance=max_distance, extra_pairs=pairs)
    groups = np.empty(n, np.int64)
    groups[order] = groups_sorted
    return ids, groups, id_lists
