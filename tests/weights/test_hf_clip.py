"""Tests for xclip_jax.weights.hf_clip: Hugging Face CLIPModel directories read as OpenAI CLIP state dicts."""

import collections
import json

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

import xclip_jax
from xclip_jax.weights import hf_clip
from xclip_jax.weights import official

TEXTS = ["a", "a photo of a dog playing the guitar on a stage", "abseiling", "air drumming in the rain"]


def _tiny_hf_clip(text_heads=2, vision_heads=2, seed=0) -> transformers.CLIPModel:
  config = transformers.CLIPConfig(
    projection_dim=64,
    text_config=dict(
      vocab_size=49408,
      hidden_size=128,
      intermediate_size=512,
      num_hidden_layers=2,
      num_attention_heads=text_heads,
      max_position_embeddings=77,
      hidden_act="quick_gelu",
      eos_token_id=49407,
    ),
    vision_config=dict(
      hidden_size=128,
      intermediate_size=512,
      num_hidden_layers=2,
      num_attention_heads=vision_heads,
      image_size=32,
      patch_size=16,
      hidden_act="quick_gelu",
    ),
  )
  torch.manual_seed(seed)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():  # Move every tensor off its initial value (LayerNorms off 1/0), so that a swap shows.
    for parameter in model.parameters():
      parameter.add_(0.05 * torch.randn_like(parameter))
  return model


def _xclip(state_dict, initialise=True, **overrides) -> xclip_jax.XCLIPModel:
  """X-CLIP initialised from a CLIP state dict as load_pretrained does; `initialise=False` leaves X-CLIP's own
  modules at zero, which the text encoder does not use, and spares the compilation of the initialisation."""
  config = official.config_from_official(state_dict, num_frames=4, **overrides)
  if initialise:
    base = official.init_params(config, 0)
  else:
    base = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), official.abstract_params(config))
  params = official.params_from_official(state_dict, config, base_params=base)
  return xclip_jax.XCLIPModel(config, params)


def _hf_text_features(hf_model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    output = hf_model.get_text_features(
      input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(ids != 0).long()
    )
  return output.pooler_output.numpy()


class _QuickGELU(torch.nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class _OpenAIBlock(torch.nn.Module):
  """OpenAI clip.model.ResidualAttentionBlock (batch first)."""

  def __init__(self, width, heads):
    super().__init__()
    self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
    self.ln_1 = torch.nn.LayerNorm(width)
    self.mlp = torch.nn.Sequential(
      collections.OrderedDict(
        c_fc=torch.nn.Linear(width, 4 * width), gelu=_QuickGELU(), c_proj=torch.nn.Linear(4 * width, width)
      )
    )
    self.ln_2 = torch.nn.LayerNorm(width)

  def forward(self, x):
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False)[0]
    return x + self.mlp(self.ln_2(x))


class _OpenAIVisionTransformer(torch.nn.Module):
  """OpenAI clip.model.VisionTransformer, the reference the `visual.*` names and layouts are checked against."""

  def __init__(self, width, layers, heads, patch, grid, output_dim):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, width, patch, stride=patch, bias=False)
    self.class_embedding = torch.nn.Parameter(torch.empty(width))
    self.positional_embedding = torch.nn.Parameter(torch.empty(grid * grid + 1, width))
    self.ln_pre = torch.nn.LayerNorm(width)
    self.transformer = torch.nn.Module()
    self.transformer.resblocks = torch.nn.Sequential(*[_OpenAIBlock(width, heads) for _ in range(layers)])
    self.ln_post = torch.nn.LayerNorm(width)
    self.proj = torch.nn.Parameter(torch.empty(width, output_dim))

  def forward(self, images):
    x = self.conv1(images).flatten(2).transpose(1, 2)
    cls = self.class_embedding.expand(x.shape[0], 1, -1)
    x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
    x = self.transformer.resblocks(x)
    return self.ln_post(x[:, 0]) @ self.proj


def _openai_image_features(state_dict, heads, images) -> np.ndarray:
  visual = {
    name.removeprefix("visual."): torch.from_numpy(v) for name, v in state_dict.items() if name.startswith("visual.")
  }
  width, _, patch, _ = visual["conv1.weight"].shape
  reference = _OpenAIVisionTransformer(width, 2, heads, patch, 32 // patch, visual["proj"].shape[1]).eval()
  reference.load_state_dict(visual, strict=True)  # Every name and shape is OpenAI's.
  with torch.no_grad():
    return reference(images).numpy()


@pytest.fixture(scope="module")
def hf_model():
  return _tiny_hf_clip()


@pytest.fixture(scope="module")
def hf_tensors(hf_model):
  return {name: tensor.numpy() for name, tensor in hf_model.state_dict().items()}


@pytest.fixture(scope="module")
def safetensors_dir(hf_model, tmp_path_factory):
  directory = tmp_path_factory.mktemp("hf_clip")
  hf_model.save_pretrained(directory)
  assert (directory / "model.safetensors").is_file()
  return directory


@pytest.fixture(scope="module")
def state_dict(safetensors_dir):
  return hf_clip.read_hf_clip(safetensors_dir)


@pytest.fixture(scope="module")
def xclip_model(state_dict):
  return _xclip(state_dict)


def _copy_with(source, directory, config_edit=None, tensors=None):
  """`source`'s checkpoint in `directory`, with its config.json edited or its tensors replaced."""
  directory.mkdir()
  config = json.loads((source / "config.json").read_text())
  if config_edit:
    config_edit(config)
  (directory / "config.json").write_text(json.dumps(config))
  if tensors is None:
    (directory / "model.safetensors").symlink_to(source / "model.safetensors")
  else:
    safetensors.numpy.save_file(tensors, directory / "model.safetensors")
  return directory


def test_reads_openai_names_and_layouts(safetensors_dir, state_dict, hf_tensors, xclip_model):
  assert hf_clip.is_hf_clip_checkpoint(safetensors_dir)
  # Exactly the CLIP part of X-CLIP: the official names less X-CLIP's own modules and message tokens.
  xclip_names = official.official_from_params(xclip_model.params)
  clip_names = {
    name for name in xclip_names if not name.startswith(official.XCLIP_ONLY_PREFIXES) and ".message_" not in name
  }
  assert set(state_dict) == clip_names
  layer = "vision_model.encoder.layers.1.self_attn"
  np.testing.assert_array_equal(
    state_dict["visual.transformer.resblocks.1.attn.in_proj_weight"],
    np.concatenate([hf_tensors[f"{layer}.{x}_proj.weight"] for x in "qkv"]),
  )
  np.testing.assert_array_equal(
    state_dict["transformer.resblocks.0.attn.in_proj_bias"][128:256],
    hf_tensors["text_model.encoder.layers.0.self_attn.k_proj.bias"],
  )
  np.testing.assert_array_equal(state_dict["visual.proj"], hf_tensors["visual_projection.weight"].T)
  np.testing.assert_array_equal(state_dict["text_projection"], hf_tensors["text_projection.weight"].T)
  np.testing.assert_array_equal(
    state_dict["visual.conv1.weight"], hf_tensors["vision_model.embeddings.patch_embedding.weight"]
  )
  np.testing.assert_array_equal(state_dict["visual.ln_pre.bias"], hf_tensors["vision_model.pre_layrnorm.bias"])
  np.testing.assert_array_equal(state_dict["visual.ln_post.weight"], hf_tensors["vision_model.post_layernorm.weight"])
  np.testing.assert_array_equal(state_dict["ln_final.weight"], hf_tensors["text_model.final_layer_norm.weight"])
  np.testing.assert_array_equal(
    state_dict["transformer.resblocks.1.ln_2.bias"], hf_tensors["text_model.encoder.layers.1.layer_norm2.bias"]
  )
  np.testing.assert_array_equal(state_dict["logit_scale"], hf_tensors["logit_scale"])


def test_clip_weights_land_in_the_xclip_params(state_dict, xclip_model):
  config = xclip_model.config
  assert (config.embed_dim, config.image_resolution, config.vision_patch_size, config.num_frames) == (64, 32, 16, 4)
  assert (config.vision_width, config.vision_layers, config.vision_heads) == (128, 2, 2)
  assert (config.transformer_width, config.transformer_layers, config.transformer_heads) == (128, 2, 2)
  loaded = official.official_from_params(xclip_model.params)
  for name, value in state_dict.items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_text_features_match_transformers(hf_model, xclip_model):
  ids = xclip_jax.tokenize(TEXTS)
  np.testing.assert_allclose(xclip_model.encode_text(ids), _hf_text_features(hf_model, ids), rtol=1e-5, atol=1e-5)


def test_training_init_from_the_directory_gives_the_same_text_features(hf_model, safetensors_dir):
  # What `--config.init.clip=DIR` does: load_pretrained on the directory, X-CLIP modules freshly initialised.
  model = xclip_jax.load_pretrained(safetensors_dir, num_frames=4)
  assert model.config.num_frames == 4 and "mit" in model.params
  ids = xclip_jax.tokenize(TEXTS)
  np.testing.assert_allclose(model.encode_text(ids), _hf_text_features(hf_model, ids), rtol=1e-5, atol=1e-5)


def test_visual_weights_reproduce_transformers_image_features(hf_model, state_dict):
  # X-CLIP's frame encoder adds message tokens, so OpenAI's own ViT is the reference for the visual weights.
  images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = hf_model.get_image_features(pixel_values=images).pooler_output.numpy()
  np.testing.assert_allclose(_openai_image_features(state_dict, 2, images), expected, rtol=1e-5, atol=1e-5)


def test_legacy_eos_token_id_pools_at_the_same_token(hf_model, safetensors_dir, state_dict, tmp_path):
  ids = xclip_jax.tokenize(TEXTS)
  expected = _hf_text_features(hf_model, ids)
  hf_model.text_model.eos_token_id = 2  # transformers < 4.31 configs: pools at argmax(ids).
  try:
    np.testing.assert_array_equal(_hf_text_features(hf_model, ids), expected)
  finally:
    hf_model.text_model.eos_token_id = 49407
  legacy = _copy_with(safetensors_dir, tmp_path / "legacy", lambda c: c["text_config"].update(eos_token_id=2))
  for name, value in hf_clip.read_hf_clip(legacy).items():
    np.testing.assert_array_equal(value, state_dict[name], err_msg=name)


def test_pytorch_bin_and_sharded_checkpoints_read_the_same(hf_model, safetensors_dir, state_dict, tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "config.json").write_text((safetensors_dir / "config.json").read_text())
  torch.save(hf_model.state_dict(), bin_dir / "pytorch_model.bin")
  sharded_dir = tmp_path / "sharded"
  hf_model.save_pretrained(sharded_dir, max_shard_size="2MB")
  assert (sharded_dir / "model.safetensors.index.json").is_file()
  assert len(list(sharded_dir.glob("model-*.safetensors"))) > 1

  for directory in (bin_dir, sharded_dir):
    assert hf_clip.is_hf_clip_checkpoint(directory)
    read = hf_clip.read_hf_clip(directory)
    assert read.keys() == state_dict.keys()
    for name, value in state_dict.items():
      np.testing.assert_array_equal(read[name], value, err_msg=name)


def test_head_counts_other_than_width_over_64_load_via_overrides(tmp_path):
  hf_model = _tiny_hf_clip(text_heads=4, vision_heads=8, seed=1)
  hf_model.save_pretrained(tmp_path)
  overrides = hf_clip.config_overrides(tmp_path)
  assert overrides == dict(transformer_heads=4, vision_heads=8)
  state_dict = hf_clip.read_hf_clip(tmp_path)
  model = _xclip(state_dict, initialise=False, **overrides)
  assert (model.config.transformer_heads, model.config.vision_heads) == (4, 8)

  ids = xclip_jax.tokenize(TEXTS)
  np.testing.assert_allclose(model.encode_text(ids), _hf_text_features(hf_model, ids), rtol=1e-5, atol=1e-5)
  # Width // 64 heads would give other text features: the override is what makes them agree.
  default_heads = xclip_jax.XCLIPModel(model.config.replace(transformer_heads=2, vision_heads=2), model.params)
  assert not np.allclose(default_heads.encode_text(ids), model.encode_text(ids), rtol=1e-3, atol=1e-3)
  images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    expected = hf_model.get_image_features(pixel_values=images).pooler_output.numpy()
  np.testing.assert_allclose(_openai_image_features(state_dict, 8, images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "section, field, value, message",
  [
    ("text_config", "hidden_act", "gelu", r"text_config.hidden_act='gelu' is not 'quick_gelu'"),
    ("vision_config", "hidden_act", "gelu", r"vision_config.hidden_act='gelu' is not 'quick_gelu'"),
    ("vision_config", "layer_norm_eps", 1e-6, r"vision_config.layer_norm_eps=1e-06 is not 1e-05"),
    ("text_config", "vocab_size", 49409, r"text_config.vocab_size=49409 is not OpenAI's 49408"),
    ("text_config", "eos_token_id", 1, r"text_config.eos_token_id=1 pools the text elsewhere"),
    ("text_config", "intermediate_size", 256, r"text_config.intermediate_size=256 is not 4 x hidden_size=128"),
    ("vision_config", "num_attention_heads", 3, r"vision_config.num_attention_heads=3 does not divide"),
    ("vision_config", "num_attention_heads", 0, r"vision_config.num_attention_heads=0 does not divide"),
    ("text_config", "hidden_size", "128", r"text_config.hidden_size='128' is not an integer of at least 0"),
  ],
)
def test_config_xclip_cannot_use_is_refused(safetensors_dir, tmp_path, section, field, value, message):
  directory = _copy_with(safetensors_dir, tmp_path / "bad", lambda c: c[section].update({field: value}))
  with pytest.raises(ValueError, match=r"bad/config\.json: .*" + message):
    hf_clip.read_hf_clip(directory)
  with pytest.raises(ValueError, match=message):
    hf_clip.config_overrides(directory)


def test_other_directories_are_not_taken_for_clip(safetensors_dir, tmp_path):
  xclip_dir = tmp_path / "xclip"
  transformers.XCLIPConfig().save_pretrained(xclip_dir)
  (xclip_dir / "model.safetensors").symlink_to(safetensors_dir / "model.safetensors")
  assert not hf_clip.is_hf_clip_checkpoint(xclip_dir)
  with pytest.raises(ValueError, match=r"model_type is 'xclip', not 'clip'"):
    hf_clip.read_hf_clip(xclip_dir)

  no_weights = tmp_path / "no_weights"
  no_weights.mkdir()
  (no_weights / "config.json").write_text((safetensors_dir / "config.json").read_text())
  assert not hf_clip.is_hf_clip_checkpoint(no_weights)
  assert not hf_clip.is_hf_clip_checkpoint(tmp_path)  # No config.json.
  broken = _copy_with(safetensors_dir, tmp_path / "broken_json")
  (broken / "config.json").write_text("{not json")
  # A damaged model, not another directory: its JSON error is named.
  with pytest.raises(ValueError, match=r"broken_json/config\.json: invalid JSON \(Expecting property name"):
    hf_clip.is_hf_clip_checkpoint(broken)


def test_missing_unexpected_and_misshapen_tensors_are_named(safetensors_dir, tmp_path):
  tensors = safetensors.numpy.load_file(safetensors_dir / "model.safetensors")
  edited = dict(tensors)
  del edited["vision_model.encoder.layers.1.self_attn.v_proj.bias"]
  edited["text_model.encoder.layers.0.extra_gate"] = np.zeros(3, np.float32)
  directory = _copy_with(safetensors_dir, tmp_path / "names", tensors=edited)
  with pytest.raises(
    ValueError,
    match=r"missing vision_model.encoder.layers.1.self_attn.v_proj.bias; unexpected text_model.encoder.layers.0.extra_gate$",
  ):
    hf_clip.read_hf_clip(directory)

  edited = {**tensors, "visual_projection.weight": tensors["visual_projection.weight"].T.copy()}
  directory = _copy_with(safetensors_dir, tmp_path / "shapes", tensors=edited)
  with pytest.raises(ValueError, match=r"visual_projection.weight: \(128, 64\) instead of \(64, 128\)"):
    hf_clip.read_hf_clip(directory)


def test_position_ids_buffers_of_older_checkpoints_are_ignored(safetensors_dir, state_dict, tmp_path):
  tensors = safetensors.numpy.load_file(safetensors_dir / "model.safetensors")
  tensors["text_model.embeddings.position_ids"] = np.arange(77)[None]
  tensors["vision_model.embeddings.position_ids"] = np.arange(5)[None]
  directory = _copy_with(safetensors_dir, tmp_path / "old", tensors=tensors)
  assert hf_clip.read_hf_clip(directory).keys() == state_dict.keys()
