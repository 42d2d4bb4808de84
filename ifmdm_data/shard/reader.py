"""Reading the shards: a WebDataset tar's samples, their members decoded, an mp4 member's frames.

The format is defined once in `ifmdm_data.shard.format`; this module only reads it. `TarShard` opens a
tar and gives its samples (key -> members) and decoded members; `read_meta` / `load_checked`
check a sample; `main_samples` is the loaders' first stage (shard paths -> checked samples);
`decode_frames` decodes chosen frames of an mp4 member. Used by the training loaders
(`ifmdm_data.loaders`), the stage-2 motion extraction and the stage-1 evaluation.

Tars are read with `tarfile`, not extracted: every member header of a shard is read and
checked (`check_member_name`, regular files only) BEFORE any member's data is read, so an
unsafe shard fails with `ShardFormatError` naming the shard and the member before a single
sample of it reaches training. Shards are local (or shared-filesystem) paths.
"""
from __future__ import annotations

import io
import tarfile
from collections import Counter
from typing import Iterable, Iterator

import av
import cv2
import numpy as np

from ifmdm_data.shard.format import ShardFormatError, check_member_name, check_sample, decode_member


# ---------------------------------------------------------------------------------------------
# Reading a tar: every header checked before any data is read
# ---------------------------------------------------------------------------------------------

class _Unread:
    """A member that is present but whose data this loader does not need (mp4 in stage 2)."""

    def __repr__(self):
        return "<unread>"


UNREAD = _Unread()


def split_member(name: str, shard: str) -> tuple[str, str]:
    """'dir/key.speech.npy' -> ('dir/key', 'speech.npy'): WebDataset's rule (first dot of the
    base name)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem or not ext:
        raise ShardFormatError(f"{shard}: member {name!r} is not named key.ext")
    return (f"{head}/{stem}" if head else stem), ext


class TarShard:
    """A shard opened for reading: all member names and types validated at open.

    `samples()` yields (key, {ext: TarInfo}) in tar order; `load()` reads chosen members.
    """

    def __init__(self, path: str):
        from ifmdm_data.io import storage

        self.path = str(path)
        self._file = None            # an object-storage tar: a ranged-read file object (fsspec)
        try:
            if storage.is_url(self.path):
                self._file = storage.open_read(self.path)
                self._tar = tarfile.open(fileobj=self._file, mode="r:")
            else:
                self._tar = tarfile.open(self.path, "r:")
            infos = self._tar.getmembers()
        except (OSError, tarfile.TarError, storage.StorageError) as e:
            if self._file is not None:
                self._file.close()
            raise ShardFormatError(f"{self.path}: cannot read tar ({e})") from None
        self._samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        last = None
        try:
            for info in infos:
                check_member_name(info.name, self.path)
                if not info.isreg():
                    raise ShardFormatError(f"{self.path}: member {info.name!r} is not a regular "
                                           f"file (links and directories are refused)")
                key, ext = split_member(info.name, self.path)
                if key != last and key in self._samples:
                    raise ShardFormatError(f"{self.path}: members of key {key!r} are not "
                                           f"contiguous (member {info.name!r})")
                members = self._samples.setdefault(key, {})
                if ext in members:
                    raise ShardFormatError(f"{self.path}: duplicate member {info.name!r}")
                members[ext] = info
                last = key
        except ShardFormatError:
            self.close()
            raise

    def keys(self) -> list[str]:
        return list(self._samples)

    def members(self, key: str) -> dict[str, tarfile.TarInfo]:
        return self._samples[key]

    def samples(self) -> Iterator[tuple[str, dict]]:
        yield from self._samples.items()

    def where(self, key: str) -> str:
        return f"{self.path}: sample {key}"

    def read(self, key: str, ext: str):
        """The decoded member (npy -> array, json -> object, else bytes)."""
        info = self._samples[key][ext]
        try:
            data = self._tar.extractfile(info).read()
        except (OSError, tarfile.TarError) as e:
            raise ShardFormatError(f"{self.where(key)}.{ext}: cannot read ({e})") from None
        if len(data) != info.size:
            raise ShardFormatError(f"{self.where(key)}.{ext}: truncated tar member")
        return decode_member(ext, data, self.where(key))

    def load(self, key: str, exts: Iterable[str]) -> dict:
        """A sample dict: `exts` read and decoded, other members present as UNREAD."""
        members = self._samples[key]
        sample = {"__key__": key, "__shard__": self.path}
        for ext in members:
            sample[ext] = self.read(key, ext) if ext in exts else UNREAD
        return sample

    def close(self):
        self._tar.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_meta(shard: TarShard, key: str) -> dict:
    """key.json, checked for the fields the loaders use."""
    where = shard.where(key)
    if "json" not in shard.members(key):
        raise ShardFormatError(f"{where}: missing member .json")
    meta = shard.read(key, "json")
    if not isinstance(meta, dict):
        raise ShardFormatError(f"{where}.json: not a JSON object")
    need = ["n_frames", "has_audio", "stage2_ok"]
    need += ["speech_feature"] if meta.get("has_audio") else []
    lacking = [k for k in need if k not in meta]
    if lacking:
        raise ShardFormatError(f"{where}.json: lacks {lacking}")
    if meta.get("key", key) != key:
        raise ShardFormatError(f"{where}.json: key {meta['key']!r} differs from the member key")
    return meta


def load_checked(shard: TarShard, key: str, meta: dict, exts: Iterable[str]) -> dict:
    sample = shard.load(key, set(exts) - {"json"})
    sample["json"] = meta
    return check_sample(sample, shard.path)


def main_samples(shards: Iterable[str], exts: tuple, stats: Counter) -> Iterator[dict]:
    """Stage: shard paths -> checked samples with the members `exts` decoded."""
    for path in shards:
        with TarShard(path) as shard:
            for key, _ in shard.samples():
                meta = read_meta(shard, key)
                stats["clips_read"] += 1
                yield load_checked(shard, key, meta, exts)
        stats["shards_read"] += 1


# ---------------------------------------------------------------------------------------------
# Decoding an mp4 member
# ---------------------------------------------------------------------------------------------

def decode_frames(data: bytes, indices: Iterable[int], size: int, where: str,
                  threads: int = 1, stats: Counter | None = None) -> dict[int, np.ndarray]:
    """Decode an mp4 once, sequentially, from memory; keep frames `indices` as RGB uint8
    (size, size, 3), resized with INTER_AREA. Stops after the last wanted frame.

    Frame f is the frame shown at time f / fps (from its pts; the format is constant-rate).
    With one decoder thread, a picture that no other picture references (x264's non-reference
    B frames: about half of a default encode) is not decoded unless it is wanted
    (AVDISCARD_NONREF set per packet), which saves about a third of the decoding.
    """
    wanted = set(indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    seen = -1
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ShardFormatError(f"{where}.mp4: no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            ctx.thread_count = threads
            rate, start = stream.average_rate or stream.guessed_rate, stream.start_time
            if not rate or start is None or not stream.time_base:
                raise ShardFormatError(f"{where}.mp4: no frame rate or start time")
            step = float(1 / (rate * stream.time_base))     # pts units per frame
            skip, mode = threads == 1, "DEFAULT"
            for packet in container.demux(stream):
                if skip and packet.pts is not None:
                    want = "DEFAULT" if round((packet.pts - start) / step) in wanted else "NONREF"
                    if want != mode:
                        ctx.skip_frame = mode = want
                for frame in packet.decode():
                    if frame.pts is None:
                        raise ShardFormatError(f"{where}.mp4: a frame has no timestamp")
                    n = round((frame.pts - start) / step)
                    seen = max(seen, n)
                    if stats is not None:
                        stats["frames_decoded"] += 1
                    if n in wanted and n not in out:
                        img = frame.to_ndarray(format="rgb24")
                        if img.shape[0] != size or img.shape[1] != size:
                            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
                        out[n] = img
                if len(out) == len(wanted):
                    break
    except av.FFmpegError as e:
        raise ShardFormatError(f"{where}.mp4: cannot decode ({e})") from None
    if len(out) < len(wanted):
        raise ShardFormatError(f"{where}.mp4: no frame {min(wanted - set(out))} (last frame "
                               f"seen: {seen}; json n_frames is larger than the clip)")
    return out
