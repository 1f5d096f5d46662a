"""Hugging Face CLIP checkpoints (`transformers.CLIPModel` directories) read as OpenAI CLIP state dicts.

Training initialises X-CLIP from CLIP, which most users hold as a Hugging Face directory (`openai/clip-vit-base-patch16`
as saved by transformers). `read_hf_clip` gives its tensors the names and layouts of OpenAI's `clip` package, so that
`official.config_from_official` and `official.params_from_official(..., base_params=...)` load it as they load OpenAI's
own files. The renames are those of the CLIP encoders (see `hf_mapping`), with one of CLIPModel's own:
`visual.ln_pre` is `vision_model.pre_layrnorm` (sic).

The architecture comes from the tensors, as for OpenAI's files, except the head counts, which the official code derives
as width // 64 and Hugging Face configs may set otherwise: `config_overrides` gives them.
"""

from collections.abc import Mapping
import pathlib
from typing import Any

import numpy as np

from xclip_jax.model import tokenizer
from xclip_jax.weights import hf_directory
from xclip_jax.weights import hf_mapping

# CLIP's text section is also checked for its eos_token_id: transformers' default, 2 before transformers 4.31 (either
# pools as X-CLIP does, see _arch_from_config).
_TEXT_DEFAULTS = dict(hf_mapping.TEXT_DEFAULTS, eos_token_id=tokenizer.END_TOKEN)
# transformers' pooling before 4.31 fixed the eos_token_id: with this value it takes the argmax of the ids.
_LEGACY_EOS_TOKEN_ID = 2


def _is_clip_config(config: Mapping[str, Any]) -> bool:
  model_type = config.get("model_type")
  return model_type == "clip" or (model_type is None and "CLIPModel" in (config.get("architectures") or ()))


def _arch_from_config(config: Mapping[str, Any], where: str) -> dict:
  """The `XCLIPConfig` fields of a CLIP config.json's encoders, checked to be loadable into X-CLIP."""
  if not _is_clip_config(config):
    raise ValueError(f"{where}: model_type is {config.get('model_type')!r}, not 'clip' (a transformers CLIPModel)")
  text = hf_mapping.section(config, "text_config", _TEXT_DEFAULTS, where)
  vision = hf_mapping.section(config, "vision_config", hf_mapping.VISION_DEFAULTS, where)
  problems = hf_mapping.encoder_problems(text, vision)
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
  if problems:
    raise ValueError(f"{where}: X-CLIP cannot be initialised from this CLIP model: " + "; ".join(problems))
  top = hf_mapping.checked({**hf_mapping.TOP_DEFAULTS, **config}, hf_mapping.TOP_DEFAULTS, "", where)
  return hf_mapping.encoders_arch(text, vision, top["projection_dim"], where)


def _name_table(arch: Mapping[str, Any]) -> hf_mapping.NameTable:
  """Every tensor of the CLIPModel: OpenAI name, Hugging Face name(s), OpenAI shape, layout hook."""
  vision = arch["vision_width"]
  table = hf_mapping.NameTable()
  table.text_encoder(arch)
  table.vision_embeddings(arch, "vision_model.pre_layrnorm")
  for i in range(arch["vision_layers"]):
    table.encoder_layer(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}", vision)
  table.layer_norm("visual.ln_post", "vision_model.post_layernorm", vision)
  table.add("visual.proj", "visual_projection.weight", (vision, arch["embed_dim"]), hf_mapping.TRANSPOSE)
  table.add("logit_scale", "logit_scale", ())
  return table


def _read_arch(directory: pathlib.Path) -> dict:
  return _arch_from_config(hf_directory.read_config(directory), str(directory / hf_directory.CONFIG_FILE))


def is_hf_clip_checkpoint(directory) -> bool:
  """Whether `directory` holds a Hugging Face CLIPModel (config.json of model_type 'clip' + weights)."""
  config = hf_directory.model_config(directory)
  return config is not None and _is_clip_config(config)


def config_overrides(directory) -> dict[str, int]:
  """The `XCLIPConfig` fields of a Hugging Face CLIP directory that its tensors do not tell: the head counts.

  Pass them to `official.config_from_official(state_dict, **overrides)`, which otherwise takes width // 64.

  Raises:
    FileNotFoundError: config.json is missing.
    ValueError: the config is not a CLIP config X-CLIP can be initialised from.
  """
  arch = _read_arch(pathlib.Path(directory))
  return dict(transformer_heads=arch["transformer_heads"], vision_heads=arch["vision_heads"])


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
  table = _name_table(_read_arch(directory))
  return table.to_official(hf_directory.read_tensors(directory), str(directory))
