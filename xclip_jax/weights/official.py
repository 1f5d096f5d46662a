"""Official PyTorch X-CLIP state dicts <-> Flax parameters.

Every checkpoint format is first read into an *official state dict*: `{name: np.ndarray}` with the names and layouts
of the official PyTorch model. The mapping to Flax is a renaming; every array keeps its layout:
  - `a.resblocks.0.b` -> `a/resblocks_0/b` (likewise `decoder.N`, `mlp.N`);
  - `in_proj_weight` / `in_proj_bias` -> `in_proj/weight` / `in_proj/bias`;
  - LayerNorm `weight` -> `scale`; Embedding `weight` -> `embedding`; everything else keeps its name.
"""

import functools
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np

from xclip_jax.model import config as model_config
from xclip_jax.model import xclip

# Entries of OpenAI's CLIP state dicts that are metadata, not parameters (the official build_model drops them too).
CLIP_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Official-name prefixes of the modules X-CLIP adds on top of CLIP.
XCLIP_ONLY_PREFIXES = ("prompts_generator.", "mit.", "prompts_visual_ln.", "prompts_visual_proj")
_SEQUENCE_PART = re.compile(r"^(resblocks|decoder|mlp)_(\d+)$")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the architecture it is loaded into."""


def _flax_entry(name: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
  name = name.replace("in_proj_weight", "in_proj.weight").replace("in_proj_bias", "in_proj.bias")
  parts = []
  for part in name.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  if parts[-1] == "weight":
    if parts[-2] == "token_embedding":
      parts[-1] = "embedding"
    elif value.ndim == 1:
      parts[-1] = "scale"
  return tuple(parts), value


def flax_name(name: str, value: np.ndarray) -> str:
  """The '/'-joined Flax name of the official parameter `name` (the training rules are written over these)."""
  return "/".join(_flax_entry(name, np.asarray(value))[0])


def _official_entry(path: tuple[str, ...], value: np.ndarray) -> tuple[str, np.ndarray]:
  parts = list(path)
  if parts[-1] in ("scale", "embedding"):
    parts[-1] = "weight"
  names = []
  for part in parts:
    match = _SEQUENCE_PART.match(part)
    names.extend(match.groups() if match else [part])
  name = ".".join(names).replace("in_proj.weight", "in_proj_weight").replace("in_proj.bias", "in_proj_bias")
  return name, value


def _init(config: model_config.XCLIPConfig, key: jax.Array) -> dict:
  video = jnp.zeros((1, config.num_frames, config.image_resolution, config.image_resolution, 3), jnp.float32)
  text = jnp.zeros((1, config.context_length), jnp.int32)
  return xclip.XCLIP(config).init(key, video, text)["params"]


def init_params(config: model_config.XCLIPConfig, seed: int = 0) -> dict:
  """Freshly initialised parameters (the official initialisation's distributions)."""
  key = jax.random.key(seed)
  # It runs once: XLA's lighter optimisation compiles it in 10 s instead of 15 on the 2-core CPU for the demo's model
  # (mostly random-number kernels, one per parameter), and it runs as fast.
  init = jax.jit(functools.partial(_init, config)).lower(key).compile({"xla_backend_optimization_level": 1})
  return init(key)


def abstract_params(config: model_config.XCLIPConfig) -> dict:
  """The parameter tree of `config` as ShapeDtypeStructs, without allocating anything."""
  return jax.eval_shape(functools.partial(_init, config), jax.random.key(0))


def params_from_official(
  state_dict: dict[str, np.ndarray], config: model_config.XCLIPConfig, base_params: dict | None = None
) -> dict:
  """Flax parameters from an official state dict, checked name by name and shape by shape against `config`.

  With `base_params`, names absent from `state_dict` keep their value there (loading CLIP into X-CLIP); without,
  every parameter of the model must be in the state dict. Names the model does not have are an error either way.
  """
  expected = flax.traverse_util.flatten_dict(abstract_params(config))
  converted = {}
  for name, value in state_dict.items():
    if name in CLIP_METADATA_KEYS:
      continue
    path, value = _flax_entry(name, np.asarray(value))
    if path not in expected:
      raise CheckpointMismatchError(
        f"checkpoint entry {name!r} (shape {tuple(value.shape)}) has no counterpart in "
        f"the model (looked for {'/'.join(path)})"
      )
    if tuple(value.shape) != tuple(expected[path].shape):
      want_name, want = _official_entry(path, np.zeros(expected[path].shape, np.int8))
      raise CheckpointMismatchError(
        f"checkpoint entry {name!r} has shape {tuple(np.shape(state_dict[name]))} but the "
        f"model expects {tuple(want.shape)} for {want_name!r}"
      )
    converted[path] = np.asarray(value, np.float32)
  missing = [path for path in expected if path not in converted]
  if missing:
    if base_params is None:
      names = [_official_entry(path, None)[0] for path in missing]
      more = f" and {len(names) - 3} more" if len(names) > 3 else ""
      raise CheckpointMismatchError(
        f"checkpoint lacks {len(names)} parameters of the model: {', '.join(map(repr, names[:3]))}{more}"
      )
    base = flax.traverse_util.flatten_dict(base_params)
    converted.update({path: base[path] for path in missing})
  return flax.traverse_util.unflatten_dict(converted)


def official_from_params(params: dict) -> dict[str, np.ndarray]:
  """The official PyTorch state dict of Flax parameters (for export back to PyTorch users)."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(params))
  return dict(_official_entry(path, np.asarray(value)) for path, value in flat.items())


def _count(state_dict, prefix: str) -> int:
  """The number of layers `prefix`N.* in the state dict; CheckpointMismatchError where N do not run from 0 without a
  gap (a layer's entries lost would otherwise load as a smaller model)."""
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  indices = sorted({int(m.group(1)) for m in map(pattern.match, state_dict) if m})
  for expected, index in enumerate(indices):
    if index != expected:
      raise CheckpointMismatchError(
        f"checkpoint lacks layer {expected} of {prefix.rstrip('.')} (no '{prefix}{expected}.*' entries) but has "
        f"layer {index}: its layers must run from 0 without a gap"
      )
  return len(indices)


def _shape(state_dict: dict[str, np.ndarray], name: str, rank: int) -> tuple[int, ...]:
  """The shape of a tensor the architecture is read from; CheckpointMismatchError where it is absent or misshapen."""
  if name not in state_dict:
    raise CheckpointMismatchError(f"not an X-CLIP/CLIP state dict: {name!r} is missing")
  shape = tuple(np.shape(state_dict[name]))
  if len(shape) != rank:
    raise CheckpointMismatchError(f"checkpoint entry {name!r} has shape {shape}; X-CLIP's has {rank} dimensions")
  return shape


def config_from_official(
  state_dict: dict[str, np.ndarray], num_frames: int | None = None, **overrides
) -> model_config.XCLIPConfig:
  """Reads the architecture off an official X-CLIP or OpenAI CLIP (ViT) state dict, as the official build_model does.

  For a CLIP state dict the X-CLIP parts take the official defaults (or `overrides`), and `num_frames` (default 8).
  """
  if "visual.proj" not in state_dict or "visual.conv1.weight" not in state_dict:
    found = sorted(state_dict)[:5]
    raise CheckpointMismatchError(
      "not a ViT X-CLIP/CLIP state dict: 'visual.proj' and 'visual.conv1.weight' are "
      f"missing (ResNet CLIP backbones are not supported by X-CLIP); first keys: {found}"
    )
  conv = _shape(state_dict, "visual.conv1.weight", rank=4)
  grid = round((_shape(state_dict, "visual.positional_embedding", rank=2)[0] - 1) ** 0.5)
  text_width = _shape(state_dict, "ln_final.weight", rank=1)[0]
  values = dict(
    embed_dim=_shape(state_dict, "text_projection", rank=2)[1],
    image_resolution=conv[-1] * grid,
    vision_layers=_count(state_dict, "visual.transformer.resblocks."),
    vision_width=conv[0],
    vision_patch_size=conv[-1],
    context_length=_shape(state_dict, "positional_embedding", rank=2)[0],
    vocab_size=_shape(state_dict, "token_embedding.weight", rank=2)[0],
    transformer_width=text_width,
    transformer_heads=text_width // 64,
    transformer_layers=_count(state_dict, "transformer.resblocks."),
  )
  if "mit.positional_embedding" in state_dict:
    values.update(
      num_frames=_shape(state_dict, "mit.positional_embedding", rank=3)[1],
      mit_layers=_count(state_dict, "mit.resblocks."),
      prompts_layers=_count(state_dict, "prompts_generator.decoder."),
    )
    if not values["mit_layers"]:
      raise CheckpointMismatchError(
        "checkpoint has 'mit.positional_embedding' but no MIT layer ('mit.resblocks.0.*'): X-CLIP's MIT has at least one"
      )
  elif num_frames is not None:
    values["num_frames"] = num_frames
  values.update(overrides)
  return model_config.XCLIPConfig(**values)


def interpolate_temporal_embedding(embedding: np.ndarray, num_frames: int) -> np.ndarray:
  """Linearly resamples the MIT position embedding (1, T, D) to `num_frames` positions (align_corners=True)."""
  source = embedding.shape[1]
  if source == num_frames:
    return embedding
  positions = np.linspace(0, source - 1, num_frames)
  lower = np.floor(positions).astype(int)
  upper = np.minimum(lower + 1, source - 1)
  weight = (positions - lower)[None, :, None]
  return (embedding[:, lower] * (1 - weight) + embedding[:, upper] * weight).astype(embedding.dtype)
