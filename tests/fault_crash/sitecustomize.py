"""Worker-crash injection for tests/test_resume.py: kill the process analysing one named clip.

With this folder on PYTHONPATH, every Python process started with that environment loads this
module at start-up (`site` imports `sitecustomize`): the `ifmdm-data` driver and the Ray
workers it starts, which inherit the driver's environment. With IFMDM_FAULT_CRASH=NAME set, the
filter's per-unit analysis (`ifmdm_data.filter.analyse.analyse_unit`, looked up by
`work.run_unit` at each call) is wrapped as soon as that module is imported: on a unit whose
file name contains NAME the process exits at once (code 17, no clean-up), like a worker the OS
killed. The library itself knows nothing of this.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

ENV = "IFMDM_FAULT_CRASH"
EXIT_CODE = 17
TARGET = "ifmdm_data.filter.analyse"


def crashing(analyse_unit, name: str):
    """`analyse_unit` that exits the process (os._exit(EXIT_CODE)) for a unit whose file name
    (the basename of unit["path"]) contains `name`, and analyses every other unit as before."""
    def wrapped(unit, *args, **kwargs):
        if name in os.path.basename(unit["path"]):
            os._exit(EXIT_CODE)
        return analyse_unit(unit, *args, **kwargs)
    return wrapped


class _WrapAfterExec(importlib.abc.Loader):
    def __init__(self, inner, name: str):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        module.analyse_unit = crashing(module.analyse_unit, self.name)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds TARGET like the normal path finder, then wraps its analyse_unit once executed."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _WrapAfterExec(spec.loader, self.name)
        return spec


def install(name: str) -> None:
    """Wrap TARGET's analyse_unit with `crashing(name)`: now if imported, else on import."""
    if TARGET in sys.modules:
        mod = sys.modules[TARGET]
        mod.analyse_unit = crashing(mod.analyse_unit, name)
    else:
        sys.meta_path.insert(0, _PatchOnImport(name))


def _chain_shadowed_sitecustomize() -> None:
    """Run the sitecustomize this one shadows (one later on sys.path), if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if os.environ.get(ENV) and __name__ == "sitecustomize":
    install(os.environ[ENV])
if __name__ == "sitecustomize":
    _chain_shadowed_sitecustomize()
