"""Tests for xclip_jax.weights.hf_mapping through its two users: the CLIP and X-CLIP readers read config.json alike.

Configs written before transformers 4.22 hold `text_config_dict` / `vision_config_dict`; the expected readings are
transformers' own (CLIPConfig, XCLIPConfig), and the hand-written values say what transformers does.
"""

import json

import pytest
import transformers

from xclip_jax.weights import hf_clip
from xclip_jax.weights import hf_xclip
from xclip_jax.weights import official

# The sections each reading starts from; `*_dict` entries set to None are written as JSON null.
_VARIANTS = {
  # `<section>_dict` replaces `<section>` whole: its heads win, and the layer counts that only `<section>` sets
  # fall back to transformers' defaults (12 and 12).
  "dict_overrides_section": dict(
    text_config=dict(num_attention_heads=2, num_hidden_layers=3),
    text_config_dict=dict(num_attention_heads=4),
    vision_config=dict(num_attention_heads=4, num_hidden_layers=5, patch_size=16),
    vision_config_dict=dict(num_attention_heads=6, patch_size=16),
  ),
  "dict_alone": dict(text_config_dict=dict(num_attention_heads=4), vision_config_dict=dict(num_attention_heads=6)),
  # An empty dict is still given: every value of the section is the default.
  "empty_dict": dict(
    text_config=dict(num_attention_heads=2),
    text_config_dict={},
    vision_config=dict(num_attention_heads=4),
    vision_config_dict={},
  ),
  # null counts as absent: the section is read.
  "null_dict": dict(
    text_config=dict(num_attention_heads=2),
    text_config_dict=None,
    vision_config=dict(num_attention_heads=4),
    vision_config_dict=None,
  ),
}
# (text heads, text layers, vision heads, vision layers) as transformers reads each variant.
_EXPECTED = {
  "dict_overrides_section": (4, 12, 6, 12),
  "dict_alone": (4, 12, 6, 12),
  "empty_dict": (8, 12, 12, 12),
  "null_dict": (2, 12, 4, 12),
}


def _write_config(directory, model_type, sections, **top):
  directory.mkdir(exist_ok=True)
  (directory / "config.json").write_text(json.dumps({"model_type": model_type, **top, **sections}))
  return directory


@pytest.mark.parametrize("variant", sorted(_VARIANTS))
def test_both_readers_read_config_dict_sections_as_transformers(tmp_path, variant):
  sections = _VARIANTS[variant]
  clip_dir = _write_config(tmp_path / "clip", "clip", sections)
  xclip_dir = _write_config(tmp_path / "xclip", "xclip", sections)
  clip_config = transformers.CLIPConfig.from_pretrained(clip_dir)
  xclip_config = transformers.XCLIPConfig.from_pretrained(xclip_dir)
  for config in (clip_config, xclip_config):
    text, vision = config.text_config, config.vision_config
    assert (
      text.num_attention_heads,
      text.num_hidden_layers,
      vision.num_attention_heads,
      vision.num_hidden_layers,
    ) == _EXPECTED[variant]

  clip_heads = hf_clip.config_overrides(clip_dir)
  arch = hf_xclip.arch_from_hf_config(json.loads((xclip_dir / "config.json").read_text()))

  assert clip_heads == dict(
    transformer_heads=clip_config.text_config.num_attention_heads,
    vision_heads=clip_config.vision_config.num_attention_heads,
  )
  text, vision = xclip_config.text_config, xclip_config.vision_config
  assert (arch["transformer_heads"], arch["transformer_layers"], arch["transformer_width"]) == (
    text.num_attention_heads,
    text.num_hidden_layers,
    text.hidden_size,
  )
  assert (arch["vision_heads"], arch["vision_layers"], arch["vision_width"], arch["vision_patch_size"]) == (
    vision.num_attention_heads,
    vision.num_hidden_layers,
    vision.hidden_size,
    vision.patch_size,
  )
  assert {key: arch[key] for key in clip_heads} == clip_heads


# A small model in `*_config_dict`; the plain sections disagree with it, and alone set max_position_embeddings and
# patch_size, which transformers then takes from its defaults (77 and 32) instead.
_TEXT = dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, max_position_embeddings=16)
_TEXT_DICT = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
_VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2, patch_size=8)
_VISION_DICT = dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=3, image_size=64)
_XCLIP_VISION_DICT = dict(_VISION_DICT, mit_hidden_size=64, mit_intermediate_size=256, num_frames=2)
# The encoders both readers see in that config.json, as transformers reads it.
_ENCODERS = dict(
  embed_dim=64,
  image_resolution=64,
  vision_layers=2,
  vision_width=48,
  vision_patch_size=32,
  vision_heads=3,
  context_length=77,
  vocab_size=49408,
  transformer_width=32,
  transformer_heads=4,
  transformer_layers=2,
)


def _checkpoint(directory, model_class, config_class, config_json):
  """`config_json` as config.json, beside the tensors of the model transformers builds from it."""
  _write_config(directory, **config_json)
  model = model_class(config_class.from_pretrained(directory))
  model.save_pretrained(directory)
  _write_config(directory, **config_json)  # save_pretrained rewrote it without the `*_dict` sections.
  return model.config


def test_both_readers_load_a_checkpoint_with_config_dict_sections_as_transformers(tmp_path):
  clip_config = _checkpoint(
    tmp_path / "clip",
    transformers.CLIPModel,
    transformers.CLIPConfig,
    dict(
      model_type="clip",
      sections=dict(
        text_config=_TEXT, text_config_dict=_TEXT_DICT, vision_config=_VISION, vision_config_dict=_VISION_DICT
      ),
      projection_dim=64,
    ),
  )
  xclip_config = _checkpoint(
    tmp_path / "xclip",
    transformers.XCLIPModel,
    transformers.XCLIPConfig,
    dict(
      model_type="xclip",
      sections=dict(
        text_config=_TEXT, text_config_dict=_TEXT_DICT, vision_config=_VISION, vision_config_dict=_XCLIP_VISION_DICT
      ),
      projection_dim=64,
    ),
  )
  for config in (clip_config, xclip_config):
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.max_position_embeddings, vision.hidden_size, vision.patch_size) == (32, 77, 48, 32)

  # Reading the tensors checks every name and shape against the reader's architecture, which must be transformers'.
  clip_state_dict = hf_clip.read_hf_clip(tmp_path / "clip")
  clip = official.config_from_official(clip_state_dict, **hf_clip.config_overrides(tmp_path / "clip"))
  _, arch = hf_xclip.read_hf_checkpoint(tmp_path / "xclip")

  assert {key: getattr(clip, key) for key in _ENCODERS} == _ENCODERS
  assert {key: arch[key] for key in _ENCODERS} == _ENCODERS
