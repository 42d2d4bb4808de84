"""Object storage in the model commands, against a real S3 API server started here (moto's
server mode on 127.0.0.1, as tests/test_object_storage.py): `ifmdm-eval stage1 --shards s3://`
gives the numbers of the same shards on disk; `ifmdm-train --curriculum s3://...` reads the
curriculum (and resolves its relative `shards:`) from the bucket; `ifmdm-tune --data s3://...`
reads the subject's videos and images as the local files; a run folder given as a URL
(`ifmdm-train -o`, `ifmdm-eval --checkpoint`, `ifmdm-infer --checkpoint`, `ifmdm-tune --base/-o`)
is one line, exit 2, and nothing named `s3:` is created locally.

Everything is tiny and built here (6 clips of 8 frames at 64 px, a random-init S1-tiny run),
so the module takes seconds, not minutes."""
from __future__ import annotations

import io
import json
import shutil
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from conftest import moto_s3
from ifmdm_data.filter.curriculum_template import DEFAULT_CURRICULUM
from ifmdm_data.io import storage
from ifmdm_data.shard.format import INDEX_SCHEMA, npy_bytes

BUCKET = "ifmdm-model-test"
SIZE, N_FRAMES = 64, 8
SUBSETS = ("coarse", "lip", "hard")
pytestmark = pytest.mark.usefixtures("one_thread")   # the machine is shared: one torch thread


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with an empty bucket (conftest.moto_s3)."""
    with moto_s3(BUCKET) as url:
        yield url


def _upload(local: Path, url: str) -> None:
    """Every file under `local` (or the file) to the prefix / key `url`, byte for byte."""
    fs, key = storage.filesystem(url)
    if local.is_file():
        fs.put_file(str(local), key)
        return
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(f), f"{key}/{f.relative_to(local).as_posix()}")


# ---------------------------------------------------------------------------------------------
# tiny data


def _frames(clip_id: int, n: int = N_FRAMES, size: int = SIZE) -> list:
    """A textured face-sized pattern that moves a little from frame to frame (so that the
    reconstruction metrics of a random model are ordinary numbers, not constants)."""
    rng = np.random.default_rng(clip_id)
    base = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (2 * size, 2 * size),
                      interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(base[2 * i:2 * i + size, i:i + size]) for i in range(n)]


def _mp4(frames) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "yuv420p"
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """shards/{subset}/{subset}-000000.tar, 2 clips each (no audio: stage 1 only) + index.parquet."""
    root = tmp_path_factory.mktemp("mos") / "shards"
    rows, cid = [], 0
    for subset in SUBSETS:
        tar = root / subset / f"{subset}-000000.tar"
        tar.parent.mkdir(parents=True)
        with wds.TarWriter(str(tar)) as w:
            for c in range(2):
                key = f"{subset}_c{c}"
                meta = {"key": key, "source": f"/src/video{cid}.mp4", "start_s": 0.0, "end_s": N_FRAMES / 25,
                        "fps": 25.0, "n_frames": N_FRAMES, "size": SIZE, "subset": subset, "stage2_ok": False,
                        "stage2_reasons": ["no_audio"], "has_audio": False, "crop_box": [0, 0, SIZE, SIZE],
                        "landmark_scheme": "mp478", "motion_stats": {}}
                w.write({"__key__": key, "mp4": _mp4(_frames(cid)), "json": json.dumps(meta).encode(),
                         "landmarks.npy": npy_bytes(np.zeros((N_FRAMES, 5, 2), np.float16))})
                rows.append({"key": key, "shard": f"{subset}/{tar.name}", "subset": subset,
                             "n_frames": N_FRAMES, "fps": 25.0, "stage2_ok": False, "has_audio": False,
                             "feature_type": "logmel", "feature_dim": 80, "bytes": 0})
                cid += 1
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), root / "index.parquet")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from ifmdm_model.testing import save_random_run

    return save_random_run(tmp_path_factory.mktemp("mos") / "run")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own empty folder, so `no local s3: folder` is checkable."""
    monkeypatch.chdir(tmp_path)


def _one_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err, err
    return lines[0]


def _no_local_url_folders(*roots: Path) -> None:
    for root in roots:
        hits = [p for p in Path(root).rglob("*") if p.name.rstrip(":") in ("s3", "gs")]
        assert not hits and not (Path(root) / "s3:").exists(), hits


# ---------------------------------------------------------------------------------------------
# ifmdm-eval stage1 from s3:// shards


def test_eval_stage1_from_s3_shards_equals_local(s3, shards, run, tmp_path, capsys):
    from ifmdm_model.cli import eval as cli_eval
    from ifmdm_model.eval.stage1 import evaluate_stage1, select_clips

    remote = f"{s3}/eval/shards"
    _upload(shards, remote)
    assert [r[1:] for r in select_clips(remote + "/", n_clips=100)] == [r[1:] for r in select_clips(shards, n_clips=100)]
    # index.parquet decides on the bucket as on disk (not the tars' own json): a row it lists as
    # 1 frame long is left out of both
    edited = tmp_path / "shards2"
    shutil.copytree(shards, edited)
    rows = pq.read_table(edited / "index.parquet").to_pylist()
    rows[0]["n_frames"] = 1
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), edited / "index.parquet")
    _upload(edited, f"{s3}/eval/shards2")
    keys = [r[1] for r in select_clips(edited, n_clips=100)]
    assert len(keys) == 5 and rows[0]["key"] not in keys
    assert [r[1] for r in select_clips(f"{s3}/eval/shards2", n_clips=100)] == keys
    local = evaluate_stage1(run, shards, n_clips=4, pairs_per_clip=2, device="cpu", batch_size=8)
    assert local["n_clips"] == 4 and local["cross_pairs"] == 8 and 0 < local["same_identity"]["psnr"] < 100
    # the command line on the bucket's copy, its results JSON written to the bucket
    out = f"{s3}/eval/results/stage1.json"
    rc = cli_eval.main(["stage1", "--checkpoint", str(run), "--shards", remote, "--clips", "4", "--pairs", "2",
                        "--batch-size", "8", "--device", "cpu", "-o", out])
    assert rc == 0, capsys.readouterr().err
    assert "same identity" in capsys.readouterr().out
    res = json.loads(storage.read_text(out))
    assert res["shards"] == remote
    for k in ("same_identity", "cross_identity", "n_clips", "pairs", "cross_pairs", "cross_pairs_same_source", "step"):
        assert res[k] == local[k], k                   # the same numbers, bit for bit
    _no_local_url_folders(tmp_path, Path.cwd())


# ---------------------------------------------------------------------------------------------
# ifmdm-train --curriculum s3://


CURRICULUM_EXTRA = """
  levels:
    - name: coarse
      subsets: [coarse]
      steps: 3
      lr: 2.0e-4
    - name: lip
      subsets: [lip]
      steps: 2
      lr: 1.0e-4
      shards: ../lip_shards
"""


def _curriculum_text() -> str:
    import yaml

    data = yaml.safe_load(Path(DEFAULT_CURRICULUM).read_text())
    data["stage1"]["model"] = "S1-tiny"
    data["stage1"]["levels"] = yaml.safe_load(CURRICULUM_EXTRA)["levels"]
    data["stage2"]["model"] = "M2-tiny"
    return yaml.safe_dump(data)


def test_curriculum_from_s3_loads_as_local(s3, tmp_path, capsys):
    from ifmdm_data.errors import ConfigError
    from ifmdm_model.cli.train import train_main
    from ifmdm_model.curriculum import load_curriculum

    text = _curriculum_text()
    local = tmp_path / "c" / "manifests"
    local.mkdir(parents=True)
    (local / "curriculum.yaml").write_text(text)
    prefix = f"{s3}/c/manifests"
    storage.write_bytes_atomic(text.encode(), f"{prefix}/curriculum.yaml")

    a = load_curriculum(local)
    for arg in (prefix, prefix + "/", prefix + "/curriculum.yaml"):
        b = load_curriculum(arg)
        assert str(b.path) == f"{prefix}/curriculum.yaml"
        assert b.shards == f"{s3}/c/shards" and a.shards == (tmp_path / "c" / "shards").resolve()
        assert b.stage1.levels[1].shards == f"{s3}/c/lip_shards"
        assert a.stage1.levels[1].shards == (tmp_path / "c" / "lip_shards").resolve()
        da, db = a.to_dict(), b.to_dict()
        for d in (da, db):
            d.pop("path"), d.pop("shards")
            d["stage1"]["levels"][1].pop("shards")
        assert da == db

    # a split file where the curriculum belongs, nothing there, a shards path out of the bucket
    pq.write_table(pa.table({"source_manifest": ["s3://x/manifests"]}), tmp_path / "train.parquet")
    _upload(tmp_path / "train.parquet", f"{s3}/c/splits/train.parquet")
    with pytest.raises(ConfigError, match="is a manifest, not a curriculum"):
        load_curriculum(f"{s3}/c/splits/")
    with pytest.raises(ConfigError, match="no curriculum at"):
        load_curriculum(f"{s3}/c/nothing/")
    storage.write_bytes_atomic(b"shards: ../../up\nstage1: {levels: [{name: a, subsets: [coarse], steps: 1, lr: 0.1}]}\n",
                               f"{s3}/top/curriculum.yaml")
    with pytest.raises(ConfigError, match="outside the bucket"):
        load_curriculum(f"{s3}/top/")

    # the command line reads it from the bucket and looks for the shards it names there
    rc = train_main(["--curriculum", prefix + "/", "-o", str(tmp_path / "runs" / "x"), "--stage", "1"])
    line = _one_line(capsys.readouterr().err, "ifmdm-train")
    assert rc == 2 and f"no shards at {s3}/c/shards " in line, line
    _no_local_url_folders(tmp_path)


def test_train_from_s3_curriculum_runs(s3, shards, tmp_path, capsys):
    """One real stage-1 step: the curriculum and the shards it names both on the bucket."""
    from ifmdm_model.cli.train import train_main

    _upload(shards, f"{s3}/t/shards")
    _upload(shards, f"{s3}/t/lip_shards")
    storage.write_bytes_atomic(_curriculum_text().encode(), f"{s3}/t/manifests/curriculum.yaml")
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = train_main(["--curriculum", f"{s3}/t/manifests/", "-o", str(tmp_path / "run"), "--stage", "1",
                         "--max-steps", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads(buf.getvalue())["stage1"]["steps"] == 1
    state = json.loads(next((tmp_path / "run" / "stage1").glob("ckpt-*/state.json")).read_text())
    assert state["curriculum"] == f"{s3}/t/manifests/curriculum.yaml"
    _no_local_url_folders(tmp_path)


# ---------------------------------------------------------------------------------------------
# ifmdm-tune --data s3://


def test_tune_reads_subject_data_from_s3(s3, run, tmp_path):
    from ifmdm_model.tune.stage1 import load_subject, tune_stage1

    subj = tmp_path / "subject"
    subj.mkdir()
    (subj / "talk.mp4").write_bytes(_mp4(_frames(7, n=12)))
    cv2.imwrite(str(subj / "photo.png"), cv2.cvtColor(_frames(8, n=1)[0], cv2.COLOR_RGB2BGR))
    (subj / "notes.txt").write_text("not media")
    remote = f"{s3}/subject"
    _upload(subj, remote)
    a, b = load_subject([str(subj)], SIZE), load_subject([remote + "/"], SIZE)
    assert [s.name for s in a.train] == [s.name for s in b.train] == ["talk.mp4", "photo.png"]
    for x, y in zip(a.train + a.heldout, b.train + b.heldout):
        assert x.name == y.name and np.array_equal(x.frames, y.frames)
    spools_before = set(Path(tempfile.gettempdir()).glob("ifmdm-spool-*"))
    rec = tune_stage1(run, [f"{remote}/talk.mp4"], tmp_path / "tr", steps=1, batch_size=2, seed=0, device="cpu")
    assert rec["data"] == [f"{remote}/talk.mp4"] and rec["train_sources"] == ["talk.mp4"]
    assert rec["train_frames"] == len(a.train[0].frames) and (tmp_path / "tr" / "lora").is_dir()
    assert set(Path(tempfile.gettempdir()).glob("ifmdm-spool-*")) <= spools_before   # copies removed
    _no_local_url_folders(tmp_path)


# ---------------------------------------------------------------------------------------------
# run folders on object storage: one line, exit 2, nothing created


def test_url_run_folders_are_one_line_exit_2(s3, run, shards, tmp_path, capsys):
    from ifmdm_model.cli import eval as cli_eval
    from ifmdm_model.cli.infer import main as infer_main
    from ifmdm_model.cli.train import train_main
    from ifmdm_model.cli.tune import main as tune_main

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "curriculum.yaml").write_text(_curriculum_text())
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), _frames(3, n=1)[0])
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(_mp4(_frames(4)))
    url = f"{s3}/runs/x"
    cases = [
        ("ifmdm-train", train_main, ["--curriculum", str(manifests), "--shards", str(shards), "-o", url],
         f"-o {url}: the run folder must be a local path"),
        ("ifmdm-train", train_main, ["--curriculum", str(manifests), "-o", "gs://b/runs/x"],
         "-o gs://b/runs/x: the run folder must be a local path"),
        ("ifmdm-eval", cli_eval.main, ["stage1", "--checkpoint", url, "--shards", str(shards)],
         f"--checkpoint {url}: the run folder must be a local path"),
        ("ifmdm-eval", cli_eval.main, ["stage1", "--checkpoint", str(run), "--shards", str(shards), "--lora", url],
         f"--lora {url}: the run folder must be a local path"),
        ("ifmdm-eval", cli_eval.main, ["video", "--checkpoint", url, "--clips", str(clip), "-o", "out"],
         f"--checkpoint {url}: the run folder must be a local path"),
        ("ifmdm-eval", cli_eval.main, ["video", "--checkpoint", str(run), "--clips", str(clip), "-o", url],
         f"-o {url}: the output folder must be a local path"),
        ("ifmdm-infer", infer_main, ["--checkpoint", url, "--image", str(img), "--audio", str(clip),
                                     "-o", str(tmp_path / "o.mp4")],
         f"--checkpoint {url}: the run folder must be a local path"),
        ("ifmdm-infer", infer_main, ["--checkpoint", str(run), "--lora", url, "--image", str(img),
                                     "--driving-video", str(clip), "-o", str(tmp_path / "o.mp4")],
         f"--lora {url}: the run folder must be a local path"),
        ("ifmdm-tune", tune_main, ["--base", url, "--data", str(clip), "-o", str(tmp_path / "t")],
         f"--base {url}: the run folder must be a local path"),
        ("ifmdm-tune", tune_main, ["--base", str(run), "--data", str(clip), "-o", url],
         f"-o {url}: the run folder must be a local path"),
    ]
    for prog, main, argv, want in cases:
        rc = main(argv)
        cap = capsys.readouterr()
        line = _one_line(cap.err, prog)
        assert rc == 2 and line.startswith(f"{prog}: error: {want}"), (argv, line)
        assert "aws s3 sync" in line or "gcloud storage rsync" in line, line
        assert not cap.out, cap.out
    # nothing named s3: (or gs:) here or under the current folder, no object written
    _no_local_url_folders(tmp_path, Path.cwd())
    assert not storage.find(f"{s3}/runs")
    assert not (tmp_path / "t").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["s3:/bkt/runs/x", "S3://bkt/runs/x", "s3:///bkt/x", "s3://bkt//runs/x", "gs://"])
def test_mistyped_urls_are_one_line_and_create_nothing(bad, tmp_path, monkeypatch, capsys):
    """A URL with one slash or a capital scheme would become a local folder `s3:` (or fail in the
    S3 client): one line, exit 2, nothing created, before any work."""
    from ifmdm_model.cli.eval import main as eval_main
    from ifmdm_model.cli.train import train_main

    monkeypatch.chdir(tmp_path)
    assert train_main(["--curriculum", "manifests", "-o", bad]) == 2
    assert train_main(["--curriculum", bad, "-o", "runs/x"]) == 2
    assert eval_main(["stage1", "--checkpoint", "runs/x", "--shards", "shards", "-o", bad + "/r.json"]) == 2
    assert eval_main(["stage1", "--checkpoint", "runs/x", "--shards", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all("not a valid object-storage URL" in e for e in err), err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad,why", [("s3:/bkt/x", "lower case, then two slashes"), ("S3://bkt/x", "lower case"),
                                     ("s3:///x", "no bucket"), ("s3://", "no bucket"),
                                     ("s3://bkt//x", "empty path component"), ("gs://bkt/a//b/", "empty path component")])
def test_data_cli_rejects_mistyped_urls_in_every_location_argument(bad, why, tmp_path, monkeypatch, capsys):
    """`ifmdm-data` and `ifmdm-tune` take the same check as the model CLIs
    (`storage.check_location`): one line naming the argument, exit 2, nothing created."""
    from ifmdm_data.cli import main as data_main
    from ifmdm_model.cli.tune import main as tune_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "clips").mkdir()
    runs = [(["filter", bad, "-o", "m"], "input"), (["filter", "clips", "-o", bad], "-o"),
            (["shard", bad, "-o", "s"], "manifests"), (["report", "m", "-o", bad], "-o"),
            (["shard", "--images", bad, "-o", "s"], "--images")]
    for argv, flag in runs:
        assert data_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag} {bad}: not a valid object-storage URL (" in err[0], (argv, err)
        assert why in err[0], err
    (tmp_path / "base").mkdir()
    assert tune_main(["--base", "base", "--data", bad, "-o", "t"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--data {bad}: not a valid object-storage URL" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "clips"]


def test_well_formed_locations_pass_the_url_check():
    from ifmdm_data.io.storage import check_location
    for ok in ["s3://bkt/x", "s3://bkt/x/", "gs://bkt", "out/x", "/abs//double/slash", "file:///tmp/x", "C:/x",
               "./s3:x", "memory://bkt/x"]:
        check_location("-o", ok)
