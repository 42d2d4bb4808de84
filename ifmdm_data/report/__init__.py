"""`ifmdm-data report`: one self-contained HTML page of what `filter` kept and why.

The page (OUT/index.html) embeds every image as a data URI, so the single file can be mailed
or opened anywhere; the same PNGs are also written next to it. It shows the run's counts,
bar charts of the outcomes, per-subset distributions of the deciding statistics with the
thresholds drawn in, contact sheets (a frame of random segments of each subset with the
tracked face box, landmarks and lip region) and the config that was used.
Pure reading: the manifests and source videos are never modified.

The page is assembled here (`write_report`) from: manifest.py (the segments, thresholds and
counts), figures.py (bar charts, distributions), sheets.py (contact-sheet tiles and captions),
page.py (HTML pieces, the identity section); inspect.py is `ifmdm-data inspect`.
"""
from __future__ import annotations

import html
import os
import time
from pathlib import Path

import cv2

from ifmdm_data.reasons import SUBSETS
from ifmdm_data.report.figures import bar_charts, distributions  # noqa: F401 - re-exported
from ifmdm_data.report.manifest import (COLOURS, GROUPS, METRICS, SYNC_METRIC,  # noqa: F401 - re-exported
                                        count_outcomes, decide_values, load_manifest, metrics_of)
from ifmdm_data.report.page import CSS, config_table, identity_section, img_tag, kpis  # noqa: F401
from ifmdm_data.report.sheets import TILE_SIDE, caption, pick_examples, render_tile  # noqa: F401


def write_report(manifest_dir, out_dir, examples_per_subset: int = 6, seed: int = 0) -> Path:
    """Write OUT/index.html (self-contained) and its PNGs for a `filter` manifest folder (a
    local folder or an object-storage URL; OUT is a local folder)."""
    from ifmdm_data.io import storage

    manifest_dir = str(manifest_dir).rstrip("/") if storage.is_url(manifest_dir) else Path(manifest_dir)
    out = Path(out_dir)
    df, summary = load_manifest(manifest_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiles").mkdir(exist_ok=True)
    for old in (out / "tiles").glob("*.png"):  # tiles of an earlier report in this folder
        old.unlink()
    thresholds, decide, cfg_note = decide_values(summary)
    c = count_outcomes(df)
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
    parts.append(kpis([
        ("inputs", summary.get("inputs", c["files"]), None), ("segments", c["segments"], None),
        ("accepted" + pct, c["accepted"], None), ("hours accepted", f"{c['hours_accepted']:.3f}", None),
        *[(s, c["subsets"][s], COLOURS[s]) for s in SUBSETS], ("rejected", c["rejected"], COLOURS["rejected"]),
        ("stage 2 ok", c["stage2_ok"], None),
        ("filter time", f"{elapsed:.0f} s" if isinstance(elapsed, (int, float)) else "-", None),
        ("workers / backend", f"{summary.get('workers', '-')} / {summary.get('backend', '-')}", None),
    ]))
    parts.append("<h2>Outcomes</h2>" + img_tag(save("outcomes.png", bar_charts(c)), "outcomes.png", "fig",
                                             "kept per subset, rejections and stage-2 reasons"))
    parts.append("<h2>Statistics per subset</h2><p class='meta'>One dot per segment (at most 3000 drawn per "
                 "group), box = quartiles and median. Dashed lines: the thresholds used. Stage-2 thresholds "
                 "(speech, AV sync) apply to accepted segments only.</p>"
                 + img_tag(save("distributions.png", distributions(df, thresholds, decide, seed)),
                        "distributions.png", "fig", "distributions of the deciding statistics"))
    parts.append(identity_section(df))
    parts.append("<h2>Contact sheets</h2><p class='meta'>A frame from the middle of random segments "
                 f"(seed {seed}): face box (subset colour), landmarks (cyan dots), face oval (white), lip region (magenta) "
                 "from the nearest tracked frame.</p>")
    for g in GROUPS:
        pick = pick_examples(df, g, max(0, int(examples_per_subset)), seed)
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
                         + img_tag(save(name, buf.tobytes()), name, "tile", row.segment_id,
                                f' data-group="{g}" title="{e(row.segment_id)}"')
                         + caption(row, note) + "</div>")
        parts.append('<div class="sheet">' + "".join(tiles) + "</div>")
    parts.append("<h2>Thresholds and config</h2>" + config_table(summary, thresholds, decide))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ifmdm-data report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    return index
