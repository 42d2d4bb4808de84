"""A clean console (issue 12, item 6): `filter` and `shard` without -v print progress lines and
the summary; Ray's INFO lines, its C++ log lines, deprecation warnings and absl / TensorFlow
Lite messages go to the run's log file. Runs the CLI in a fresh process (its own local Ray, its
real file descriptor 2), stdout and stderr captured: a plain log, no terminal."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

NOISE = {
    "Ray INFO line": r"\bINFO\b",
    "deprecation warning": r"[Dd]eprecat",
    "C++ log line": r"core_worker\.cc|^\[\d{4}-\d\d-\d\d [\d:,]+ [EWI] \d+ \d+\]",
    "glog / absl line": r"^[IWEF]\d{4} \d\d:\d\d",
    "mediapipe / TFLite": r"absl|TfLite|tflite|TensorFlow|XNNPACK|inference_feedback|mediapipe",
    "traceback": r"Traceback",
}

SCRIPT = """
import sys
from ifmdm_data.cli import main
clips, m, sh = sys.argv[1:4]
rc = main(["filter", clips, "-o", m, "--workers", "1"])
rc = rc or main(["shard", m, "-o", sh, "--size", "64", "--workers", "1"])
sys.exit(rc)
"""


def test_filter_and_shard_print_no_library_noise(sample_dir, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("lip_talk.mp4", "static_still.mp4"):     # one accepted, one rejected
        shutil.copy(sample_dir / name, clips / name)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(clips), str(tmp_path / "m"), str(tmp_path / "sh")],
                       capture_output=True, text=True, timeout=300, env=env)
    both = r.stdout + r.stderr
    assert r.returncode == 0, both
    for what, pattern in NOISE.items():
        hits = [line for line in both.splitlines() if re.search(pattern, line)]
        assert not hits, f"{what} on the console:\n" + "\n".join(hits[:5])
    assert "\r" not in both                                   # a plain log: no redraws
    # one line per 10% at most, ending at 100% with the counts
    assert re.search(r"^analyse: 2/2 units \(100%\), files 2, segments 2, accepted 1, rejected 1, "
                     r"[\d.]+ clips/s, in \d+:\d\d:\d\d$", r.stderr, re.M), r.stderr
    assert re.search(r"^shard: 1/1 shards \(100%\), samples 1, ", r.stderr, re.M), r.stderr
    assert "accepted       1" in r.stdout and "rejected       1" in r.stdout
    # the noise went to the log files named in the summary
    logs = re.findall(r"^logs: (\S+)", r.stdout, re.M)
    assert len(logs) == 2 and all(os.path.isfile(p) for p in logs), r.stdout
    assert re.search(r"\tINFO \w+\.py:\d+ -- ", open(logs[0]).read())   # Ray's INFO lines are there


class _Tty(__import__("io").StringIO):
    def isatty(self):
        return True


def test_stage_bar_plain_log_one_line_per_tenth_and_terminal_redraws():
    import io

    from ifmdm_data.io.console import StageBar

    log = io.StringIO()
    bar = StageBar("analyse", 25, "units", stream=log, rate_unit="clips")
    for _ in range(25):
        bar.update(1, segments=2, accepted=1, rejected=None)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10, lines        # 12%, 20%, ... 100%
    assert lines[-1].startswith("analyse: 25/25 units (100%), segments 50, accepted 25, ") and "rejected" not in lines[-1]
    tty = _Tty()
    bar = StageBar("shard", 3, "shards", stream=tty, min_interval_s=0.0)
    for _ in range(3):
        bar.update(1, samples=4)
    bar.close()
    assert tty.getvalue().count("\r") >= 4 and tty.getvalue().endswith("\n")
    assert "shard: 3/3 shards (100%), samples 12, " in tty.getvalue()


def test_plural_says_one_item_and_many_items():
    from ifmdm_data.io.console import plural

    assert [plural(1, "worker"), plural(2, "worker"), plural(0, "segment"), plural("?", "worker")] == \
        ["1 worker", "2 workers", "0 segments", "? workers"]
    assert plural(1, "identity", "identities") == "1 identity" and plural(3, "identity", "identities") == "3 identities"
    assert plural(12, "segment", width=6) == "    12 segments"


def test_sample_prints_progress_but_no_mediapipe_noise(tmp_path):
    """`ifmdm-data sample` without -v: its own progress lines and summary on the console,
    mediapipe's TensorFlow Lite / absl / glog lines in the log file it names."""
    r = subprocess.run([sys.executable, "-m", "ifmdm_data.cli", "sample", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=300)
    both = r.stdout + r.stderr
    assert r.returncode == 0, both
    for what, pattern in NOISE.items():
        hits = [line for line in both.splitlines() if re.search(pattern, line)]
        assert not hits, f"{what} on the console:\n" + "\n".join(hits[:5])
    assert re.search(r"^sample: \[10/10\] ", r.stderr, re.M), r.stderr
    logs = re.findall(r"^logs: (\S+)", r.stdout, re.M)
    assert len(logs) == 1 and "TensorFlow Lite" in open(logs[0]).read()
