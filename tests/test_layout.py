"""The package layout (issue 13): one job per module, dependencies pointing one way, no circles.

Static checks over the source (the `ast` of every module under ifmdm_data/ and ifmdm_model/);
every import counts, including the ones inside functions."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ifmdm_data", "ifmdm_model")
MAX_LINES = 500
# where the command-line layer lives: argparse and the console scripts' entry points
CLI_MODULES = re.compile(r"^(ifmdm_data\.cli|ifmdm_model\.cli(\..*)?)$")
# the lower layers (formats, utilities, per-frame analysis, decoding, features) import nothing of the
# stages above them
BOTTOM = ("ifmdm_data.errors", "ifmdm_data.reasons", "ifmdm_data.schema", "ifmdm_data.io", "ifmdm_data.media",
          "ifmdm_data.faces", "ifmdm_data.features")
STAGES = ("ifmdm_data.filter", "ifmdm_data.shard", "ifmdm_data.loaders", "ifmdm_data.report",
          "ifmdm_data.sample", "ifmdm_data.split", "ifmdm_data.cli")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = modules()


def imports_of(name: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, imported names) for every import statement in the file; a
    `from pkg import sub` of a submodule counts as importing `pkg.sub`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append(("." * node.level + (node.module or ""), node.lineno, []))
                continue
            names = [a.name for a in node.names]
            subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
            rest = [n for n in names if f"{node.module}.{n}" not in MODULES]
            out += [(s, node.lineno, []) for s in subs]
            if rest or not subs:
                out.append((node.module, node.lineno, rest))
    return out


def project_edges() -> dict[str, set[str]]:
    edges = {m: set() for m in MODULES}
    for m, p in MODULES.items():
        for target, _, _ in imports_of(m, p):
            # the innermost project module named by the import (`a.b.c` may be a module or a name in `a.b`)
            t = target
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != m:
                edges[m].add(t)
    return edges


def test_every_module_is_small_and_says_its_job():
    too_long, no_doc = [], []
    for m, p in MODULES.items():
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            too_long.append(f"{p.relative_to(ROOT)}: {n} lines")
        doc = ast.get_docstring(ast.parse(p.read_text()))
        if not doc or not doc.strip():
            no_doc.append(str(p.relative_to(ROOT)))
    assert not too_long, "files over %d lines: %s" % (MAX_LINES, too_long)
    assert not no_doc, f"modules without a docstring saying their job: {no_doc}"


def test_imports_are_absolute():
    rel = [f"{p.relative_to(ROOT)}:{line}" for m, p in MODULES.items()
           for t, line, _ in imports_of(m, p) if t.startswith(".")]
    assert not rel, f"relative imports: {rel}"


def test_data_package_never_imports_the_model_package():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {t}" for m, p in MODULES.items() if m.startswith("ifmdm_data")
           for t, line, _ in imports_of(m, p) if t.split(".")[0] == "ifmdm_model"]
    assert not bad, bad


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_strongly_connected_finds_a_planted_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    circles = strongly_connected(project_edges())
    assert not circles, f"import circles: {circles}"


def test_command_line_lives_in_cli_modules():
    scripts = re.findall(r'^ifmdm-[a-z]+ = "([\w.]+):\w+"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert len(scripts) == 5 and all(CLI_MODULES.match(s) for s in scripts), scripts
    parsers = [m for m, p in MODULES.items() if not CLI_MODULES.match(m)
               and any(t == "argparse" for t, _, _ in imports_of(m, p))]
    assert not parsers, f"argument parsers outside the cli modules: {parsers}"
    callers = [f"{m} -> {t}" for m, ts in project_edges().items() if not CLI_MODULES.match(m)
               for t in ts if CLI_MODULES.match(t)]
    assert not callers, f"library modules importing the command line: {callers}"


def test_formats_and_utilities_import_no_stage():
    bad = [f"{m} -> {t}" for m, ts in project_edges().items() if m.startswith(BOTTOM)
           for t in ts if t.startswith(STAGES)]
    assert not bad, bad


def test_no_private_names_cross_modules():
    bad = []
    for m, p in MODULES.items():
        for t, line, names in imports_of(m, p):
            if t.split(".")[0] in PACKAGES and t != m:
                bad += [f"{p.relative_to(ROOT)}:{line} {t}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, f"private names imported from other modules: {bad}"


@pytest.mark.parametrize("name", ["ifmdm_data.loaders.stage1_loader", "ifmdm_data.loaders.stage2_loader",
                                  "ifmdm_model.stage1.build_stage1", "ifmdm_model.stage2.build_stage2",
                                  "ifmdm_model.infer.generate", "ifmdm_model.infer.load_models"])
def test_public_names_users_import_still_resolve(name):
    import importlib
    mod, _, attr = name.rpartition(".")
    assert callable(getattr(importlib.import_module(mod), attr))


def test_readme_names_existing_files_and_modules():
    """Every source path (`ifmdm_data/x/y.py`) and dotted name (`ifmdm_data.x.y`) the README and the
    two package maps (the packages' docstrings) give exists: a file, a module, or an attribute of
    the longest module prefix."""
    import importlib

    text = "\n".join((ROOT / f).read_text() for f in ("README.md", "ifmdm_data/__init__.py", "ifmdm_model/__init__.py"))
    paths = sorted(set(re.findall(r"\b(ifmdm_(?:data|model)/[\w/]+\.py)\b", text)))
    missing = [p for p in paths if not (ROOT / p).is_file()]
    dotted = sorted(set(re.findall(r"\b(ifmdm_(?:data|model)(?:\.\w+)+)", text)))
    unresolved = []
    for d in dotted:
        parts = d.split(".")
        k = max(i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES)
        if k < len(parts) and not hasattr(importlib.import_module(".".join(parts[:k])), parts[k]):
            unresolved.append(d)
    assert not missing, f"README names files that do not exist: {missing}"
    assert not unresolved, f"README names modules / attributes that do not exist: {unresolved}"
