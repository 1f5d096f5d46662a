"""The memory benchmark behind `python -m benchmarks.model --mode=memory`: frames split over the `time` axis.

For each size of the mesh's `time` axis (the rest of the devices on `data`, one video per data shard), the sharded
train step is compiled for abstract inputs (no parameter is materialised) and read back from XLA:
  per_device_temp_bytes               XLA's compiled memory analysis: temporaries per device (activations, and
                                      buffers the size of the parameters: gradients, optimiser updates)
  per_device_activation_bytes         the part that grows with the batch: temporaries with two videos per data shard
                                      minus those with one (what the frames split divides)
  per_device_argument_bytes           parameters, optimiser state and batch per device
  time_axis_bytes_per_step            activations the step exchanges across `time` per device (`collectives.traffic`)
  gradient_reduction_bytes_per_step   parameter gradients reduced across `time`: the data-parallel reduction that any
                                      split of the work over these devices needs, whichever axis splits it
  frame_token_gather_bytes_per_step   what gathering every CCT block's frame tokens (B, T, N+1, W) would move instead:
                                      forward gather and backward reduction of the gradient, per block
each a dict keyed by the `time` size.
"""

import jax
import numpy as np

from benchmarks import throughput
from benchmarks import train_step
from xclip_jax import pretrained
from xclip_jax.parallel import collectives
from xclip_jax.parallel import sharding
from xclip_jax.train import step as step_lib
from xclip_jax.weights import official


def _compile_step(arch: str, frames: int, classes: int, dtype: str, time_size: int, videos_per_shard: int = 1):
  """The compiled train step on a (data=-1, time=time_size) mesh, its mesh, and the abstract parameters."""
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "time": time_size})
  config = train_step.step_config(frames, classes, videos_per_shard * sharding.num_batch_shards(mesh))
  # Remat for ViT-L, as the official recipe (configs/common.py's `set_arch`).
  architecture = throughput.architecture(arch, num_frames=frames, dtype=dtype, remat=arch.startswith("ViT-L"))
  params = official.abstract_params(architecture)
  text_ids = np.zeros((classes, 8), np.int32)
  text_ids[:, 0], text_ids[:, 1:7], text_ids[:, 7] = 49406, 320, 49407

  def make_state(params):
    return step_lib.create_train_state(config, pretrained.XCLIPModel(architecture, params), text_ids, mesh)

  state = jax.eval_shape(make_state, params)
  batch = step_lib.abstract_batch(config.batch_size, frames, architecture.image_resolution, mesh)
  # Only buffer sizes and the HLO are read: skip the costly machine-code optimisation (hours for L/14 on 8 devices).
  compiled = step_lib.make_sharded_step(state, mesh).lower(state, batch).compile(throughput.ANALYSIS_ONLY)
  return compiled, mesh, params, architecture


# The sizes of the mesh's time axis measured.
TIME_SIZES = (1, 2, 4, 8)


def time_axis_memory(arch: str, frames: int, classes: int, dtype: str, time_sizes=TIME_SIZES) -> dict:
  if jax.device_count() < max(time_sizes):
    raise SystemExit(f"--mode=memory needs {max(time_sizes)} devices, {jax.device_count()} are present")
  results = {
    key: {}
    for key in (
      "per_device_temp_bytes",
      "per_device_activation_bytes",
      "per_device_argument_bytes",
      "time_axis_bytes_per_step",
      "gradient_reduction_bytes_per_step",
      "frame_token_gather_bytes_per_step",
    )
  }
  for time_size in time_sizes:
    compiled, mesh, params, cfg = _compile_step(arch, frames, classes, dtype, time_size)
    memory = compiled.memory_analysis()
    traffic = collectives.traffic(compiled.as_text(), mesh, "time", params)
    local_batch = 1
    token_bytes = local_batch * frames * (cfg.num_patches + 1) * cfg.vision_width * np.dtype(cfg.compute_dtype).itemsize
    key = str(time_size)
    results["per_device_temp_bytes"][key] = int(memory.temp_size_in_bytes)
    two_videos = _compile_step(arch, frames, classes, dtype, time_size, videos_per_shard=2)[0].memory_analysis()
    results["per_device_activation_bytes"][key] = int(two_videos.temp_size_in_bytes - memory.temp_size_in_bytes)
    results["per_device_argument_bytes"][key] = int(memory.argument_size_in_bytes)
    results["time_axis_bytes_per_step"][key] = traffic["activations"]
    results["gradient_reduction_bytes_per_step"][key] = traffic["parameters"]
    results["frame_token_gather_bytes_per_step"][key] = 2 * cfg.vision_layers * token_bytes if time_size > 1 else 0
  results["setup"] = dict(
    arch=arch, frames=frames, classes=classes, dtype=dtype, devices=jax.device_count(), videos_per_data_shard=1
  )
  return results
