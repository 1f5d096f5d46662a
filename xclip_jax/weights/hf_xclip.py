"""Hugging Face X-CLIP checkpoints (`transformers.XCLIPModel`) <-> official X-CLIP state dicts.

The Hugging Face port renames every module of the official model and changes a few
layouts:

| official (PyTorch XCLIP)                         | Hugging Face XCLIPModel                                  |
| ------------------------------------------------ | -------------------------------------------------------- |
| `*.attn.in_proj_weight` ([q; k; v] stacked)       | `*.self_attn.{q,k,v}_proj.weight` (split)                 |
| `visual.proj`, `text_projection` (in, out)        | `visual_projection.weight`, `text_projection.weight` (out, in) |
| `positional_embedding` parameters                 | `*.position_embedding.weight` (nn.Embedding)              |
| `visual.ln_pre`, `visual.ln_post`, `ln_final`     | `pre_layernorm`, `post_layernorm`, `final_layer_norm`     |
| `mit.resblocks.*`, `prompts_generator.norm`       | `mit.encoder.layers.*`, `prompts_generator.layernorm`     |

`_name_pairs` lists every tensor of both layouts for a given architecture, so both
directions check completeness: a tensor left over or missing is an error naming it.
"""

from collections.abc import Mapping
import json
import pathlib
from typing import Any, NamedTuple

import numpy as np
import safetensors.numpy

from xclip_jax.weights import torch_io

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX_FILE = "pytorch_model.bin.index.json"

# Non-persistent buffers that checkpoints from older transformers releases still hold.
_IGNORED_HF_TENSORS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# transformers' XCLIP defaults, for config.json files that omit default values.
_TEXT_DEFAULTS = dict(
  vocab_size=49408,
  hidden_size=512,
  intermediate_size=2048,
  num_hidden_layers=12,
  num_attention_heads=8,
  max_position_embeddings=77,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
)
_VISION_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  mit_hidden_size=512,
  mit_intermediate_size=2048,
  mit_num_hidden_layers=1,
  mit_num_attention_heads=8,
  num_channels=3,
  image_size=224,
  patch_size=32,
  num_frames=8,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
)
_TOP_DEFAULTS = dict(
  projection_dim=512, prompt_layers=2, prompt_alpha=0.1, prompt_hidden_act="quick_gelu", prompt_num_attention_heads=8
)
# The official model's LayerNorm epsilon and MLP expansion, which config.json must match.
_OFFICIAL_LAYER_NORM_EPS = 1e-5
_OFFICIAL_MLP_RATIO = 4

ARCH_KEYS = (
  "embed_dim",
  "image_resolution",
  "vision_layers",
  "vision_width",
  "vision_patch_size",
  "vision_heads",
  "context_length",
  "vocab_size",
  "transformer_width",
  "transformer_heads",
  "transformer_layers",
  "num_frames",
  "mit_layers",
  "mit_heads",
  "prompts_layers",
  "prompts_heads",
  "prompts_alpha",
)

# How an official tensor is made from its Hugging Face tensor(s).
_SAME = "same"
_TRANSPOSE = "transpose"
_QKV = "qkv"  # [q; k; v] stacked along the first axis.


def _side(value, name: str, where: str) -> int:
  """An image or patch size, which Hugging Face allows as an int or a square pair."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"{where}: {name}={value} is not square; X-CLIP needs square images and patches")
    value = value[0]
  return int(value)


def arch_from_hf_config(config: Mapping[str, Any], where: str = CONFIG_FILE) -> dict:
  """The official architecture of a Hugging Face X-CLIP `config.json` dict.

  Args:
    config: the parsed config.json.
    where: names the config in errors.

  Returns:
    A dict with exactly the keys `ARCH_KEYS`.

  Raises:
    ValueError: the config is not an X-CLIP config, or describes a model the
      official architecture cannot express (e.g. an MLP ratio other than 4).
  """
  if config.get("model_type") != "xclip":
    raise ValueError(f"{where}: model_type is {config.get('model_type')!r}, not 'xclip'")
  text = {**_TEXT_DEFAULTS, **(config.get("text_config") or config.get("text_config_dict") or {})}
  vision = {**_VISION_DEFAULTS, **(config.get("vision_config") or config.get("vision_config_dict") or {})}
  top = {**_TOP_DEFAULTS, **config}

  problems = []
  for section, values in (("text_config", text), ("vision_config", vision)):
    if values["intermediate_size"] != _OFFICIAL_MLP_RATIO * values["hidden_size"]:
      problems.append(
        f"{section}.intermediate_size={values['intermediate_size']} is not "
        f"{_OFFICIAL_MLP_RATIO} x hidden_size={values['hidden_size']}"
      )
    if values["hidden_act"] != "quick_gelu":
      problems.append(f"{section}.hidden_act={values['hidden_act']!r} is not 'quick_gelu'")
    if not np.isclose(values["layer_norm_eps"], _OFFICIAL_LAYER_NORM_EPS, rtol=1e-6, atol=0):
      problems.append(f"{section}.layer_norm_eps={values['layer_norm_eps']} is not {_OFFICIAL_LAYER_NORM_EPS}")
  if vision["mit_intermediate_size"] != _OFFICIAL_MLP_RATIO * vision["mit_hidden_size"]:
    problems.append(
      f"vision_config.mit_intermediate_size={vision['mit_intermediate_size']} "
      f"is not {_OFFICIAL_MLP_RATIO} x mit_hidden_size={vision['mit_hidden_size']}"
    )
  if vision["mit_hidden_size"] != top["projection_dim"]:
    problems.append(
      f"vision_config.mit_hidden_size={vision['mit_hidden_size']} differs from "
      f"projection_dim={top['projection_dim']} (the official MIT works in the "
      "projection space)"
    )
  if vision["num_channels"] != 3:
    problems.append(f"vision_config.num_channels={vision['num_channels']} is not 3")
  if top["prompt_hidden_act"] != "quick_gelu":
    problems.append(f"prompt_hidden_act={top['prompt_hidden_act']!r} is not 'quick_gelu'")
  if problems:
    raise ValueError(f"{where}: the official X-CLIP architecture cannot express this model: " + "; ".join(problems))

  return dict(
    embed_dim=top["projection_dim"],
    image_resolution=_side(vision["image_size"], "vision_config.image_size", where),
    vision_layers=vision["num_hidden_layers"],
    vision_width=vision["hidden_size"],
    vision_patch_size=_side(vision["patch_size"], "vision_config.patch_size", where),
    vision_heads=vision["num_attention_heads"],
    context_length=text["max_position_embeddings"],
    vocab_size=text["vocab_size"],
    transformer_width=text["hidden_size"],
    transformer_heads=text["num_attention_heads"],
    transformer_layers=text["num_hidden_layers"],
    num_frames=vision["num_frames"],
    mit_layers=vision["mit_num_hidden_layers"],
    mit_heads=vision["mit_num_attention_heads"],
    prompts_layers=top["prompt_layers"],
    prompts_heads=top["prompt_num_attention_heads"],
    prompts_alpha=top["prompt_alpha"],
  )


def hf_config_from_arch(arch: Mapping[str, Any]) -> dict:
  """A Hugging Face X-CLIP `config.json` dict for an official architecture."""
  missing = [key for key in ARCH_KEYS if key not in arch]
  if missing:
    raise ValueError(f"arch lacks {missing}")
  return {
    "architectures": ["XCLIPModel"],
    "model_type": "xclip",
    "projection_dim": arch["embed_dim"],
    "prompt_layers": arch["prompts_layers"],
    "prompt_alpha": arch["prompts_alpha"],
    "prompt_hidden_act": "quick_gelu",
    "prompt_num_attention_heads": arch["prompts_heads"],
    "text_config": {
      "model_type": "xclip_text_model",
      "vocab_size": arch["vocab_size"],
      "hidden_size": arch["transformer_width"],
      "intermediate_size": _OFFICIAL_MLP_RATIO * arch["transformer_width"],
      "num_hidden_layers": arch["transformer_layers"],
      "num_attention_heads": arch["transformer_heads"],
      "max_position_embeddings": arch["context_length"],
      "hidden_act": "quick_gelu",
      "layer_norm_eps": _OFFICIAL_LAYER_NORM_EPS,
    },
    "vision_config": {
      "model_type": "xclip_vision_model",
      "hidden_size": arch["vision_width"],
      "intermediate_size": _OFFICIAL_MLP_RATIO * arch["vision_width"],
      "num_hidden_layers": arch["vision_layers"],
      "num_attention_heads": arch["vision_heads"],
      "mit_hidden_size": arch["embed_dim"],
      "mit_intermediate_size": _OFFICIAL_MLP_RATIO * arch["embed_dim"],
      "mit_num_hidden_layers": arch["mit_layers"],
      "mit_num_attention_heads": arch["mit_heads"],
      "num_channels": 3,
      "image_size": arch["image_resolution"],
      "patch_size": arch["vision_patch_size"],
      "num_frames": arch["num_frames"],
      "hidden_act": "quick_gelu",
      "layer_norm_eps": _OFFICIAL_LAYER_NORM_EPS,
    },
  }


class _Pair(NamedTuple):
  official: str
  hf: tuple[str, ...]
  layout: str
  shape: tuple[int, ...]  # Of the official tensor.


def _name_pairs(arch: Mapping[str, Any]) -> list[_Pair]:
  """Every tensor of the model: official name, Hugging Face name(s), layout, shape."""
  embed, vision, text = arch["embed_dim"], arch["vision_width"], arch["transformer_width"]
  patch, grid = arch["vision_patch_size"], arch["image_resolution"] // arch["vision_patch_size"]
  hidden = _OFFICIAL_MLP_RATIO
  pairs = []

  def add(official, hf, shape, layout=_SAME):
    pairs.append(_Pair(official, (hf,) if isinstance(hf, str) else tuple(hf), layout, tuple(shape)))

  def linear(official, hf, out_width, in_width):
    add(f"{official}.weight", f"{hf}.weight", (out_width, in_width))
    add(f"{official}.bias", f"{hf}.bias", (out_width,))

  def layer_norm(official, hf, width):
    add(f"{official}.weight", f"{hf}.weight", (width,))
    add(f"{official}.bias", f"{hf}.bias", (width,))

  def attention(official, hf, width):
    add(f"{official}.in_proj_weight", [f"{hf}.{x}_proj.weight" for x in "qkv"], (3 * width, width), _QKV)
    add(f"{official}.in_proj_bias", [f"{hf}.{x}_proj.bias" for x in "qkv"], (3 * width,), _QKV)
    linear(f"{official}.out_proj", f"{hf}.out_proj", width, width)

  def encoder_layer(official, hf, width):
    attention(f"{official}.attn", f"{hf}.self_attn", width)
    layer_norm(f"{official}.ln_1", f"{hf}.layer_norm1", width)
    linear(f"{official}.mlp.c_fc", f"{hf}.mlp.fc1", hidden * width, width)
    linear(f"{official}.mlp.c_proj", f"{hf}.mlp.fc2", width, hidden * width)
    layer_norm(f"{official}.ln_2", f"{hf}.layer_norm2", width)

  # Text encoder.
  add("token_embedding.weight", "text_model.embeddings.token_embedding.weight", (arch["vocab_size"], text))
  add("positional_embedding", "text_model.embeddings.position_embedding.weight", (arch["context_length"], text))
  for i in range(arch["transformer_layers"]):
    encoder_layer(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}", text)
  layer_norm("ln_final", "text_model.final_layer_norm", text)
  add("text_projection", "text_projection.weight", (text, embed), _TRANSPOSE)

  # Vision encoder, with the cross-frame message tokens.
  add("visual.class_embedding", "vision_model.embeddings.class_embedding", (vision,))
  add("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", (vision, 3, patch, patch))
  add("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", (grid * grid + 1, vision))
  layer_norm("visual.ln_pre", "vision_model.pre_layernorm", vision)
  for i in range(arch["vision_layers"]):
    official, hf = f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}"
    linear(f"{official}.message_fc", f"{hf}.message_fc", vision, vision)
    layer_norm(f"{official}.message_ln", f"{hf}.message_ln", vision)
    attention(f"{official}.message_attn", f"{hf}.message_attn", vision)
    encoder_layer(official, hf, vision)
  layer_norm("visual.ln_post", "vision_model.post_layernorm", vision)
  add("visual.proj", "visual_projection.weight", (vision, embed), _TRANSPOSE)
  layer_norm("prompts_visual_ln", "prompts_visual_layernorm", vision)
  add("prompts_visual_proj", "prompts_visual_projection", (vision, embed))

  # Multi-frame integration transformer.
  add("mit.positional_embedding", "mit.position_embedding", (1, arch["num_frames"], embed))
  for i in range(arch["mit_layers"]):
    encoder_layer(f"mit.resblocks.{i}", f"mit.encoder.layers.{i}", embed)

  # Video-specific prompt generator: the same names on both sides but the norm.
  layer_norm("prompts_generator.norm", "prompts_generator.layernorm", embed)
  add("prompts_generator.alpha", "prompts_generator.alpha", (embed,))
  for i in range(arch["prompts_layers"]):
    layer = f"prompts_generator.decoder.{i}"
    for projection in ("q_proj", "k_proj", "v_proj"):  # Bias-free.
      add(f"{layer}.cross_attn.{projection}.weight", f"{layer}.cross_attn.{projection}.weight", (embed, embed))
    linear(f"{layer}.cross_attn.proj", f"{layer}.cross_attn.proj", embed, embed)
    layer_norm(f"{layer}.norm1", f"{layer}.norm1", embed)
    layer_norm(f"{layer}.norm3", f"{layer}.norm3", embed)
    linear(f"{layer}.mlp.0", f"{layer}.mlp.0", hidden * embed, embed)
    linear(f"{layer}.mlp.3", f"{layer}.mlp.3", embed, hidden * embed)

  add("logit_scale", "logit_scale", ())
  return pairs


def official_shapes(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """{official name: shape} of every tensor of the official X-CLIP of `arch`."""
  return {pair.official: pair.shape for pair in _name_pairs(arch)}


def _hf_shape(pair: _Pair) -> tuple[int, ...]:
  if pair.layout == _QKV:
    return (pair.shape[0] // 3, *pair.shape[1:])
  if pair.layout == _TRANSPOSE:
    return pair.shape[::-1]
  return pair.shape


def _check_shapes(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], where: str):
  wrong = [
    f"{name}: {np.shape(state_dict[name])} instead of {shape}"
    for name, shape in expected.items()
    if np.shape(state_dict[name]) != shape
  ]
  if wrong:
    raise ValueError(f"{where}: tensors do not match the architecture in the config: " + "; ".join(wrong))


def official_from_hf(
  hf_state_dict: Mapping[str, np.ndarray], arch: Mapping[str, Any], where: str = "Hugging Face state dict"
) -> dict[str, np.ndarray]:
  """Renames and re-lays-out a Hugging Face X-CLIP state dict into the official one.

  Args:
    hf_state_dict: `XCLIPModel.state_dict()` as numpy arrays.
    arch: the architecture (`arch_from_hf_config`).
    where: names the source in errors.

  Returns:
    The official state dict, every tensor in its PyTorch layout and dtype.

  Raises:
    ValueError: a tensor is missing, left unmapped, or has the wrong shape.
  """
  pairs = _name_pairs(arch)
  expected = {hf for pair in pairs for hf in pair.hf}
  present = set(hf_state_dict) - set(_IGNORED_HF_TENSORS)
  missing, unmapped = sorted(expected - present), sorted(present - expected)
  if missing or unmapped:
    raise ValueError(
      f"{where} does not match the X-CLIP architecture of its config: "
      f"missing {missing or 'nothing'}; unmapped {unmapped or 'nothing'}"
    )
  _check_shapes(hf_state_dict, {hf: _hf_shape(pair) for pair in pairs for hf in pair.hf}, where)
  official = {}
  for official_name, hf_names, layout, _ in pairs:
    tensors = [np.asarray(hf_state_dict[name]) for name in hf_names]
    if layout == _QKV:
      official[official_name] = np.concatenate(tensors, axis=0)
    elif layout == _TRANSPOSE:
      official[official_name] = np.ascontiguousarray(tensors[0].T)
    else:
      official[official_name] = tensors[0]
  return official


def hf_from_official(
  official_state_dict: Mapping[str, np.ndarray], arch: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict]:
  """The Hugging Face X-CLIP tensors and config.json dict of an official model.

  Args:
    official_state_dict: the official state dict (PyTorch layouts).
    arch: its architecture, with the keys `ARCH_KEYS`.

  Returns:
    (hf_state_dict, config): `XCLIPModel(XCLIPConfig(**config))` loads the tensors
    with no missing or unexpected keys.

  Raises:
    ValueError: a tensor is missing, left unmapped, or has the wrong shape.
  """
  pairs = _name_pairs(arch)
  expected = {pair.official for pair in pairs}
  missing = sorted(expected - set(official_state_dict))
  unmapped = sorted(set(official_state_dict) - expected)
  if missing or unmapped:
    raise ValueError(
      "official state dict does not match the architecture: "
      f"missing {missing or 'nothing'}; unmapped {unmapped or 'nothing'}"
    )
  official = {name: np.asarray(value) for name, value in official_state_dict.items()}
  _check_shapes(official, official_shapes(arch), "official state dict")
  hf = {}
  for official_name, hf_names, layout, _ in pairs:
    tensor = official[official_name]
    if layout == _QKV:
      for hf_name, part in zip(hf_names, np.split(tensor, 3, axis=0)):
        hf[hf_name] = np.ascontiguousarray(part)
    elif layout == _TRANSPOSE:
      hf[hf_names[0]] = np.ascontiguousarray(tensor.T)
    else:
      hf[hf_names[0]] = tensor
  return hf, hf_config_from_arch(arch)


def read_hf_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of a Hugging Face checkpoint directory, single-file or sharded."""
  for index_name, reads_torch in ((SAFETENSORS_INDEX_FILE, False), (PYTORCH_INDEX_FILE, True)):  # noqa: B007 (read after the break)
    if (directory / index_name).is_file():
      weight_map = json.loads((directory / index_name).read_text()).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{directory / index_name}: no 'weight_map' object")
      shards = sorted(set(weight_map.values()))
      break
  else:
    if (directory / SAFETENSORS_FILE).is_file():
      shards, reads_torch = [SAFETENSORS_FILE], False
    elif (directory / PYTORCH_FILE).is_file():
      shards, reads_torch = [PYTORCH_FILE], True
    else:
      raise FileNotFoundError(f"{directory}: no {SAFETENSORS_FILE}, {PYTORCH_FILE} or sharded index")
  tensors = {}
  for shard in shards:
    path = directory / shard
    if reads_torch:
      shard_tensors = torch_io.load_torch_file(path)
      if not isinstance(shard_tensors, dict) or not all(
        isinstance(value, np.ndarray) for value in shard_tensors.values()
      ):
        raise ValueError(f"{path}: not a state dict of tensors")
    else:
      try:
        shard_tensors = safetensors.numpy.load_file(path)
      except Exception as error:  # safetensors raises its own, unexported, error type.
        raise ValueError(f"{path}: unreadable safetensors file ({error})") from error
    tensors.update(shard_tensors)
  return tensors


def is_hf_checkpoint(directory) -> bool:
  """Whether `directory` holds a Hugging Face X-CLIP model (config.json + weights)."""
  directory = pathlib.Path(directory)
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    return False
  try:
    config = json.loads(config_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError):
    return False
  has_weights = any(
    (directory / name).is_file()
    for name in (SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE, PYTORCH_FILE, PYTORCH_INDEX_FILE)
  )
  return isinstance(config, dict) and config.get("model_type") == "xclip" and has_weights


def read_hf_checkpoint(directory) -> tuple[dict[str, np.ndarray], dict]:
  """Reads a Hugging Face X-CLIP directory as an official state dict and its architecture.

  Args:
    directory: holds config.json and model.safetensors (or pytorch_model.bin, or
      shards with their index json).

  Returns:
    (official_state_dict, arch): arch has exactly the keys `ARCH_KEYS`
    (`prompts_alpha` is informative: the checkpoint's alpha tensor is what counts).

  Raises:
    FileNotFoundError: config.json or the weights are missing.
    ValueError: the config or the tensors do not describe an official X-CLIP.
  """
  directory = pathlib.Path(directory)
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}")
  try:
    config = json.loads(config_path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{config_path}: invalid JSON ({error})") from error
  arch = arch_from_hf_config(config, where=str(config_path))
  state_dict = official_from_hf(read_hf_tensors(directory), arch, where=str(directory))
  return state_dict, arch
