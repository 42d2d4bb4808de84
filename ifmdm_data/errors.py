"""Errors a user can cause. The CLI prints them in one line and exits non-zero.

Errors of one clip never raise out of the pipeline: they become rejection rows.
"""


class IfmdmError(Exception):
    """Base class: a problem the user can fix; the message says what to do."""


class ConfigError(IfmdmError):
    """A config file or value is invalid (the message names the key and the file)."""


class InputError(IfmdmError):
    """An input argument (path, glob, list file) is unusable."""


class MissingWeightsError(IfmdmError):
    """A model weight file is not where it must be (the message names file and folder)."""

    def __init__(self, filename: str, folder: str, what: str, hint: str = ""):
        self.filename = filename
        self.folder = folder
        msg = (f"missing weight file '{filename}' for {what}: put it at "
               f"{folder.rstrip('/')}/{filename}")
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class MissingDependencyError(IfmdmError):
    """A library the requested feature needs is not installed (the message says how to install
    it, or which setting turns the feature off)."""


class WeightsFileError(IfmdmError):
    """A given weights file is missing, unreadable or does not fit its network (the message
    names the file)."""


class ClipError(Exception):
    """A per-clip failure that becomes a rejection row with `reason` (a Reason value)."""

    def __init__(self, reason, detail: str = ""):
        self.reason = reason
        self.detail = detail
        self.record: dict = {}
        super().__init__(f"{reason}: {detail}" if detail else str(reason))

    def with_record(self, record: dict) -> "ClipError":
        """Attach what was learned before the failure (probe fields) to the rejection row."""
        self.record = dict(record)
        return self


class StorageError(IfmdmError):
    """Object storage or a folder cannot be read or written (the message names the location)."""


class SpoolLimitError(StorageError):
    """One object is larger than the local spool may hold (a property of that file)."""
