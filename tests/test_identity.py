"""Face identity: dlib descriptors per segment (real media) and leader clustering."""
from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pytest

from ifmdm_data.faces.identity import cluster_identities, segment_identity
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
    from ifmdm_data.filter.dedup import sample_frames
    from ifmdm_data.faces.identity import DlibFaceEncoder, describe_segment

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
    from ifmdm_data.filter.config import config_from_dict
    from ifmdm_data.errors import ConfigError

    for bad in ({"threshold": 0}, {"threshold": 3.0}, {"frames": 0}, {"max_phash_distance": 70}, {"enabled": 1}):
        with pytest.raises(ConfigError, match="identity"):
            config_from_dict({"identity": bad})


def _person(rng, centre, n, noise=0.05):
    return [centre + rng.normal(scale=noise / np.sqrt(128), size=128) for _ in range(n)]


def test_mixed_segment_links_every_person_it_shows_and_merges_nobody():
    """Two people 0.73 apart, and a segment alternating between them whose mean lies between
    (0.36 from each, under the 0.6 threshold): its frames are clustered, not its mean, so the
    two people stay two identities, the mixed segment lists both (identity_ids), and `split`
    keeps all three segments in one group."""
    import pandas as pd

    from ifmdm_data.filter.identify import collection_ids
    from ifmdm_data.split import components

    rng = np.random.default_rng(0)
    a = _unit(rng, 1)[0] * 0.5
    b = a + _unit(rng, 1)[0] * 0.73
    fa, fb = _person(rng, a, 3), _person(rng, b, 3)
    frames = [fa[0], fa[1], fb[0], fb[1]]
    rows = [{"segment_id": "m_000", "face_descriptor": list(np.mean(frames, 0)), "identity_mixed": True,
             "frame_descriptors": [list(f) for f in frames]},
            {"segment_id": "a_000", "face_descriptor": list(fa[2]), "identity_mixed": False, "frame_descriptors": []},
            {"segment_id": "z_000", "face_descriptor": list(fb[2]), "identity_mixed": False, "frame_descriptors": []}]
    df = pd.DataFrame(rows).assign(phash=[[], [], []], audio_fingerprint=[[], [], []],
                                   clip_id=["m", "a", "b"], dup_group=[0, 1, 2])
    ids, _, lists = collection_ids(df)
    assert ids[1] != ids[2] and sorted(lists[0]) == sorted([ids[1], ids[2]])
    df["identity_id"], df["identity_ids"] = ids, lists
    assert len(set(components(df, "identity"))) == 1
    # the mean alone (an older manifest without frame descriptors) chains them (in the order a, m, z)
    df_old = df.assign(frame_descriptors=[[], [], []])
    old, _, _ = collection_ids(df_old)
    assert old[1] == old[2]


def test_not_computed_is_null_not_empty():
    """Without an encoder or with audio off, the signals are None (not computed), unlike []
    (looked, found nothing): split and report must not count such rows as 'no face'."""
    from ifmdm_data.filter.identify import segment_signals

    s = segment_signals(str(media("video", "aoc_talking.mp4")), 0.0, 3.0, encoder=None, audio=False)
    assert s["face_descriptor"] is None and s["identity_faces"] is None and s["audio_fingerprint"] is None
    assert len(s["phash"]) == 8


def test_split_clusters_at_the_threshold_the_manifest_was_decided_with(tmp_path):
    """Two people 0.3 apart: one identity at dlib's 0.6, two at 0.2. `split` without
    --identity-threshold uses the threshold in the manifest's summary.json."""
    import json

    from ifmdm_data.schema import clips_table, write_parquet_atomic
    from ifmdm_data.split import run_split

    rng = np.random.default_rng(1)
    a = _unit(rng, 1)[0] * 0.5
    b = a + _unit(rng, 1)[0] * 0.3
    rows = []
    for i, d in enumerate(_person(rng, a, 4) + _person(rng, b, 4)):
        rows.append({"segment_id": f"c{i:02d}_000000000", "clip_id": f"c{i:02d}", "path": f"/x/{i}.mp4",
                     "start_s": 0.0, "end_s": 5.0, "subset": "lip", "accepted": True, "reasons": [],
                     "stage2_reasons": [], "face_descriptor": [float(v) for v in d], "identity_faces": 4,
                     "identity_mixed": False, "frame_descriptors": [], "phash": [f"{i:016x}"], "audio_fingerprint": []})
    write_parquet_atomic(clips_table(rows), tmp_path / "m" / "clips.parquet")
    assert run_split([tmp_path / "m"], tmp_path / "s0", test_fraction=0.3)["identities"] == 1
    (tmp_path / "m" / "summary.json").write_text(json.dumps({"config": {"identity": {"threshold": 0.2}}}))
    s = run_split([tmp_path / "m"], tmp_path / "s1", test_fraction=0.3)
    assert s["identities"] == 2 and s["threshold"] == 0.2
    assert run_split([tmp_path / "m"], tmp_path / "s2", test_fraction=0.3, threshold=0.6)["identities"] == 1
