"""The command line as a user runs it: help, one-line errors with exit code 2, re-deciding."""
from __future__ import annotations

import re
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


def test_help_prose_is_wrapped_to_the_terminal(monkeypatch):
    """Every CLI's description is wrapped to COLUMNS (argparse's default), while the example
    blocks and epilogs keep their own lines (a command is not broken; prose there <= 100)."""
    from ifmdm_data.cli import build_parser
    from ifmdm_model.cli import eval as ev, infer, train, tune
    monkeypatch.setenv("COLUMNS", "80")
    parsers = {"ifmdm-data": build_parser(), "ifmdm-train": train.train_parser(), "ifmdm-infer": infer.parser(),
               "ifmdm-tune": tune.parser(), "ifmdm-eval": ev.parser()}
    sub = parsers["ifmdm-data"]._subparsers._group_actions[0].choices
    parsers.update({f"ifmdm-data {k}": v for k, v in sub.items()})
    for name, p in parsers.items():
        text = p.format_help()
        long = [ln for ln in text.splitlines() if len(ln) > 100 and not ln.startswith("  ")]
        assert not long, (name, long)


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
    from ifmdm_model.cli import train as cli
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


def test_summaries_say_1_worker_1_segment_not_1_workers(capsys):
    """Counts of one read in the singular in every summary (no '1 workers', '1 segments')."""
    from ifmdm_data.cli import print_image_set_summary, print_shard_summary, print_split_summary, print_summary

    print_summary({"inputs": 1, "segments": 1, "elapsed_s": 1.0, "workers": 1, "accepted": 1, "subsets": {"lip": 1},
                   "hours_accepted": 0.001, "rejected": 0, "rejected_by_reason": {}, "stage2_ok": 1,
                   "stage2_by_reason": {}, "identities": 1, "identities_accepted": 1, "segments_without_face": 1,
                   "dup_groups_multi": 1, "dup_segments": 2}, "m")
    print_shard_summary({"samples_total": 1, "shards": {"lip": 1}, "shards_skipped": 1,
                         "failures": [{"key": "k", "reason": "decode_error"}]}, "sh")
    print_image_set_summary({"inputs": 1, "samples_total": 1, "shards": {"images": 1}, "bytes": 1, "elapsed_s": 1.0,
                             "composited": 0, "rejected": 0, "rejected_by_reason": {}}, "im")
    print_split_summary({"segments": 2, "identities": 1, "threshold": 0.6, "groups": 1, "by": "identity",
                         "dup_groups_multi": 1, "annotate_s_per_segment": 0.5, "annotate_failed": 1,
                         "splits": {"train": {"segments": 1, "fraction": 0.5, "identities": 1, "subsets": {"lip": 1},
                                              "identities_per_subset": {"lip": 1}}}}, "sp")
    out = capsys.readouterr().out
    for text in ("1 file -> 1 segment in", "1 worker)", "1 segment without a face", "1 near-duplicate group of",
                 "1 sample in 1 shard (", "1 shard already done", "1 segment could not be written",
                 "1 image -> 1 sample in 1 shard (", "2 segments, 1 identity (", "1 group kept whole", "1 duplicate group of",
                 "1 segment ", "1 identity ", "lip 1 (1 id)", "1 segment could not be decoded"):
        assert text in out, (text, out)
    assert not re.search(r"\b1 (files|segments|workers|samples|shards|images|identities|groups|ids)\b", out), out


def test_inspect_shows_identity_and_dup_group(tmp_path, capsys):
    from ifmdm_data.schema import clips_table, write_parquet_atomic

    rows = [{"segment_id": f"c{i}_000000000", "clip_id": f"c{i}", "path": f"/d/v{i}.mp4", "start_s": 0.0,
             "end_s": 2.0, "subset": "lip", "accepted": True, "reasons": [], "stage2_reasons": [],
             "identity_id": ident, "dup_group": dup} for i, (ident, dup) in enumerate([(7, 3), (-1, 3), (8, 4)])]
    write_parquet_atomic(clips_table(rows), tmp_path / "clips.parquet")
    assert main(["inspect", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = lines[0].split()
    assert "identity_id" in head and "dup_group" in head, lines[0]
    cells = [dict(zip(head, ln.split())) for ln in lines[1:]]
    assert [(c["file"], c["identity_id"], c["dup_group"]) for c in cells] == \
        [("v0.mp4", "7", "3"), ("v1.mp4", "-", "3"), ("v2.mp4", "8", "4")]
    # a manifest without them (identity.enabled: false, older versions): no such columns
    for r in rows:
        r.update(identity_id=None, dup_group=None)
    write_parquet_atomic(clips_table(rows), tmp_path / "clips.parquet")
    assert main(["inspect", str(tmp_path)]) == 0
    assert "identity_id" not in capsys.readouterr().out


def test_report_path_is_printed_once(tmp_path, capsys, monkeypatch):
    """`report` prints its page once (with how to view it); demo.sh does not echo it again."""
    from pathlib import Path

    import ifmdm_data.report

    monkeypatch.setattr(ifmdm_data.report, "write_report", lambda m, out, **kw: tmp_path / "r" / "index.html")
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.count("report: ") == 1 and f"{tmp_path / 'r' / 'index.html'}" in out and "browser" in out, out
    demo = (Path(__file__).resolve().parents[1] / "scripts" / "demo.sh").read_text()
    assert "ifmdm-data report" in demo and "echo \"report:" not in demo and "index.html" not in demo


def test_shard_with_nothing_accepted_is_one_line_and_writes_nothing(sample_manifests, tmp_path, capsys):
    """A manifest (or split file) with no accepted segment: one line naming it, exit 2, no output
    folder (it used to print "0 samples in 0 shards" and list files that were never written)."""
    src, _ = sample_manifests
    none = tmp_path / "none.parquet"
    pd.read_parquet(src / "clips.parquet").assign(accepted=False).to_parquet(none)
    assert main(["shard", str(none), "-o", str(tmp_path / "sh"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to shard" in err[0] and str(none) in err[0], err
    assert not (tmp_path / "sh").exists()
