"""Media I/O of `ifmdm-infer`: reading the portrait and the speech, writing the mp4, reading a
driving video. No model code: images and frames are uint8 RGB numpy arrays (N, H, W, 3) or
float tensors (N, 3, H, W) in [-1, 1]; audio is float32 mono at AUDIO_RATE (16 kHz).

- `load_image`, `square_resize`, `check_face`: the portrait (any format OpenCV or PIL reads),
  centre-cropped to a square; no face alignment, a mediapipe face count only to warn.
- `read_audio`: any audio file or a video's audio track -> float32 mono 16 kHz, whole.
- `VideoWriter`: streaming H.264 (yuv420p) + AAC mp4 under a temporary name, renamed when
  closed; frames are encoded as they are written (on a background thread by default, so the
  caller renders the next batch meanwhile), the audio is muxed up to the last frame.
- `video_frames`, `video_fps`: a driving video's frames in batches, and its frame rate.

Every error a user can cause is an `InferenceError` with a message that says what to do.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ifmdm_data.errors import IfmdmError

log = logging.getLogger("ifmdm_model")

AUDIO_RATE = 16000


class InferenceError(IfmdmError):
    """An inference input (checkpoint, image, audio, driving video, output path) is unusable."""


# ------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------

from ifmdm_data.shard.crop import composite_alpha, square_resize


def load_image(path) -> np.ndarray:
    """Any image OpenCV (or PIL) reads -> uint8 RGB (H, W, 3); InferenceError when unreadable.
    An alpha channel is composited over white (`composite_alpha`)."""
    import cv2
    p = Path(path)
    if not p.is_file():
        raise InferenceError(f"image {p} does not exist")
    raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if raw is not None and raw.dtype.kind == "f" or raw is not None and raw.dtype.itemsize > 2:
        raise InferenceError(f"image {p} has floating-point / 32-bit samples ({raw.dtype}): no defined range "
                             "to map to 8 bits; convert it to an 8- or 16-bit png or jpg")
    if raw is not None and raw.ndim == 3 and raw.shape[2] == 4:            # BGRA (8 or 16 bit)
        return composite_alpha(cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA), p)
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is not None:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    try:
        from PIL import Image
        with Image.open(p) as im:
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                return composite_alpha(np.asarray(im.convert("RGBA")), p)
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise InferenceError(f"cannot read image {p} ({type(e).__name__}: {e}); give a png or jpg") from None


def check_face(rgb: np.ndarray) -> Optional[int]:
    """Warn when mediapipe finds zero or several faces; returns the count (None: no detector)."""
    try:
        from ifmdm_data.faces.backends.mediapipe_backend import MediapipeDetector
        det = MediapipeDetector()
    except Exception:  # noqa: BLE001 - optional
        return None
    try:
        n = len(det.detect(rgb))
    except Exception:  # noqa: BLE001
        return None
    finally:
        with contextlib.suppress(Exception):
            det.close()
    if n == 0:
        log.warning("no face found in the input image: IF-MDM expects a frontal, centred portrait "
                    "(the image is only centre-cropped, not aligned)")
    elif n > 1:
        log.warning("%d faces found in the input image: the generated motion applies to the whole "
                    "frame; crop the image to one face", n)
    return n


def to_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    x = images.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def resize_frames(frames: np.ndarray, size: Optional[int]) -> np.ndarray:
    """uint8 (N, S, S, 3) -> (N, size, size, 3) (bicubic up, area down); no-op when size is None/S."""
    if size is None or frames.shape[1] == size:
        return frames
    import cv2
    interp = cv2.INTER_AREA if size < frames.shape[1] else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in frames])


# ------------------------------------------------------------------------------------------
# audio
# ------------------------------------------------------------------------------------------

def read_audio(path) -> np.ndarray:
    """Any audio file or a video's audio track -> float32 mono 16 kHz; InferenceError if not."""
    from ifmdm_data.media.audio import load_audio
    from ifmdm_data.errors import ClipError
    p = Path(path)
    if not p.is_file():
        raise InferenceError(f"audio {p} does not exist")
    try:
        return load_audio(p, sample_rate=AUDIO_RATE)
    except ClipError as e:
        raise InferenceError(f"cannot read audio {p}: {e.detail or e}") from None


# ------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------

def rgb_to_yuv420p(av, rgb: np.ndarray):
    """uint8 RGB (H, W, 3) -> an av.VideoFrame in yuv420p, converted by swscale on ONE thread.

    Left to PyAV, the conversion inside `encode` runs swscale with the codec's thread count (0 =
    automatic), and threaded swscale (FFmpeg 8) does not give the same pixels run to run: the
    same frames then encode to different bytes (measured: 1 run in 2 after other work in the
    process). One thread at 512x512 costs well under a millisecond a frame.
    """
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p", threads=1)


class VideoWriter:
    """Streaming H.264 (yuv420p) + AAC mp4 written to a temporary name, renamed by `close()`.

    `background` (default): `write` hands the batch to an encoder thread through a queue of at
    most `queue_batches` batches and returns, so rendering the next batch (GPU work, or torch
    ops that release the GIL) overlaps the RGB->YUV conversion and x264; when the queue is
    full `write` waits (memory stays bounded). An encoder error is raised by the next `write`
    or by `close`. `abort` stops the thread and deletes the temporary file.
    The encoding is deterministic: the same frames and audio give the same file bytes (colour
    conversion and x264 on one thread each). Exception, measured: frames under 64x64 px (32 px
    varied run to run after other work in the process, 48/64/128 px never did), where x264
    reads uninitialised memory; `--size` below 64 works but is not bit-reproducible.
    """

    def __init__(self, out_path, size: int, fps: float, audio: Optional[np.ndarray],
                 overwrite: bool = False, crf: int = 18, preset: str = "veryfast",
                 background: bool = True, queue_batches: int = 2):
        import av
        self.out = Path(out_path)
        if self.out.exists() and not overwrite:
            raise InferenceError(f"{self.out} exists: pass --overwrite to replace it")
        if self.out.is_dir():
            raise InferenceError(f"{self.out} is a folder")
        if not self.out.parent.is_dir():
            raise InferenceError(f"output folder {self.out.parent} does not exist")
        self.tmp = self.out.parent / f".{self.out.name}.{os.getpid()}.tmp"
        self._av = av
        self.fps = float(fps)
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        rate = Fraction(self.fps).limit_denominator(1001)
        v = self.container.add_stream("libx264", rate=rate)
        v.width = v.height = int(size)
        v.pix_fmt = "yuv420p"
        v.time_base = 1 / rate
        # one x264 thread: no run-to-run dependence on thread timing; x264 veryfast encodes
        # 512x512 at ~130 fps on one core (measured here), far above real time, and it already
        # runs beside rendering (`background`)
        v.options = {"crf": str(crf), "preset": preset, "threads": "1"}
        self.video = v
        self.audio = None
        self.wav = None
        if audio is not None and len(audio):
            a = self.container.add_stream("aac", rate=AUDIO_RATE)
            a.layout = "mono"
            a.time_base = Fraction(1, AUDIO_RATE)
            self.audio, self.wav = a, np.asarray(audio, np.float32)
        self.n = 0
        self.a_pos = 0
        self._q: Optional[queue.Queue] = None
        self._err: Optional[BaseException] = None
        if background:
            self._q = queue.Queue(maxsize=max(1, int(queue_batches)))
            self._thread = threading.Thread(target=self._encoder, name="ifmdm-video-writer", daemon=True)
            self._thread.start()

    def _encoder(self) -> None:
        while True:
            frames = self._q.get()
            if frames is None:
                return
            if self._err is None:              # after an error, drain without encoding
                try:
                    self._encode(frames)
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    self._err = e

    def _raise(self) -> None:
        err = self._err
        if err is not None:
            raise InferenceError(f"writing {self.out} failed: {type(err).__name__}: {err}") from err

    def _stop(self) -> None:
        if self._q is not None and self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    def _audio_until(self, n_samples: int) -> None:
        if self.audio is None:
            return
        end = min(len(self.wav), n_samples)
        if end <= self.a_pos:
            return
        chunk = np.clip(self.wav[self.a_pos:end], -1.0, 1.0)[None, :]
        fr = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
        fr.sample_rate = AUDIO_RATE
        fr.pts = self.a_pos
        fr.time_base = Fraction(1, AUDIO_RATE)
        for p in self.audio.encode(fr):
            self.container.mux(p)
        self.a_pos = end

    def write(self, frames: np.ndarray) -> None:
        """uint8 RGB (N, S, S, 3); the writer keeps the array: do not modify it afterwards."""
        if self._q is None:
            self._encode(frames)
            return
        self._raise()
        self._q.put(frames)

    def _encode(self, frames: np.ndarray) -> None:
        for rgb in frames:
            vf = rgb_to_yuv420p(self._av, rgb)
            vf.pts = self.n
            for p in self.video.encode(vf):
                self.container.mux(p)
            self.n += 1
        self._audio_until(int(round(self.n / self.fps * AUDIO_RATE)))

    def close(self) -> Path:
        self._stop()
        self._raise()
        if self.audio is not None:
            self._audio_until(len(self.wav))
            for p in self.audio.encode():
                self.container.mux(p)
        for p in self.video.encode():
            self.container.mux(p)
        self.container.close()
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._stop()
        with contextlib.suppress(Exception):
            self.container.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


# ------------------------------------------------------------------------------------------
# driving video
# ------------------------------------------------------------------------------------------

def video_frames(path, size: int, batch: int):
    """Yield (uint8 (n, size, size, 3) batches) of a video's frames, centre-cropped/resized."""
    import av
    try:
        container = av.open(str(path))
    except Exception as e:  # noqa: BLE001
        raise InferenceError(f"cannot open driving video {path} ({type(e).__name__}: {e})") from None
    try:
        if not container.streams.video:
            raise InferenceError(f"driving video {path} has no video stream")
        from ifmdm_data.media.streams import main_streams
        from ifmdm_data.media.video import stream_display_size, to_rgb
        stream = main_streams(container)[0]                  # not a cover image (issue 11 D)
        stream.thread_type = "AUTO"
        w, h = stream_display_size(stream)                   # square pixels, limited range
        buf = []
        try:
            for frame in container.decode(stream):
                buf.append(square_resize(to_rgb(frame, w, h), size))
                if len(buf) == batch:
                    yield np.stack(buf)
                    buf = []
        except InferenceError:
            raise
        except Exception as e:  # noqa: BLE001
            if not buf:
                raise InferenceError(f"decoding driving video {path} failed ({type(e).__name__}: {e})") from None
        if buf:
            yield np.stack(buf)
    finally:
        container.close()


def video_fps(path) -> float:
    import av
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise InferenceError(f"driving video {path} has no video stream")
            from ifmdm_data.media.streams import main_streams
            s = main_streams(c)[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate
            return float(rate) if rate else 25.0
    except InferenceError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InferenceError(f"cannot open driving video {path} ({type(e).__name__}: {e})") from None
