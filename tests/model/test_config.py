"""`XCLIPConfig` refuses sizes that no model has, naming the field, whichever way it is built (a config file too)."""

import re

import pytest

from tests.fixtures import tiny
from xclip_jax.model import config as model_config


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("num_frames", 0, "num_frames must be an integer of at least 1, got 0"),
    ("num_frames", -3, "num_frames must be an integer of at least 1, got -3"),
    ("num_frames", 2.0, "num_frames must be an integer of at least 1, got 2.0"),
    ("num_frames", "2", "num_frames must be an integer of at least 1, got '2'"),
    ("num_frames", True, "num_frames must be an integer of at least 1, got True"),  # JSON's true, in xclip_config.json
    ("embed_dim", 0, "embed_dim must be an integer of at least 1, got 0"),
    # Refused by name rather than by the ZeroDivisionError of the resolution's check.
    ("vision_patch_size", 0, "vision_patch_size must be an integer of at least 1, got 0"),
    ("transformer_layers", 0, "transformer_layers must be an integer of at least 1, got 0"),
    ("mit_layers", -1, "mit_layers must be an integer of at least 0, got -1"),
    ("mit_heads", -1, "mit_heads must be an integer of at least 0, got -1"),
    ("droppath", 1.5, "droppath must be a number in [0, 1), got 1.5"),
    ("droppath", -0.5, "droppath must be a number in [0, 1), got -0.5"),
    ("droppath", "x", "droppath must be a number in [0, 1), got 'x'"),
    ("remat", "no", "remat must be True or False, got 'no'"),
    # A TypeError in a comparison, or a model of NaN prompts, before.
    ("prompts_alpha", None, "prompts_alpha must be a finite number, got None"),
    ("prompts_alpha", "0.1", "prompts_alpha must be a finite number, got '0.1'"),
    ("prompts_alpha", float("nan"), "prompts_alpha must be a finite number, got nan"),
    ("prompts_alpha", float("inf"), "prompts_alpha must be a finite number, got inf"),
    ("prompts_alpha", True, "prompts_alpha must be a finite number, got True"),
  ],
)
def test_invalid_sizes_are_refused_naming_the_field(field, value, message):
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    model_config.XCLIPConfig.from_dict({**tiny.ARCH, field: value})


@pytest.mark.parametrize("alpha", [0.1, 0, -1e-4, 2])
def test_any_finite_prompts_alpha_is_accepted(alpha):
  assert model_config.XCLIPConfig.from_dict({**tiny.ARCH, "prompts_alpha": alpha}).prompts_alpha == alpha


def test_no_mit_or_prompt_layers_and_official_head_counts_are_accepted():
  config = model_config.XCLIPConfig(**{**tiny.ARCH, "mit_layers": 0, "prompts_layers": 0, "mit_heads": 0})
  # 0 heads: the official rule, embed_dim // 64 and at least 1 (the tiny embed_dim is 32).
  assert (config.mit_layers, config.prompts_layers, config.mit_heads) == (0, 0, 1)
