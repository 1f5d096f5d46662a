"""The device mesh and how parameters, optimiser state and batches are laid out on it.

Mesh axes: `data` (pure data parallelism: parameters replicated) and `fsdp` (data parallelism whose parameters and
optimiser state are split over the axis and gathered layer by layer as XLA needs them). Batches are split over both.
Parameter placement is declared once, as rules over '/'-joined parameter names (`PARAM_RULES`).
"""

from collections.abc import Mapping
import logging
import math
import re

import flax
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp")
# The batch axis of every input is split over all mesh axes.
BATCH_AXES = ("data", "fsdp")

# First matching rule wins; a parameter that matches none is replicated. The rules split the first (output) axis of
# every matrix over `fsdp`: Linear and conv weights are (out, in, ...) as in PyTorch, the projections (width, embed)
# and the token embedding (vocab, width). LayerNorms, biases and embeddings of a few KB stay replicated.
PARAM_RULES = (
  (r"(^|/)weight$", P("fsdp")),
  (r"(^|/)(proj|text_projection|prompts_visual_proj)$", P("fsdp")),
  (r"token_embedding/embedding$", P("fsdp")),
)


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
  """A mesh with axes `MESH_AXES`; one axis size may be -1 (all remaining devices)."""
  devices = jax.devices() if devices is None else devices
  unknown = sorted(set(mesh_config) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(size for size in sizes if size != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, {len(devices)} are present")
  return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def param_spec(name: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
  """The PartitionSpec of the parameter `name` (an axis that the mesh does not divide stays whole)."""
  spec = next((spec for pattern, spec in PARAM_RULES if re.search(pattern, name)), P())
  axes = []
  for size, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axis is not None and size % mesh.shape[axis]:
      logging.info("%s: axis of size %d is not divisible by mesh axis %s; replicated", name, size, axis)
      axis = None
    axes.append(axis)
  return P(*axes)


def _name_of(path) -> str:
  """'/'-joined dict keys of a pytree path: the parameter name, also inside optimiser states."""
  return "/".join(str(key.key) for key in path if isinstance(key, jax.tree_util.DictKey))


def tree_shardings(tree, mesh: jax.sharding.Mesh):
  """NamedShardings for a tree of parameters, or of anything holding parameter-shaped leaves under the same dict keys
  (optimiser states); scalars and unnamed leaves are replicated."""

  def sharding(path, leaf):
    shape = tuple(np.shape(leaf))
    return NamedSharding(mesh, param_spec(_name_of(path), shape, mesh) if shape else P())

  return jax.tree_util.tree_map_with_path(sharding, tree)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: jax.sharding.Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's slices of a batch (every process passes its own rows)."""
  sharding = batch_sharding(mesh)
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in local_batch.items()
  }


def flat_names(tree) -> dict[str, object]:
  """{'/'-joined name: leaf} of a nested parameter dict."""
  return flax.traverse_util.flatten_dict(tree, sep="/")
