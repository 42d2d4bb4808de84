
import pytest
import yaml

from ifmdm_data.filter.config import DEFAULT_CONFIG_PATH, FilterConfig, load_config
from ifmdm_data.errors import ConfigError


def test_shipped_yaml_equals_dataclass_defaults():
    assert load_config().to_dict() == FilterConfig().to_dict()
    # and every key of the dataclasses is written in the shipped file
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    for section, value in FilterConfig().to_dict().items():
        assert set(data[section]) == set(value), section


def test_partial_override_and_quantile(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("decide:\n  head_motion_min: {quantile: 0.3}\nanalysis:\n  fps: 6.25\n")
    cfg = load_config(p)
    assert cfg.decide.head_motion_min == {"quantile": 0.3}
    assert cfg.analysis.fps == 6.25
    assert cfg.segment == FilterConfig().segment


@pytest.mark.parametrize("text, needle", [
    ("decide:\n  head_motion_mn: 0.1\n", "decide.head_motion_mn"),
    ("analysis:\n  fps: fast\n", "analysis.fps"),
    ("decide:\n  lip_motion_min: {quantile: 2}\n", "lip_motion_min.quantile"),
    ("segment: [1, 2]\n", "segment"),
    ("analysis:\n  backend: dlib\n", "analysis.backend"),
    ("a: [\n", "not valid YAML"),
    ("analysis:\n  tile_frac: 0.4\n", "analysis.tile_frac"),         # 2x2 tiles would leave a gap
    ("analysis:\n  tile_frac: 1.0\n", "analysis.tile_frac"),         # a tile would be the frame
    ("analysis:\n  second_pass_small_frac: 1.5\n", "analysis.second_pass_small_frac"),
    ("analysis:\n  second_pass: 1\n", "analysis.second_pass"),
])
def test_bad_config_names_key_and_file(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value) and "bad.yaml" in str(e.value)


def test_second_pass_settings_default_to_the_detector_constants(tmp_path):
    """The small-face second pass (issue 11) reads its settings from the filter config; the
    defaults are the backends' constants, and a user file overrides them."""
    from ifmdm_data.faces.counting import SECOND_PASS_SMALL_FRAC, TILE_FRAC

    a = load_config().analysis
    assert (a.second_pass, a.second_pass_small_frac, a.tile_frac) == (True, SECOND_PASS_SMALL_FRAC, TILE_FRAC)
    p = tmp_path / "c.yaml"
    p.write_text("analysis:\n  tile_frac: 0.75\n  second_pass_small_frac: 0.1\n  second_pass: false\n")
    a = load_config(p).analysis
    assert (a.second_pass, a.second_pass_small_frac, a.tile_frac) == (False, 0.1, 0.75)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_curriculum_equals_plan_defaults():
    """The default curriculum (ifmdm_data/configs/curriculum.yaml) writes every plan key with
    the dataclasses' default values; the ablation keys (None: the model's default) are comments."""
    from dataclasses import asdict, fields

    from ifmdm_data.filter.curriculum_template import DEFAULT_CURRICULUM
    from ifmdm_model.curriculum import (STAGE1_ABLATIONS, STAGE2_ABLATIONS, Stage1Plan, Stage2Plan,
                                        load_curriculum)

    cur = load_curriculum(DEFAULT_CURRICULUM)
    s1, s2 = asdict(cur.stage1), asdict(cur.stage2)
    s1.pop("levels")
    d1 = asdict(Stage1Plan())
    d1.pop("levels")
    assert s1 == d1 and s2 == asdict(Stage2Plan())
    data = yaml.safe_load(DEFAULT_CURRICULUM.read_text())
    assert set(data["stage1"]) == {f.name for f in fields(Stage1Plan)} - set(STAGE1_ABLATIONS)
    assert set(data["stage2"]) == {f.name for f in fields(Stage2Plan)} - set(STAGE2_ABLATIONS)
    text = DEFAULT_CURRICULUM.read_text()
    for key in STAGE1_ABLATIONS + STAGE2_ABLATIONS:
        assert f"# {key}: " in text, key


@pytest.mark.parametrize("text, needle", [
    ("stage1:\n  groups: abc\n", "stage1.groups must be an integer"),
    ("stage1:\n  mask_norm: foo\n", "'mask_norm' must be one of"),
    ("stage1:\n  model: S1-huge\n", "unknown stage-1 model 'S1-huge'"),
    ("stage2:\n  modulation: local\n", "'modulation' must be one of"),
    ("stage2:\n  speech_residual: 1\n", "stage2.speech_residual must be true or false"),
    ("stage2:\n  p_drop_speech: 2\n", "'p_drop_speech' must be a probability"),
    ("stage1:\n  levels: []\n", "stage1.levels is empty"),
])
def test_bad_curriculum_names_key_and_file(tmp_path, text, needle):
    from ifmdm_model.curriculum import load_curriculum

    p = tmp_path / "curriculum.yaml"
    levels = "  levels:\n    - {name: a, subsets: [lip], steps: 1, lr: 1.0e-3}\n"
    if "levels" not in text:
        text = ("stage1:\n" + levels + text) if not text.startswith("stage1:") else text + levels
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_curriculum(p)
    assert needle in str(e.value) and "curriculum.yaml" in str(e.value), str(e.value)
