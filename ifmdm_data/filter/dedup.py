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

    from ifmdm_data.io.paths import fs_path
    from ifmdm_data.media.video import analysis_size, iter_frames, stream_display_size
    from ifmdm_data.media.streams import main_streams

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


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each element of a uint64 array (np.bitwise_count on NumPy >= 2, else a byte
    lookup table); same shape, small unsigned ints."""
    x = np.ascontiguousarray(x, np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.uint8)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l)."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, np.int64)
    offs = np.cumsum(lengths) - lengths
    return np.repeat(starts - offs, lengths) + np.arange(total)


def _buckets(flat: np.ndarray, owner: np.ndarray, bands: int, width: int):
    """Blocking: the segments sharing each (band, band value) -> (member segments of every
    usable bucket, concatenated and sorted within a bucket; bucket starts into them). Buckets of
    one segment are dropped, those of more than MAX_BUCKET segments skipped with a warning."""
    mask = np.uint64((1 << width) - 1)
    members, sizes = [], []
    for b in range(bands):
        vals = (flat >> np.uint64(b * width)) & mask
        order = np.lexsort((owner, vals))
        v, o = vals[order], owner[order]
        keep = np.ones(len(v), bool)
        keep[1:] = (v[1:] != v[:-1]) | (o[1:] != o[:-1])     # one entry per (value, segment)
        v, o = v[keep], o[keep]
        if not len(v):
            continue
        first = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
        size = np.diff(np.r_[first, len(v)])
        for big in size[size > MAX_BUCKET]:
            log.warning("dedup: skipping a hash band shared by %d segments", int(big))
        ok = (size >= 2) & (size <= MAX_BUCKET)
        members.append(o[_ranges(first[ok], size[ok])])
        sizes.append(size[ok])
    if not members:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    members, sizes = np.concatenate(members), np.concatenate(sizes)
    return members, np.cumsum(sizes) - sizes, sizes


def dup_groups(hashes: Sequence[Sequence[int]], max_distance: int = MAX_DISTANCE,
               min_matches: int = MIN_MATCHES, bands: int = BANDS,
               extra_pairs: Iterable[tuple[int, int]] = ()) -> np.ndarray:
    """Per-segment frame hashes (list of lists of 64-bit ints) -> (N,) int64 `dup_group`.

    Segments in one group are connected by near-duplicate pairs (see the module docstring);
    a segment without hashes (no decodable, non-flat frame) is a group of its own. Group ids
    are 0..G-1 in order of first appearance, so a re-run on the same input gives the same ids.
    `extra_pairs`: more duplicate pairs (i, j) found otherwise (the same audio: fingerprint.py).

    The candidate pairs (i < j sharing a usable band bucket) of one segment i are checked at
    once with NumPy (XOR + popcount over all their frame pairs), and a candidate already in
    i's group is not checked again: the groups (connected components) are the same as checking
    every candidate pair, in any order.
    """
    n = len(hashes)
    width = HASH_BITS // bands
    lens = np.fromiter((len(h) for h in hashes), np.int64, n)
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=starts[1:])
    flat = np.fromiter((h for hs in hashes for h in hs), np.uint64, int(starts[-1]))
    owner = np.repeat(np.arange(n, dtype=np.int64), lens)

    comp = np.arange(n, dtype=np.int64)      # group label of each segment (a member's index)
    groups: dict[int, list[int]] = {}        # label -> members, for groups of 2+

    def join(a: int, b: int) -> None:        # merge the smaller group into the larger
        ca, cb = int(comp[a]), int(comp[b])
        if ca == cb:
            return
        ga, gb = groups.get(ca) or [ca], groups.get(cb) or [cb]
        if len(ga) < len(gb):
            ca, cb, ga, gb = cb, ca, gb, ga
        comp[gb] = ca
        ga.extend(gb)
        groups[ca] = ga
        groups.pop(cb, None)

    for i, j in extra_pairs:
        join(int(i), int(j))

    members, bstart, bsize = _buckets(flat, owner, bands, width)
    if len(members):
        # the usable buckets of each segment (CSR by segment)
        bid = np.repeat(np.arange(len(bsize), dtype=np.int64), bsize)
        order = np.argsort(members, kind="stable")
        seg_b = bid[order]
        seg_start = np.searchsorted(members[order], np.arange(n + 1))
        for i in np.flatnonzero(np.diff(seg_start)):
            bs = seg_b[seg_start[i]:seg_start[i + 1]]
            cand = members[_ranges(bstart[bs], bsize[bs])]
            cand = cand[cand > i]
            cand = np.unique(cand[comp[cand] != comp[i]])
            if not len(cand):
                continue
            hi = flat[starts[i]:starts[i + 1]]
            lj = lens[cand]
            hc = flat[_ranges(starts[cand], lj)]
            close = popcount64(hi[:, None] ^ hc[None, :]) <= max_distance   # (frames of i, frames of cands)
            cs = np.cumsum(lj) - lj
            count_i = np.logical_or.reduceat(close, cs, axis=1).sum(0)     # i's frames with a match in j
            count_j = np.add.reduceat(close.any(0).astype(np.int64), cs)     # j's frames with a match in i
            li = lens[i]
            count = np.where(li <= lj, count_i, count_j)                     # over the shorter list (i when equal)
            need = np.minimum(min_matches, np.minimum(li, lj))
            for j in cand[(need != 0) & (count >= need)]:
                join(int(i), int(j))

    # group ids 0..G-1 in order of first appearance
    _, first, inv = np.unique(comp, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.reshape(-1)].astype(np.int64)


def hash_to_hex(h: int) -> str:
    return f"{h:016x}"


def hex_to_hash(s: str) -> int:
    return int(s, 16)
