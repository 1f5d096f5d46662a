"""configs/model.py: the architecture presets as locked ml_collections configs."""

import pytest

from configs import common
from configs import model as model_config
from tests.model import test_presets
import xclip_jax


@pytest.mark.parametrize("arch", sorted(test_presets.BACKBONES))
def test_config_builds_the_official_architecture(arch):
  config = xclip_jax.XCLIPConfig.from_dict(model_config.get_config(f"arch={arch},frames=16").to_dict())
  expected = {**test_presets.official(arch), "num_frames": 16}
  assert test_presets.fields(config, expected) == expected


def test_default_is_vit_b32_with_8_frames():
  config = model_config.get_config()
  assert test_presets.fields(config, test_presets.official("ViT-B/32")) == test_presets.official("ViT-B/32")


def test_typos_and_bad_arguments_fail():
  config = model_config.get_config()
  with pytest.raises(AttributeError, match="num_frames"):
    config.numframes = 4
  with pytest.raises(TypeError):
    config.num_frames = "eight"
  with pytest.raises(ValueError, match="unknown config argument 'frame'"):
    model_config.get_config("frame=8")
  with pytest.raises(ValueError, match="not of type int"):
    model_config.get_config("frames=eight")
  with pytest.raises(ValueError, match="unknown architecture"):
    model_config.get_config("arch=ViT-B/8")


def test_parse_arg_types_values_by_their_defaults():
  assert common.parse_arg("a=3,b=true,c=x", a=1, b=False, c="y") == {"a": 3, "b": True, "c": "x"}
  assert common.parse_arg(None, a=1) == {"a": 1}
  with pytest.raises(ValueError, match="not key=value"):
    common.parse_arg("a", a=1)
  with pytest.raises(ValueError, match="not a boolean"):
    common.parse_arg("b=maybe", b=False)
