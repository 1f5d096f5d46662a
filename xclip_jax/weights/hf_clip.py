"""Hugging Face CLIP checkpoints (`transformers.CLIPModel` directories) read as OpenAI CLIP state dicts.

Training initialises X-CLIP from CLIP, which most users hold as a Hugging Face directory (`openai/clip-vit-base-patch16`
as saved by transformers). `read_hf_clip` gives its tensors the names and layouts of OpenAI's `clip` package, so that
`official.config_from_official` and `official.params_from_official(..., base_params=...)` load it as they load OpenAI's
own files:

| OpenAI CLIP                                    | Hugging Face CLIPModel                                            |
| ---------------------------------------------- | ----------------------------------------------------------------- |
| `*.attn.in_proj_weight` ([q; k; v] stacked)     | `*.self_attn.{q,k,v}_proj.weight` (split)                          |
| `visual.proj`, `text_projection` (in, out)      | `visual_projection.weight`, `text_projection.weight` (out, in)     |
| `positional_embedding` parameters               | `*.embeddings.position_embedding.weight` (nn.Embedding)            |
| `visual.ln_pre`, `visual.ln_post`, `ln_final`   | `vision_model.pre_layrnorm` (sic), `post_layernorm`, `final_layer_norm` |
| `*.ln_1`, `*.ln_2`, `*.mlp.c_fc`, `*.mlp.c_proj` | `*.layer_norm1`, `*.layer_norm2`, `*.mlp.fc1`, `*.mlp.fc2`         |

The architecture comes from the tensors, as for OpenAI's files, except the head counts, which the official code derives
as width // 64 and Hugging Face configs may set otherwise: `config_overrides` gives them.
"""

from collections.abc import Mapping
import json
import pathlib
from typing import Any, NamedTuple

import numpy as np

from xclip_jax.model import tokenizer
from xclip_jax.weights import hf_xclip

CONFIG_FILE = hf_xclip.CONFIG_FILE
_WEIGHT_FILES = (
  hf_xclip.SAFETENSORS_FILE,
  hf_xclip.SAFETENSORS_INDEX_FILE,
  hf_xclip.PYTORCH_FILE,
  hf_xclip.PYTORCH_INDEX_FILE,
)
# Non-persistent buffers that checkpoints from older transformers releases still hold.
_IGNORED_HF_TENSORS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# transformers' CLIP defaults, for config.json files that omit default values (save_pretrained writes only the diff).
_TEXT_DEFAULTS = dict(
  vocab_size=49408,
  hidden_size=512,
  intermediate_size=2048,
  num_hidden_layers=12,
  num_attention_heads=8,
  max_position_embeddings=77,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
  # The default was 2 before transformers 4.31; either value pools as X-CLIP does (see _check_config).
  eos_token_id=tokenizer.END_TOKEN,
)
_VISION_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  num_channels=3,
  image_size=224,
  patch_size=32,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
)
_TOP_DEFAULTS = dict(projection_dim=512)
# transformers' pooling before 4.31 fixed the eos_token_id: with this value it takes the argmax of the ids.
_LEGACY_EOS_TOKEN_ID = 2
_OFFICIAL_LAYER_NORM_EPS = 1e-5
_OFFICIAL_MLP_RATIO = 4

# How an OpenAI tensor is made from its Hugging Face tensor(s).
_SAME = "same"
_TRANSPOSE = "transpose"
_QKV = "qkv"  # [q; k; v] stacked along the first axis.


class _Pair(NamedTuple):
  openai: str
  hf: tuple[str, ...]
  layout: str
  hf_shape: tuple[int, ...]  # Of each Hugging Face tensor.


class _Architecture(NamedTuple):
  text: dict[str, Any]
  vision: dict[str, Any]
  projection_dim: int


def _read_config(directory: pathlib.Path) -> dict:
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}")
  try:
    config = json.loads(config_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ValueError(f"{config_path}: invalid JSON ({error})") from error
  if not isinstance(config, dict):
    raise ValueError(f"{config_path}: not a JSON object")
  return config


def _is_clip_config(config: Mapping[str, Any]) -> bool:
  model_type = config.get("model_type")
  return model_type == "clip" or (model_type is None and "CLIPModel" in (config.get("architectures") or ()))


def _section(config: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> dict:
  # Configs written before transformers 4.22 may hold `<name>_dict`, which transformers lets override `<name>`.
  return {**defaults, **(config.get(name) or {}), **(config.get(f"{name}_dict") or {})}


def _architecture(config: Mapping[str, Any], where: str) -> _Architecture:
  """The text and vision sections of a CLIP config.json, with defaults, checked to be loadable into X-CLIP."""
  if not _is_clip_config(config):
    raise ValueError(f"{where}: model_type is {config.get('model_type')!r}, not 'clip' (a transformers CLIPModel)")
  text = _section(config, "text_config", _TEXT_DEFAULTS)
  vision = _section(config, "vision_config", _VISION_DEFAULTS)
  problems = []
  for section, values in (("text_config", text), ("vision_config", vision)):
    if values["hidden_act"] != "quick_gelu":
      problems.append(f"{section}.hidden_act={values['hidden_act']!r} is not 'quick_gelu'")
    if not np.isclose(values["layer_norm_eps"], _OFFICIAL_LAYER_NORM_EPS, rtol=1e-6, atol=0):
      problems.append(f"{section}.layer_norm_eps={values['layer_norm_eps']} is not {_OFFICIAL_LAYER_NORM_EPS}")
    if values["intermediate_size"] != _OFFICIAL_MLP_RATIO * values["hidden_size"]:
      problems.append(
        f"{section}.intermediate_size={values['intermediate_size']} is not "
        f"{_OFFICIAL_MLP_RATIO} x hidden_size={values['hidden_size']}"
      )
    if values["hidden_size"] % values["num_attention_heads"]:
      problems.append(
        f"{section}.num_attention_heads={values['num_attention_heads']} does not divide "
        f"hidden_size={values['hidden_size']}"
      )
  if text["vocab_size"] != tokenizer.VOCAB_SIZE:
    problems.append(
      f"text_config.vocab_size={text['vocab_size']} is not OpenAI's {tokenizer.VOCAB_SIZE} (X-CLIP's tokenizer)"
    )
  # X-CLIP pools the text at argmax(ids). Our tokenizer writes one end token, 49407, the largest id of the vocabulary,
  # so that argmax is also the first position of 49407, where transformers pools for eos_token_id=49407; for the
  # legacy eos_token_id=2 transformers pools at the argmax itself. Any other id would pool elsewhere.
  if text["eos_token_id"] not in (tokenizer.END_TOKEN, _LEGACY_EOS_TOKEN_ID):
    problems.append(
      f"text_config.eos_token_id={text['eos_token_id']} pools the text elsewhere than X-CLIP, which pools at its "
      f"end token {tokenizer.END_TOKEN}"
    )
  if vision["num_channels"] != 3:
    problems.append(f"vision_config.num_channels={vision['num_channels']} is not 3")
  for name in ("image_size", "patch_size"):
    if not isinstance(vision[name], int):
      problems.append(f"vision_config.{name}={vision[name]!r} is not one int (X-CLIP needs square images)")
  if problems:
    raise ValueError(f"{where}: X-CLIP cannot be initialised from this CLIP model: " + "; ".join(problems))
  return _Architecture(text, vision, config.get("projection_dim", _TOP_DEFAULTS["projection_dim"]))


def _name_pairs(arch: _Architecture) -> list[_Pair]:
  """Every tensor of the CLIPModel: OpenAI name, Hugging Face name(s), layout, Hugging Face shape."""
  text, vision, embed = arch.text["hidden_size"], arch.vision["hidden_size"], arch.projection_dim
  patch = arch.vision["patch_size"]
  grid = arch.vision["image_size"] // patch
  pairs = []

  def add(openai, hf, shape, layout=_SAME):
    pairs.append(_Pair(openai, (hf,) if isinstance(hf, str) else tuple(hf), layout, tuple(shape)))

  def linear(openai, hf, out_width, in_width):
    add(f"{openai}.weight", f"{hf}.weight", (out_width, in_width))
    add(f"{openai}.bias", f"{hf}.bias", (out_width,))

  def layer_norm(openai, hf, width):
    add(f"{openai}.weight", f"{hf}.weight", (width,))
    add(f"{openai}.bias", f"{hf}.bias", (width,))

  def encoder_layer(openai, hf, width):
    add(f"{openai}.attn.in_proj_weight", [f"{hf}.self_attn.{x}_proj.weight" for x in "qkv"], (width, width), _QKV)
    add(f"{openai}.attn.in_proj_bias", [f"{hf}.self_attn.{x}_proj.bias" for x in "qkv"], (width,), _QKV)
    linear(f"{openai}.attn.out_proj", f"{hf}.self_attn.out_proj", width, width)
    layer_norm(f"{openai}.ln_1", f"{hf}.layer_norm1", width)
    linear(f"{openai}.mlp.c_fc", f"{hf}.mlp.fc1", _OFFICIAL_MLP_RATIO * width, width)
    linear(f"{openai}.mlp.c_proj", f"{hf}.mlp.fc2", width, _OFFICIAL_MLP_RATIO * width)
    layer_norm(f"{openai}.ln_2", f"{hf}.layer_norm2", width)

  add("token_embedding.weight", "text_model.embeddings.token_embedding.weight", (arch.text["vocab_size"], text))
  add(
    "positional_embedding",
    "text_model.embeddings.position_embedding.weight",
    (arch.text["max_position_embeddings"], text),
  )
  for i in range(arch.text["num_hidden_layers"]):
    encoder_layer(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}", text)
  layer_norm("ln_final", "text_model.final_layer_norm", text)
  add("text_projection", "text_projection.weight", (embed, text), _TRANSPOSE)

  add("visual.class_embedding", "vision_model.embeddings.class_embedding", (vision,))
  add("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", (vision, 3, patch, patch))
  add("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", (grid * grid + 1, vision))
  layer_norm("visual.ln_pre", "vision_model.pre_layrnorm", vision)
  for i in range(arch.vision["num_hidden_layers"]):
    encoder_layer(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}", vision)
  layer_norm("visual.ln_post", "vision_model.post_layernorm", vision)
  add("visual.proj", "visual_projection.weight", (embed, vision), _TRANSPOSE)

  add("logit_scale", "logit_scale", ())
  return pairs


def is_hf_clip_checkpoint(directory) -> bool:
  """Whether `directory` holds a Hugging Face CLIPModel (config.json of model_type 'clip' + weights)."""
  directory = pathlib.Path(directory)
  try:
    config = _read_config(directory)
  except (FileNotFoundError, ValueError):
    return False
  return _is_clip_config(config) and any((directory / name).is_file() for name in _WEIGHT_FILES)


def config_overrides(directory) -> dict[str, int]:
  """The `XCLIPConfig` fields of a Hugging Face CLIP directory that its tensors do not tell: the head counts.

  Pass them to `official.config_from_official(state_dict, **overrides)`, which otherwise takes width // 64.

  Raises:
    FileNotFoundError: config.json is missing.
    ValueError: the config is not a CLIP config X-CLIP can be initialised from.
  """
  directory = pathlib.Path(directory)
  arch = _architecture(_read_config(directory), str(directory / CONFIG_FILE))
  return dict(
    transformer_heads=arch.text["num_attention_heads"],
    vision_heads=arch.vision["num_attention_heads"],
  )


def read_hf_clip(directory) -> dict[str, np.ndarray]:
  """Reads a Hugging Face CLIPModel directory as an OpenAI CLIP state dict.

  Args:
    directory: holds config.json and model.safetensors (or pytorch_model.bin, or shards with their index json).

  Returns:
    {OpenAI name: array} in the layouts of OpenAI's `clip` package and the checkpoint's dtype.

  Raises:
    FileNotFoundError: config.json or the weights are missing.
    ValueError: the config describes a model X-CLIP cannot be initialised from, or the tensors do not match it
      (missing, unexpected or wrongly shaped tensors are named).
  """
  directory = pathlib.Path(directory)
  arch = _architecture(_read_config(directory), str(directory / CONFIG_FILE))
  tensors = hf_xclip.read_hf_tensors(directory)
  pairs = _name_pairs(arch)
  expected = {name: pair.hf_shape for pair in pairs for name in pair.hf}
  present = set(tensors) - set(_IGNORED_HF_TENSORS)
  missing, unexpected = sorted(expected.keys() - present), sorted(present - expected.keys())
  if missing or unexpected:
    raise ValueError(
      f"{directory}: the tensors do not match the CLIP architecture of its {CONFIG_FILE}: "
      f"missing {missing or 'nothing'}; unexpected {unexpected or 'nothing'}"
    )
  wrong = [
    f"{name}: {np.shape(tensors[name])} instead of {shape}"
    for name, shape in expected.items()
    if np.shape(tensors[name]) != shape
  ]
  if wrong:
    raise ValueError(f"{directory}: tensors do not match the architecture in its {CONFIG_FILE}: " + "; ".join(wrong))
  state_dict = {}
  for openai, hf_names, layout, _ in pairs:
    parts = [np.asarray(tensors[name]) for name in hf_names]
    if layout == _QKV:
      state_dict[openai] = np.concatenate(parts, axis=0)
    elif layout == _TRANSPOSE:
      state_dict[openai] = np.ascontiguousarray(parts[0].T)
    else:
      state_dict[openai] = parts[0]
  return state_dict
