"""The report page's HTML pieces: embedded images, the style sheet, KPI boxes, tables (config,
identities and near-duplicate groups)."""
from __future__ import annotations

import base64
import html
import json
import os

import pandas as pd

from ifmdm_data.io.console import plural
from ifmdm_data.report.manifest import GROUPS


def img_tag(data: bytes, name: str, cls: str, alt: str, extra: str = "") -> str:
    b64 = base64.b64encode(data).decode()
    return (f'<img class="{cls}" data-file="{html.escape(name)}" alt="{html.escape(alt)}"{extra} '
            f'src="data:image/png;base64,{b64}">')


CSS = """
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


def kpis(items) -> str:
    return '<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="v"{f" style=color:{c}" if c else ""}>{html.escape(str(v))}</div>'
        f'<div class="l">{html.escape(l)}</div></div>' for l, v, c in items) + "</div>"


def config_table(summary: dict, thresholds: dict, decide: dict) -> str:
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


def html_table(head: list, rows: list) -> str:
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
                     + html_table((["split"] if splits else []) + ["subset", "segments", "identities", "no face"], rows))
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
            parts.append(html_table(["dup_group", "segments", "files", "identities", "subsets", "splits",
                                 "segments (file), first 3"], rows))
    return "".join(parts)
