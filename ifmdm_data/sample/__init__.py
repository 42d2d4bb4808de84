"""A small labelled sample clip set, made locally with no downloads (`ifmdm-data sample OUT/`).

Every clip is synthesised from material installed on the machine: the face is the astronaut
photo that ships with scikit-image (`skimage.data.astronaut()`), cropped around the face; a
second identity is the same photo mirrored, with a blue suit and a recoloured background.
Speech is real synthetic speech from espeak-ng (a few English sentences, 16 kHz mono).
Head motion is a smooth rigid motion (rotation, translation, scale: sums of low-frequency
sinusoids) of the person, composited over a static background (so it is head motion, not
camera motion; the person matte comes from mediapipe selfie segmentation, run once). Lip
motion: the lip landmarks are found once on the photo with mediapipe's face mesh; per frame
the lower lip and jaw are moved down by a smooth displacement field in proportion to the
speech envelope (RMS per video frame, smoothed) and a dark mouth interior is drawn between
the lips, so that a face-mesh tracker sees the mouth open and close with the speech
(inner-lip gap / inter-ocular distance vs envelope: Pearson r ~0.96). At rest the lips are
closed.

Clips (`size` x `size`, `fps`, H.264 yuv420p; AAC 16 kHz mono audio unless said otherwise;
4 s unless said otherwise):

==================  ==========  ===============  ==============================================
file                expected    stage2           what it is
==================  ==========  ===============  ==============================================
coarse_head.mp4     coarse      no_speech        head turns/moves clearly (+-8 deg, +-6 %),
                                                 mouth closed; audio is low-level noise
lip_talk.mp4        lip         ok               head perfectly still, mouth moves with speech
hard_talk.mp4       hard        ok               head moves and mouth moves with speech
static_still.mp4    static      no_speech        one still image plus tiny pixel noise; noise
noface_texture.mp4  no_face     not_in_subset    slow pan over skimage's coffee cup photo
two_faces.mp4       multi_face  not_in_subset    both identities side by side (2*size wide),
                                                 both heads move, the left one talks
noaudio_talk.mp4    hard        no_audio         like hard_talk, but no audio stream at all
short_talk.mp4      too_short   not_in_subset    1.2 s of lip_talk-like speech
scene_cut.mp4       coarse      no_speech        8 s: segment 0 (0-4 s) coarse-like astronaut,
                    lip         ok               hard cut, segment 1 (4-8 s) second identity
                                                 talking with a still head; noise then speech
dubbed_talk.mp4     hard        av_out_of_sync   head moves, mouth follows sentence A, audio is
                                                 sentence B with a pause inserted, re-timed so
                                                 that at every lag within +-0.4 s the envelopes
                                                 have r <~ 0.15 and |r| <~ 0.25 (the values
                                                 are in the labels)
==================  ==========  ===============  ==============================================

`OUT/labels.csv` has one row per expected segment with the columns
`file, segment, start_s, end_s, expected, stage2, description`: `expected` is a stage-1
subset (`coarse`, `lip`, `hard`) or a rejection reason code, `stage2` is `ok` or a stage-2
reason code (see `ifmdm_data.reasons`). The set is deterministic under `seed` (the files are
byte-identical from run to run). Every file is written atomically (temporary name in the same
folder, then renamed). Generation takes ~8 s of one CPU core at the default 256 px / 25 fps.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from ifmdm_data.errors import InputError
from ifmdm_data.sample.audio import (MAX_LAG_S, SAMPLE_RATE, SENTENCES, lagged_corr, noise_track,  # noqa: F401 - public API
                                     pick_dub, place, speak, speech_envelope)
from ifmdm_data.sample.files import LABEL_COLUMNS, write_labels, write_mp4  # noqa: F401 - public API
from ifmdm_data.sample.render import chain, face_frames, head_track, make_faces, pan

CLIP_S = 4.0
SHORT_S = 1.2
OPEN_MAX = 0.35            # widest mouth opening, fraction of the inter-ocular distance


@dataclass
class _Clip:
    """One sample file: how to make its frames, its audio, and its label rows."""

    name: str
    frames: Callable[[], Iterable[np.ndarray]]   # called once, when the clip is written
    audio: Optional[np.ndarray]                  # 16 kHz mono, or None for no audio stream
    width: int
    segments: list                               # (n_frames, expected, stage2, description)


def _jitter(frames: Iterable[np.ndarray], rng: np.random.Generator,
            sigma: float) -> Iterator[np.ndarray]:
    """Add tiny Gaussian pixel noise to each frame."""
    for f in frames:
        yield np.clip(f + rng.normal(0.0, sigma, f.shape) + 0.5, 0, 255).astype(np.uint8)


def _clip_table(seed: int, size: int, fps: float) -> list:
    """Everything the set is made of, drawn deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(SENTENCES))
    with tempfile.TemporaryDirectory() as td:
        speech = [speak(SENTENCES[k], Path(td)) for k in order]
    n, ns = int(round(CLIP_S * fps)), int(round(CLIP_S * SAMPLE_RATE))
    n_short, ns_short = int(round(SHORT_S * fps)), int(round(SHORT_S * SAMPLE_RATE))
    tracks = [place(sp, ns, rng) for sp in speech]
    envs = [speech_envelope(tr, n, fps) for tr in tracks]
    mouth = [OPEN_MAX * np.clip(env, 0, 1) for env in envs]   # opening, fraction of IOD
    dub_audio, dub_r, dub_abs = pick_dub(envs[6], speech[:6] + speech[7:], n, fps, rng)
    astro, twin = make_faces(size)
    shut = np.zeros(n)
    heads = {k: head_track(rng, n, fps, size, *amp) for k, amp in (
        ("coarse", (8, 0.06, 0.04)), ("hard", (6, 0.04, 0.03)), ("noaudio", (6, 0.04, 0.03)),
        ("dubbed", (6, 0.04, 0.03)), ("left", (3, 0.03, 0.02)), ("right", (3, 0.03, 0.02)),
        ("cut", (8, 0.06, 0.04)))}
    noise = [noise_track(rng, ns) for _ in range(4)]
    pixel_rng = np.random.default_rng(rng.integers(2 ** 32))
    return [
        _Clip("coarse_head.mp4", lambda: face_frames(astro, shut, heads["coarse"]), noise[0], size,
              [(n, "coarse", "no_speech", "head moves clearly, mouth closed, noise audio")]),
        _Clip("lip_talk.mp4", lambda: face_frames(astro, mouth[0], None), tracks[0], size,
              [(n, "lip", "ok", "head perfectly still, mouth moves with the speech")]),
        _Clip("hard_talk.mp4", lambda: face_frames(astro, mouth[1], heads["hard"]), tracks[1], size,
              [(n, "hard", "ok", "head moves and mouth moves with the speech")]),
        _Clip("static_still.mp4", lambda: _jitter(face_frames(astro, shut, None), pixel_rng, 1.0),
              noise[1], size,
              [(n, "static", "no_speech", "one still image with tiny pixel noise, noise audio")]),
        _Clip("noface_texture.mp4", lambda: pan(size, n), noise[2], size,
              [(n, "no_face", "not_in_subset", "slow pan over a coffee cup photo, no face")]),
        _Clip("two_faces.mp4", lambda: map(np.hstack, zip(
            face_frames(astro, mouth[2], heads["left"]), face_frames(twin, shut, heads["right"]))),
              tracks[2], 2 * size,
              [(n, "multi_face", "not_in_subset",
                "two faces side by side, both heads move, the left one talks")]),
        _Clip("noaudio_talk.mp4", lambda: face_frames(astro, mouth[3], heads["noaudio"]), None, size,
              [(n, "hard", "no_audio", "head and mouth move, no audio stream")]),
        _Clip("short_talk.mp4", lambda: face_frames(astro, mouth[4][:n_short], None),
              tracks[4][:ns_short], size,
              [(n_short, "too_short", "not_in_subset", f"{SHORT_S:g} s of talking, too short")]),
        _Clip("scene_cut.mp4", lambda: chain(face_frames(astro, shut, heads["cut"]),
                                              face_frames(twin, mouth[5], None)),
              np.concatenate([noise[3], tracks[5]]), size,
              [(n, "coarse", "no_speech", "scene 1: astronaut, head moves, mouth closed, noise"),
               (n, "lip", "ok", "scene 2 after a hard cut: second identity, still head, talking")]),
        _Clip("dubbed_talk.mp4", lambda: face_frames(astro, mouth[6], heads["dubbed"]), dub_audio,
              size,
              [(n, "hard", "av_out_of_sync", "mouth follows one sentence, audio is another (at "
                f"every lag within +-{MAX_LAG_S:g} s: r <= {dub_r:.2f}, |r| <= {dub_abs:.2f})")]),
    ]


def _label_rows(clip: _Clip, fps: float) -> list:
    """One labels.csv row per segment; times are exact frame boundaries."""
    rows, start = [], 0
    for k, (n, expected, stage2, desc) in enumerate(clip.segments):
        rows.append((clip.name, k, f"{start / fps:.3f}", f"{(start + n) / fps:.3f}",
                     expected, stage2, desc))
        start += n
    return rows


def make_sample_set(out_dir: str | Path, seed: int = 0, size: int = 256, fps: float = 25.0,
                    progress: bool = False) -> Path:
    """Writes the clips and OUT/labels.csv; returns the labels path.

    See the module docstring for what each clip is and the labels format. Existing files of
    the same names are replaced. Raises InputError for a bad `size` / `fps` or when
    espeak-ng is missing.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 64 or size % 2:
        raise InputError(f"sample size must be an even integer >= 64, got {size!r}")
    if not fps > 0:
        raise InputError(f"sample fps must be > 0, got {fps!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clips = _clip_table(seed, size, float(fps))
    rows = []
    for i, clip in enumerate(clips):
        write_mp4(out / clip.name, clip.frames(), clip.width, size, float(fps), clip.audio)
        rows += _label_rows(clip, float(fps))
        if progress:
            from ifmdm_data.io.console import terminal
            print(f"sample: [{i + 1}/{len(clips)}] {out / clip.name}", file=terminal(), flush=True)
    labels_path = out / "labels.csv"
    write_labels(labels_path, rows)
    return labels_path
