"""`ifmdm_data.report`: the HTML report of a filter manifest (sample set manifests)."""
from __future__ import annotations

import base64
import re
import shutil

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from ifmdm_data.errors import InputError
from ifmdm_data.report import GROUPS, pick_examples, write_report
from ifmdm_data.schema import read_clips

IMG = re.compile(r"<img\b([^>]*)>")


def _imgs(page: str) -> list[dict]:
    return [dict(re.findall(r'([\w-]+)="([^"]*)"', attrs)) for attrs in IMG.findall(page)]


def _check_images(out, page: str) -> list[dict]:
    imgs = _imgs(page)
    assert imgs
    for im in imgs:
        assert im["src"].startswith("data:image/png;base64,"), "every image is embedded"
        f = out / im["data-file"]
        assert f.is_file(), f
        assert cv2.imread(str(f)) is not None, f
        assert base64.b64decode(im["src"].split(",", 1)[1]) == f.read_bytes()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page), "no external references"
    return imgs


def _group_counts(df) -> dict:
    groups = [s if a else "rejected" for s, a in zip(df["subset"], df["accepted"])]
    return {g: groups.count(g) for g in GROUPS}


def test_report_of_sample_manifests(sample_manifests, tmp_path):
    mdir, summary = sample_manifests
    out = tmp_path / "report"
    index = write_report(mdir, out, examples_per_subset=3, seed=0)
    assert index == out / "index.html" and index.is_file()
    page = index.read_text()
    imgs = _check_images(out, page)

    counts = _group_counts(read_clips(mdir))
    tiles = [im for im in imgs if im.get("class") == "tile"]
    for g in GROUPS:
        assert sum(im.get("data-group") == g for im in tiles) == min(3, counts[g]), g
    assert {"outcomes.png", "distributions.png"} <= {im["data-file"] for im in imgs}

    # the thresholds used are in the page (table), the counts in the header
    th = summary["thresholds"]
    dec = summary["config"]["decide"]
    for v in (th["head_motion_min"], th["lip_motion_min"], dec["min_face_px"], dec["min_speech_ratio"],
              dec["min_av_corr"]):
        assert f"<td>{v:.6g}</td>" in page, v
    for key in ("head_motion_min", "lip_motion_min", "min_face_px", "min_speech_ratio", "min_av_corr"):
        assert key in page
    assert f">{summary['segments']}<" in page and f">{summary['accepted']}<" in page
    # frames with an overlay, not grey placeholders: the sample sources exist
    assert "source missing" not in page and "cannot decode" not in page


def test_no_manifest_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="clips.parquet"):
        write_report(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out" / "index.html").exists()


def test_missing_and_broken_sources_still_give_a_report(sample_manifests, tmp_path):
    mdir, _ = sample_manifests
    m = tmp_path / "manifests"
    m.mkdir()
    shutil.copy(mdir / "clips.parquet", m)
    shutil.copy(mdir / "summary.json", m)
    shutil.copytree(mdir / "tracks", m / "tracks")
    (m / "tracks" / sorted(p.name for p in (m / "tracks").iterdir())[0]).unlink()  # one lost track
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    table = pq.read_table(m / "clips.parquet")
    paths = table.column("path").to_pylist()
    new = [str(tmp_path / "gone" / "deleted.mp4")] + [str(broken)] * (len(paths) - 1)
    table = table.set_column(table.schema.get_field_index("path"), table.schema.field("path"),
                             [np.array(new, dtype=object)])
    pq.write_table(table, m / "clips.parquet")

    out = tmp_path / "report"
    page = write_report(m, out, examples_per_subset=6, seed=1).read_text()
    imgs = _check_images(out, page)
    counts = _group_counts(read_clips(m))
    assert sum(im.get("class") == "tile" for im in imgs) == sum(min(6, n) for n in counts.values())
    assert "source missing" in page and "cannot decode" in page

    # the picks follow the seed; a second report in the same folder drops the old tiles
    again = write_report(m, out, examples_per_subset=1, seed=1).read_text()
    picked = [im["title"] for im in _imgs(again) if im.get("class") == "tile"]
    df = read_clips(m)
    df["group"] = [s if a else "rejected" for s, a in zip(df["subset"], df["accepted"])]
    assert picked == [sid for g in GROUPS for sid in pick_examples(df, g, 1, seed=1)["segment_id"]]
    assert len(list((out / "tiles").glob("*.png"))) == len(picked)


def test_syncnet_confidence_is_drawn_when_scored(sample_manifests):
    """Runs with `filter --syncnet` get a SyncNet-confidence strip and captions with it."""
    import io
    from types import SimpleNamespace
    from PIL import Image
    from ifmdm_data.report import caption, distributions, load_manifest, metrics_of

    mdir, summary = sample_manifests
    df, _ = load_manifest(mdir)
    assert [m[0] for m in metrics_of(df)][-1] != "sync_conf"          # the sample run has none
    scored = df.copy()
    scored["sync_conf"] = np.linspace(0.5, 6.0, len(df))
    scored["sync_offset_frames"] = 1.0
    assert [m[0] for m in metrics_of(scored)][-1] == "sync_conf"
    th, dec = summary["thresholds"], summary["config"]["decide"]
    h0 = Image.open(io.BytesIO(distributions(df, th, dec, 0))).size[1]
    h1 = Image.open(io.BytesIO(distributions(scored, th, dec, 0))).size[1]
    assert h1 > h0
    row = SimpleNamespace(**scored.iloc[0].to_dict())
    assert "sync 0.50 @ +1 fr" in caption(row, "")
    row.sync_conf = float("nan")
    assert "sync" not in caption(row, "").split("av")[-1]


def test_duplicate_table_names_the_file_of_each_segment():
    import pandas as pd

    from ifmdm_data.report import identity_section

    df = pd.DataFrame({"segment_id": ["a_000", "b_000", "c_000"], "clip_id": ["a", "b", "c"],
                       "path": ["/data/x/talk.mp4", "s3://bucket/y/talk_copy.mp4", "/data/z/other.mp4"],
                       "group": ["lip", "lip", "coarse"], "identity_id": [1, 1, 2], "dup_group": [5, 5, 6]})
    html = identity_section(df)
    assert "a_000 (talk.mp4), b_000 (talk_copy.mp4)" in html, html
    assert "1 near-duplicate group of two or more segments (2 segments); 2 groups in all" in html, html
