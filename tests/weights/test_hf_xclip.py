"""Tests for xclip_jax.weights.hf_xclip: Hugging Face X-CLIP checkpoints <-> official state dicts."""

import json

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from xclip_jax.weights import hf_xclip
from xclip_jax.weights import torch_checkpoint

# Widths differ from each other and head counts from width // 64, so a transposed
# projection or a head count taken from the wrong field cannot go unnoticed.
HF_ARCH = dict(
  embed_dim=64,
  image_resolution=32,
  vision_layers=2,
  vision_width=96,
  vision_patch_size=16,
  vision_heads=3,
  context_length=77,
  vocab_size=1000,
  transformer_width=32,
  transformer_heads=2,
  transformer_layers=2,
  num_frames=4,
  mit_layers=1,
  mit_heads=2,
  prompts_layers=2,
  prompts_heads=4,
  prompts_alpha=0.1,
)


def _tiny_hf_model() -> transformers.XCLIPModel:
  config = transformers.XCLIPConfig(
    projection_dim=64,
    prompt_layers=2,
    prompt_num_attention_heads=4,
    prompt_alpha=0.1,
    text_config=dict(
      vocab_size=1000,
      hidden_size=32,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=2,
      max_position_embeddings=77,
    ),
    vision_config=dict(
      hidden_size=96,
      intermediate_size=384,
      num_hidden_layers=2,
      num_attention_heads=3,
      image_size=32,
      patch_size=16,
      num_frames=4,
      mit_hidden_size=64,
      mit_intermediate_size=256,
      mit_num_hidden_layers=1,
      mit_num_attention_heads=2,
    ),
  )
  torch.manual_seed(0)
  model = transformers.XCLIPModel(config).eval()
  with torch.no_grad():  # Move every tensor off its initial value (LayerNorms off 1/0, alpha off 0.1).
    for parameter in model.parameters():
      parameter.add_(0.05 * torch.randn_like(parameter))
  return model


@pytest.fixture(scope="module")
def hf_model():
  return _tiny_hf_model()


@pytest.fixture(scope="module")
def hf_tensors(hf_model):
  return {name: tensor.numpy() for name, tensor in hf_model.state_dict().items()}


@pytest.fixture(scope="module")
def safetensors_dir(hf_model, tmp_path_factory):
  directory = tmp_path_factory.mktemp("hf_safetensors")
  hf_model.save_pretrained(directory)
  return directory


def _random_inputs(vocab_size=1000, seed=0):
  generator = torch.Generator().manual_seed(seed)
  video = torch.randn(2, 4, 3, 32, 32, generator=generator)
  text = torch.randint(1, vocab_size - 1, (3, 77), generator=generator)
  for row, end in enumerate([4, 76, 20]):  # The end token is the largest id, as in CLIP.
    text[row, end] = vocab_size - 1
    text[row, end + 1 :] = 0
  return video, text


def test_reads_safetensors_checkpoint(safetensors_dir, hf_tensors):
  state_dict, arch = hf_xclip.read_hf_checkpoint(safetensors_dir)

  assert arch == HF_ARCH
  assert {name: value.shape for name, value in state_dict.items()} == hf_xclip.official_shapes(arch)
  assert state_dict["visual.transformer.resblocks.1.message_attn.in_proj_weight"].shape == (288, 96)
  assert state_dict["visual.proj"].shape == (96, 64)
  assert state_dict["text_projection"].shape == (32, 64)
  assert state_dict["mit.positional_embedding"].shape == (1, 4, 64)
  np.testing.assert_array_equal(state_dict["visual.proj"], hf_tensors["visual_projection.weight"].T)
  np.testing.assert_array_equal(
    state_dict["transformer.resblocks.0.attn.in_proj_bias"][32:64],
    hf_tensors["text_model.encoder.layers.0.self_attn.k_proj.bias"],
  )
  # Every Hugging Face tensor is used exactly once: mapping back restores them all.
  restored, _ = hf_xclip.hf_from_official(state_dict, arch)
  assert restored.keys() == hf_tensors.keys()
  for name, tensor in hf_tensors.items():
    np.testing.assert_array_equal(restored[name], tensor, err_msg=name)


def test_pytorch_bin_and_sharded_checkpoints_read_the_same(hf_model, safetensors_dir, tmp_path):
  expected, expected_arch = hf_xclip.read_hf_checkpoint(safetensors_dir)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "config.json").write_text((safetensors_dir / "config.json").read_text())
  torch.save(hf_model.state_dict(), bin_dir / "pytorch_model.bin")
  sharded_dir = tmp_path / "sharded"
  hf_model.save_pretrained(sharded_dir, max_shard_size="200KB")
  assert (sharded_dir / "model.safetensors.index.json").is_file()

  for directory in (bin_dir, sharded_dir):
    assert hf_xclip.is_hf_checkpoint(directory)
    state_dict, arch = hf_xclip.read_hf_checkpoint(directory)
    assert arch == expected_arch
    assert state_dict.keys() == expected.keys()
    for name, value in expected.items():
      np.testing.assert_array_equal(state_dict[name], value, err_msg=name)


def test_mapping_reproduces_official_golden_logits(golden_dir):
  """Golden official weights -> Hugging Face layout -> transformers gives the official logits."""
  meta = json.loads((golden_dir / "meta.json").read_text())
  official, _ = torch_checkpoint.read_state_dict(golden_dir / "xclip_official.pth")
  golden = np.load(golden_dir / "io.npz")
  arch = {
    key: meta[key]
    for key in (
      "embed_dim",
      "image_resolution",
      "vision_layers",
      "vision_width",
      "vision_patch_size",
      "context_length",
      "vocab_size",
      "transformer_width",
      "transformer_heads",
      "transformer_layers",
      "mit_layers",
    )
  }
  # The official code derives these from the widths.
  arch.update(
    num_frames=meta["T"],
    prompts_layers=meta["prompts_layers"],
    prompts_alpha=0.1,
    vision_heads=meta["vision_width"] // 64,
    mit_heads=meta["embed_dim"] // 64,
    prompts_heads=meta["embed_dim"] // 64,
  )

  hf_state_dict, config = hf_xclip.hf_from_official(official, arch)
  model = transformers.XCLIPModel(transformers.XCLIPConfig(**config)).eval()
  missing, unexpected = model.load_state_dict(
    {name: torch.from_numpy(value) for name, value in hf_state_dict.items()}, strict=False
  )
  with torch.no_grad():
    logits = model(
      input_ids=torch.from_numpy(golden["text"]).long(), pixel_values=torch.from_numpy(golden["video"])
    ).logits_per_video.numpy()

  assert not unexpected
  assert all(name.endswith("position_ids") for name in missing), missing
  np.testing.assert_allclose(logits, golden["logits"], rtol=1e-4, atol=1e-4)


def test_missing_and_unexpected_tensors_are_named(safetensors_dir, tmp_path):
  tensors = safetensors.numpy.load_file(safetensors_dir / "model.safetensors")
  del tensors["mit.encoder.layers.0.self_attn.v_proj.bias"]
  tensors["vision_model.encoder.layers.0.extra_gate"] = np.zeros(3, np.float32)
  directory = tmp_path / "broken"
  directory.mkdir()
  (directory / "config.json").write_text((safetensors_dir / "config.json").read_text())
  safetensors.numpy.save_file(tensors, directory / "model.safetensors")

  with pytest.raises(
    ValueError,
    match=r"missing mit.encoder.layers.0.self_attn.v_proj.bias; unexpected vision_model.encoder.layers.0.extra_gate$",
  ):
    hf_xclip.read_hf_checkpoint(directory)


def test_tensors_of_another_model_are_one_short_line(safetensors_dir, tmp_path):
  """Hundreds of missing tensors: the first three are named, the rest counted."""
  directory = tmp_path / "other"
  directory.mkdir()
  (directory / "config.json").write_text((safetensors_dir / "config.json").read_text())
  safetensors.numpy.save_file({"foo": np.zeros(3, np.float32)}, directory / "model.safetensors")
  with pytest.raises(ValueError, match=r"missing \S+, \S+, \S+, and \d+ more; unexpected foo$") as error:
    hf_xclip.read_hf_checkpoint(directory)
  assert len(str(error.value)) < 400


def test_wrong_shape_is_named(safetensors_dir, tmp_path):
  tensors = safetensors.numpy.load_file(safetensors_dir / "model.safetensors")
  tensors["visual_projection.weight"] = np.ascontiguousarray(tensors["visual_projection.weight"].T)
  directory = tmp_path / "transposed"
  directory.mkdir()
  (directory / "config.json").write_text((safetensors_dir / "config.json").read_text())
  safetensors.numpy.save_file(tensors, directory / "model.safetensors")

  with pytest.raises(ValueError, match=r"visual_projection.weight: \(96, 64\) instead of \(64, 96\)"):
    hf_xclip.read_hf_checkpoint(directory)


@pytest.mark.parametrize(
  "section, field, value, message",
  [
    ("text_config", "intermediate_size", 100, "text_config.intermediate_size=100 is not 4 x"),
    ("vision_config", "hidden_act", "gelu", "vision_config.hidden_act='gelu'"),
    ("vision_config", "mit_hidden_size", 32, "differs from projection_dim=64"),
    ("vision_config", "patch_size", [16, 8], r"patch_size=\[16, 8\] is not square"),
  ],
)
def test_inexpressible_config_is_refused(safetensors_dir, section, field, value, message):
  config = json.loads((safetensors_dir / "config.json").read_text())
  config[section][field] = value

  with pytest.raises(ValueError, match=message):
    hf_xclip.arch_from_hf_config(config)


@pytest.mark.parametrize(
  "change, message",
  [
    # A ZeroDivisionError, a TypeError from string formatting, from arithmetic with None, from ** of an int.
    (
      lambda c: c["vision_config"].update(num_attention_heads=0),
      ".*: vision_config.num_attention_heads=0 does not div",
    ),
    (lambda c: c["vision_config"].update(hidden_size="96"), "vision_config.hidden_size='96' is not an integer"),
    (lambda c: c["text_config"].update(layer_norm_eps=None), "text_config.layer_norm_eps=None is not a finite number"),
    (lambda c: c.update(text_config=5), "text_config is 5, not an object"),
    (lambda c: c.update(prompt_alpha="high"), "prompt_alpha='high' is not a finite number"),
    (
      lambda c: c["vision_config"].update(patch_size=[16.0, 16.0]),
      r"vision_config.patch_size=\[16.0, 16.0\] is not an",
    ),
  ],
)
def test_malformed_config_values_are_refused_naming_the_field(safetensors_dir, change, message):
  config = json.loads((safetensors_dir / "config.json").read_text())
  change(config)
  with pytest.raises(ValueError, match="^config.json: " + message):
    hf_xclip.arch_from_hf_config(config)


def test_config_defaults_fill_omitted_fields():
  config = {"model_type": "xclip", "text_config": {}, "vision_config": {"patch_size": 16}}

  arch = hf_xclip.arch_from_hf_config(config)

  assert arch == dict(
    embed_dim=512,
    image_resolution=224,
    vision_layers=12,
    vision_width=768,
    vision_patch_size=16,
    vision_heads=12,
    context_length=77,
    vocab_size=49408,
    transformer_width=512,
    transformer_heads=8,
    transformer_layers=12,
    num_frames=8,
    mit_layers=1,
    mit_heads=8,
    prompts_layers=2,
    prompts_heads=8,
    prompts_alpha=0.1,
  )
  assert hf_xclip.arch_from_hf_config(hf_xclip.hf_config_from_arch(arch)) == arch
  # Each head count its own, so that none can stand for another.
  distinct = {**arch, "vision_heads": 6, "transformer_heads": 2, "mit_heads": 4, "prompts_heads": 16}
  assert hf_xclip.arch_from_hf_config(hf_xclip.hf_config_from_arch(distinct)) == distinct


def test_is_hf_checkpoint(safetensors_dir, tmp_path):
  assert hf_xclip.is_hf_checkpoint(safetensors_dir)
  assert not hf_xclip.is_hf_checkpoint(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
  (tmp_path / "model.safetensors").write_bytes(b"")
  assert not hf_xclip.is_hf_checkpoint(tmp_path)


def test_load_pretrained_matches_hf_logits(hf_model, safetensors_dir):
  import xclip_jax.pretrained  # pylint: disable=g-import-not-at-top  (imports jax; only this test needs it)

  video, text = _random_inputs()
  with torch.no_grad():
    expected = hf_model(input_ids=text, pixel_values=video).logits_per_video.numpy()

  model = xclip_jax.pretrained.load_pretrained(safetensors_dir)
  logits = model.logits(video.permute(0, 1, 3, 4, 2).numpy(), text.numpy())

  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)
