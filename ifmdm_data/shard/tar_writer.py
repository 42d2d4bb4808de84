"""Write one shard tar: `key.ext` members, under a temporary name, renamed when complete."""
from __future__ import annotations

import io
import os
import tarfile

from ifmdm_data.shard import format as sf


class TarShardWriter:
    """Plain (uncompressed) tar of `key.ext` members, written under a temporary name and
    renamed to the final name by `commit()`; `abort()` (or an exception in a `with` block)
    deletes the temporary file. Member metadata is fixed (mtime 0, root, 0444) so the same
    samples give the same bytes."""

    def __init__(self, final_path: str | os.PathLike, tmp_path: str | os.PathLike):
        self.final = os.fspath(final_path)
        self.tmp = os.fspath(tmp_path)
        os.makedirs(os.path.dirname(self.final) or ".", exist_ok=True)
        self._f = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._f, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict) -> int:
        """Append one sample; returns its bytes (member payloads)."""
        total = 0
        for ext, data in members.items():
            name = f"{key}.{ext}"
            sf.check_member_name(name, self.tmp)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
            total += len(data)
        self.count += 1
        return total

    def commit(self, before_replace=None) -> None:
        """Close the tar, call `before_replace(tar bytes)` (e.g. to save a record), rename."""
        self._tar.close()
        self._f.flush()
        os.fsync(self._f.fileno())
        size = self._f.tell()
        self._f.close()
        if before_replace is not None:
            before_replace(size)
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        try:
            self._tar.close()
            self._f.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False
