"""The report's contact sheets: one tile per picked segment (a frame of its source with the
tracked face box, landmarks and lip region drawn) and its HTML caption."""
from __future__ import annotations

import html
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ifmdm_data.io.paths import fs_path
from ifmdm_data.report.manifest import COLOURS, GROUPS

TILE_SIDE = 480  # long side of a contact-sheet tile, pixels


def _grey_tile(msg: str, w: int = TILE_SIDE, h: int = TILE_SIDE * 9 // 16) -> np.ndarray:
    img = np.full((h, w, 3), 200, np.uint8)
    words, lines, cur = msg.split(), [], ""
    for word in words:
        if len(cur) + len(word) + 1 > 36 and cur:
            lines.append(cur)
            cur = ""
        cur = f"{cur} {word}".strip()
    lines.append(cur)
    y0 = h // 2 - 14 * len(lines[:8])
    for i, line in enumerate(lines[:8]):
        cv2.putText(img, line[:60], (14, y0 + 28 * i + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (60, 60, 60), 1,
                    cv2.LINE_AA)
    return img


def _frame_at(row, t: float) -> tuple[float, np.ndarray, float]:
    """(frame time, RGB frame with its long side at most TILE_SIDE, scale from source px)."""
    from ifmdm_data.media.video import analysis_size, iter_frames

    w, h, rot = row.width, row.height, row.rotation
    rot = int(rot) if pd.notna(rot) else 0
    if pd.isna(w) or pd.isna(h) or not w or not h:  # the probe failed: ask the stream itself
        import av

        with av.open(fs_path(row.path)) as c:
            if not c.streams.video:
                raise ValueError("no video stream")
            from ifmdm_data.media.streams import main_streams
            from ifmdm_data.media.video import stream_display_size
            w, h = stream_display_size(main_streams(c)[0])
            rot = 0
    w, h = int(w), int(h)
    size = analysis_size(w, h, TILE_SIDE)
    end = float(row.end_s) if pd.notna(row.end_s) else t + 2.0
    for start in (t, float(row.start_s) if pd.notna(row.start_s) else 0.0, 0.0):
        for ft, rgb in iter_frames(row.path, start, max(end, start + 0.5), 100.0, size, rot):
            if max(size) < TILE_SIDE:  # small sources: upscale first so the overlay stays crisp
                k = TILE_SIDE / max(size)
                rgb = cv2.resize(rgb, (round(size[0] * k), round(size[1] * k)), interpolation=cv2.INTER_LINEAR)
            return ft, rgb, rgb.shape[1] / w
    raise ValueError("no frame decoded in the segment")


def _draw_track(rgb: np.ndarray, manifest_dir: Path, row, ft: float, scale: float, colour) -> str:
    """Draw the nearest tracks row's box, landmarks and lip contour; returns a note or ''."""
    from ifmdm_data.faces.backends.base import SCHEMES
    from ifmdm_data.schema import read_segment_tracks

    try:
        tr, meta = read_segment_tracks(getattr(row, "tracks_dir", None) or manifest_dir, row.segment_id)
    except FileNotFoundError:
        return "no tracks file"
    if tr.empty:
        return "empty tracks"
    boxes = np.stack(tr["box"].to_numpy()).astype(np.float64)
    has = np.isfinite(boxes).all(axis=1)
    if not has.any():
        return "no face tracked"
    i = int(np.argmin(np.where(has, np.abs(tr["t"].to_numpy() - ft), np.inf)))
    note = (f"frame at {ft:.2f} s, nearest face track at {tr['t'].iloc[i]:.2f} s"
            if abs(tr["t"].iloc[i] - ft) > 0.25 else "")
    bgr = tuple(int(colour[k:k + 2], 16) for k in (1, 3, 5))
    x0, y0, x1, y1 = (boxes[i] * scale).round().astype(int)
    cv2.rectangle(rgb, (x0, y0), (x1, y1), bgr, 2, cv2.LINE_AA)
    lm = np.asarray(tr["landmarks"].iloc[i], np.float64).reshape(-1, 3)[:, :2] * scale
    scheme = SCHEMES.get(str(row.landmark_scheme if pd.notna(row.landmark_scheme) else meta.get("landmark_scheme")))
    if scheme is None or scheme.n_points != len(lm):
        scheme = next((s for s in SCHEMES.values() if s.n_points == len(lm)), None)
    r = 1 if len(lm) > 100 else 2
    for x, y in lm[np.isfinite(lm).all(axis=1)]:
        cv2.circle(rgb, (int(round(x)), int(round(y))), r, (0, 255, 255), -1, cv2.LINE_AA)
    if scheme is not None:
        for idx, c in ((scheme.face_oval, (255, 255, 255)), (scheme.lips, (255, 0, 255))):
            poly = lm[list(idx)].round().astype(np.int32)
            if np.isfinite(poly).all():
                if c == (255, 0, 255):
                    over = rgb.copy()
                    cv2.fillPoly(over, [poly], c, cv2.LINE_AA)
                    cv2.addWeighted(over, 0.3, rgb, 0.7, 0, dst=rgb)
                cv2.polylines(rgb, [poly], True, c, 1, cv2.LINE_AA)
    return note


def render_tile(row, manifest_dir: Path, colour: str) -> tuple[np.ndarray, str]:
    """(RGB tile, note). Never raises: a missing or unreadable source gives a grey tile.
    A source in object storage is read through a local spool (`storage.spool`)."""
    from ifmdm_data.io import storage

    remote = isinstance(row.path, str) and storage.is_url(row.path)
    try:
        present = isinstance(row.path, str) and (storage.exists(row.path) if remote
                                                 else os.path.exists(fs_path(row.path)))
    except storage.StorageError:
        present = False
    if not present:
        return _grey_tile(f"source missing: {row.path}"), "source missing"
    t = (float(row.start_s) + float(row.end_s)) / 2 if pd.notna(row.start_s) and pd.notna(row.end_s) else 0.0
    try:
        with storage.spool(row.path) as local_path:
            ft, rgb, scale = _frame_at(row._replace(path=local_path) if remote else row, t)
    except Exception as e:  # noqa: BLE001 - any decode failure is shown on the tile
        return _grey_tile(f"cannot decode the source: {e}"), "cannot decode"
    rgb = np.ascontiguousarray(rgb)
    try:
        note = _draw_track(rgb, manifest_dir, row, ft, scale, colour)
    except Exception as e:  # noqa: BLE001 - a broken tracks file only loses the overlay
        note = f"tracks unreadable: {e}"[:80]
    return rgb, note


def pick_examples(df: pd.DataFrame, group: str, n: int, seed: int) -> pd.DataFrame:
    sub = df[df["group"] == group]
    if len(sub) <= n:
        return sub
    rng = np.random.default_rng([seed, GROUPS.index(group)])
    return sub.iloc[np.sort(rng.choice(len(sub), n, replace=False))]


def caption(row, note: str) -> str:
    e = html.escape
    what = (f'<span class="badge" style="background:{COLOURS[row.group]}">{e(row.group)}</span>'
            if row.group != "rejected" else
            f'<span class="badge" style="background:{COLOURS["rejected"]}">rejected</span> '
            + e(", ".join(row.reasons) or "?"))
    s2 = "stage 2 ok" if row.stage2_ok else "stage 2: " + ", ".join(r for r in row.stage2_reasons)

    def f(v, fmt):
        return format(v, fmt) if pd.notna(v) else "-"
    stats = (f"head {f(row.head_motion, '.3f')} · lip {f(row.mouth_open_std, '.3f')} · "
             f"face {f(row.face_px, '.0f')} px · speech {f(row.speech_ratio, '.2f')} · av {f(row.av_corr, '.2f')}")
    conf = getattr(row, "sync_conf", float("nan"))
    if pd.notna(conf):
        stats += f" · sync {conf:.2f} @ {f(getattr(row, 'sync_offset_frames', float('nan')), '+.0f')} fr"
    err = f'<div class="err">{e(str(row.error))[:160]}</div>' if isinstance(row.error, str) and row.error else ""
    nt = f'<div class="err">{e(note)}</div>' if note else ""
    return (f'<div class="cap"><b title="{e(str(row.path))}">{e(os.path.basename(str(row.path)))}</b> '
            f'{row.start_s:.1f}–{row.end_s:.1f} s<br>{what}<br>{e(s2)}<br>'
            f'<span class="stats">{e(stats)}</span>{err}{nt}</div>')
