"""`xclip_jax.preset`: the CLIP backbones X-CLIP starts from, with the official numbers written out.

Backbones: OpenAI CLIP's ViT-B/32, ViT-B/16, ViT-L/14 and ViT-L/14@336px (the widths, depths and heads of its model
card and `clip/model.py`; heads are width // 64, as its `build_model` derives them). X-CLIP's own parts, as the
official `models/xclip.py` `load` builds them for its main.py: 1 MIT layer, 2 prompt-generator layers, alpha 0.1,
8 frames; the MIT and the prompt generator have embed_dim // 64 heads.
"""

import pytest

import xclip_jax

_B = dict(embed_dim=512, vision_width=768, vision_layers=12, vision_heads=12, image_resolution=224)
_B_TEXT = dict(transformer_width=512, transformer_heads=8, transformer_layers=12, mit_heads=8, prompts_heads=8)
_L = dict(embed_dim=768, vision_width=1024, vision_layers=24, vision_heads=16, vision_patch_size=14)
_L_TEXT = dict(transformer_width=768, transformer_heads=12, transformer_layers=12, mit_heads=12, prompts_heads=12)
BACKBONES = {
  "ViT-B/32": {**_B, **_B_TEXT, "vision_patch_size": 32},
  "ViT-B/16": {**_B, **_B_TEXT, "vision_patch_size": 16},
  "ViT-L/14": {**_L, **_L_TEXT, "image_resolution": 224},
  "ViT-L/14-336": {**_L, **_L_TEXT, "image_resolution": 336},
}
COMMON = dict(context_length=77, vocab_size=49408, mit_layers=1, prompts_layers=2, prompts_alpha=0.1, num_frames=8)


def official(arch: str) -> dict:
  """The official numbers of a backbone with X-CLIP's defaults, by XCLIPConfig field."""
  return {**BACKBONES[arch], **COMMON}


def fields(config, names) -> dict:
  return {name: getattr(config, name) for name in names}


def test_the_presets_are_the_four_clip_backbones():
  assert sorted(xclip_jax.PRESETS) == sorted(BACKBONES)


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_preset_has_the_official_numbers(arch):
  expected = official(arch)
  assert fields(xclip_jax.preset(arch), expected) == expected


def test_preset_overrides_replace_only_the_fields_named():
  expected = {**official("ViT-B/16"), "num_frames": 16, "prompts_layers": 4}
  assert fields(xclip_jax.preset("ViT-B/16", num_frames=16, prompts_layers=4), expected) == expected
