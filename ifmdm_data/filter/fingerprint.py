"""Audio fingerprints of segments and near-duplicate audio: Chromaprint via `pyacoustid`.

Fingerprint: Chromaprint's default algorithm (the one AcoustID uses; `libchromaprint`, a
dependency of Debian's ffmpeg, loaded by pyacoustid's ctypes binding `chromaprint`): about 8.1
32-bit sub-fingerprints per second of audio, each bit the sign of a filtered difference of
chroma energies (12 pitch classes, 0.37 s frames, 0.124 s hop). Re-encoding (AAC, MP3, Opus),
resampling and volume changes flip a few bits of each value; different audio differs in about
half of the bits. Silence and constant tones give constant values (no information).

Matching two fingerprints (`match`): the offset is found by votes of exactly equal values
(as AcoustID does), then the bit error rate (BER) over the overlap at that offset decides:
same audio below `MAX_BER` (0.35; unrelated audio ~0.5) over at least `MIN_OVERLAP` values
(~3 s), or below `SHORT_MAX_BER` (0.2) over `SHORT_OVERLAP` to MIN_OVERLAP values (~1-3 s).
Overlapping trims of one recording match at their offset. Chromaprint's filters need ~2.6 s
before the first value, so audio under ~3.6 s (fewer than 8 values) is never matched.

Across a collection (`audio_dup_pairs`): candidate pairs share exact values (an inverted
index value -> segments; values held by more than `MAX_BUCKET` segments, e.g. silence, are
skipped), so no all-pairs comparison is made.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Optional, Sequence

import numpy as np

from ifmdm_data.errors import MissingDependencyError

log = logging.getLogger(__name__)

RATE_HZ = 11025 / (4096 / 3)   # sub-fingerprints per second (Chromaprint: 11025 Hz, hop 4096/3)
MAX_BER = 0.35                # same audio below this bit error rate at the best offset ...
MIN_OVERLAP = 24              # ... over at least this many sub-fingerprints (~3 s)
SHORT_OVERLAP = 8             # shorter overlaps (~1 s; a 3.6 s segment has 9 values) need ...
SHORT_MAX_BER = 0.2           # ... this (same audio re-encoded: 0.005-0.04; unrelated: ~0.5)
MIN_VOTES = 2                 # exactly equal values agreeing on the offset
MAX_BUCKET = 200              # a value shared by more segments than this is uninformative


def load_chromaprint():
    try:
        import chromaprint
    except ImportError as e:   # pyacoustid missing, or libchromaprint.so.1 not installed
        raise MissingDependencyError(f"audio fingerprints need Chromaprint ({e}): apt-get install libchromaprint1 "
                                     f"&& pip install pyacoustid==1.3.1, or set identity.audio_fingerprint: "
                                     f"false") from e
    return chromaprint


def audio_fingerprint(samples: np.ndarray, sample_rate: int) -> list[int]:
    """Mono float samples in [-1, 1] (N,) at `sample_rate` Hz -> Chromaprint sub-fingerprints
    (unsigned 32-bit ints, ~8.1 per second; [] for audio shorter than ~2 s or all silence).
    Raises MissingDependencyError when libchromaprint / pyacoustid are not installed."""
    cp = load_chromaprint()
    x = np.asarray(samples, np.float32).reshape(-1)
    if len(x) < sample_rate * 2 or not np.any(np.abs(x) > 1e-4):
        return []
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
    fp = cp.Fingerprinter()
    fp.start(int(sample_rate), 1)
    fp.feed(pcm.tobytes())
    raw, _ = cp.decode_fingerprint(fp.finish())
    return [int(v) & 0xFFFFFFFF for v in raw]


def _popcount32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 4), axis=1).sum(1)


def ber_at(a: np.ndarray, b: np.ndarray, offset: int) -> tuple[float, int]:
    """Bit error rate of a[i + offset] vs b[i] over their overlap; (BER, overlap length)."""
    a, b = np.asarray(a, np.uint32), np.asarray(b, np.uint32)
    lo, hi = max(0, -offset), min(len(b), len(a) - offset)
    if hi <= lo:
        return 1.0, 0
    d = _popcount32(a[lo + offset:hi + offset] ^ b[lo:hi])
    return float(d.sum()) / (32.0 * (hi - lo)), hi - lo


def _same(ber: float, overlap: int, max_ber: float, min_overlap: int) -> bool:
    if overlap >= min_overlap:
        return ber <= max_ber
    return overlap >= SHORT_OVERLAP and ber <= min(SHORT_MAX_BER, max_ber)


def match(a: Sequence[int], b: Sequence[int], max_ber: float = MAX_BER,
          min_overlap: int = MIN_OVERLAP) -> Optional[tuple[int, float]]:
    """Two fingerprints -> (offset in sub-fingerprints, BER) when they are the same audio
    (b[i] lines up with a[i + offset]), else None. The offset comes from the votes of exactly
    equal values; the BER over the overlap decides (`max_ber` over `min_overlap` values or
    more, SHORT_MAX_BER over SHORT_OVERLAP or more)."""
    if min(len(a), len(b)) < min(SHORT_OVERLAP, min_overlap):
        return None
    pos = defaultdict(list)
    for i, v in enumerate(a):
        pos[v].append(i)
    votes: Counter = Counter()
    for j, v in enumerate(b):
        for i in pos.get(v, ()):
            votes[i - j] += 1
    best = None
    for off, n in votes.most_common(5):
        if n < MIN_VOTES:
            break
        for o in (off - 1, off, off + 1):
            ber, ov = ber_at(np.asarray(a), np.asarray(b), o)
            if _same(ber, ov, max_ber, min_overlap) and (best is None or ber < best[1]):
                best = (o, ber)
    return best


def audio_dup_pairs(fingerprints: Sequence[Sequence[int]], max_ber: float = MAX_BER,
                    min_overlap: int = MIN_OVERLAP, groups: Optional[Sequence[int]] = None
                    ) -> list[tuple[int, int]]:
    """Per-segment fingerprints -> pairs (i, j), i < j, of segments with the same audio.

    Candidates share at least MIN_VOTES exact values (inverted index; values in more than
    MAX_BUCKET segments skipped), then `match` confirms each candidate pair.

    `groups`: a group label per segment for segments already known to be duplicates (the pHash
    `dup_group`); then a candidate pair already joined, by those groups or by the pairs found
    before it (in sorted order), is not matched, and only the pairs that join two groups are
    returned: the same groups as all the pairs give, without matching inside large groups."""
    index: dict[int, set[int]] = defaultdict(set)
    for i, fp in enumerate(fingerprints):
        for v in set(fp or ()):
            index[v].add(i)
    shared: Counter = Counter()
    for members in index.values():
        if len(members) < 2 or len(members) > MAX_BUCKET:
            continue
        m = sorted(members)
        for x in range(len(m)):
            for y in range(x + 1, len(m)):
                shared[(m[x], m[y])] += 1
    candidates = sorted(p for p, n in shared.items() if n >= MIN_VOTES)
    if groups is None:
        return [(i, j) for i, j in candidates
                if match(fingerprints[i], fingerprints[j], max_ber, min_overlap) is not None]
    from ifmdm_data.filter.dedup import UnionFind

    uf = UnionFind(len(fingerprints))
    first: dict = {}
    for i, g in enumerate(groups):
        uf.union(first.setdefault(g, i), i)
    out = []
    for i, j in candidates:
        if uf.find(i) != uf.find(j) and match(fingerprints[i], fingerprints[j], max_ber, min_overlap) is not None:
            out.append((i, j))
            uf.union(i, j)
    return out
