"""A tiny X-CLIP with random weights, made without compiling anything (fast in tests)."""

import jax
import jax.numpy as jnp
import numpy as np

import xclip_jax
from xclip_jax import official

TINY = dict(
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


def random_model(seed: int = 0, **overrides) -> xclip_jax.XCLIPModel:
  """TINY (with overrides) and normal(0, 0.1) weights, LayerNorm gains around 1."""
  config = xclip_jax.XCLIPConfig(**{**TINY, **overrides})
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    return jnp.asarray(rng.normal(1.0 if path[-1].key == "scale" else 0.0, 0.1, leaf.shape), leaf.dtype)

  return xclip_jax.XCLIPModel(config, jax.tree_util.tree_map_with_path(draw, official.abstract_params(config)))
