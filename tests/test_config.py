
import pytest
import yaml

from ifmdm_data.config import DEFAULT_CONFIG_PATH, FilterConfig, load_config
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
])
def test_bad_config_names_key_and_file(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value) and "bad.yaml" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
