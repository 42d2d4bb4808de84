"""Input resolution: folders, globs, CSV / Parquet lists; stable clip ids."""
import os
import shutil

import pandas as pd
import pytest

from ifmdm_data.errors import InputError
from ifmdm_data.filter.inputs import resolve_inputs, resolve_keyed
from ifmdm_data.io.paths import clip_id


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


def test_clip_id_hashes_the_path_relative_to_the_input_root(tree):
    import hashlib
    assert clip_id("b/y.MOV") == hashlib.sha1(b"b/y.MOV").hexdigest()[:16]      # documented definition
    got = dict(resolve_keyed([str(tree / "a")]))
    assert got[str(tree / "a" / "b" / "y.MOV")] == "b/y.MOV"                     # folder: relative to it
    assert dict(resolve_keyed([str(tree / "a" / "**" / "*.mkv")])) == {str(tree / "a" / "b" / "z.mkv"): "b/z.mkv"}
    assert dict(resolve_keyed([str(tree / "a" / "x.mp4")])) == {str(tree / "a" / "x.mp4"): "x.mp4"}  # file: base name


def test_clip_ids_survive_a_move(tree, tmp_path_factory):
    moved = tmp_path_factory.mktemp("elsewhere") / "data"
    shutil.copytree(tree / "a", moved)
    ids = lambda root: sorted(clip_id(k) for _, k in resolve_keyed([str(root)]))  # noqa: E731
    assert ids(tree / "a") == ids(moved)
    # a list of absolute paths: keys relative to the folder the entries share
    pd.DataFrame({"path": [str(tree / "a" / "x.mp4"), str(tree / "a" / "b" / "z.mkv")]}).to_csv(tree / "abs.csv", index=False)
    pd.DataFrame({"path": [str(moved / "x.mp4"), str(moved / "b" / "z.mkv")]}).to_csv(tree / "moved.csv", index=False)
    assert [k for _, k in resolve_keyed([str(tree / "abs.csv")])] == ["b/z.mkv", "x.mp4"]
    assert [k for _, k in resolve_keyed([str(tree / "moved.csv")])] == ["b/z.mkv", "x.mp4"]


def test_id_column_and_key_collisions(tree):
    pd.DataFrame({"path": ["a/x.mp4", "a/b/z.mkv"], "id": ["clip-1", "clip-2"]}).to_csv(tree / "ids.csv", index=False)
    got = resolve_keyed([str(tree / "ids.csv")])
    assert [k for _, k in got] == ["id:clip-2", "id:clip-1"]      # sorted by path: a/b/z.mkv first
    (tree / "c").mkdir()
    (tree / "c" / "x.mp4").write_bytes(b"0")
    with pytest.raises(InputError, match="same clip id"):          # a/x.mp4 and c/x.mp4 both 'x.mp4'
        resolve_keyed([str(tree / "a"), str(tree / "c")])
    assert len(resolve_keyed([str(tree)])) == 4                    # their parent folder is fine
