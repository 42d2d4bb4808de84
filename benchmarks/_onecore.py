"""Shared benchmark helpers: pin a benchmark to one core with one thread everywhere (import
before numpy/torch/cv2), and silence C++ log lines on stderr."""
import contextlib
import os
import sys

_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
         "VECLIB_MAXIMUM_THREADS", "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS")


def pin_one_core(which: str = "min") -> tuple[int, set]:
    """Restrict this process to the lowest ("min") or highest ("max") allowed core; returns
    (that core, all allowed cores) so a caller can give them back (e.g. before Ray starts)."""
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed) if which == "min" else max(allowed)
    os.sched_setaffinity(0, {cpu})
    for v in _VARS:
        os.environ[v] = "1"
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return cpu, allowed


@contextlib.contextmanager
def quiet_stderr():
    """Send fd 2 (mediapipe's C++ glog/absl lines, Ray's) to /dev/null for the duration."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2), os.close(saved), os.close(null)
