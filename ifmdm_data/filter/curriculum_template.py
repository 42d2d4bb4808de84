"""The default training curriculum (configs/curriculum.yaml) and how `filter` fits it to the
subsets it found. Pure YAML text: the data side writes the file, the model side
(ifmdm_model/curriculum.py) reads and validates it, and this module imports nothing of it.

A level whose subsets are all empty is dropped; empty subsets leave the lists of the levels
that keep some data; a comment above `levels:` says what changed and why. Everything else of
the template (its comments included) is kept verbatim.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from ifmdm_data.reasons import SUBSETS

DEFAULT_CURRICULUM = Path(__file__).resolve().parents[1] / "configs" / "curriculum.yaml"


def _yaml_float(x: float) -> str:
    """A float PyYAML reads back as a float (YAML 1.1 wants a dot: '2e-4' is a string)."""
    s = repr(float(x))
    return s if "." in s and "e" not in s.lower() else f"{float(x):.6e}"


def _have(lv: dict, counts: Dict[str, int]) -> List[str]:
    subs = lv.get("subsets")
    subs = subs if isinstance(subs, list) else [subs]
    return [s for s in subs if counts.get(s, 0) > 0]


def fitted_levels(levels: List[dict], counts: Dict[str, int]) -> Tuple[List[dict], List[str]]:
    """(the levels that keep data, with only their non-empty subsets; one note per change)."""
    kept, notes = [], []
    for lv in levels:
        subs = lv.get("subsets")
        subs = subs if isinstance(subs, list) else [subs]
        have = _have(lv, counts)
        if not have:
            notes.append(f"dropped level '{lv.get('name')}': its subsets [{', '.join(map(str, subs))}] "
                         f"have no accepted segment")
            continue
        if have != subs:
            gone = [s for s in subs if s not in have]
            notes.append(f"level '{lv.get('name')}': subsets [{', '.join(subs)}] -> [{', '.join(have)}] "
                         f"({', '.join(gone)}: no accepted segment)")
        kept.append({**lv, "subsets": have})
    return kept, notes


def _levels_block(lines: List[str]) -> Optional[Tuple[int, int, int]]:
    """(index of the `levels:` line under `stage1:`, end of its block, its indent) or None."""
    in_stage1 = False
    for i, line in enumerate(lines):
        body = line.split("#", 1)[0].rstrip()
        if not body:
            continue
        ind = len(line) - len(line.lstrip())
        if ind == 0:
            in_stage1 = body.startswith("stage1:")
            continue
        if in_stage1 and re.fullmatch(r"\s*levels:", body):
            end = i + 1
            while end < len(lines):
                b = lines[end].split("#", 1)[0].rstrip()
                if b:
                    ind2 = len(lines[end]) - len(lines[end].lstrip())
                    if ind2 < ind or (ind2 == ind and not b.lstrip().startswith("-")):
                        break
                end += 1
            while end > i + 1 and not lines[end - 1].split("#", 1)[0].strip():
                end -= 1                       # trailing blank / comment lines stay outside
            return i, end, ind
    return None


def _items(block: List[str]) -> List[List[str]]:
    """The list items of a levels block (each a list of lines, its leading comments included)."""
    items: List[List[str]] = []
    pending: List[str] = []
    item_indent = None
    for line in block:
        s = line.lstrip()
        ind = len(line) - len(s)
        if s.startswith("- ") or s == "-":
            if item_indent is None:
                item_indent = ind
            if ind == item_indent:
                items.append(pending + [line])
                pending = []
                continue
        if items and s and not s.startswith("#"):
            items[-1].append(line)
        else:
            pending.append(line)
    return items


def _flow_subsets(subs: List[str]) -> str:
    return "[" + ", ".join(subs) + "]"


def fit_curriculum(text: str, counts: Dict[str, int]) -> Tuple[str, List[str]]:
    """The curriculum `text` fitted to `counts` (accepted segments per subset): (new text, notes).
    Unchanged when every subset a level names has data, or when no subset has any (then the
    trainer's error says so)."""
    data = yaml.safe_load(text) or {}
    levels = ((data.get("stage1") or {}).get("levels")) or []
    if not levels or not any(counts.get(s, 0) > 0 for s in SUBSETS):
        return text, []
    kept, notes = fitted_levels(levels, counts)
    if not notes:
        return text, []
    found = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in SUBSETS)
    comment = [f"# Fitted by `ifmdm-data filter` to the subsets it found (accepted segments: {found}):"]
    comment += [f"#   {n}" for n in notes]
    comment += ["#   (the default with every level: ifmdm_data/configs/curriculum.yaml)"]

    lines = text.splitlines()
    where = _levels_block(lines)
    new_text = None
    if where is not None:
        start, end, ind = where
        items = _items(lines[start + 1:end])
        if len(items) == len(levels):
            out_items = []
            for lv, item in zip(levels, items):
                have = _have(lv, counts)
                if not have:
                    continue                                  # a dropped level
                subs = _flow_subsets(have)
                joined = "\n".join(item)
                joined, n = re.subn(r"(subsets:\s*)(\[[^\]]*\]|[A-Za-z_]+)", lambda m: m.group(1) + subs,
                                    joined, count=1)
                if n != 1:
                    out_items = None
                    break
                out_items.append(joined)
            if out_items is not None:
                pad = " " * ind
                head = [pad + c for c in comment]
                new_lines = lines[:start] + head + [lines[start]] + out_items + lines[end:]
                new_text = "\n".join(new_lines) + ("\n" if text.endswith("\n") else "")
    if new_text is None or _read_levels(new_text) != kept:
        new_text = _regenerated(text, lines, where, kept, comment)
    return new_text, notes


def _read_levels(text: str):
    try:
        return ((yaml.safe_load(text) or {}).get("stage1") or {}).get("levels")
    except yaml.YAMLError:
        return None


def _regenerated(text, lines, where, kept, comment) -> str:
    """Fallback when the template's level list has an unexpected layout: the levels written
    anew in flow style (the rest of the file kept when the block was found)."""
    if where is not None:
        start, end, ind = where
        pad = " " * ind
        items = [f"{pad}  - {{name: {lv['name']}, subsets: {_flow_subsets(lv['subsets'])}, "
                 f"steps: {int(lv['steps'])}, lr: {_yaml_float(lv['lr'])}}}" for lv in kept]
        out = "\n".join(lines[:start] + [pad + c for c in comment] + [lines[start]] + items + lines[end:])
        out += "\n" if text.endswith("\n") else ""
        if _read_levels(out) == kept:
            return out
    data = yaml.safe_load(text)
    data["stage1"]["levels"] = kept
    return "\n".join(comment) + "\n" + yaml.safe_dump(data, sort_keys=False)


def write_curriculum(manifest_dir: str | Path, counts: Optional[Dict[str, int]] = None,
                     template: str | Path = DEFAULT_CURRICULUM) -> Tuple[Optional[Path], List[str]]:
    """Write `manifest_dir/curriculum.yaml` from the template, fitted to `counts` (accepted
    segments per subset; None: the template as is), unless a curriculum.yaml is already there.
    Returns (the path written or None, the notes on what was changed)."""
    from ifmdm_data.io import storage

    remote = storage.is_url(manifest_dir)
    dst = storage.join(manifest_dir, "curriculum.yaml") if remote else Path(manifest_dir) / "curriculum.yaml"
    if storage.exists(dst):
        return None, []
    text = Path(template).read_text()
    notes: List[str] = []
    if counts is not None:
        text, notes = fit_curriculum(text, counts)
    storage.write_bytes_atomic(text.encode("utf-8"), dst)
    return dst, notes
