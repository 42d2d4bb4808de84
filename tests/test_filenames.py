"""A file name that is not UTF-8 (issue 11 E) is analysed like its UTF-8 twin; its manifest
path is a valid-UTF-8 str that maps back to the file losslessly (inputs.manifest_path)."""
from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from ifmdm_data.io.paths import fs_path, manifest_path

from media_factory import write_video

ODD = b"caf\xe9 \\ t.mp4"   # Latin-1 e-acute (not UTF-8) and a literal backslash


@pytest.mark.parametrize("raw", [b"/d/caf\xe9.mp4", b"/d/a\\b\xff\xfe.mp4", "/d/東京 x.mp4".encode(),
                                 b"/d/plain\\x41.mp4"])
def test_manifest_path_round_trips(raw):
    p = os.fsdecode(raw)
    stored = manifest_path(p)
    stored.encode("utf-8")                       # storable in Parquet / JSON
    assert fs_path(stored) == p and os.fsencode(fs_path(stored)) == raw
    if raw.decode("utf-8", "replace") == raw.decode("utf-8", "surrogateescape"):
        assert stored == p                       # UTF-8 names are stored unchanged


@pytest.fixture(scope="module")
def odd_run(ray_session, tmp_path_factory):
    from ifmdm_data.filter.config import load_config
    from ifmdm_data.filter.pipeline import run_filter

    d = tmp_path_factory.mktemp("names")
    write_video(d / "normal.mp4", 30, audio=True)
    odd = os.fsdecode(os.fsencode(str(d)) + b"/" + ODD)
    shutil.copy(d / "normal.mp4", odd)
    out = tmp_path_factory.mktemp("names_manifests")
    summary = run_filter([str(d)], str(out), load_config(), workers=2, progress=False)
    return d, odd, out, summary


def test_non_utf8_name_gets_an_analysed_row(odd_run):
    d, odd, out, summary = odd_run
    df = pd.read_parquet(out / "clips.parquet")
    assert summary["inputs"] == 2 and df["clip_id"].nunique() == 2
    paths = [fs_path(p) for p in df["path"]]
    assert set(paths) == {str(d / "normal.mp4"), odd}           # lossless: the exact bytes
    assert os.path.exists(odd)
    normal, weird = df[[p != odd for p in paths]], df[[p == odd for p in paths]]
    # analysed the same as the identical file with a plain name (no probe / decode failure)
    assert list(weird["reasons"].map(list)) == list(normal["reasons"].map(list))
    assert float(weird["duration_s"].iloc[0]) == pytest.approx(float(normal["duration_s"].iloc[0]))
    assert "\\xe9" in weird["path"].iloc[0]                     # readable escaped form
