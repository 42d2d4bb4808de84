"""Face identity: dlib descriptors per segment (real media) and leader clustering."""
from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pytest

from ifmdm_data.identity import cluster_identities, segment_identity
from tests.conftest import media

TALKING = ["aoc_talking.mp4", "man_talking_2s.mp4", "woman_quiet_talking.mp4"]


def _unit(rng, n, dim=128):
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cluster_identities_threshold_and_none():
    rng = np.random.default_rng(0)
    people = _unit(rng, 5)                                    # centres ~1.41 apart
    descs, truth = [], []
    for _ in range(60):
        p = int(rng.integers(5))
        descs.append(people[p] + _unit(rng, 1)[0] * 0.2)      # 0.2 from its centre
        truth.append(p)
    descs.insert(7, None)
    truth.insert(7, -1)
    ids = cluster_identities(descs, threshold=0.6)
    assert ids[7] == -1
    truth = np.array(truth)
    for p in range(5):                                        # one id per person, none shared
        assert len(set(ids[truth == p])) == 1
    assert len(set(ids[ids >= 0])) == len(set(truth[truth >= 0]))
    assert len(set(cluster_identities(descs, threshold=0.05)[ids >= 0])) > 5, "threshold is used"
    assert (cluster_identities(descs) == ids).all(), "deterministic"


def test_segment_identity_spread_and_mixed():
    rng = np.random.default_rng(1)
    a, b = _unit(rng, 2)
    one = segment_identity([a, a + 0.01, a - 0.01])
    assert one["n_faces"] == 3 and one["spread"] < 0.1 and not one["mixed"]
    two = segment_identity([a, b, a, b])                      # two people alternating
    assert two["mixed"] and two["spread"] > 0.5
    none = segment_identity([])
    assert none["descriptor"] is None and none["n_faces"] == 0


@pytest.fixture(scope="module")
def near_copy(tmp_path_factory):
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg not found")
    out = tmp_path_factory.mktemp("id") / "aoc_trim.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-ss", "0.5", "-i", str(media("video", TALKING[0])),
                    "-vf", "scale=iw/2:ih/2", "-c:v", "libx264", "-crf", "30", str(out)], check=True)
    return out


def test_dlib_identity_real_media(near_copy):
    pytest.importorskip("dlib")
    from ifmdm_data.dedup import sample_frames
    from ifmdm_data.identity import DlibFaceEncoder, describe_segment

    enc = DlibFaceEncoder()
    paths = [media("video", f) for f in TALKING] + [near_copy]
    res, cost = [], []
    for p in paths:
        t = time.perf_counter()
        res.append(describe_segment(sample_frames(str(p), 0.0, float("inf"), n=4), enc))
        cost.append(time.perf_counter() - t)
    print("identity cost per segment (4 frames, decode + descriptors): "
          + ", ".join(f"{c:.2f} s" for c in cost))
    assert all(r["n_faces"] == 4 and not r["mixed"] for r in res)
    d = lambda i, j: float(np.linalg.norm(res[i]["descriptor"] - res[j]["descriptor"]))  # noqa: E731
    assert d(0, 3) < 0.4, "a trimmed, rescaled copy is the same person"
    assert min(d(0, 1), d(0, 2), d(1, 2)) > 0.6, "different people"
    ids = cluster_identities([r["descriptor"] for r in res])
    assert ids[0] == ids[3] and len({ids[0], ids[1], ids[2]}) == 3


def test_filter_finds_one_person_in_the_sample_set(sample_manifests):
    """The sample set's face clips all show one person: filter's identify step gives every
    segment with a face the same identity_id; the clip without a face gets -1."""
    import pandas as pd

    df = pd.read_parquet(sample_manifests[0] / "clips.parquet")
    face = df[df["identity_faces"] > 0]
    assert len(face) >= 8 and face["identity_id"].nunique() == 1 and (face["identity_id"] >= 0).all()
    noface = df[df["path"].str.endswith("noface_texture.mp4")]
    assert (noface["identity_id"] == -1).all() and (noface["identity_faces"] == 0).all()
    assert all(len(h) > 0 for h in df["phash"])


def test_split_of_a_filter_manifest_uses_the_stored_signals(sample_manifests, tmp_path):
    """`split` on filter's manifests clusters the stored descriptors: no decoding, no encoder."""
    from ifmdm_data.split import run_split

    def boom(frame):
        raise AssertionError("split decoded a segment although the manifest has its signals")

    s = run_split([sample_manifests[0]], tmp_path / "sp", test_fraction=0.2, encoder=boom)
    assert s["identities"] == 1 and s["annotate_s_per_segment"] is None


def test_identity_config_is_validated():
    from ifmdm_data.config import config_from_dict
    from ifmdm_data.errors import ConfigError

    for bad in ({"threshold": 0}, {"threshold": 3.0}, {"frames": 0}, {"max_phash_distance": 70}, {"enabled": 1}):
        with pytest.raises(ConfigError, match="identity"):
            config_from_dict({"identity": bad})
