"""`ifmdm-data report`: one self-contained HTML page of what `filter` kept and why.

The page (OUT/index.html) embeds every image as a data URI, so the single file can be mailed
or opened anywhere; the same PNGs are also written next to it. It shows the run's counts,
bar charts of the outcomes, per-subset distributions of the deciding statistics with the
thresholds drawn in, contact sheets (a frame of random segments of each subset with the
tracked face box, landmarks and lip region) and the config that was used.
Pure reading: the manifests and source videos are never modified.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ifmdm_data.io.console import plural
from ifmdm_data.errors import InputError
from ifmdm_data.filter.inputs import fs_path
from ifmdm_data.reasons import SUBSETS

GROUPS = SUBSETS + ("rejected",)
COLOURS = {"coarse": "#1f77b4", "lip": "#ff7f0e", "hard": "#2ca02c", "rejected": "#d62728"}
# (column, label, threshold key, where the key lives: thresholds | decide)
METRICS = [
    ("head_motion", "head motion: mean head speed, face sizes / s", "head_motion_min", "thresholds"),
    ("mouth_open_std", "lip motion: std of the mouth opening, face sizes", "lip_motion_min", "thresholds"),
    ("face_px", "face size: median face-box height, source px", "min_face_px", "decide"),
    ("speech_ratio", "speech ratio: fraction of the segment with speech (stage 2)", "min_speech_ratio", "decide"),
    ("av_corr", "AV sync: mouth / speech-envelope correlation (stage 2)", "min_av_corr", "decide"),
]
# drawn only when the run scored segments with SyncNet (`filter --syncnet`)
SYNC_METRIC = ("sync_conf", "AV sync: SyncNet confidence (stage 2, filter --syncnet)", "min_sync_conf", "decide")


def metrics_of(df: pd.DataFrame) -> list:
    """METRICS, plus the SyncNet confidence when some segment has one."""
    if "sync_conf" in df and np.isfinite(pd.to_numeric(df["sync_conf"], errors="coerce")).any():
        return METRICS + [SYNC_METRIC]
    return METRICS
TILE_SIDE = 480  # long side of a contact-sheet tile, pixels


# ------------------------------------------------------------------ loading and counting
def _load(manifest_dir) -> tuple[pd.DataFrame, dict]:
    from ifmdm_data.io import storage
    from ifmdm_data.schema import read_clips, tracks_folders

    if str(manifest_dir).endswith(".parquet"):   # a clips.parquet or a split file of `split`
        df = read_clips(manifest_dir)
        df["tracks_dir"] = tracks_folders(df, manifest_dir)
        df["group"] = [s if a and isinstance(s, str) else "rejected" for s, a in zip(df["subset"], df["accepted"])]
        return df, {}
    if not storage.is_url(manifest_dir) and Path(manifest_dir, "train.parquet").is_file():
        read_clips(manifest_dir)          # a split folder: the one-line hint to give a split file
    if not storage.isfile(storage.join(manifest_dir, "clips.parquet")):
        raise InputError(f"no clips.parquet in {manifest_dir}: run "
                         f"`ifmdm-data filter INPUTS -o {manifest_dir}` first, then report on that folder")
    df = read_clips(manifest_dir)
    df["tracks_dir"] = tracks_folders(df, manifest_dir)
    summary = {}
    if storage.isfile(storage.join(manifest_dir, "summary.json")):
        try:
            summary = json.loads(storage.read_text(storage.join(manifest_dir, "summary.json")))
        except (OSError, ValueError):
            summary = {}
    df["group"] = [s if a and isinstance(s, str) else "rejected" for s, a in zip(df["subset"], df["accepted"])]
    return df, summary


def _decide_values(summary: dict) -> tuple[dict, dict, str]:
    """(absolute thresholds, decide config, note). Falls back to the shipped defaults."""
    from ifmdm_data.filter.config import load_config

    decide = dict((summary.get("config") or {}).get("decide") or {})
    note = ""
    if not decide:
        decide = load_config().to_dict()["decide"]
        note = "summary.json has no config: thresholds shown are the shipped defaults"
    th = dict(summary.get("thresholds") or {})
    for k in ("head_motion_min", "lip_motion_min", "min_sharpness", "max_camera_motion"):
        if k not in th:
            th[k] = decide.get(k) if isinstance(decide.get(k), (int, float)) else None
    return th, decide, note


def _counts(df: pd.DataFrame) -> dict:
    acc = df["accepted"].astype(bool)
    rej = pd.Series([r for rs in df["reasons"] for r in rs], dtype=object).value_counts()
    s2 = pd.Series([r for rs, a in zip(df["stage2_reasons"], acc) if a for r in rs], dtype=object).value_counts()
    return {
        "segments": int(len(df)), "files": int(df["path"].nunique()), "accepted": int(acc.sum()),
        "subsets": {s: int((df["group"] == s).sum()) for s in SUBSETS},
        "rejected": int((~acc).sum()), "rejected_by_reason": {k: int(v) for k, v in rej.items()},
        "stage2_ok": int((df["stage2_ok"].astype(bool) & acc).sum()),
        "stage2_by_reason": {k: int(v) for k, v in s2.items()},
        "hours_accepted": float(df.loc[acc, "duration_s"].sum() / 3600.0),
    }


# ------------------------------------------------------------------ figures
def _figure(w: float, h: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _hbars(ax, counts: dict, colours, title: str, empty: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    if not counts:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([]), ax.set_yticks([])
        return
    names, vals = list(counts)[::-1], list(counts.values())[::-1]
    bars = ax.barh(names, vals, color=colours[::-1] if isinstance(colours, list) else colours)
    ax.bar_label(bars, padding=3, fontsize=9)
    ax.set_xlim(0, max(vals) * 1.18 + 0.5)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(labelsize=9)
    ax.spines[["top", "right"]].set_visible(False)


def bar_charts(c: dict) -> bytes:
    rej = c["rejected_by_reason"]
    s2 = {"ok": c["stage2_ok"], **c["stage2_by_reason"]}
    h = max(2.6, 0.3 * max(len(rej), len(s2), 4) + 1.0)
    fig = _figure(13, h)
    axes = fig.subplots(1, 3, width_ratios=[1, 1.3, 1.3])
    kept = {s: c["subsets"][s] for s in SUBSETS}
    _hbars(axes[0], kept, [COLOURS[s] for s in SUBSETS], f"kept per subset ({c['accepted']} accepted)", "")
    _hbars(axes[1], rej, COLOURS["rejected"], f"rejected per reason ({plural(c['rejected'], 'segment')})", "nothing rejected")
    _hbars(axes[2], s2 if c["accepted"] else {}, ["#2ca02c"] + ["#9467bd"] * (len(s2) - 1),
           f"stage 2, of the {c['accepted']} accepted", "nothing accepted")
    return _png(fig)


def _strip(ax, df: pd.DataFrame, col: str, th, th_name: str, rng) -> None:
    vals = {g: pd.to_numeric(df.loc[df["group"] == g, col], errors="coerce").to_numpy(float) for g in GROUPS}
    finite = np.concatenate([v[np.isfinite(v)] for v in vals.values()])
    ths = [th] if isinstance(th, (int, float)) and math.isfinite(th) else []
    if finite.size == 0 and not ths:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="grey")
        lo, hi = 0.0, 1.0
    else:
        q = (0.5, 99.5) if finite.size >= 200 else (0, 100)  # outliers of big sets go to the edge
        lo = min([float(np.percentile(finite, q[0]))] + ths) if finite.size else min(ths)
        hi = max([float(np.percentile(finite, q[1]))] + ths) if finite.size else max(ths)
        if lo > 0 and hi / lo > 30:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            lo, hi = lo / 1.3, hi * 1.3
        else:
            pad = (hi - lo) * 0.06 or abs(hi) * 0.1 or 0.1
            lo, hi = lo - pad, hi + pad
    n_clipped = 0
    labels = []
    for i, g in enumerate(GROUPS):
        v = vals[g]
        ok = v[np.isfinite(v)]
        n_nan = v.size - ok.size
        labels.append(f"{g}  n={v.size}" + (f"\n({n_nan} without value)" if n_nan else ""))
        if ok.size == 0:
            continue
        n_clipped += int(((ok < lo) | (ok > hi)).sum())
        shown = rng.choice(ok, 3000, replace=False) if ok.size > 3000 else ok
        y = i + rng.uniform(-0.28, 0.28, shown.size)
        alpha = float(np.clip(6.0 / np.sqrt(shown.size), 0.08, 0.85))
        ax.scatter(np.clip(shown, lo, hi), y, s=22 if shown.size < 100 else 5, color=COLOURS[g],
                   alpha=alpha, linewidths=0, zorder=2)
        if ok.size >= 5:
            ax.boxplot([ok], positions=[i], orientation="horizontal", widths=0.7, showfliers=False,
                       manage_ticks=False, zorder=3, patch_artist=True,
                       boxprops=dict(facecolor="none", edgecolor="black", linewidth=1),
                       medianprops=dict(color="black", linewidth=2),
                       whiskerprops=dict(color="black"), capprops=dict(color="black"))
    ax.set_xlim(lo, hi)
    ax.set_ylim(len(GROUPS) - 0.5, -0.5)
    ax.set_yticks(range(len(GROUPS)), labels, fontsize=9)
    for t, g in zip(ax.get_yticklabels(), GROUPS):
        t.set_color(COLOURS[g])
    for t in ths:
        ax.axvline(t, color="black", linestyle="--", linewidth=1.2, zorder=4)
        frac = ((math.log(t / lo) / math.log(hi / lo)) if ax.get_xscale() == "log" else (t - lo) / (hi - lo))
        ax.text(t, 1.01, f" {th_name} = {t:.4g} ", transform=ax.get_xaxis_transform(),
                ha="left" if frac < 0.7 else "right", va="bottom", fontsize=9, fontweight="bold")
    if not ths:
        ax.text(1.0, 1.01, f"{th_name}: not set", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=9, color="grey")
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    note = f"   ({n_clipped} outside the 0.5-99.5 % range, drawn at the edge)" if n_clipped else ""
    ax.set_xlabel(col + note, fontsize=9)
    ax.set_title(next(m[1] for m in METRICS + [SYNC_METRIC] if m[0] == col), fontsize=11, loc="left", pad=16)


def distributions(df: pd.DataFrame, thresholds: dict, decide: dict, seed: int) -> bytes:
    metrics = metrics_of(df)
    fig = _figure(12, 2.75 * len(metrics))
    axes = fig.subplots(len(metrics), 1)
    rng = np.random.default_rng(seed)
    for ax, (col, _, key, where) in zip(axes, metrics):
        th = (thresholds if where == "thresholds" else decide).get(key)
        _strip(ax, df, col, th if isinstance(th, (int, float)) else None, key, rng)
    return _png(fig)


# ------------------------------------------------------------------ contact sheets
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
            from ifmdm_data.media.video import main_streams, stream_display_size
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


def _pick(df: pd.DataFrame, group: str, n: int, seed: int) -> pd.DataFrame:
    sub = df[df["group"] == group]
    if len(sub) <= n:
        return sub
    rng = np.random.default_rng([seed, GROUPS.index(group)])
    return sub.iloc[np.sort(rng.choice(len(sub), n, replace=False))]


def _caption(row, note: str) -> str:
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


# ------------------------------------------------------------------ HTML
def _img(data: bytes, name: str, cls: str, alt: str, extra: str = "") -> str:
    b64 = base64.b64encode(data).decode()
    return (f'<img class="{cls}" data-file="{html.escape(name)}" alt="{html.escape(alt)}"{extra} '
            f'src="data:image/png;base64,{b64}">')


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;
 color:#222;padding:0 16px}
h1{margin-bottom:4px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
.meta{color:#666;font-size:13px} .note{background:#fff3cd;border:1px solid #e0c46c;padding:6px 10px;margin:8px 0}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.kpi{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:110px}
.kpi .v{font-size:22px;font-weight:600} .kpi .l{font-size:12px;color:#666}
img.fig{max-width:100%;height:auto;display:block}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.tilebox{border:1px solid #ddd;border-radius:6px;overflow:hidden;background:#fafafa}
img.tile{width:100%;height:260px;object-fit:contain;background:#222;display:block}
.cap{font-size:12px;padding:6px 8px;line-height:1.5;word-break:break-word}
.badge{color:white;border-radius:3px;padding:0 5px;font-weight:600}
.stats{color:#555} .err{color:#a33}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 10px;text-align:left}
th{background:#f3f3f3} tr.used td{background:#eef6ff}
"""


def _kpis(items) -> str:
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="v"{f" style=color:{c}" if c else ""}>{html.escape(str(v))}</div>'
        f'<div class="l">{html.escape(l)}</div></div>' for l, v, c in items) + "</div>"


def _config_table(summary: dict, thresholds: dict, decide: dict) -> str:
    cfg = dict(summary.get("config") or {})
    cfg["decide"] = decide
    rows = []
    for section, vals in cfg.items():
        if not isinstance(vals, dict):
            continue
        for k, v in vals.items():
            used = thresholds.get(k) if k in thresholds else v if isinstance(v, (int, float)) else None
            used = used if section == "decide" and not isinstance(used, bool) else None
            val = json.dumps(v) if isinstance(v, dict) else str(v)
            cls = ' class="used"' if section == "decide" else ""
            rows.append(f"<tr{cls}><td>{html.escape(section)}</td><td>{html.escape(k)}</td>"
                        f"<td>{html.escape(val)}</td><td>{'' if used is None else f'{used:.6g}'}</td></tr>")
    return ("<table><tr><th>section</th><th>key</th><th>configured</th><th>absolute value used</th></tr>"
            + "".join(rows) + "</table>")


def _table(head: list, rows: list) -> str:
    e = html.escape
    return ("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in r) + "</tr>" for r in rows) + "</table>")


def identity_section(df: pd.DataFrame, max_groups: int = 10) -> str:
    """HTML: identities per subset (and split) and the largest near-duplicate groups, from the
    identify stage of `filter` or from `ifmdm-data split` (identity_id, dup_group); '' when the
    manifest has neither (older manifests, `identity.enabled: false`)."""
    def known(c):
        return c in df and df[c].notna().any()
    has_id, has_dup = known("identity_id"), known("dup_group")
    if not (has_id or has_dup):
        return ""
    note = ""
    if "split" in df and df["split"].nunique() > 1:     # checked on the rows given, not assumed
        from ifmdm_data.split import components
        comp = components(df.assign(identity_id=pd.to_numeric(df.get("identity_id"), errors="coerce").fillna(-1)))
        leaks = int((pd.Series(df["split"].to_numpy()).groupby(comp).nunique() > 1).sum())
        note = (" No identity, duplicate group or file is in two splits (checked on these rows)." if not leaks
                else f" WARNING: {plural(leaks, 'group')} of identity / duplicate / file rows "
                     f"{'is' if leaks == 1 else 'are'} in two splits.")
    elif "split" in df:
        note = " One split file: whether its identities also occur in the other splits is not checked here."
    parts = ["<h2>Identities and duplicates</h2><p class='meta'>dlib face descriptors clustered into "
             "identity_id; near-duplicate groups dup_group (pHash of sampled frames, Chromaprint audio "
             "fingerprints)." + note + "</p>"]
    ids = pd.to_numeric(df["identity_id"], errors="coerce").fillna(-1).astype(int) if has_id else None
    splits = [s for s in ("train", "val", "test") if "split" in df and (df["split"] == s).any()]
    if has_id:
        rows = []
        for sp in splits or [None]:
            part = df if sp is None else df[df["split"] == sp]
            for g in GROUPS + ("all",):
                sel = part if g == "all" else part[part["group"] == g]
                if not len(sel):
                    continue
                pid = ids.loc[sel.index]
                faces = pd.to_numeric(sel["identity_faces"], errors="coerce") if "identity_faces" in sel else None
                noface = int((faces == 0).sum()) if faces is not None else int((pid < 0).sum())
                rows.append(([sp] if sp else []) + [g, len(sel), int(pid[pid >= 0].nunique()), noface])
        parts.append("<h3>Identities per subset</h3>"
                     + _table((["split"] if splits else []) + ["subset", "segments", "identities", "no face"], rows))
    if has_dup:
        dup = df["dup_group"]
        size = dup.value_counts()
        multi = size[size > 1]
        parts.append(f"<h3>Duplicate groups</h3><p class='meta'>{plural(len(multi), 'near-duplicate group')} of two or "
                     f"more segments ({plural(int(multi.sum()), 'segment')}); {plural(int(dup.nunique()), 'group')} in all. "
                     f"{'The largest ' + str(min(max_groups, len(multi))) + ':' if len(multi) else ''}</p>")
        rows = []
        for gid in multi.index[:max_groups]:
            sel = df[dup == gid]
            pid = ids.loc[sel.index] if has_id else None
            rows.append([gid, len(sel), int(sel["clip_id"].nunique()),
                         "-" if pid is None else int(pid[pid >= 0].nunique()),
                         ", ".join(sorted(set(sel["group"]))),
                         ", ".join(sorted(set(sel["split"].dropna()))) if "split" in sel else "-",
                         ", ".join(f"{sid} ({os.path.basename(str(p))})" for sid, p in
                                   zip(sel["segment_id"].head(3), sel["path"].head(3)))
                         + (" ..." if len(sel) > 3 else "")])
        if rows:
            parts.append(_table(["dup_group", "segments", "files", "identities", "subsets", "splits",
                                 "segments (file), first 3"], rows))
    return "".join(parts)


def write_report(manifest_dir, out_dir, examples_per_subset: int = 6, seed: int = 0) -> Path:
    """Write OUT/index.html (self-contained) and its PNGs for a `filter` manifest folder (a
    local folder or an object-storage URL; OUT is a local folder)."""
    from ifmdm_data.io import storage

    manifest_dir = str(manifest_dir).rstrip("/") if storage.is_url(manifest_dir) else Path(manifest_dir)
    out = Path(out_dir)
    df, summary = _load(manifest_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiles").mkdir(exist_ok=True)
    for old in (out / "tiles").glob("*.png"):  # tiles of an earlier report in this folder
        old.unlink()
    thresholds, decide, cfg_note = _decide_values(summary)
    c = _counts(df)
    e = html.escape
    notes = [cfg_note] if cfg_note and summary else []
    if summary and any(summary.get(k) != c[k] for k in ("segments", "accepted", "subsets")):
        notes.append("summary.json disagrees with clips.parquet (re-decided with `ifmdm-data decide`?): "
                     "the counts below are from clips.parquet, the run time and config from summary.json")
    if not summary and str(manifest_dir).endswith(".parquet"):
        notes.append(f"a manifest file ({Path(str(manifest_dir)).name}): counts are computed from its rows, "
                     "thresholds shown are the shipped defaults")
    elif not summary:
        notes.append("no summary.json in the manifest folder: counts are computed from clips.parquet, "
                     "thresholds shown are the shipped defaults")

    def save(name: str, data: bytes) -> bytes:
        (out / name).write_bytes(data)
        return data

    elapsed = summary.get("elapsed_s")
    kind = ("split" if "split" in df.columns and df["split"].notna().any() else "manifest") \
        if str(manifest_dir).endswith(".parquet") else "filter"
    parts = [f"<h1>ifmdm-data {kind} report</h1><div class='meta'>manifest: {e(str(manifest_dir if isinstance(manifest_dir, str) else manifest_dir.resolve()))}"
             f" · generated {time.strftime('%Y-%m-%d %H:%M:%S')}</div>"]
    parts += [f'<div class="note">{e(n)}</div>' for n in notes]
    pct = f" ({100 * c['accepted'] / c['segments']:.0f} %)" if c["segments"] else ""
    parts.append(_kpis([
        ("inputs", summary.get("inputs", c["files"]), None), ("segments", c["segments"], None),
        ("accepted" + pct, c["accepted"], None), ("hours accepted", f"{c['hours_accepted']:.3f}", None),
        *[(s, c["subsets"][s], COLOURS[s]) for s in SUBSETS], ("rejected", c["rejected"], COLOURS["rejected"]),
        ("stage 2 ok", c["stage2_ok"], None),
        ("filter time", f"{elapsed:.0f} s" if isinstance(elapsed, (int, float)) else "-", None),
        ("workers / backend", f"{summary.get('workers', '-')} / {summary.get('backend', '-')}", None),
    ]))
    parts.append("<h2>Outcomes</h2>" + _img(save("outcomes.png", bar_charts(c)), "outcomes.png", "fig",
                                             "kept per subset, rejections and stage-2 reasons"))
    parts.append("<h2>Statistics per subset</h2><p class='meta'>One dot per segment (at most 3000 drawn per "
                 "group), box = quartiles and median. Dashed lines: the thresholds used. Stage-2 thresholds "
                 "(speech, AV sync) apply to accepted segments only.</p>"
                 + _img(save("distributions.png", distributions(df, thresholds, decide, seed)),
                        "distributions.png", "fig", "distributions of the deciding statistics"))
    parts.append(identity_section(df))
    parts.append("<h2>Contact sheets</h2><p class='meta'>A frame from the middle of random segments "
                 f"(seed {seed}): face box (subset colour), landmarks (cyan dots), face oval (white), lip region (magenta) "
                 "from the nearest tracked frame.</p>")
    for g in GROUPS:
        pick = _pick(df, g, max(0, int(examples_per_subset)), seed)
        total = int((df["group"] == g).sum())
        parts.append(f"<h3 style='color:{COLOURS[g]}'>{g}: {len(pick)} of {total}</h3>")
        if pick.empty:
            parts.append("<p class='meta'>no segments</p>")
            continue
        tiles = []
        for i, row in enumerate(pick.itertuples(index=False)):
            rgb, note = render_tile(row, manifest_dir, COLOURS[g])
            ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            name = f"tiles/{g}_{i:02d}.png"
            tiles.append('<div class="tilebox">'
                         + _img(save(name, buf.tobytes()), name, "tile", row.segment_id,
                                f' data-group="{g}" title="{e(row.segment_id)}"')
                         + _caption(row, note) + "</div>")
        parts.append('<div class="sheet">' + "".join(tiles) + "</div>")
    parts.append("<h2>Thresholds and config</h2>" + _config_table(summary, thresholds, decide))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ifmdm-data report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    return index
