"""Image sets for stage 1 without video (issue 14, paper Fig. 6: AFHQ-Cat): `ifmdm-data shard
--images`, the augmented pairs of `image_pairs.py`, the stage-1 loader on image shards and a
curriculum level that names them."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from ifmdm_data.cli import main as data_main
from ifmdm_data.shard.image_pairs import elastic_field, image_motion_pair, warp_maps
from ifmdm_data.shard.image_set import DUPLICATE

CAT = Path("/work/shared/media/image/cat_face.png")
SIZE = 64


def _texture(rng, h, w, blur):
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), blur)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Four distinct textures (one wide, one in a sub-folder), an exact copy, a corrupt jpg, an
    empty file, a too-small image, an RGBA png with transparent borders, a text file (ignored)
    and the real cat photo when present."""
    d = tmp_path_factory.mktemp("images")
    (d / "sub").mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(d / "a.png"), _texture(rng, 120, 180, 3))           # wide: centre-cropped
    cv2.imwrite(str(d / "b.jpg"), _texture(rng, 100, 100, 4))
    cv2.imwrite(str(d / "sub" / "c.webp"), _texture(rng, 90, 90, 5))
    cv2.imwrite(str(d / "d.png"), _texture(rng, 70, 80, 2))
    shutil.copy(d / "a.png", d / "sub" / "a_copy.png")                 # exact duplicate
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a jpeg")
    (d / "empty.png").write_bytes(b"")
    cv2.imwrite(str(d / "tiny.png"), _texture(rng, 20, 24, 1))          # below --min-side 32
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., 2] = 200                                                  # red (BGR order) ...
    rgba[20:60, 20:60, 3] = 255                                         # ... opaque only inside
    cv2.imwrite(str(d / "rgba.png"), rgba)
    (d / "notes.txt").write_text("not an image")
    if CAT.is_file():
        shutil.copy(CAT, d / "cat_face.png")
    return d


@pytest.fixture(scope="module")
def image_shards(image_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "cats"
    rc = data_main(["shard", "--images", str(image_folder), "-o", str(out), "--size", str(SIZE),
                    "--min-side", "32", "--shard-size", "0.000001"])   # ~1 sample per shard
    assert rc == 0
    return out


def _index(out: Path) -> dict:
    return pq.read_table(out / "index.parquet").to_pydict()


def _tar_samples(out: Path) -> dict:
    """key -> {ext: bytes} over every tar, read with plain tarfile."""
    samples = {}
    for tar in sorted((out / "images").glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    return samples


def test_shard_images_index_rejections_and_tars(image_shards, image_folder):
    idx = _index(image_shards)
    n_ok = 5 + CAT.is_file()                 # a, b, c, d, rgba (+ cat)
    assert len(idx["key"]) == n_ok
    assert set(idx["subset"]) == {"images"} and set(idx["n_frames"]) == {1}
    assert not any(idx["stage2_ok"]) and not any(idx["has_audio"])
    assert all((image_shards / s).is_file() for s in idx["shard"])
    assert len(set(idx["shard"])) > 1                                   # rolled over by --shard-size
    rej = pq.read_table(image_shards / "rejected.parquet").to_pylist()
    by_name = {Path(r["path"]).name: r for r in rej}
    assert {n: r["reasons"] for n, r in by_name.items()} == {
        "corrupt.jpg": ["decode_error"], "empty.png": ["empty_file"],
        "tiny.png": ["low_resolution"],
        # exact copies: the first in key order is kept, the other is the duplicate
        ("a.png" if "a.png" in by_name else "a_copy.png"): [DUPLICATE]}
    dup = next(r for r in rej if r["reasons"] == [DUPLICATE])
    assert dup["duplicate_of"] in idx["key"] and "distance 0" in dup["detail"]
    assert by_name["tiny.png"]["width"] == 24 and by_name["tiny.png"]["height"] == 20
    assert not list((image_shards / "images").glob(".*"))             # no temporary left
    summary = json.loads((image_shards / "summary.json").read_text())
    assert summary["samples_total"] == n_ok and summary["rejected"] == 4

    samples = _tar_samples(image_shards)
    assert sorted(samples) == sorted(idx["key"])
    metas = {k: json.loads(v["json"]) for k, v in samples.items()}
    for key, s in samples.items():
        img = cv2.imdecode(np.frombuffer(s["png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        m = metas[key]
        assert m["key"] == key and m["n_frames"] == 1 and m["size"] == SIZE
    by_src = {Path(m["source"]).name: (k, m) for k, m in metas.items()}
    assert ((by_src.get("a.png") or by_src["a_copy.png"])[1]["width"],
            by_src["b.jpg"][1]["height"]) == (180, 100)
    key, m = by_src["rgba.png"]
    assert m["composited"] is True and not by_src["b.jpg"][1]["composited"]
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(samples[key]["png"], np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    assert (rgb[2, 2] == 255).all()                                     # transparent -> white
    assert tuple(rgb[SIZE // 2, SIZE // 2]) == (200, 0, 0)               # opaque red kept


def test_tars_read_by_plain_webdataset(image_shards):
    import webdataset as wds

    tars = sorted(str(p) for p in (image_shards / "images").glob("*.tar"))
    got = list(wds.WebDataset(tars, shardshuffle=False).decode("rgb8"))
    assert len(got) == len(_index(image_shards)["key"])
    assert all(s["png"].shape == (SIZE, SIZE, 3) and s["json"]["subset"] == "images" for s in got)


def test_errors_are_one_line(image_shards, image_folder, tmp_path, capsys):
    def err(args):
        assert data_main(["shard", "--images", *args]) == 2
        e = capsys.readouterr().err.strip()
        assert "\n" not in e and "Traceback" not in e
        return e

    assert "no such file or folder" in err([str(tmp_path / "missing"), "-o", str(tmp_path / "o1")])
    (tmp_path / "empty").mkdir()
    assert "has no images" in err([str(tmp_path / "empty"), "-o", str(tmp_path / "o2")])
    assert "--overwrite" in err([str(image_folder), "-o", str(image_shards)])
    assert not (tmp_path / "o1").exists()


def test_overwrite_list_input_and_glob(image_folder, tmp_path, capsys):
    import pandas as pd

    lst = tmp_path / "list.csv"
    pd.DataFrame({"path": [str(image_folder / "b.jpg"), str(image_folder / "gone.png")]}).to_csv(lst, index=False)
    out = tmp_path / "out"
    assert data_main(["shard", "--images", str(lst), "-o", str(out), "--size", "32"]) == 0
    assert "1 sample in" in capsys.readouterr().out and len(_index(out)["key"]) == 1
    rej = pq.read_table(out / "rejected.parquet").to_pylist()
    assert [r["reasons"] for r in rej] == [["unreadable"]]
    # --overwrite replaces the set: a glob of the pngs now, stored as JPEG
    assert data_main(["shard", "--images", str(image_folder / "*.png"), "-o", str(out), "--size", "32",
                      "--overwrite", "--min-side", "32", "--format", "jpg"]) == 0
    samples = _tar_samples(out)
    srcs = {json.loads(s["json"])["source"] for s in samples.values()}
    assert {Path(s).name for s in srcs} == {"a.png", "d.png", "rgba.png"} | ({"cat_face.png"} if CAT.is_file() else set())
    assert all(set(s) == {"jpg", "json"} for s in samples.values())
    from ifmdm_data.loaders import stage1_dataset
    pairs = list(stage1_dataset(str(out), subsets=("images",), size=32, pairs_per_clip=1))
    assert len(pairs) == len(samples) and pairs[0]["motion"].shape == (3, 32, 32)
    # the image options belong to --images
    assert data_main(["shard", str(out), "-o", str(tmp_path / "v"), "--min-side", "8"]) == 2
    assert "applies to --images only" in capsys.readouterr().err


def _photo() -> np.ndarray:
    if CAT.is_file():
        img = cv2.cvtColor(cv2.imread(str(CAT)), cv2.COLOR_BGR2RGB)
        return cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)
    return _texture(np.random.default_rng(1), 128, 128, 2)


def test_image_motion_pair_deterministic_and_moving():
    img = _photo()
    a1, m1 = image_motion_pair(img, np.random.default_rng(7))
    a2, m2 = image_motion_pair(img, np.random.default_rng(7))
    assert np.array_equal(a1, a2) and np.array_equal(m1, m2)           # same seed, same pair
    a3, _ = image_motion_pair(img, np.random.default_rng(8))
    assert not np.array_equal(a1, a3)
    assert a1.shape == m1.shape == img.shape and a1.dtype == np.uint8
    diff = np.abs(a1.astype(int) - m1.astype(int)).mean()
    assert diff > 3                                                     # not the identity
    assert np.abs(a1.astype(int) - img.astype(int)).mean() > 3
    with pytest.raises(ValueError):
        image_motion_pair(img[..., 0], np.random.default_rng(0))


def _affine_residual(map_x, map_y) -> float:
    """RMS (pixels) of the sampling maps left after the best least-squares affine fit."""
    h, w = map_x.shape
    ys, xs = np.mgrid[0:h, 0:w]
    A = np.stack([xs.ravel(), ys.ravel(), np.ones(h * w)], 1).astype(np.float64)
    res = []
    for m in (map_x, map_y):
        coef, *_ = np.linalg.lstsq(A, m.ravel().astype(np.float64), rcond=None)
        res.append(m.ravel() - A @ coef)
    return float(np.sqrt(np.mean(np.square(res))))


def test_motion_is_local_not_only_a_global_affine():
    size = (128, 128)
    # the warp of each frame: affine + elastic leaves a local residual of a few pixels
    maps = warp_maps(size, np.random.default_rng(3))
    assert 0.5 < _affine_residual(*maps) < 10
    flat = warp_maps(size, np.random.default_rng(3), elastic_amplitude=0.0)
    assert _affine_residual(*flat) < 1e-3                               # affine alone: exactly affine
    d = elastic_field(size, np.random.default_rng(0))
    assert d.shape == (128, 128, 2) and 0.5 < d.std() < 4               # ~1.2 % of 128 px
    # the images: the same seed without the elastic part gives the same global motion, and the
    # frames differ from it locally (some regions much more than others)
    img = _photo()
    _, m = image_motion_pair(img, np.random.default_rng(5))
    _, m0 = image_motion_pair(img, np.random.default_rng(5), elastic_amplitude=0.0)
    err = np.abs(m.astype(float) - m0.astype(float)).mean(2)
    blocks = err.reshape(4, 32, 4, 32).mean((1, 3))
    assert blocks.max() > 2 * blocks.min() and blocks.max() > 3


def test_stage1_loader_yields_image_pairs(image_shards):
    import torch

    from ifmdm_data.loaders import stage1_loader

    loader = stage1_loader(str(image_shards), batch_size=3, num_workers=0, subsets=("images",),
                           size=32, pairs_per_clip=2, shuffle_buffer=4, augment=True)
    batches = list(loader)
    n = sum(b["appearance"].shape[0] for b in batches)
    assert n == 2 * len(_index(image_shards)["key"])
    b = batches[0]
    assert b["appearance"].shape == b["motion"].shape == (3, 3, 32, 32)
    assert b["appearance"].dtype == torch.float32 and b["appearance"].abs().max() <= 1
    assert not torch.equal(b["appearance"], b["motion"])
    assert loader.dataset.stats["images_decoded"] == len(_index(image_shards)["key"])


def _tiny_curriculum(shards, levels) -> str:
    """curriculum.yaml text: S1-tiny, 2-sample batches, no loader workers, the given levels."""
    return (f"shards: {shards}\n" + """stage1:
  model: S1-tiny
  batch_size: 2
  pairs_per_clip: 2
  num_workers: 0
  warmup_steps: 1
  log_every: 1
  image_every: 100
  checkpoint_every: 100
  levels:
""" + "".join(f"    - {lv}\n" for lv in levels))


def test_curriculum_level_on_images_and_train_two_steps(image_shards, tmp_path, capsys):
    from ifmdm_model.cli.train import train_main
    from ifmdm_model.curriculum import load_curriculum

    d = tmp_path / "manifests"
    d.mkdir()
    text = _tiny_curriculum(image_shards, ["{name: cats, subsets: [images], steps: 2, lr: 1.0e-3}"])
    (d / "curriculum.yaml").write_text(text)
    assert load_curriculum(d).stage1.levels[0].subsets == ["images"]
    assert train_main(["--curriculum", str(d), "-o", str(tmp_path / "run")]) == 0     # default --stage all
    out = json.loads(capsys.readouterr().out)
    assert out["stage1"]["steps"] == 2 and np.isfinite(out["stage1"]["last"]["loss"])
    assert "stage2" not in out                                # an image set has no audio: stage 1 only
    assert train_main(["--curriculum", str(d), "-o", str(tmp_path / "run"), "--stage", "2"]) == 2
    assert "is an image set" in capsys.readouterr().err
    from ifmdm_model.cli.eval import main as eval_main
    assert eval_main(["stage1", "--checkpoint", str(tmp_path / "run"), "--shards", str(image_shards)]) == 2
    assert "is an image set" in capsys.readouterr().err
    latest = (tmp_path / "run" / "stage1" / "latest").read_text().strip()
    st = json.loads((tmp_path / "run" / "stage1" / latest / "state.json").read_text())
    assert st["subset_samples"]["images"] == len(_index(image_shards)["key"])
    # a subset name that is neither a video subset nor images is still a one-line error
    (d / "curriculum.yaml").write_text(text.replace("[images]", "[imagez]"))
    assert train_main(["--curriculum", str(d), "-o", str(tmp_path / "run2"), "--stage", "1"]) == 2
    assert "unknown subset 'imagez'" in capsys.readouterr().err


def test_levels_mix_video_and_image_shard_folders(image_shards, sample_shards, tmp_path, capsys):
    """A level's own `shards:` folder: video levels from the curriculum's shards, then an image
    level from an image set; checkpoints record the folder only for levels that name one."""
    from ifmdm_model.cli.train import train_main

    d = tmp_path / "manifests"
    d.mkdir()
    text = _tiny_curriculum(sample_shards, ["{name: talk, subsets: [lip, hard], steps: 2, lr: 1.0e-3}",
                                            f"{{name: cats, subsets: [images], steps: 2, lr: 1.0e-3, shards: {image_shards}}}"])
    (d / "curriculum.yaml").write_text(text)
    assert train_main(["--curriculum", str(d), "-o", str(tmp_path / "run"), "--stage", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stage1"]["steps"] == 4
    latest = (tmp_path / "run" / "stage1" / "latest").read_text().strip()
    st = json.loads((tmp_path / "run" / "stage1" / latest / "state.json").read_text())
    assert "shards" not in st["levels"][0] and st["levels"][1]["shards"] == str(image_shards)
    assert st["subset_samples"]["cats:images"] == len(_index(image_shards)["key"])
    assert st["subset_samples"]["talk:hard"] > 0 and st["skipped_levels"] == []
    # without its own folder the image level finds no images in the video shards: skipped, named
    (d / "curriculum.yaml").write_text(text.replace(f", shards: {image_shards}", ""))
    assert train_main(["--curriculum", str(d), "-o", str(tmp_path / "run2"), "--stage", "1"]) == 0
    latest = (tmp_path / "run2" / "stage1" / "latest").read_text().strip()
    assert json.loads((tmp_path / "run2" / "stage1" / latest / "state.json").read_text())["skipped_levels"] == ["cats"]
    capsys.readouterr()
    (d / "curriculum.yaml").write_text(text.replace(f"shards: {image_shards}", "shards: 5"))
    assert train_main(["--curriculum", str(d), "-o", str(tmp_path / "run3"), "--stage", "1"]) == 2
    assert "levels[1].shards must be a folder path" in capsys.readouterr().err


def test_images_from_and_to_object_storage(image_folder, tmp_path):
    """An s3:// prefix in, an s3:// shard folder out (moto's S3 server), read by the loader."""
    from conftest import moto_s3

    from ifmdm_data.io import storage
    from ifmdm_data.loaders import list_shards

    with moto_s3("imgs"):
        fs, _ = storage.filesystem("s3://imgs")
        for name in ("b.jpg", "d.png", "corrupt.jpg"):
            fs.put_file(str(image_folder / name), f"imgs/raw/{name}")
        assert data_main(["shard", "--images", "s3://imgs/raw", "-o", "s3://imgs/shards/set",
                          "--size", "32", "--min-side", "32"]) == 0
        idx = storage.read_parquet("s3://imgs/shards/set/index.parquet").to_pydict()
        assert len(idx["key"]) == 2 and set(idx["subset"]) == {"images"}
        rej = storage.read_parquet("s3://imgs/shards/set/rejected.parquet").to_pylist()
        assert [r["reasons"] for r in rej] == [["decode_error"]]
        tars = list_shards("s3://imgs/shards/set", ("images",))
        assert tars and all(t.startswith("s3://imgs/shards/set/images/") for t in tars)
        assert not [n for n in fs.find("imgs/shards") if n.endswith(".tmp")]


def test_float_images_rejected_and_size_bounded(tmp_path, capsys):
    from PIL import Image

    from ifmdm_data.cli import main
    from ifmdm_data.shard.image_pairs import warp_maps
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(np.full((64, 64), 0.5, np.float32), mode="F").save(d / "float.tif")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "ok.png")
    assert main(["shard", "--images", str(d), "-o", str(tmp_path / "o"), "--size", "32", "--no-progress"]) == 0
    rej = pq.read_table(tmp_path / "o" / "rejected.parquet").to_pandas()
    assert list(rej["reasons"].map(list)) == [["decode_error"]] and "floating-point" in rej["detail"][0]
    from ifmdm_model.infer.media_io import InferenceError, load_image      # the portrait / tune reader: same rule
    with pytest.raises(InferenceError, match="floating-point"):
        load_image(d / "float.tif")
    assert main(["shard", "--images", str(d), "-o", str(tmp_path / "o3"), "--size", "60000"]) == 2
    assert "--size must be an even number in [16, 4096]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="elastic_amplitude"):
        warp_maps((8, 8), np.random.default_rng(0), elastic_amplitude=float("nan"))


def test_one_alpha_compositing_for_image_sets_and_infer():
    """`shard --images` and `ifmdm-infer` composite transparency with the same function
    (ifmdm_data.shard.crop.composite_alpha; 8 and 16 bits)."""
    import io

    from PIL import Image

    from ifmdm_data.shard import crop, image_set
    from ifmdm_model.infer import media_io

    assert media_io.composite_alpha is crop.composite_alpha and not hasattr(image_set, "composite_over_white")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:, :2] = (255, 0, 0, 255)
    rgba[:, 2] = (0, 255, 0, 128)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    rgb, composited = image_set.decode_image(buf.getvalue())
    assert composited and (rgb == crop.composite_alpha(rgba)).all()
    assert (rgb[0, 0] == (255, 0, 0)).all() and (rgb[0, 3] == (255, 255, 255)).all()
    assert (crop.composite_alpha(rgba.astype(np.uint16) * 257) == rgb).all()
