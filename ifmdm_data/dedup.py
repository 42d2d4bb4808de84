"""Near-duplicate segments: perceptual hashes of a few frames, grouped into `dup_group`.

A re-upload, re-encode, rescale or overlapping trim of the same footage gives frames whose
64-bit DCT perceptual hash (pHash, the `imagehash` library: 32x32 grey, top-left 8x8 DCT
coefficients against their median) differs in a few bits; different footage differs in
about half of the 64 bits.

Two segments are near-duplicates when at least `min_matches` of the sampled frames of the one
with fewer hashes have a frame of the other within `max_distance` bits (Hamming distance;
default 10 of 64, the usual pHash rule). Scalable: candidate pairs come from blocking, never
an all-pairs matrix: each 64-bit hash is cut into 4 bands of 16 bits and two segments are
compared only when one of their frame hashes shares a band value with one of the other's
(a pair of frames within 3 bits always shares a band, by pigeonhole; farther pairs usually do,
and a segment has several frames). Groups are the connected components of the duplicate
relation (union-find), so a chain of overlapping trims is one group.

Consecutive segments of one static shot usually match too (same framing), so a dup group can
hold more than re-encodes; for splitting that is what is wanted.

`identify.collection_ids` adds the pairs whose audio is the same (Chromaprint fingerprints,
fingerprint.py) through `extra_pairs`: a re-upload with other pictures but the same soundtrack
joins the group too.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

HASH_BITS = 64
BANDS = 4                 # 4 bands x 16 bits for blocking
MAX_DISTANCE = 10         # bits of 64: frames this close are "the same picture"
MIN_MATCHES = 2           # matched frames needed (fewer when a segment has fewer hashes)
MAX_BUCKET = 5000         # a band value shared by more frames than this is uninformative: skipped
N_FRAMES = 8              # frames sampled per segment


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by size)."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def labels(self) -> np.ndarray:
        """(n,) int64 component labels 0..C-1, numbered in order of first appearance."""
        out = np.empty(len(self.parent), np.int64)
        seen: dict[int, int] = {}
        for i in range(len(self.parent)):
            out[i] = seen.setdefault(self.find(i), len(seen))
        return out


def sample_frames(path: str, start_s: float, end_s: float, n: int = N_FRAMES,
                  rotation: int = 0, max_side: int = 0) -> list[np.ndarray]:
    """Decode about `n` frames spread evenly over [start_s, end_s) seconds of `path`.

    Returns RGB uint8 arrays (H, W, 3) at the displayed size (downscaled so that the longer side
    is at most `max_side` when > 0). Uses `video.iter_frames` (PyAV); raises ClipError when the
    file cannot be decoded.
    """
    import av

    from .inputs import fs_path
    from .video import analysis_size, iter_frames, main_streams, stream_display_size

    with av.open(fs_path(path)) as c:
        if not c.streams.video:
            return []
        s = main_streams(c)[0]
        w, h = stream_display_size(s)
        if not np.isfinite(end_s) or end_s <= start_s:
            dur = float(s.duration * s.time_base) if s.duration and s.time_base else (
                c.duration / 1e6 if c.duration else 0.0)
            end_s = dur if dur > start_s else start_s + 1e6
    if rotation in (90, 270):
        w, h = h, w
    if max_side:
        w, h = analysis_size(w, h, max_side)
    fps = n / max(end_s - start_s, 1e-3)
    # skip_nonref: a few frames need no exact times; about 2x faster decoding on long-GOP files
    frames = iter_frames(path, start_s, end_s, fps, (w, h), rotation=rotation, skip_nonref=True)
    return [rgb for _, rgb in frames][:n]


def frame_hashes(frames: Iterable[np.ndarray], min_std: float = 3.0) -> list[int]:
    """RGB frames (H, W, 3) uint8 -> 64-bit pHash per frame as Python ints (bit 63 = first
    coefficient). Flat frames (grey std < `min_std` levels: black, fades) are skipped: their
    hash carries no information and would join unrelated segments."""
    import imagehash
    from PIL import Image

    out = []
    for f in frames:
        grey = np.asarray(Image.fromarray(f).convert("L"))
        if grey.std() < min_std:
            continue
        bits = imagehash.phash(Image.fromarray(grey), hash_size=8).hash.flatten()
        out.append(int("".join("1" if b else "0" for b in bits), 2))
    return out


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes."""
    return bin(a ^ b).count("1")


def _matches(ha: Sequence[int], hb: Sequence[int], max_distance: int) -> int:
    """Frames of the shorter list with a frame of the other within max_distance bits."""
    if len(ha) > len(hb):
        ha, hb = hb, ha
    return sum(1 for a in ha if min(hamming(a, b) for b in hb) <= max_distance)


def dup_groups(hashes: Sequence[Sequence[int]], max_distance: int = MAX_DISTANCE,
               min_matches: int = MIN_MATCHES, bands: int = BANDS,
               extra_pairs: Iterable[tuple[int, int]] = ()) -> np.ndarray:
    """Per-segment frame hashes (list of lists of 64-bit ints) -> (N,) int64 `dup_group`.

    Segments in one group are connected by near-duplicate pairs (see the module docstring);
    a segment without hashes (no decodable, non-flat frame) is a group of its own. Group ids
    are 0..G-1 in order of first appearance, so a re-run on the same input gives the same ids.
    `extra_pairs`: more duplicate pairs (i, j) found otherwise (the same audio: fingerprint.py).
    """
    n = len(hashes)
    width = HASH_BITS // bands
    mask = (1 << width) - 1
    buckets: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, hs in enumerate(hashes):
        for h in hs:
            for b in range(bands):
                buckets[(b, (h >> (b * width)) & mask)].add(i)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        if len(members) > MAX_BUCKET:
            log.warning("dedup: skipping a hash band shared by %d segments", len(members))
            continue
        m = sorted(members)
        for x in range(len(m)):
            for y in range(x + 1, len(m)):
                pairs.add((m[x], m[y]))
    uf = UnionFind(n)
    for i, j in pairs:
        need = min(min_matches, len(hashes[i]), len(hashes[j]))
        if need and _matches(hashes[i], hashes[j], max_distance) >= need:
            uf.union(i, j)
    for i, j in extra_pairs:
        uf.union(int(i), int(j))
    return uf.labels()


def hash_to_hex(h: int) -> str:
    return f"{h:016x}"


def hex_to_hash(s: str) -> int:
    return int(s, 16)
