"""The device mesh and how parameters, optimiser state and batches are laid out on it.

Mesh axes: `data` (pure data parallelism: parameters replicated), `fsdp` (data parallelism whose parameters and
optimiser state are split over the axis and gathered layer by layer as XLA needs them) and `time` (the frames of each
video split over the axis). Batches are split over `data` and `fsdp`, a video's frames over `time`.
Parameter placement is declared once, as rules over '/'-joined parameter names (`PARAM_RULES`); activation placement
once, in `split_frames` and `whole_video`.

Why `time` is cheap: in X-CLIP a frame's tokens meet other frames only through the frame's message token (the CCT's
cross-frame attention), the MIT's per-frame features and the prompt generator's mean over frames. With the frames
split, the devices of one video exchange those (B*T*D numbers per block), never the frame tokens (B*T*N*D).
"""

from collections.abc import Mapping
import logging
import math

import flax
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from xclip_jax import console
from xclip_jax import param_rules

MESH_AXES = ("data", "fsdp", "time")
# The batch axis of every input is split over these; `time` splits the frames instead.
BATCH_AXES = ("data", "fsdp")
FRAMES_AXIS = "time"

# Rules in the format of `xclip_jax.param_rules` (full match, first match wins). They split the first axis of every
# matrix over `fsdp`: the output axis of Linear and conv weights, (out, in, ...) as in PyTorch; the input axis of the
# projections, (width, embed); the vocabulary of the token embedding, (vocab, width). LayerNorms, biases and
# embeddings of a few KB stay replicated.
PARAM_RULES = (
  (r".*/weight", P("fsdp")),
  (r"visual/proj|text_projection|prompts_visual_proj", P("fsdp")),
  (r"token_embedding/embedding", P("fsdp")),
  (r".*", P()),
)


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> jax.sharding.Mesh:
  """A mesh with axes `MESH_AXES`; one axis size may be -1 (all remaining devices)."""
  devices = jax.devices() if devices is None else devices
  unknown = sorted(set(mesh_config) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if size < 1 and size != -1:
      raise ValueError(f"mesh.{axis}={size} must be at least 1 (or -1: the devices the other axes leave)")
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(size for size in sizes if size != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, {len(devices)} are present")
  # `time` is the last axis, so that the devices sharing a video are neighbours (on one host where possible).
  return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def check_frames_divisible(num_frames: int, mesh: jax.sharding.Mesh):
  if num_frames % mesh.shape[FRAMES_AXIS]:
    raise ValueError(
      f"{num_frames} frames cannot be split over the mesh's time axis of size {mesh.shape[FRAMES_AXIS]}: set "
      f"mesh.time to a divisor of num_frames"
    )


def check_time_within_processes(mesh: jax.sharding.Mesh):
  """Refuses a `time` axis whose groups span processes: each process reads whole clips (all frames of its rows), so
  the devices that share a clip's frames must be one process's."""
  groups = np.moveaxis(mesh.devices, mesh.axis_names.index(FRAMES_AXIS), -1).reshape(-1, mesh.shape[FRAMES_AXIS])
  if any(len({device.process_index for device in group}) > 1 for group in groups):
    per_process = sum(device.process_index == 0 for device in mesh.devices.flat)
    raise ValueError(
      f"mesh.time={mesh.shape[FRAMES_AXIS]} splits a clip's frames over the devices of several processes, and each "
      f"process reads whole clips: set mesh.time to a divisor of the {console.count(per_process, 'device')} of each "
      "process (on GPUs, one process per node for more)"
    )


def _fitted(spec: P, name: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
  """`spec` for an array of `shape`, an axis that the mesh does not divide left whole."""
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


def tree_shardings(tree, mesh: jax.sharding.Mesh, *, log: str | None = None):
  """NamedShardings by `PARAM_RULES` for a tree of parameters, or of anything holding parameter-shaped leaves under
  the same dict keys (optimiser states; their unnamed scalars are replicated). With `log`, logs the rules' groups."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  names = [_name_of(path) for path, _ in leaves]
  specs = param_rules.match(PARAM_RULES, dict.fromkeys(names), log=log)
  return treedef.unflatten(
    NamedSharding(mesh, _fitted(specs[name], name, np.shape(leaf), mesh)) for name, (_, leaf) in zip(names, leaves)
  )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Labels, masks, indices: split over the batch axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def video_sharding(mesh: jax.sharding.Mesh, ndim: int = 5) -> NamedSharding:
  """A batch of videos (B, ..., T, H, W, 3): batch over the batch axes, frames over `time`."""
  return NamedSharding(mesh, P(BATCH_AXES, *(None,) * (ndim - 5), FRAMES_AXIS))


def batch_shardings(batch: Mapping[str, object], mesh: jax.sharding.Mesh) -> dict[str, NamedSharding]:
  """The sharding of each array of a batch: `video` by `video_sharding`, the rest by `batch_sharding`."""
  return {
    key: video_sharding(mesh, np.ndim(value)) if key == "video" else batch_sharding(mesh)
    for key, value in batch.items()
  }


def activation_mesh(mesh: jax.sharding.Mesh):
  """Context for tracing a model function under `mesh`: inside it `split_frames` and `whole_video` pin activations to the mesh."""
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def _time_split_mesh():
  """The mesh being traced under (`activation_mesh`) if its `time` axis splits frames, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or FRAMES_AXIS not in mesh.axis_names or mesh.shape[FRAMES_AXIS] == 1:
    return None
  return mesh


def split_frames(x, frames_axis: int = 1):
  """Keeps a per-frame activation (B, ..., T at `frames_axis`, ...) split: batch over the batch axes, frames over
  `time`, so that XLA's partitioner moves no frame tokens between devices.

  This and `whole_video` are no-ops unless traced inside `activation_mesh` of a mesh whose `time` axis has more than
  one device (otherwise the partitioner's own choices are already right).
  """
  if _time_split_mesh() is None:
    return x
  spec = [None] * x.ndim
  spec[0], spec[frames_axis] = BATCH_AXES, FRAMES_AXIS
  return jax.lax.with_sharding_constraint(x, P(*spec))


def whole_video(x):
  """A per-video activation made whole on each device of its video (batch still split): for the small parts that
  look at all frames at once (the MIT on (B, T, D) frame features, the prompt generator on the frame mean), which
  every device of the video then computes itself instead of the partitioner reshuffling them."""
  if _time_split_mesh() is None:
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *(None,) * (x.ndim - 1)))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: jax.sharding.Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's slices of a batch (every process passes its own rows, all their frames)."""
  shardings = batch_shardings(local_batch, mesh)
  return {
    key: jax.make_array_from_process_local_data(shardings[key], np.asarray(value)) for key, value in local_batch.items()
  }


def flat_names(tree) -> dict[str, object]:
  """{'/'-joined name: leaf} of a nested parameter dict."""
  return flax.traverse_util.flatten_dict(tree, sep="/")
