"""The documented Ray examples in pipelines/ (issue 12, item 7).

`test_every_example_is_well_formed` (fast): each script parses, each YAML loads, and every
`ifmdm-data` command of the KubeRay RayJob is accepted by the CLI's own parser.
`test_examples_run_on_a_local_head` (slow): a local Ray head with its dashboard (the jobs API of
`ray[default]`), then each script as documented: `filter_on_cluster.sh`, `submit_filter_job.sh`
(a Ray job) and `s3_filter_shard_job.sh` (a Ray job reading from and writing to a bucket on a
real S3 API server, moto's server mode); the three give the same segments and decisions."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
CLIPS = ("lip_talk.mp4", "static_still.mp4")     # one accepted, one rejected


def _ifmdm_commands(script: str) -> list[list[str]]:
    """The `ifmdm-data ...` commands of a shell snippet (joined by && or newlines)."""
    cmds = []
    for part in re.split(r"&&|\n|;", script):
        words = shlex.split(part)
        if words and words[0] == "ifmdm-data":
            cmds.append(words[1:])
    return cmds


def test_every_example_is_well_formed():
    import ray

    from ifmdm_data.cli import build_parser
    from ifmdm_data.filter.config import load_config

    scripts = sorted(PIPELINES.glob("*.sh"))
    assert {p.name for p in scripts} >= {"filter_on_cluster.sh", "submit_filter_job.sh", "s3_filter_shard_job.sh"}
    for p in scripts:
        assert os.access(p, os.X_OK), f"{p} is not executable"
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["bash", str(p)], capture_output=True, text=True)   # no arguments
        assert r.returncode != 0 and "usage:" in r.stderr, (p, r.stderr)
    load_config(str(PIPELINES / "strict_lip.yaml"))
    job = yaml.safe_load((PIPELINES / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    pinned = re.search(r"^ray\[[^\]]*default[^\]]*\]==(\S+)", (ROOT / "requirements-jobs.txt").read_text(), re.M)
    assert pinned and job["spec"]["rayClusterSpec"]["rayVersion"] == pinned.group(1) == ray.__version__
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["bash", "-c"]
    cmds = _ifmdm_commands(words[2])
    assert [c[0] for c in cmds] == ["filter", "shard"]
    for argv in cmds:
        args = build_parser().parse_args(argv)             # exits (SystemExit) on a bad argument
        assert args.ray_address == "auto" and args.out.startswith("s3://")
    spec = job["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for group in pods:
        (c,) = group["template"]["spec"]["containers"]
        assert c["image"] and c["envFrom"][0]["secretRef"]["name"] == "ifmdm-object-storage"


# ------------------------------------------------------------------------------------------
# on a local head

def _job_id(out: str) -> str:
    m = re.search(r"raysubmit_\w+", out)
    assert m, out
    return m.group(0)


def _wait(client, job_id: str, timeout_s: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        status = str(client.get_job_status(job_id))
        if status.endswith(("SUCCEEDED", "FAILED", "STOPPED")):
            assert status.endswith("SUCCEEDED"), client.get_job_logs(job_id)[-3000:]
            return
        time.sleep(1)
    raise AssertionError(f"job {job_id} still running after {timeout_s} s:\n" + client.get_job_logs(job_id)[-3000:])


def _decisions(df: pd.DataFrame) -> list[tuple]:
    return sorted((Path(p).name, round(s, 3), bool(a), str(sub)) for p, s, a, sub in
                  zip(df["path"], df["start_s"], df["accepted"], df["subset"]))


@pytest.fixture()
def head(monkeypatch):
    """A local Ray head with its dashboard (jobs API) on free ports; the scripts find `ray`
    and `ifmdm-data` on PATH, as on a cluster node where the project is installed."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (the jobs API needs ray[default])
    except ImportError:
        pytest.skip("needs ray[default]: IFMDM_JOBS=1 bash scripts/setup.sh "
                    "(or pip install -r requirements-jobs.txt)")
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dash = free_port()
    # the job agent's HTTP port is fixed (52365) by default: another Ray on the machine (a test
    # session's) holding it leaves the head without a job agent ("No available agent")
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dash,
        "dashboard_agent_listen_port": free_port()})
    try:
        _wait_for_job_agent(f"http://127.0.0.1:{dash}")
        yield cluster.address, f"http://127.0.0.1:{dash}"
    finally:
        cluster.shutdown()


def _wait_for_job_agent(dash: str, timeout_s: float = 120) -> None:
    """The dashboard answers before the node's job agent registers ("No available agent to
    submit job"): submit `true` until it is taken, and let it finish."""
    from ray.job_submission import JobSubmissionClient

    t0 = time.time()
    while True:
        try:
            client = JobSubmissionClient(dash)
            job = client.submit_job(entrypoint="true")
            break
        except (RuntimeError, ConnectionError) as e:
            if time.time() - t0 > timeout_s:
                raise AssertionError(f"the Ray head's job agent is not up after {timeout_s} s: {e}") from None
            time.sleep(2)
    _wait(client, job)


@pytest.fixture()
def bucket():
    """A real S3 API server (moto's server mode) on 127.0.0.1 with an empty bucket."""
    from conftest import moto_s3

    from ifmdm_data.io import storage

    with moto_s3("ifmdm-pipelines") as url:
        yield storage.filesystem(url)[0], "ifmdm-pipelines"


@pytest.mark.slow
def test_examples_run_on_a_local_head(head, bucket, sample_dir, tmp_path):
    from ray.job_submission import JobSubmissionClient

    address, dash = head
    fs, name = bucket
    clips = tmp_path / "clips"
    clips.mkdir()
    for c in CLIPS:
        shutil.copy(sample_dir / c, clips / c)
        fs.put_file(str(clips / c), f"{name}/raw/{c}")
    env = dict(os.environ, RAY_ADDRESS=address)

    # 1. filter_on_cluster.sh: the driver here, the work on the cluster
    r = subprocess.run([str(PIPELINES / "filter_on_cluster.sh"), str(clips), str(tmp_path / "m1"), "--workers", "1"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    local = _decisions(pd.read_parquet(tmp_path / "m1" / "clips.parquet"))
    assert [a for _, _, a, _ in local] == [True, False]

    client = JobSubmissionClient(dash)
    # 2. submit_filter_job.sh: the driver runs on the cluster as a Ray job
    r = subprocess.run([str(PIPELINES / "submit_filter_job.sh"), dash, str(clips), str(tmp_path / "m2"), "--workers", "1"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    _wait(client, _job_id(r.stdout + r.stderr))
    assert _decisions(pd.read_parquet(tmp_path / "m2" / "clips.parquet")) == local

    # 3. s3_filter_shard_job.sh: bucket in, bucket out (the credentials travel in the runtime env)
    r = subprocess.run([str(PIPELINES / "s3_filter_shard_job.sh"), dash, f"s3://{name}/raw", f"s3://{name}/curated",
                        "--workers", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    _wait(client, _job_id(r.stdout + r.stderr))
    with fs.open(f"{name}/curated/manifests/clips.parquet", "rb") as f:
        assert _decisions(pd.read_parquet(f)) == local
    with fs.open(f"{name}/curated/shards/index.parquet", "rb") as f:
        assert len(pd.read_parquet(f)) == 1                  # the accepted segment
