"""Weight files of the optional face backends: which files, where they must be, and the errors
when one is missing or does not load. Never downloads anything.

Shared by `fan_backend` (face-alignment) and `facexlib_backend`; `check_weights` runs in the
driver before Ray starts, so this module imports neither torch nor a backend.
"""
from __future__ import annotations

import os
from typing import Optional

from ifmdm_data.errors import ConfigError, IfmdmError, MissingWeightsError

# Weight files each optional backend loads from --weights-dir (checked before Ray starts).
WEIGHT_FILES = {
    "fan": ("s3fd-619a316812.pth", "2DFAN4-11f355bf06.pth.tar"),
    "facexlib": ("detection_Resnet50_Final.pth", "parsing_bisenet.pth"),
}


class WeightsLoadError(IfmdmError):
    """A weight file exists but cannot be loaded into its network (corrupt or wrong model)."""


def require_file(weights_dir: Optional[str], filename: str, what: str, hint: str = "") -> str:
    """Path of `weights_dir/filename`, or MissingWeightsError before anything is loaded."""
    folder = str(weights_dir) if weights_dir else "<--weights-dir>"
    path = os.path.join(folder, filename)
    if not weights_dir or not os.path.isfile(path):
        raise MissingWeightsError(filename, folder, what, hint)
    return path


def load_error(path: str, what: str, exc: BaseException) -> WeightsLoadError:
    """The one-line error for a weight file that exists but does not load."""
    detail = (str(exc).strip().splitlines() or [""])[0][:300]
    return WeightsLoadError(f"cannot load weight file {path} for {what} "
                            f"({type(exc).__name__}: {detail}); is it the right, complete file?")


def check_weights(backend: str, weights_dir: Optional[str]) -> None:
    """Raise a clear error naming the first missing weight file of `backend`."""
    if backend not in WEIGHT_FILES:
        return
    if not weights_dir:
        raise ConfigError(f"backend {backend!r} loads its weights from a local folder: pass --weights-dir DIR")
    for name in WEIGHT_FILES[backend]:
        if not os.path.isfile(os.path.join(weights_dir, name)):
            raise MissingWeightsError(name, weights_dir, f"the {backend} backend")
