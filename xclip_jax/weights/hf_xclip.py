"""Hugging Face X-CLIP checkpoints (`transformers.XCLIPModel`) <-> official X-CLIP state dicts.

The Hugging Face port renames every module of the official model and changes a few layouts. Beyond the renames of
the CLIP encoders (see `hf_mapping`), its own are:

| official (PyTorch XCLIP)                              | Hugging Face XCLIPModel                                   |
| ----------------------------------------------------- | --------------------------------------------------------- |
| `visual.ln_pre`                                       | `vision_model.pre_layernorm`                              |
| `visual.transformer.resblocks.*.message_{fc,ln,attn}` | `vision_model.encoder.layers.*.message_{fc,ln,attn}`      |
| `prompts_visual_ln`, `prompts_visual_proj`            | `prompts_visual_layernorm`, `prompts_visual_projection`   |
| `mit.positional_embedding`, `mit.resblocks.*`         | `mit.position_embedding`, `mit.encoder.layers.*`          |
| `prompts_generator.norm`                              | `prompts_generator.layernorm`                             |

`_name_table` lists every tensor of both layouts for a given architecture, so both directions check completeness: a
tensor left over or missing is an error naming it.
"""

from collections.abc import Mapping
import pathlib
from typing import Any

import numpy as np

from xclip_jax.weights import hf_directory
from xclip_jax.weights import hf_mapping

_VISION_DEFAULTS = dict(
  hf_mapping.VISION_DEFAULTS,
  mit_hidden_size=512,
  mit_intermediate_size=2048,
  mit_num_hidden_layers=1,
  mit_num_attention_heads=8,
  num_frames=8,
)
_TOP_DEFAULTS = dict(
  hf_mapping.TOP_DEFAULTS,
  prompt_layers=2,
  prompt_alpha=0.1,
  prompt_hidden_act="quick_gelu",
  prompt_num_attention_heads=8,
)

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


def arch_from_hf_config(config: Mapping[str, Any], where: str = hf_directory.CONFIG_FILE) -> dict:
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
  text = hf_mapping.section(config, "text_config", hf_mapping.TEXT_DEFAULTS, where)
  vision = hf_mapping.section(config, "vision_config", _VISION_DEFAULTS, where)
  top = hf_mapping.checked({**_TOP_DEFAULTS, **config}, _TOP_DEFAULTS, "", where)

  problems = hf_mapping.encoder_problems(text, vision)
  if vision["mit_intermediate_size"] != hf_mapping.OFFICIAL_MLP_RATIO * vision["mit_hidden_size"]:
    problems.append(
      f"vision_config.mit_intermediate_size={vision['mit_intermediate_size']} "
      f"is not {hf_mapping.OFFICIAL_MLP_RATIO} x mit_hidden_size={vision['mit_hidden_size']}"
    )
  if vision["mit_hidden_size"] != top["projection_dim"]:
    problems.append(
      f"vision_config.mit_hidden_size={vision['mit_hidden_size']} differs from "
      f"projection_dim={top['projection_dim']} (the official MIT works in the "
      "projection space)"
    )
  if top["prompt_hidden_act"] != "quick_gelu":
    problems.append(f"prompt_hidden_act={top['prompt_hidden_act']!r} is not 'quick_gelu'")
  if problems:
    raise ValueError(f"{where}: the official X-CLIP architecture cannot express this model: " + "; ".join(problems))

  return dict(
    hf_mapping.encoders_arch(text, vision, top["projection_dim"], where),
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
      "intermediate_size": hf_mapping.OFFICIAL_MLP_RATIO * arch["transformer_width"],
      "num_hidden_layers": arch["transformer_layers"],
      "num_attention_heads": arch["transformer_heads"],
      "max_position_embeddings": arch["context_length"],
      "hidden_act": "quick_gelu",
      "layer_norm_eps": hf_mapping.OFFICIAL_LAYER_NORM_EPS,
    },
    "vision_config": {
      "model_type": "xclip_vision_model",
      "hidden_size": arch["vision_width"],
      "intermediate_size": hf_mapping.OFFICIAL_MLP_RATIO * arch["vision_width"],
      "num_hidden_layers": arch["vision_layers"],
      "num_attention_heads": arch["vision_heads"],
      "mit_hidden_size": arch["embed_dim"],
      "mit_intermediate_size": hf_mapping.OFFICIAL_MLP_RATIO * arch["embed_dim"],
      "mit_num_hidden_layers": arch["mit_layers"],
      "mit_num_attention_heads": arch["mit_heads"],
      "num_channels": 3,
      "image_size": arch["image_resolution"],
      "patch_size": arch["vision_patch_size"],
      "num_frames": arch["num_frames"],
      "hidden_act": "quick_gelu",
      "layer_norm_eps": hf_mapping.OFFICIAL_LAYER_NORM_EPS,
    },
  }


def _name_table(arch: Mapping[str, Any]) -> hf_mapping.NameTable:
  """Every tensor of the model: official name, Hugging Face name(s), official shape, layout hook."""
  embed, vision = arch["embed_dim"], arch["vision_width"]
  hidden = hf_mapping.OFFICIAL_MLP_RATIO
  table = hf_mapping.NameTable()
  table.text_encoder(arch)

  # Vision encoder, with the cross-frame message tokens.
  table.vision_embeddings(arch, "vision_model.pre_layernorm")
  for i in range(arch["vision_layers"]):
    official, hf = f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}"
    table.linear(f"{official}.message_fc", f"{hf}.message_fc", vision, vision)
    table.layer_norm(f"{official}.message_ln", f"{hf}.message_ln", vision)
    table.attention(f"{official}.message_attn", f"{hf}.message_attn", vision)
    table.encoder_layer(official, hf, vision)
  table.layer_norm("visual.ln_post", "vision_model.post_layernorm", vision)
  table.add("visual.proj", "visual_projection.weight", (vision, embed), hf_mapping.TRANSPOSE)
  table.layer_norm("prompts_visual_ln", "prompts_visual_layernorm", vision)
  table.add("prompts_visual_proj", "prompts_visual_projection", (vision, embed))

  # Multi-frame integration transformer.
  table.add("mit.positional_embedding", "mit.position_embedding", (1, arch["num_frames"], embed))
  for i in range(arch["mit_layers"]):
    table.encoder_layer(f"mit.resblocks.{i}", f"mit.encoder.layers.{i}", embed)

  # Video-specific prompt generator: the same names on both sides but the norm.
  table.layer_norm("prompts_generator.norm", "prompts_generator.layernorm", embed)
  table.add("prompts_generator.alpha", "prompts_generator.alpha", (embed,))
  for i in range(arch["prompts_layers"]):
    layer = f"prompts_generator.decoder.{i}"
    for projection in ("q_proj", "k_proj", "v_proj"):  # Bias-free.
      table.add(f"{layer}.cross_attn.{projection}.weight", f"{layer}.cross_attn.{projection}.weight", (embed, embed))
    table.linear(f"{layer}.cross_attn.proj", f"{layer}.cross_attn.proj", embed, embed)
    table.layer_norm(f"{layer}.norm1", f"{layer}.norm1", embed)
    table.layer_norm(f"{layer}.norm3", f"{layer}.norm3", embed)
    table.linear(f"{layer}.mlp.0", f"{layer}.mlp.0", hidden * embed, embed)
    table.linear(f"{layer}.mlp.3", f"{layer}.mlp.3", embed, hidden * embed)

  table.add("logit_scale", "logit_scale", ())
  return table


def official_shapes(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """{official name: shape} of every tensor of the official X-CLIP of `arch`."""
  return _name_table(arch).official_shapes()


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
    ValueError: a tensor is missing, unexpected, or has the wrong shape.
  """
  return _name_table(arch).to_official(hf_state_dict, where)


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
    ValueError: a tensor is missing, unexpected, or has the wrong shape.
  """
  return _name_table(arch).to_hf(official_state_dict, "official state dict"), hf_config_from_arch(arch)


def is_hf_checkpoint(directory) -> bool:
  """Whether `directory` holds a Hugging Face X-CLIP model (config.json of model_type 'xclip' + weights)."""
  config = hf_directory.model_config(directory)
  return config is not None and config.get("model_type") == "xclip"


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
  arch = arch_from_hf_config(hf_directory.read_config(directory), where=str(directory / hf_directory.CONFIG_FILE))
  state_dict = official_from_hf(hf_directory.read_tensors(directory), arch, where=str(directory))
  return state_dict, arch
