"""`ifmdm-data shard --images`: still images -> WebDataset shards for stage 1 (no video).

The paper's AFHQ-Cat experiment trains stage 1 on still images with no human prior; the
pairs are then made by augmentation (`image_pairs.py`). This module writes such an image set:

    OUT/images/images-{000000..}.tar   WebDataset tars; one sample = one image:
                                        key.png   RGB, SIZE x SIZE (centre square crop, resized;
                                                  key.jpg with --format jpg, quality 95)
                                        key.json  IMAGE_META_KEYS
    OUT/index.parquet                  one row per sample, `shard.format.INDEX_SCHEMA`
                                        (subset "images", n_frames 1, no audio, not stage 2)
    OUT/rejected.parquet               one row per rejected image, REJECTED_SCHEMA
    OUT/summary.json                   counts, reasons, time

Checks, in this order, each a reason code: `unreadable` (cannot be read: missing, no
permission), `empty_file`, `decode_error` (not an image, truncated, corrupt), `low_resolution`
(short side below --min-side), `duplicate` (pHash within --dup-bits of an image kept before it
in key order; exact copies have distance 0). There is no face filter. Transparency is
composited over white (the convention of `ifmdm-infer`), recorded as `composited` in the json.

Runs in the calling process (no Ray): a thread pool decodes, resizes and encodes, the main
thread checks duplicates in key order and writes the tars. Every file is written atomically
(`storage.atomic_local`: a temporary name, then a rename / an upload and a move); the index is
written last, so a folder with an index.parquet is a finished set.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ifmdm_data.shard import format as sf
from ifmdm_data.io import storage
from ifmdm_data.shard.crop import composite_alpha, square_resize
from ifmdm_data.errors import InputError
from ifmdm_data.reasons import SUBSETS, Reason

log = logging.getLogger("ifmdm_data")

IMAGE_SUBSET = "images"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
IMAGE_MEMBERS = ("png", "jpg")          # the picture member of an image sample (one of them)
DUPLICATE = "duplicate"                 # reason code (image sets only; see module doc)

IMAGE_META_KEYS = {
    "key": "sample key: 16 hex digits of sha1 of the path relative to the input",
    "source": "the image's location (path or URL)",
    "width": "original width in pixels (after EXIF orientation)",
    "height": "original height in pixels (after EXIF orientation)",
    "size": "stored side in pixels",
    "subset": "images",
    "n_frames": "1",
    "has_audio": "false",
    "stage2_ok": "false",
    "composited": "true when the source had transparency (composited over white)",
    "phash": "64-bit perceptual hash (imagehash.phash) of the stored image, hex",
}

REJECTED_SCHEMA = pa.schema([
    pa.field("key", pa.string()),
    pa.field("path", pa.string()),
    pa.field("reasons", pa.list_(pa.string())),
    pa.field("detail", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("duplicate_of", pa.string()),
])


@dataclass
class ImageSetConfig:
    size: int = 256                  # stored side in pixels
    min_side: int | None = None      # reject a short side below this (None: size // 2)
    dup_bits: int = 6                # pHash Hamming distance (of 64) counted as a duplicate
    image_format: str = "png"        # png (lossless) | jpg (quality 95, ~5x smaller)
    target_shard_bytes: int = 1_000_000_000
    workers: int | None = None       # decode threads (None: all cores)

    def validate(self) -> "ImageSetConfig":
        if self.size < 16 or self.size % 2 or self.size > 4096:
            raise InputError(f"--size must be an even number in [16, 4096], got {self.size}")
        if self.min_side is not None and self.min_side < 1:
            raise InputError("--min-side must be >= 1")
        if not 0 <= self.dup_bits < 64:
            raise InputError("--dup-bits must be in [0, 63]")
        if self.image_format not in IMAGE_MEMBERS:
            raise InputError(f"--format must be png or jpg, got {self.image_format!r}")
        if self.target_shard_bytes <= 0:
            raise InputError("--shard-size must be > 0")
        if self.workers is not None and self.workers < 1:
            raise InputError("--workers must be >= 1")
        return self


class ImageReject(Exception):
    """One image cannot go into the set: `reason` (a code) and a detail."""

    def __init__(self, reason, detail: str, width: int = 0, height: int = 0):
        super().__init__(detail)
        self.reason, self.detail, self.width, self.height = str(reason), detail, width, height


# ------------------------------------------------------------------------------------------
# inputs


def resolve_images(arg: str) -> list[tuple[str, str]]:
    """(location, key text) of every image of `arg`, sorted by location: a folder / prefix
    (recursive, IMAGE_EXTENSIONS), a glob, one image file, or a .csv/.parquet list with a path
    column (rows naming missing files are kept: they become `unreadable` rows). The key text is
    the path relative to the folder (or to the glob's folder; a list's `id` column or path as
    written). InputError: no such input, or a folder / glob with no image."""
    from ifmdm_data.filter.inputs import glob_root, key_under, read_input_list
    from ifmdm_data.io.paths import manifest_path

    remote = storage.is_url(arg)
    try:
        if arg.lower().endswith((".csv", ".parquet")) and storage.isfile(arg):
            found = read_input_list(arg)
        elif storage.isdir(arg):
            hits = storage.find(arg, IMAGE_EXTENSIONS)
            if not hits:
                raise InputError(f"{arg}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            root = arg.rstrip("/") if remote else os.path.abspath(storage.local(arg))
            found = [(h, key_under(h if remote else os.path.abspath(h), root)) for h in hits]
        elif storage.isfile(arg):
            found = [(arg, storage.name(arg))]
        elif any(ch in arg for ch in "*?["):
            hits = [h for h in storage.glob(arg) if h.lower().endswith(IMAGE_EXTENSIONS)]
            if not hits:
                raise InputError(f"{arg}: the pattern matches no image")
            root = glob_root(arg)
            root = root if remote else os.path.abspath(storage.local(root))
            found = [(h, key_under(h if remote else os.path.abspath(h), root)) for h in hits]
        else:
            raise InputError(f"{arg}: no such file or folder")
    except storage.StorageError as e:
        raise InputError(str(e) if str(e).startswith(arg) else f"{arg}: cannot list it: {e}") from None
    out = {}
    for loc, key in found:
        loc = loc if storage.is_url(loc) else manifest_path(os.path.abspath(loc))
        out.setdefault(loc, manifest_path(key))
    by_key: dict = {}
    for loc, key in out.items():
        if key in by_key:
            raise InputError(f"{arg}: {by_key[key]} and {loc} get the same sample id ({key!r}): give the list "
                             "an `id` column, or paths that differ relative to the input")
        by_key[key] = loc
    return sorted(out.items())


# ------------------------------------------------------------------------------------------
# one image (pure functions)


def decode_image(data: bytes) -> tuple[np.ndarray, bool]:
    """Encoded bytes -> (uint8 RGB (H, W, 3) in displayed orientation (EXIF), composited:
    whether transparency was composited over white). 16-bit images are scaled to 8 bits.
    Raises ImageReject(empty_file | decode_error)."""
    from PIL import Image, ImageOps

    if not data:
        raise ImageReject(Reason.EMPTY_FILE, "zero bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode == "F" or im.mode.startswith("I;32") or im.mode.startswith("F;"):
                raise ImageReject(Reason.DECODE_ERROR, f"floating-point / 32-bit samples (PIL mode {im.mode}): "
                                  "no defined range to map to 8 bits; convert to 8 or 16 bits")
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                im = Image.fromarray((np.asarray(im, np.float64) / 257.0).clip(0, 255).astype(np.uint8))
            alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
            if alpha:
                rgba = np.asarray(im.convert("RGBA"))
                transparent = bool((rgba[..., 3] < 255).any())
                return composite_alpha(rgba), transparent
            return np.ascontiguousarray(np.asarray(im.convert("RGB"))), False
    except ImageReject:
        raise
    except Image.UnidentifiedImageError:
        raise ImageReject(Reason.DECODE_ERROR, "not an image format PIL knows") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's decode error
        raise ImageReject(Reason.DECODE_ERROR, f"{type(e).__name__}: {e}"[:300]) from None


def encode_image(rgb: np.ndarray, fmt: str) -> bytes:
    """uint8 RGB -> PNG (lossless) or JPEG (quality 95) bytes."""
    import cv2

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = (cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6]) if fmt == "png"
               else cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]))
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()


def phash_bits(rgb: np.ndarray) -> int:
    """64-bit perceptual hash (imagehash.phash) as an int."""
    import imagehash
    from PIL import Image

    return int(str(imagehash.phash(Image.fromarray(rgb))), 16)


def prepare_image(loc: str, cfg: ImageSetConfig) -> dict:
    """Read, decode, check size, crop/resize, encode one image. Returns {"data", "width",
    "height", "composited", "phash"}; raises ImageReject (unreadable | empty_file |
    decode_error | low_resolution)."""
    from ifmdm_data.io.paths import fs_path

    try:
        data = storage.read_bytes(loc if storage.is_url(loc) else fs_path(loc))
    except (OSError, storage.StorageError) as e:
        raise ImageReject(Reason.UNREADABLE, f"{type(e).__name__}: {e}"[:300]) from None
    rgb, composited = decode_image(data)
    h, w = rgb.shape[:2]
    min_side = cfg.min_side if cfg.min_side is not None else cfg.size // 2
    if min(h, w) < min_side:
        raise ImageReject(Reason.LOW_RESOLUTION, f"{w}x{h}: short side below {min_side}", w, h)
    sq = square_resize(rgb, cfg.size)
    return {"data": encode_image(sq, cfg.image_format), "width": w, "height": h,
            "composited": composited, "phash": phash_bits(sq)}


class DuplicateFinder:
    """Near-duplicate lookup over the pHashes kept so far (64-bit ints); `check(h)` returns the
    key and distance of the closest kept hash within `max_bits`, else None."""

    def __init__(self, max_bits: int):
        self.max_bits = int(max_bits)
        self._hashes = np.zeros(0, np.uint64)
        self._keys: list[str] = []

    def check(self, h: int):
        if not self._keys:
            return None
        x = np.bitwise_xor(self._hashes, np.uint64(h))
        bits = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(1)
        i = int(bits.argmin())
        return (self._keys[i], int(bits[i])) if bits[i] <= self.max_bits else None

    def add(self, h: int, key: str) -> None:
        self._hashes = np.append(self._hashes, np.uint64(h))
        self._keys.append(key)


# ------------------------------------------------------------------------------------------
# the set


def _existing(out) -> list[str]:
    names = ["index.parquet", "rejected.parquet", "summary.json"]
    found = [n for n in names if storage.exists(storage.join(out, n))]
    found += [f"{IMAGE_SUBSET}/{n}" for n in storage.list_names(storage.join(out, IMAGE_SUBSET), ".tar")]
    return found


def _clear(out) -> None:
    for n in ("index.parquet", "rejected.parquet", "summary.json"):
        storage.remove(storage.join(out, n))
    storage.remove_tree(storage.join(out, IMAGE_SUBSET))


class _TarBuffer:
    """Samples of one shard, written to a local temporary tar and committed atomically."""

    def __init__(self, loc):
        self.loc = loc
        self._ctx = storage.atomic_local(loc)
        self._tmp = self._ctx.__enter__()
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self.bytes = 0

    def write(self, key: str, members: dict) -> int:
        n = 0
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o444
            self._tar.addfile(info, io.BytesIO(data))
            n += len(data)
        self.bytes += n
        return n

    def commit(self) -> None:
        self._tar.close()
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._tar.close()
        self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def run_image_set(inputs: str, out_dir: str, cfg: ImageSetConfig | None = None,
                  overwrite: bool = False) -> dict:
    """The whole `shard --images` stage (see the module doc). Returns the summary (also saved
    as OUT/summary.json). InputError: a missing or empty input, an output folder that already
    holds an image set (without `overwrite`) or video shards."""
    from ifmdm_data.io.paths import clip_id
    from ifmdm_data.schema import write_parquet_atomic

    cfg = (cfg or ImageSetConfig()).validate()
    t0 = time.time()
    items = resolve_images(str(inputs))
    out = storage.prepare_output(out_dir)
    video = [s for s in SUBSETS if storage.list_names(storage.join(out, s), ".tar")]
    if video:
        raise InputError(f"{out} holds video shards ({', '.join(video)}): write the image set to its own folder")
    if _existing(out):
        if not overwrite:
            raise InputError(f"{out} already holds an image set ({_existing(out)[0]}, ...): use "
                             f"--overwrite to write it again, or another -o folder")
        _clear(out)
    shard_dir = storage.join(out, IMAGE_SUBSET)
    storage.makedirs(shard_dir)

    keyed = [(loc, clip_id(key)) for loc, key in items]
    keyed.sort(key=lambda x: x[1])                       # key order: duplicates keep the first key
    dups = DuplicateFinder(cfg.dup_bits)
    index_rows, rejected, composited = [], [], 0
    shard_i, tar = 0, None
    workers = cfg.workers or max(1, os.cpu_count() or 1)

    def work(loc):
        try:
            return prepare_image(loc, cfg)
        except ImageReject as e:
            return e

    try:
        with ThreadPoolExecutor(workers) as pool:
            for start in range(0, len(keyed), 256):      # bounded memory: 256 encoded images
                chunk = keyed[start:start + 256]
                for (loc, key), res in zip(chunk, pool.map(work, [c[0] for c in chunk])):
                    if isinstance(res, ImageReject):
                        rejected.append({"key": key, "path": loc, "reasons": [res.reason],
                                         "detail": res.detail, "width": res.width or None,
                                         "height": res.height or None, "duplicate_of": None})
                        continue
                    hit = dups.check(res["phash"])
                    if hit is not None:
                        rejected.append({"key": key, "path": loc, "reasons": [DUPLICATE],
                                         "detail": f"pHash distance {hit[1]} to {hit[0]}",
                                         "width": res["width"], "height": res["height"],
                                         "duplicate_of": hit[0]})
                        continue
                    dups.add(res["phash"], key)
                    if tar is not None and tar.bytes >= cfg.target_shard_bytes:
                        tar.commit()
                        tar, shard_i = None, shard_i + 1
                    name = sf.SHARD_NAME.format(subset=IMAGE_SUBSET, index=shard_i)
                    if tar is None:
                        tar = _TarBuffer(storage.join(shard_dir, name))
                    meta = {"key": key, "source": loc, "width": res["width"], "height": res["height"],
                            "size": cfg.size, "subset": IMAGE_SUBSET, "n_frames": 1,
                            "has_audio": False, "stage2_ok": False,
                            "composited": res["composited"], "phash": f"{res['phash']:016x}"}
                    composited += res["composited"]
                    n = tar.write(key, {cfg.image_format: res["data"],
                                        "json": json.dumps(meta).encode()})
                    index_rows.append({"key": key, "shard": f"{IMAGE_SUBSET}/{name}",
                                       "subset": IMAGE_SUBSET, "n_frames": 1, "fps": None,
                                       "stage2_ok": False, "has_audio": False, "feature_type": None,
                                       "feature_dim": None, "bytes": n})
        if tar is not None:
            tar.commit()
            tar = None
    finally:
        if tar is not None:
            tar.abort()
    if not index_rows:
        raise InputError(f"{inputs}: none of the {len(keyed)} images passed the checks "
                         f"({', '.join(sorted({r['reasons'][0] for r in rejected}))}); nothing written")
    write_parquet_atomic(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA),
                         storage.join(out, "rejected.parquet"))
    index = pa.Table.from_pylist(index_rows, schema=sf.INDEX_SCHEMA)
    by_reason: dict[str, int] = {}
    for r in rejected:
        by_reason[r["reasons"][0]] = by_reason.get(r["reasons"][0], 0) + 1
    summary = {"inputs": len(keyed), "samples": {IMAGE_SUBSET: len(index_rows)},
               "samples_total": len(index_rows), "shards": {IMAGE_SUBSET: shard_i + 1},
               "bytes": int(sum(r["bytes"] for r in index_rows)), "rejected": len(rejected),
               "rejected_by_reason": by_reason, "composited": int(composited),
               "elapsed_s": round(time.time() - t0, 2),
               "config": {"size": cfg.size, "min_side": cfg.min_side if cfg.min_side is not None else cfg.size // 2,
                          "dup_bits": cfg.dup_bits, "format": cfg.image_format}}
    from ifmdm_data.io.atomic import write_json_atomic
    write_json_atomic(summary, storage.join(out, "summary.json"))
    write_parquet_atomic(index, storage.join(out, "index.parquet"))   # last: the set is complete
    return summary


def check_image_sample(sample: dict, shard: str) -> np.ndarray:
    """The picture of a decoded image sample as uint8 RGB (H, W, 3); ShardFormatError naming
    shard and key when the member is missing or not an image."""
    import cv2

    key = sample.get("__key__", "?")
    ext = next((e for e in IMAGE_MEMBERS if e in sample), None)
    if ext is None:
        raise sf.ShardFormatError(f"{shard}: sample {key}: missing member .png or .jpg")
    img = cv2.imdecode(np.frombuffer(sample[ext], np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise sf.ShardFormatError(f"{shard}: sample {key}.{ext}: not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def is_image_sample(members) -> bool:
    """True when a sample's members (names) are an image sample's (a picture, no mp4)."""
    return "mp4" not in members and any(e in members for e in IMAGE_MEMBERS)


def is_image_set_folder(root) -> bool:
    """True when a shard folder's (or object-storage prefix's) index.parquet lists still
    images only (this module's output), so commands that need clips can say so instead of
    "no shards"."""
    try:
        index = storage.join(str(root), "index.parquet")
        subsets = set(storage.read_parquet(index, columns=["subset"]).column("subset").to_pylist())
    except Exception:  # noqa: BLE001 - unreadable or absent: the caller reports it its own way
        return False
    return subsets == {IMAGE_SUBSET}
