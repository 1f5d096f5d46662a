"""The trainable, learning-rate and weight-decay rules put every parameter of X-CLIP in its official group, through one
matcher that matches names in full, lets the first rule win, refuses uncovered names and logs its groups.

The expected groups are written out by hand from the official recipe (microsoft/VideoX X-CLIP, utils/optimizer.py):
with fix_text only names containing "visual.", "mit" or "prompts" train; names containing "message_", "mit" or
"prompts" learn at 10x; 1-D parameters, `.bias` and `positional_embedding` get no weight decay.
"""

import logging
import math

import jax
import jax.numpy as jnp
import pytest

import xclip_jax
from xclip_jax import param_rules
from xclip_jax.parallel import sharding
from xclip_jax.train import optimizer
from xclip_jax.weights import official

# The parameters of the tiny model below, by module, in Flax names (official `ln_1.weight` is `ln_1/scale`).
BLOCK_WEIGHTS = ("attn/in_proj/weight", "attn/out_proj/weight", "mlp/c_fc/weight", "mlp/c_proj/weight")
BLOCK = BLOCK_WEIGHTS + (
  "attn/in_proj/bias",
  "attn/out_proj/bias",
  "ln_1/bias",
  "ln_1/scale",
  "ln_2/bias",
  "ln_2/scale",
  "mlp/c_fc/bias",
  "mlp/c_proj/bias",
)
TEXT = (
  "positional_embedding",
  "token_embedding/embedding",
  "ln_final/bias",
  "ln_final/scale",
  "text_projection",
  *(f"transformer/resblocks_{i}/{name}" for i in (0, 1) for name in BLOCK),
)
CLIP_VISUAL = (
  "visual/class_embedding",
  "visual/conv1/weight",
  "visual/positional_embedding",
  "visual/ln_pre/bias",
  "visual/ln_pre/scale",
  "visual/ln_post/bias",
  "visual/ln_post/scale",
  "visual/proj",
  *(f"visual/transformer/resblocks_0/{name}" for name in BLOCK),
)
MESSAGE_WEIGHTS = ("message_attn/in_proj/weight", "message_attn/out_proj/weight", "message_fc/weight")
MESSAGE_TOKENS = tuple(
  f"visual/transformer/resblocks_0/{name}"
  for name in MESSAGE_WEIGHTS
  + (
    "message_attn/in_proj/bias",
    "message_attn/out_proj/bias",
    "message_fc/bias",
    "message_ln/bias",
    "message_ln/scale",
  )
)
MIT = ("mit/positional_embedding", *(f"mit/resblocks_0/{name}" for name in BLOCK))
PROMPT_WEIGHTS = tuple(
  f"prompts_generator/decoder_0/{name}"
  for name in ("cross_attn/q_proj/weight", "cross_attn/k_proj/weight", "cross_attn/v_proj/weight")
  + ("cross_attn/proj/weight", "mlp_0/weight", "mlp_3/weight")
)
PROMPTS = PROMPT_WEIGHTS + (
  "prompts_visual_ln/bias",
  "prompts_visual_ln/scale",
  "prompts_visual_proj",
  "prompts_generator/alpha",
  "prompts_generator/norm/bias",
  "prompts_generator/norm/scale",
  *(
    f"prompts_generator/decoder_0/{name}"
    for name in ("cross_attn/proj/bias", "norm1/bias", "norm1/scale", "norm3/bias", "norm3/scale")
  ),
  "prompts_generator/decoder_0/mlp_0/bias",
  "prompts_generator/decoder_0/mlp_3/bias",
)
ALL = TEXT + ("logit_scale",) + CLIP_VISUAL + MESSAGE_TOKENS + MIT + PROMPTS

# Official fix_text: everything outside "visual.", "mit" and "prompts" is frozen.
FROZEN_WITH_FROZEN_TEXT = set(TEXT) | {"logit_scale"}
# Official groups at TRAIN.LR * 10: "message_", "mit", "prompts".
NEW_MODULES = set(MESSAGE_TOKENS) | set(MIT) | set(PROMPTS)
# Official set_weight_decay: decayed unless 1-D, `.bias` or `positional_embedding`; the 0-D `logit_scale` decays.
DECAYING = (
  {"logit_scale", "token_embedding/embedding", "text_projection", "visual/conv1/weight", "visual/proj"}
  | {f"transformer/resblocks_{i}/{name}" for i in (0, 1) for name in BLOCK_WEIGHTS}
  | {f"visual/transformer/resblocks_0/{name}" for name in BLOCK_WEIGHTS + MESSAGE_WEIGHTS}
  | {f"mit/resblocks_0/{name}" for name in BLOCK_WEIGHTS}
  | set(PROMPT_WEIGHTS)
  | {"prompts_visual_proj"}
)


@pytest.fixture(scope="module")
def params():
  config = xclip_jax.XCLIPConfig(
    embed_dim=32,
    image_resolution=32,
    vision_layers=1,
    vision_width=64,
    vision_patch_size=16,
    transformer_width=64,
    transformer_heads=2,
    transformer_layers=2,
    num_frames=2,
    prompts_layers=1,
  )
  return official.abstract_params(config)


def test_the_hand_written_names_are_the_whole_model(params):
  assert len(ALL) == len(set(ALL)) == 90
  assert set(ALL) == set(sharding.flat_names(params))


def test_frozen_text_trains_the_video_encoder_mit_and_prompts(params):
  trainable = param_rules.match(optimizer.trainable_rules(True), sharding.flat_names(params))
  assert {name for name, flag in trainable.items() if not flag} == FROZEN_WITH_FROZEN_TEXT


def test_unfrozen_text_trains_everything(params):
  assert all(param_rules.match(optimizer.trainable_rules(False), sharding.flat_names(params)).values())


def test_new_modules_learn_at_the_multiplier(params):
  multipliers = param_rules.match(optimizer.lr_multiplier_rules(10.0), sharding.flat_names(params))
  assert multipliers == {name: 10.0 if name in NEW_MODULES else 1.0 for name in ALL}


def test_decay_mask(params):
  assert optimizer.decay_mask(params) == {name: name in DECAYING for name in ALL}


def test_a_decaying_1d_parameter_is_refused():
  params = {"visual": {"gate": jax.ShapeDtypeStruct((4,), jnp.float32)}}
  with pytest.raises(ValueError, match="visual/gate"):
    optimizer.decay_mask(params)


def test_first_match_wins():
  rules = ((r".*/bias", "first"), (r"mit/.*", "second"), (r".*", "default"))
  assert param_rules.match(rules, ["mit/ln/bias", "mit/ln/scale", "logit_scale"]) == {
    "mit/ln/bias": "first",
    "mit/ln/scale": "second",
    "logit_scale": "default",
  }


def test_patterns_match_whole_names():
  # Officially a substring: "mit" would catch a `submit` module too; here only the MIT's own names.
  assert param_rules.match(optimizer.lr_multiplier_rules(10.0), ["submit/weight"]) == {"submit/weight": 1.0}
  assert param_rules.match(optimizer.trainable_rules(True), ["submit/weight"]) == {"submit/weight": False}
  assert param_rules.match(((r"mit", 1), (r".*", 0)), ["mit", "mit/weight", "submit"]) == {
    "mit": 1,
    "mit/weight": 0,
    "submit": 0,
  }


def test_uncovered_parameters_are_named():
  rules = ((r"visual/.*", True), (r"mit/.*", True))
  with pytest.raises(ValueError, match="trainable: no rule covers 2 parameters.*logit_scale, submit/weight"):
    param_rules.match(
      rules, ["visual/proj", "logit_scale", "mit/positional_embedding", "submit/weight"], log="trainable"
    )


def test_the_log_names_each_pattern_with_its_count_and_examples(params, caplog):
  caplog.set_level(logging.INFO)
  param_rules.match(optimizer.lr_multiplier_rules(10.0), sharding.flat_names(params), log="learning-rate multiplier")
  (record,) = [record for record in caplog.records if record.getMessage().startswith("learning-rate multiplier")]
  message = record.getMessage()
  assert "rules over 90 parameters" in message
  assert r"visual/transformer/resblocks_\d+/message_.* -> 10.0: 8 (visual/transformer/resblocks_0/" in message
  assert "mit/.* -> 10.0: 13 (mit/positional_embedding, " in message
  assert "prompts_.* -> 10.0: 19 (" in message
  assert ".* -> 1.0: 50 (" in message


def test_the_parameter_overview_counts_each_group(params):
  sizes = {name: math.prod(leaf.shape) for name, leaf in sharding.flat_names(params).items()}
  trainable = tuple(name for name in ALL if name not in FROZEN_WITH_FROZEN_TEXT)
  counts = optimizer.count_parameters(params, trainable, 10.0)
  new_modules = sum(sizes[name] for name in NEW_MODULES)
  trained = sum(sizes[name] for name in trainable)
  assert counts == {
    "total": sum(sizes.values()),
    "trainable": trained,
    "frozen": sum(sizes[name] for name in FROZEN_WITH_FROZEN_TEXT),
    "lr_x1": trained - new_modules,
    "lr_x10": new_modules,
  }
