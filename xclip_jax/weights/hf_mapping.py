"""Hugging Face CLIP-family checkpoints <-> official state dicts: the one mapping mechanism of `hf_clip` and `hf_xclip`.

Modelled on maxtext's checkpoint_conversion param_mapping, a model's mapping is

  - a name table (`NameTable`), which each model builds for an architecture: a row (`Pair`) per official tensor, in
    the order of the official state dict, naming the Hugging Face tensor(s) it corresponds to, its official shape and
    the hook that changes its layout;
  - layout hooks (`SAME`, `TRANSPOSE`, `QKV`), each a pair of inverse functions, so that one table converts both ways
    and knows the Hugging Face shapes from the official ones.

Both directions check completeness against the table: a tensor missing, left over or wrongly shaped is an error
naming it. The renames the transformers ports of CLIP and X-CLIP share, in the table builders here:

| official (OpenAI CLIP, X-CLIP)             | Hugging Face (CLIPModel, XCLIPModel)                    | hook      |
| ------------------------------------------ | ------------------------------------------------------- | --------- |
| `*.attn.in_proj_{weight,bias}` ([q; k; v]) | `*.self_attn.{q,k,v}_proj.{weight,bias}`                | QKV       |
| `text_projection`, `visual.proj`           | `text_projection.weight`, `visual_projection.weight`    | TRANSPOSE |
| `positional_embedding` parameters          | `*.embeddings.position_embedding.weight` (nn.Embedding) | SAME      |
| `ln_final`                                 | `text_model.final_layer_norm`                           | SAME      |
| `visual.ln_post`                           | `vision_model.post_layernorm`                           | SAME      |
| `*.ln_1`, `*.ln_2`                         | `*.layer_norm1`, `*.layer_norm2`                        | SAME      |
| `*.mlp.c_fc`, `*.mlp.c_proj`               | `*.mlp.fc1`, `*.mlp.fc2`                                | SAME      |

The config side is shared as well: transformers' defaults of the text and vision sections, how transformers reads a
section (`section`), the checks that the sections describe encoders the official architecture can express, and
their reading into the official architecture's fields (`encoders_arch`).
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

# Non-persistent buffers that checkpoints from older transformers releases still hold.
IGNORED_HF_TENSORS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# transformers' defaults, the same for CLIP and X-CLIP, for config.json files that omit default values
# (save_pretrained writes only the fields that differ from them).
TEXT_DEFAULTS = dict(
  vocab_size=49408,
  hidden_size=512,
  intermediate_size=2048,
  num_hidden_layers=12,
  num_attention_heads=8,
  max_position_embeddings=77,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
)
VISION_DEFAULTS = dict(
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
TOP_DEFAULTS = dict(projection_dim=512)
# The official model's LayerNorm epsilon and MLP expansion, which config.json must match.
OFFICIAL_LAYER_NORM_EPS = 1e-5
OFFICIAL_MLP_RATIO = 4


def section(config: Mapping[str, Any], name: str, defaults: Mapping[str, Any], where: str) -> dict:
  """The `name` section ('text_config' or 'vision_config') of a config.json, read as transformers reads it, with the
  values of `defaults`' fields checked to be of their defaults' kinds (ValueError naming the first that is not).

  Configs written before transformers 4.22 may hold `<name>_dict`. CLIPConfig and XCLIPConfig then build the section
  from `<name>_dict` alone, over the defaults, and let it replace every value of `<name>`, even those `<name>_dict`
  does not set; a `null` `<name>_dict` counts as absent.
  """
  key = f"{name}_dict" if config.get(f"{name}_dict") is not None else name
  values = config.get(key)
  if not isinstance(values, (Mapping, type(None))):
    raise ValueError(f"{where}: {key} is {values!r}, not an object")
  return checked({**defaults, **(values or {})}, defaults, f"{name}.", where)


def checked(values: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str, where: str) -> dict:
  """`values`, whose fields named in `defaults` must be of their defaults' kinds: an integer of at least 0, a finite
  number, a string (and an image or patch size may be a pair of integers); ValueError naming the first that is not."""
  for key, default in defaults.items():
    value = values[key]
    if key in ("image_size", "patch_size") and isinstance(value, (list, tuple)):
      kind, fits = "an integer or a pair of them", all(_is_count(v) for v in value)
    elif isinstance(default, int):
      kind, fits = "an integer of at least 0", _is_count(value)
    elif isinstance(default, float):
      kind = "a finite number"
      fits = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    else:
      kind, fits = "a string", isinstance(value, str)
    if not fits:
      raise ValueError(f"{where}: {prefix}{key}={value!r} is not {kind}")
  return dict(values)


def _is_count(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def side(value, name: str, where: str) -> int:
  """An image or patch size, which Hugging Face allows as an int or a square pair."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f"{where}: {name}={value} is not square; X-CLIP needs square images and patches")
    value = value[0]
  return int(value)


def encoder_problems(text: Mapping[str, Any], vision: Mapping[str, Any]) -> list[str]:
  """What in the text and vision sections the official encoders cannot express (empty if nothing)."""
  problems = []
  for name, values in (("text_config", text), ("vision_config", vision)):
    if values["hidden_act"] != "quick_gelu":
      problems.append(f"{name}.hidden_act={values['hidden_act']!r} is not 'quick_gelu'")
    if not np.isclose(values["layer_norm_eps"], OFFICIAL_LAYER_NORM_EPS, rtol=1e-6, atol=0):
      problems.append(f"{name}.layer_norm_eps={values['layer_norm_eps']} is not {OFFICIAL_LAYER_NORM_EPS}")
    if values["intermediate_size"] != OFFICIAL_MLP_RATIO * values["hidden_size"]:
      problems.append(
        f"{name}.intermediate_size={values['intermediate_size']} is not "
        f"{OFFICIAL_MLP_RATIO} x hidden_size={values['hidden_size']}"
      )
    if not values["num_attention_heads"] or values["hidden_size"] % values["num_attention_heads"]:
      problems.append(
        f"{name}.num_attention_heads={values['num_attention_heads']} does not divide "
        f"hidden_size={values['hidden_size']}"
      )
  if vision["num_channels"] != 3:
    problems.append(f"vision_config.num_channels={vision['num_channels']} is not 3")
  return problems


def encoders_arch(text: Mapping[str, Any], vision: Mapping[str, Any], projection_dim: int, where: str) -> dict:
  """The `XCLIPConfig` fields of the text and vision encoders and their projection, from checked config sections."""
  return dict(
    embed_dim=projection_dim,
    image_resolution=side(vision["image_size"], "vision_config.image_size", where),
    vision_layers=vision["num_hidden_layers"],
    vision_width=vision["hidden_size"],
    vision_patch_size=side(vision["patch_size"], "vision_config.patch_size", where),
    vision_heads=vision["num_attention_heads"],
    context_length=text["max_position_embeddings"],
    vocab_size=text["vocab_size"],
    transformer_width=text["hidden_size"],
    transformer_heads=text["num_attention_heads"],
    transformer_layers=text["num_hidden_layers"],
  )


class Hook(NamedTuple):
  """A layout change between an official tensor and its Hugging Face tensor(s), in both directions."""

  hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # Of each Hugging Face tensor, from the official shape.
  to_official: Callable[[list[np.ndarray]], np.ndarray]
  to_hf: Callable[[np.ndarray], list[np.ndarray]]


def _transposed(array: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(array.T)


def _split_qkv(array: np.ndarray) -> list[np.ndarray]:
  return [np.ascontiguousarray(part) for part in np.split(array, 3, axis=0)]


# The same layout on both sides.
SAME = Hook(hf_shape=lambda shape: shape, to_official=lambda parts: parts[0], to_hf=lambda array: [array])
# Projections: official (in, out) matrices, Hugging Face nn.Linear weights (out, in).
TRANSPOSE = Hook(
  hf_shape=lambda shape: shape[::-1], to_official=lambda parts: _transposed(parts[0]), to_hf=lambda a: [_transposed(a)]
)
# Attention inputs: official [q; k; v] stacked along the first axis (nn.MultiheadAttention), Hugging Face q, k and v.
QKV = Hook(
  hf_shape=lambda shape: (shape[0] // 3, *shape[1:]),
  to_official=lambda parts: np.concatenate(parts, axis=0),
  to_hf=_split_qkv,
)


class Pair(NamedTuple):
  """One row of a name table."""

  official: str
  hf: tuple[str, ...]
  shape: tuple[int, ...]  # Of the official tensor; `hook.hf_shape` gives the Hugging Face tensors'.
  hook: Hook


class NameTable:
  """Every tensor of a model: official name <-> Hugging Face name(s), built row by row, and both conversions."""

  def __init__(self):
    self.pairs: list[Pair] = []

  def add(self, official: str, hf: str | list[str], shape, hook: Hook = SAME):
    self.pairs.append(Pair(official, (hf,) if isinstance(hf, str) else tuple(hf), tuple(shape), hook))

  def linear(self, official: str, hf: str, out_width: int, in_width: int):
    self.add(f"{official}.weight", f"{hf}.weight", (out_width, in_width))
    self.add(f"{official}.bias", f"{hf}.bias", (out_width,))

  def layer_norm(self, official: str, hf: str, width: int):
    self.add(f"{official}.weight", f"{hf}.weight", (width,))
    self.add(f"{official}.bias", f"{hf}.bias", (width,))

  def attention(self, official: str, hf: str, width: int):
    """An nn.MultiheadAttention (official) <-> q, k, v and out projections (Hugging Face)."""
    self.add(f"{official}.in_proj_weight", [f"{hf}.{x}_proj.weight" for x in "qkv"], (3 * width, width), QKV)
    self.add(f"{official}.in_proj_bias", [f"{hf}.{x}_proj.bias" for x in "qkv"], (3 * width,), QKV)
    self.linear(f"{official}.out_proj", f"{hf}.out_proj", width, width)

  def encoder_layer(self, official: str, hf: str, width: int):
    """A CLIP residual attention block."""
    self.attention(f"{official}.attn", f"{hf}.self_attn", width)
    self.layer_norm(f"{official}.ln_1", f"{hf}.layer_norm1", width)
    self.linear(f"{official}.mlp.c_fc", f"{hf}.mlp.fc1", OFFICIAL_MLP_RATIO * width, width)
    self.linear(f"{official}.mlp.c_proj", f"{hf}.mlp.fc2", width, OFFICIAL_MLP_RATIO * width)
    self.layer_norm(f"{official}.ln_2", f"{hf}.layer_norm2", width)

  def text_encoder(self, arch: Mapping[str, Any]):
    """The text encoder and its projection, which CLIP and X-CLIP name alike on both sides."""
    width = arch["transformer_width"]
    self.add("token_embedding.weight", "text_model.embeddings.token_embedding.weight", (arch["vocab_size"], width))
    self.add("positional_embedding", "text_model.embeddings.position_embedding.weight", (arch["context_length"], width))
    for i in range(arch["transformer_layers"]):
      self.encoder_layer(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}", width)
    self.layer_norm("ln_final", "text_model.final_layer_norm", width)
    self.add("text_projection", "text_projection.weight", (width, arch["embed_dim"]), TRANSPOSE)

  def vision_embeddings(self, arch: Mapping[str, Any], pre_layernorm: str):
    """The ViT's class and patch embeddings, positions and `ln_pre` (`pre_layernorm`: its Hugging Face name, which
    CLIPModel spells `vision_model.pre_layrnorm`)."""
    vision, patch = arch["vision_width"], arch["vision_patch_size"]
    grid = arch["image_resolution"] // patch
    self.add("visual.class_embedding", "vision_model.embeddings.class_embedding", (vision,))
    self.add("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", (vision, 3, patch, patch))
    self.add(
      "visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", (grid * grid + 1, vision)
    )
    self.layer_norm("visual.ln_pre", pre_layernorm, vision)

  def official_shapes(self) -> dict[str, tuple[int, ...]]:
    return {pair.official: pair.shape for pair in self.pairs}

  def hf_shapes(self) -> dict[str, tuple[int, ...]]:
    return {name: pair.hook.hf_shape(pair.shape) for pair in self.pairs for name in pair.hf}

  def to_official(self, hf_tensors: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """The official state dict of Hugging Face tensors (`IGNORED_HF_TENSORS` aside), in its PyTorch layouts and dtype.

    Args:
      hf_tensors: {Hugging Face name: array}.
      where: names the source in errors.

    Raises:
      ValueError: a tensor is missing, left over or misshapen.
    """
    _check(hf_tensors, self.hf_shapes(), where, ignored=IGNORED_HF_TENSORS)
    return {
      pair.official: pair.hook.to_official([np.asarray(hf_tensors[name]) for name in pair.hf]) for pair in self.pairs
    }

  def to_hf(self, official_tensors: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """The Hugging Face tensors of an official state dict.

    Raises:
      ValueError: a tensor is missing, left over or misshapen.
    """
    _check(official_tensors, self.official_shapes(), where)
    hf = {}
    for pair in self.pairs:
      hf.update(zip(pair.hf, pair.hook.to_hf(np.asarray(official_tensors[pair.official]))))
    return hf


def _check(
  tensors: Mapping[str, np.ndarray],
  expected: Mapping[str, tuple[int, ...]],
  where: str,
  ignored: tuple[str, ...] = (),
):
  # "unexpected": what transformers' load_state_dict calls tensors that the model does not have.
  present = set(tensors) - set(ignored)
  missing, extra = sorted(expected.keys() - present), sorted(present - expected.keys())
  if missing or extra:
    raise ValueError(
      f"{where}: the tensors do not match the architecture: missing {_first(missing)}; unexpected {_first(extra)}"
    )
  wrong = [
    f"{name}: {np.shape(tensors[name])} instead of {shape}"
    for name, shape in expected.items()
    if np.shape(tensors[name]) != shape
  ]
  if wrong:
    raise ValueError(f"{where}: the tensors do not match the architecture in shape: {_first(wrong, '; ')}")


def _first(items: list[str], separator: str = ", ", shown: int = 3) -> str:
  """The first few of `items` and how many more: a checkpoint of another model lacks hundreds of tensors."""
  if not items:
    return "nothing"
  more = f"{separator}and {len(items) - shown} more" if len(items) > shown else ""
  return separator.join(items[:shown]) + more
