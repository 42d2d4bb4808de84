"""`filter` writes manifests/curriculum.yaml fitted to the subsets it found; the default lives
on the data side, and the data package never imports the model package."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from ifmdm_data.filter.curriculum_template import DEFAULT_CURRICULUM, fit_curriculum, write_curriculum
from ifmdm_model.curriculum import load_curriculum

ROOT = Path(__file__).resolve().parents[1]


def _comments(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("#") or " # " in ln]


def test_data_package_never_imports_the_model_package():
    offenders = []
    for f in sorted((ROOT / "ifmdm_data").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "ifmdm_model"]
    assert not offenders, offenders


def test_default_curriculum_is_read_by_the_trainer():
    cur = load_curriculum(DEFAULT_CURRICULUM)
    assert [lv.name for lv in cur.stage1.levels] == ["coarse", "lip", "hard"]
    assert cur.stage1.model_overrides() == {}               # ablation keys are only comments


def test_fit_drops_empty_levels_and_subsets_and_keeps_comments(tmp_path):
    """The ../shared/media case: no coarse clip. Level 'coarse' is dropped, 'coarse' leaves the
    other levels' lists, a comment says what and why; every comment of the template stays."""
    template = DEFAULT_CURRICULUM.read_text()
    path, notes = write_curriculum(tmp_path, {"coarse": 0, "lip": 5, "hard": 4})
    text = path.read_text()
    cur = load_curriculum(tmp_path)
    assert [(lv.name, lv.subsets, lv.steps) for lv in cur.stage1.levels] == [
        ("lip", ["lip"], 50000), ("hard", ["hard", "lip"], 100000)]
    assert [lv.lr for lv in cur.stage1.levels] == [2.0e-4, 1.0e-4]
    assert any("dropped level 'coarse'" in n and "no accepted segment" in n for n in notes)
    assert "# Fitted by `ifmdm-data filter`" in text and "coarse 0, lip 5, hard 4" in text
    assert "#   dropped level 'coarse': its subsets [coarse] have no accepted segment" in text
    assert set(_comments(template)) <= set(_comments(text))
    # everything but the levels is as in the template
    a, b = yaml.safe_load(template), yaml.safe_load(text)
    a["stage1"].pop("levels"), b["stage1"].pop("levels")
    assert a == b
    # a curriculum already there is never replaced
    path.write_text(text + "# mine\n")
    assert write_curriculum(tmp_path, {"coarse": 3, "lip": 5, "hard": 4}) == (None, [])
    assert path.read_text().endswith("# mine\n")


def test_fit_leaves_the_template_when_every_subset_has_data_or_none_has():
    template = DEFAULT_CURRICULUM.read_text()
    assert fit_curriculum(template, {"coarse": 1, "lip": 1, "hard": 1}) == (template, [])
    assert fit_curriculum(template, {"coarse": 0, "lip": 0, "hard": 0}) == (template, [])


def test_fit_of_flow_style_levels_and_a_single_subset():
    text = ("stage1:\n  model: S1-tiny\n  levels:\n"
            "    # the first level\n"
            "    - {name: a, subsets: [coarse], steps: 2, lr: 1.0e-3}\n"
            "    - {name: b, subsets: [lip, coarse], steps: 3, lr: 1.0e-5}   # b\n"
            "    - name: c\n      subsets: hard\n      steps: 4\n      lr: 5.0e-4\n"
            "stage2:\n  model: M2-tiny\n")
    out, notes = fit_curriculum(text, {"lip": 2, "hard": 1})
    levels = yaml.safe_load(out)["stage1"]["levels"]
    assert levels == [{"name": "b", "subsets": ["lip"], "steps": 3, "lr": 1.0e-5},
                      {"name": "c", "subsets": ["hard"], "steps": 4, "lr": 5.0e-4}]
    assert "# b" in out and "the first level" not in out and len(notes) == 2
    assert yaml.safe_load(out)["stage2"] == {"model": "M2-tiny"}


def test_filter_writes_a_curriculum_fitted_to_what_it_found(ray_session, sample_dir, sample_manifests, tmp_path):
    """The real filter: on the whole sample set (every subset found) the curriculum is the
    default; on its lip and hard clips only, level 'coarse' is dropped and the file says why."""
    from ifmdm_data.filter.config import load_config
    from ifmdm_data.filter.pipeline import run_filter

    out, summary = sample_manifests
    assert all(summary["subsets"][s] > 0 for s in ("coarse", "lip", "hard"))
    assert (out / "curriculum.yaml").read_text() == DEFAULT_CURRICULUM.read_text()

    inputs = [str(sample_dir / "lip_talk.mp4"), str(sample_dir / "hard_talk.mp4")]
    summary = run_filter(inputs, str(tmp_path / "m"), load_config(), workers=2, progress=False)
    assert summary["subsets"] == {"coarse": 0, "lip": 1, "hard": 1}
    text = (tmp_path / "m" / "curriculum.yaml").read_text()
    assert "dropped level 'coarse'" in text
    cur = load_curriculum(tmp_path / "m")
    assert [(lv.name, lv.subsets) for lv in cur.stage1.levels] == [("lip", ["lip"]), ("hard", ["hard", "lip"])]
