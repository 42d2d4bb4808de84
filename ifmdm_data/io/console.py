"""A clean console for `filter` and `shard` (issue 12, item 6).

Without `-v`, everything the libraries print goes to a log file instead of the terminal: Ray's
INFO lines, its C++ `E ... core_worker.cc` lines and any absl / TensorFlow Lite / glog message
of the driver process (they are written to file descriptor 2 from C++, so `quiet_console`
points fd 2 at the log file), Python warnings and the INFO log of this package. Worker
processes never print here: the driver connects with `log_to_driver=False` (their output stays
in Ray's session logs, `/tmp/ray/session_latest/logs/worker-*.err`). What stays on the terminal:
one progress line per stage (`StageBar`), this package's warnings and the summary.

`StageBar` redraws one line in place on a terminal (at most 5 times a second) and, in a plain
log (stdout/stderr redirected to a file), writes one line per 10% of the work, with no carriage
returns.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

_TERMINAL = None           # where progress lines go while quiet_console is active
_MADE: set = set()         # folders log_path_for created (removed again with an empty log)


def terminal():
    """The stream of the user's terminal (stderr before `quiet_console` redirected it)."""
    return _TERMINAL or sys.stderr


def log_path_for(cmd: str, out: str) -> Path:
    """OUT/_logs/<cmd>-<UTC time>.log for a local OUT; a temporary folder for a URL or a
    folder that cannot be made."""
    name = f"{cmd}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.log"
    if "://" not in str(out):
        try:
            d = Path(out) / "_logs"
            made = [p for p in (Path(out), d) if not p.exists()]
            d.mkdir(parents=True, exist_ok=True)
            _MADE.update(made)
            return d / name
        except OSError:
            pass
    d = Path(tempfile.gettempdir()) / "ifmdm-logs"
    d.mkdir(parents=True, exist_ok=True)
    return d / name


@contextlib.contextmanager
def quiet_console(log_path: Path):
    """fd 2 and sys.stderr -> `log_path` for the duration; `terminal()` is the real stderr,
    where this package's warnings (logger `ifmdm_data`) are still shown. Yields log_path."""
    global _TERMINAL
    sys.stderr.flush()
    log_file = open(log_path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    term_fd = os.dup(2)
    term = io.TextIOWrapper(io.FileIO(term_fd, "w", closefd=True), encoding="utf-8",
                            errors="backslashreplace", line_buffering=True)
    old_stderr = sys.stderr
    root = logging.getLogger()
    to_file = logging.FileHandler(log_path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_term = logging.StreamHandler(term)
    to_term.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    to_term.setLevel(logging.WARNING)
    to_term.addFilter(lambda r: r.name == "ifmdm_data" or r.name.startswith("ifmdm_data."))
    moved = [h for h in root.handlers if type(h) is logging.StreamHandler]
    os.dup2(log_file.fileno(), 2)
    sys.stderr = log_file
    _TERMINAL = term
    for h in moved:
        root.removeHandler(h)
    root.addHandler(to_file)
    root.addHandler(to_term)           # levels unchanged: INFO (-v) also starts Ray verbose
    try:
        yield log_path
    finally:
        root.removeHandler(to_file)
        root.removeHandler(to_term)
        for h in moved:
            root.addHandler(h)
        to_file.close()
        sys.stderr.flush()
        os.dup2(term_fd, 2)
        sys.stderr = old_stderr
        _TERMINAL = None
        term.close()
        log_file.close()
        _drop_if_empty(Path(log_path))


def _drop_if_empty(log_path: Path) -> None:
    """A run that stopped before anything was logged (a bad argument) leaves no log, and no
    folder that only the log made."""
    try:
        if log_path.stat().st_size:
            return
        log_path.unlink()
        for d in (log_path.parent, log_path.parent.parent):
            if d in _MADE:
                d.rmdir()                   # only when empty
    except OSError:
        pass


def _hms(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def plural(n, noun: str, many: str | None = None, width: int = 0) -> str:
    """'1 segment', '0 segments', '2 identities' (`many`: the plural when it is not noun + 's');
    `n` right-aligned to `width` characters (a column of counts). A count that is not a number
    ('?') takes the plural."""
    return f"{n:>{width}} {noun if n == 1 else many or noun + 's'}"


class StageBar:
    """One progress line for a stage: `done/total unit`, counts, rate and ETA.

    On a terminal the line is redrawn in place; elsewhere (a log file) a line is printed at
    every `step` fraction of the work and at the end."""

    def __init__(self, stage: str, total: int, unit: str, enabled: bool = True, stream=None,
                 rate_unit: str | None = None, step: float = 0.1, min_interval_s: float = 0.2):
        self.stage, self.total, self.unit = stage, max(int(total), 0), unit
        self.rate_unit = rate_unit or unit
        self.stream = stream or terminal()
        self.enabled = enabled and self.total > 0
        self.tty = _isatty(self.stream)
        self.step, self.min_interval_s = step, min_interval_s
        self.done, self.rated, self.counts = 0, 0, {}
        self.t0 = time.perf_counter()
        self._last_draw, self._next_fraction = 0.0, step
        if self.enabled and self.tty:
            self._draw(force=True)

    def update(self, n: int = 1, rated: int | None = None, **counts) -> None:
        """n more units done; `rated`: how many of the rate unit (clips) they were; counts are
        added (a value of None hides that count)."""
        self.done += n
        self.rated += n if rated is None else rated
        for k, v in counts.items():
            self.counts[k] = None if v is None or self.counts.get(k, 0) is None else self.counts.get(k, 0) + v
        if self.enabled:
            self._draw()

    def line(self) -> str:
        dt = time.perf_counter() - self.t0
        rate = self.rated / dt if dt > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.stage}: {self.done}/{self.total} {self.unit} ({pct:3.0f}%)"]
        parts += [f"{k} {v}" for k, v in self.counts.items() if v is not None]
        parts.append(f"{rate:.2f} {self.rate_unit}/s")
        if self.done < self.total:
            eta = dt / self.done * (self.total - self.done) if self.done else None
            parts.append(f"ETA {_hms(eta)}" if eta is not None else "ETA -")
        else:
            parts.append(f"in {_hms(dt)}")
        return ", ".join(parts)

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.tty:
            if force or self.done >= self.total or now - self._last_draw >= self.min_interval_s:
                width = shutil.get_terminal_size((120, 24)).columns - 1   # no wrap: \r redraws one row
                self.stream.write("\r" + self.line()[:width] + "\x1b[K")
                self.stream.flush()
                self._last_draw = now
        elif self.done >= self.total or self.done / self.total >= self._next_fraction - 1e-9:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            while self._next_fraction <= self.done / self.total + 1e-9:
                self._next_fraction += self.step

    def close(self) -> None:
        if self.enabled and self.tty:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def ray_remote_args():
    """Around `Dataset.map_batches(..., max_restarts=-1, max_task_retries=0)`: Ray 2.60
    deprecates passing remote args as keywords, but its named parameters (num_cpus, num_gpus,
    memory, resources, ...) have none for `max_task_retries`, and its default (-1: retry
    forever) would re-run a unit that kills its worker endlessly instead of making it a
    `worker_crash` row. Only that one warning is silenced; revisit when Ray 2.64 drops them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        yield

