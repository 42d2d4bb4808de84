"""Input resolution: folders, globs, CSV / Parquet lists; stable clip ids."""
import os

import pandas as pd
import pytest

from ifmdm_data.errors import InputError
from ifmdm_data.inputs import clip_id, resolve_inputs


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ("a/x.mp4", "a/b/y.MOV", "a/b/z.mkv", "a/readme.txt"):
        (tmp_path / p).write_bytes(b"0")
    return tmp_path


def test_folder_is_recursive_and_filters_extensions(tree):
    got = resolve_inputs([str(tree / "a")])
    assert [os.path.relpath(p, tree) for p in got] == ["a/b/y.MOV", "a/b/z.mkv", "a/x.mp4"]


def test_glob_and_duplicates(tree):
    got = resolve_inputs([str(tree / "a" / "**" / "*.mkv"), str(tree / "a" / "b" / "z.mkv")])
    assert len(got) == 1


def test_csv_and_parquet_lists_with_relative_paths(tree):
    pd.DataFrame({"path": ["a/x.mp4", "a/missing.mp4"]}).to_csv(tree / "list.csv", index=False)
    got = resolve_inputs([str(tree / "list.csv")])
    assert got == sorted([str(tree / "a" / "x.mp4"), str(tree / "a" / "missing.mp4")])  # missing -> a row later
    pd.DataFrame({"video": [str(tree / "a" / "b" / "y.MOV")]}).to_parquet(tree / "list.parquet")
    assert resolve_inputs([str(tree / "list.parquet")]) == [str(tree / "a" / "b" / "y.MOV")]


def test_bad_arguments(tree):
    with pytest.raises(InputError, match="matches no file"):
        resolve_inputs([str(tree / "*.webm")])
    with pytest.raises(InputError, match="no inputs"):
        resolve_inputs([])


def test_clip_id_is_stable_and_path_based(tree, monkeypatch):
    p = str(tree / "a" / "x.mp4")
    import hashlib
    assert clip_id(p) == hashlib.sha1(p.encode()).hexdigest()[:16]        # documented definition
    monkeypatch.chdir(tree)
    assert clip_id("a/x.mp4") == clip_id(p)                                  # relative == absolute
    assert len(clip_id(p)) == 16 and clip_id(p) != clip_id(str(tree / "a" / "b" / "z.mkv"))
