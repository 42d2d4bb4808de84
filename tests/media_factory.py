"""Small synthetic media files for bad-input tests (made with PyAV / ffmpeg at test time)."""
from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: Path, n_frames: int, size=(128, 128), fps=25, audio=False, times=None) -> Path:
    """A small H.264 mp4 of moving colour bars; `times` (seconds) makes it variable-rate."""
    w, h = size
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        if audio:
            aus = c.add_stream("aac", rate=16000)
            aus.layout = "mono"
        for i in range(n_frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 0] = (np.arange(w)[None, :] * 2 + i * 5) % 256
            img[:, :, 1] = (np.arange(h)[:, None] * 3) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            t = times[i] if times is not None else i / fps
            frame.pts = int(round(t * 1000))
            frame.time_base = Fraction(1, 1000)
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if audio:
            sr, n = 16000, int(16000 * n_frames / fps)
            samples = (0.1 * np.sin(np.arange(n) * 2 * np.pi * 220 / sr)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
            af.sample_rate = sr
            for p in aus.encode(af):
                c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return path


def write_vfr(path: Path, seconds: float = 3.0) -> Path:
    """Test pattern with irregular frame intervals (every third gap 1.5x), variable-rate mux."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size=128x128:rate=30:duration={seconds}",
                    "-vf", "setpts=(N+floor(N/3)*0.5)/30/TB", "-vsync", "vfr",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True, capture_output=True)
    return path


def write_audio_only(path: Path) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=300:duration=2",
                    "-c:a", "aac", "-f", "mp4", str(path)], check=True)
    return path


def write_rotated(src: Path, path: Path, degrees: int = 90) -> Path:
    """Copy `src` with a display-rotation side datum (as phones record portrait video)."""
    # ffmpeg >= 6 writes the display matrix with -display_rotation; 5.x with the rotate tag
    new = ["ffmpeg", "-v", "error", "-y", "-display_rotation", str(-degrees), "-i", str(src),
           "-c", "copy", str(path)]
    old = ["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy",
           "-metadata:s:v:0", f"rotate={degrees}", str(path)]
    if subprocess.run(new, capture_output=True).returncode != 0:
        subprocess.run(old, check=True, capture_output=True)
    return path
