"""Run by test_train_step with 8 forced CPU devices: the step on a (data=2, fsdp=4) mesh of 8 CPU devices equals the one-device step."""

import jax
import numpy as np

from tests.fixtures import tiny
from xclip_jax.parallel import sharding
from xclip_jax.train import step as step_lib


def run(mesh, accumulation_steps):
  config = tiny.experiment_config(accumulation_steps=accumulation_steps)
  state = step_lib.create_train_state(config, tiny.model(), tiny.text_ids(), mesh)
  step = step_lib.make_sharded_step(state, mesh)
  for seed in range(2):
    # Soft labels: Mixup pairs videos within each device's slice, so int labels blend differently per mesh.
    batch = sharding.global_batch(tiny.batch(seed, soft=True), mesh)
    state, metrics = step(state, batch)
  return state, jax.device_get(metrics)


def main():
  assert jax.device_count() == 8
  single = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  # One device, full batch, against 8 devices with 2 micro-batches: sharding and accumulation both leave the step as
  # it is.
  reference, reference_metrics = run(single, accumulation_steps=1)
  state, metrics = run(mesh, accumulation_steps=2)
  # Parameters and optimiser state really are split over fsdp.
  weight = state.params["visual"]["transformer"]["resblocks_0"]["attn"]["in_proj"]["weight"]
  assert weight.sharding.spec[0] == "fsdp", weight.sharding
  mu = state.opt_state[0].mu["visual"]["transformer"]["resblocks_0"]["attn"]["in_proj"]["weight"]
  assert mu.sharding.spec[0] == "fsdp", mu.sharding
  np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"], rtol=1e-5)
  tiny.assert_updates_close(tiny.model().params, jax.device_get(state.params), jax.device_get(reference.params))
  print("sharded step matches")


if __name__ == "__main__":
  main()
