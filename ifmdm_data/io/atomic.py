"""Atomic JSON writes to a local path or an object-storage URL (`storage.atomic_local`)."""
from __future__ import annotations

import json


def write_json_atomic(obj, path) -> None:
    """JSON to a local path or an object-storage URL, atomically (`storage.atomic_local`)."""
    from ifmdm_data.io import storage

    with storage.atomic_local(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
