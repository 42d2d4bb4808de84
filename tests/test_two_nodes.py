"""Two Ray nodes that share no output folder (issue 12, item 2), on one machine: a head node,
and a worker node started in its own mount namespace with a tmpfs over the driver's output
folder (and over a second input folder), so that node cannot see what the driver sees.

- `filter` to a local folder: the results travel back through Ray to the driver, so the
  manifests equal the one-node run's, with no `worker_crash` (before: clips on that node were
  marked `worker_crash` and their tracks landed on its private disk);
- inputs a node cannot read, and a `shard` output folder a node does not share: the run stops
  before any work with one line naming the node.

Needs root and util-linux `unshare` (as CI has); skipped otherwise.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port

CLIPS = ("lip_talk.mp4", "noaudio_talk.mp4", "short_talk.mp4")
CLI = [sys.executable, "-m", "ifmdm_data.cli"]
RAY = str(Path(sys.executable).with_name("ray"))
COMPARED = ["segment_id", "clip_id", "start_s", "end_s", "subset", "accepted", "stage2_ok",
            "face_fraction", "head_motion", "mouth_open_std", "speech_ratio"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare (a mount namespace for the second node)")


SCRIPT = r"""
set -u
# a private /tmp/ray: `ray start` writes its address to /tmp/ray/ray_current_cluster, where
# every ray.init() on the machine (other test sessions) would find and join it
mkdir -p /tmp/ray && mount -t tmpfs tmpfs /tmp/ray
"$RAY" start --head --block --num-cpus 1 --port "$PORT" --include-dashboard=false \
    --disable-usage-stats > "$LOGS/head.log" 2>&1 &
HEAD=$!
sleep 3
# node 2: its own mount namespace, where the output folder and one input folder are empty tmpfs
unshare -m --propagation private sh -c "mount -t tmpfs tmpfs '$HIDDEN_OUT' && \
    mount -t tmpfs tmpfs '$HIDDEN_IN' && exec '$RAY' start --address 127.0.0.1:$PORT \
    --num-cpus 1 --block --disable-usage-stats" > "$LOGS/node2.log" 2>&1 &
NODE2=$!
trap 'kill $NODE2 2>/dev/null; wait $NODE2; kill $HEAD 2>/dev/null; wait $HEAD' EXIT
for i in $(seq 60); do
  n=$("$PY" -c "import ray; ray.init(address='127.0.0.1:$PORT', log_to_driver=False); print(len([x for x in ray.nodes() if x['Alive']]))" 2>/dev/null | tail -1)
  [ "$n" = 2 ] && break
  sleep 2
done
echo "$n" > "$LOGS/nodes"
run() {  # name, then the ifmdm-data arguments
  name=$1; shift
  "$PY" -m ifmdm_data.cli "$@" --ray-address "127.0.0.1:$PORT" --no-progress \
      > "$LOGS/$name.out" 2> "$LOGS/$name.err"
  echo $? > "$LOGS/$name.rc"
}
run filter filter "$SHARED_IN" -o "$HIDDEN_OUT/m" --workers 2
run badin filter "$HIDDEN_IN" -o "$LOGS/m_badin"
run badout shard "$MANIFESTS" -o "$HIDDEN_OUT/s" --size 64
"""


@pytest.fixture(scope="module")
def cluster(sample_dir, sample_manifests, tmp_path_factory):
    """Runs the three commands on a two-node cluster (the whole script in a private mount
    namespace, ended by its own trap); returns {name: (exit code, stdout, stderr)}, the
    folders and the node count."""
    root = tmp_path_factory.mktemp("twonodes")
    shared_in, hidden_out, hidden_in, logs = root / "videos", root / "out", root / "private_videos", root / "logs"
    for d in (shared_in, hidden_out, hidden_in, logs):
        d.mkdir()
    for name in CLIPS:
        shutil.copy(sample_dir / name, shared_in / name)
    shutil.copy(sample_dir / CLIPS[0], hidden_in / CLIPS[0])
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY=RAY,
               PY=sys.executable, PORT=str(free_port()), LOGS=str(logs), SHARED_IN=str(shared_in),
               HIDDEN_OUT=str(hidden_out), HIDDEN_IN=str(hidden_in), MANIFESTS=str(sample_manifests[0]))
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", SCRIPT], env=env,
                         capture_output=True, text=True, timeout=900, cwd=str(Path(__file__).parents[1]))
    assert (logs / "nodes").read_text().strip() == "2", (res.stderr[-2000:], (logs / "node2.log").read_text()[-2000:])
    runs = {n: (int((logs / f"{n}.rc").read_text()), (logs / f"{n}.out").read_text(), (logs / f"{n}.err").read_text())
            for n in ("filter", "badin", "badout")}
    return runs, hidden_out, hidden_in


def test_filter_on_nodes_without_the_output_folder_equals_one_node(cluster, sample_manifests):
    runs, hidden_out, _ = cluster
    rc, out, err = runs["filter"]
    assert rc == 0, err[-3000:]
    got = pd.read_parquet(hidden_out / "m" / "clips.parquet").sort_values("segment_id").reset_index(drop=True)
    assert not any("worker_crash" in list(r) for r in got["reasons"]) and "worker_crash" not in out
    ref = pd.read_parquet(sample_manifests[0] / "clips.parquet")
    ref = ref[ref["path"].map(lambda p: Path(p).name).isin(CLIPS)].sort_values("segment_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[COMPARED], ref[COMPARED])   # same ids: keys relative to the folder
    from ifmdm_data.schema import read_segment_tracks
    for seg in got.loc[got["accepted"], "segment_id"]:           # every accepted segment's tracks here
        assert read_segment_tracks(hidden_out / "m", seg)[1]["segment_id"] == seg


def test_unreadable_inputs_and_unshared_shard_output_are_one_line(cluster):
    runs, hidden_out, hidden_in = cluster
    rc, _, err = runs["badin"]
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert "cannot read the input" in lines[0] and str(hidden_in) in lines[0]
    rc, _, err = runs["badout"]
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert "not shared" in lines[0]
    assert not list((hidden_out / "s").glob("*/*.tar"))
