"""The command line as a user runs it: help, one-line errors with exit code 2, re-deciding."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from ifmdm_data.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "ifmdm_data.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("cmd", ["sample", "filter", "decide", "inspect"])
def test_help_explains(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 300


def test_missing_weights_is_one_clear_line(tmp_path, sample_dir):
    res = run("filter", str(sample_dir), "-o", str(tmp_path / "m"), "--backend", "fan",
              "--weights-dir", str(tmp_path))
    assert res.returncode == 2
    assert "s3fd-619a316812.pth" in res.stderr and str(tmp_path) in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_config_and_bad_input(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("decide:\n  head_motion_min: lots\n")
    res = run("filter", str(tmp_path), "-o", str(tmp_path / "m"), "--config", str(cfg))
    assert res.returncode == 2 and "decide.head_motion_min" in res.stderr and "Traceback" not in res.stderr
    res = run("filter", str(tmp_path / "nothing_here"), "-o", str(tmp_path / "m"))
    assert res.returncode == 2 and "no such file" in res.stderr


def test_train_without_curriculum_is_one_line(tmp_path, capsys):
    from ifmdm_model import cli
    assert cli.train_main(["--curriculum", str(tmp_path), "-o", str(tmp_path / "r")]) == 2
    assert "no curriculum" in capsys.readouterr().err


def test_decide_with_new_thresholds(sample_manifests, tmp_path, capsys):
    src, _ = sample_manifests
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("decide:\n  head_motion_min: 10.0\n")   # no head moves that fast
    assert main(["decide", str(dst), "--config", str(cfg)]) == 0
    df = pd.read_parquet(dst / "clips.parquet")
    assert set(df["subset"].dropna()) <= {"lip"}
    before = pd.read_parquet(src / "clips.parquet")
    assert len(df) == len(before)
    assert (before["subset"] == "coarse").any() and not (df["subset"] == "coarse").any()
    assert "static" in capsys.readouterr().out


def test_inspect_matches_labels(sample_manifests, sample_dir, capsys):
    assert main(["inspect", str(sample_manifests[0]), "--labels", str(sample_dir / "labels.csv")]) == 0
    assert "labelled segments as expected" in capsys.readouterr().out
