"""The report's figures (matplotlib, Agg, no pyplot): the outcome bar charts and the per-subset
distributions of the deciding statistics with their thresholds, as PNG bytes."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ifmdm_data.io.console import plural
from ifmdm_data.reasons import SUBSETS
from ifmdm_data.report.manifest import COLOURS, GROUPS, METRICS, SYNC_METRIC, metrics_of


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
