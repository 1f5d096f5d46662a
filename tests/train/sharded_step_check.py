"""Run by test_train_step with 8 forced CPU devices: the step on a (data=2, fsdp=4) mesh of 8 CPU devices blends
each device's slice of the batch on its own, as the official code blends each GPU's batch, and then equals the
one-device step on that blended batch."""

import jax
import numpy as np

from tests.fixtures import tiny
from tests.train import official_blending
from xclip_jax.parallel import sharding
from xclip_jax.train import step as step_lib

# 4 videos per device, so that Mixup and CutMix have partners to choose from within each device's slice.
BATCH = 32
# Parameters after two steps against one device's: Adam's first steps divide each gradient entry by its own size, so
# summation-order rounding shows in entries near zero. Measured at most 4.7e-5 of an update's norm.
UPDATE_TOLERANCE = 3e-4
STEP_FN = step_lib.step_fn


def recording_step_fn(state, batch, *args):
  """`step_fn`, whose metrics also hold what Mixup/CutMix hand the loss (class ids only): "blended_video" and
  "blended_label", gathered as the metrics are."""
  blended, mix = [], step_lib._mix

  def recording_mix(*mix_args):
    blended.append(mix(*mix_args))
    return blended[-1]

  step_lib._mix = recording_mix
  try:
    state, metrics = STEP_FN(state, batch, *args)
  finally:
    step_lib._mix = mix
  if blended:
    metrics = {**metrics, "blended_video": blended[0][0], "blended_label": blended[0][1]}
  return state, metrics


def run(mesh, accumulation_steps, batches):
  """The state after one step per batch, each step's metrics, and the rows of each device's slice of the batch."""
  step_lib.step_fn = recording_step_fn  # what make_sharded_step compiles
  try:
    config = tiny.experiment_config(accumulation_steps=accumulation_steps, batch_size=BATCH)
    state = step_lib.create_train_state(config, tiny.model(), tiny.text_ids(), mesh)
    step = step_lib.make_sharded_step(state, mesh)
    history = []
    for batch in batches:
      batch = sharding.global_batch(batch, mesh)
      state, metrics = step(state, batch)
      history.append(jax.device_get(metrics))
  finally:
    step_lib.step_fn = STEP_FN
  slices = sorted(
    {(shard.index[0].start or 0, shard.index[0].stop or BATCH) for shard in batch["label"].addressable_shards}
  )
  return state, history, [np.arange(*rows) for rows in slices]


def main():
  assert jax.device_count() == 8
  single = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  # Class ids: blended inside the step, on 8 devices with 2 micro-batches.
  batches = [tiny.batch(seed, batch_size=BATCH) for seed in range(2)]
  state, history, slices = run(mesh, 2, batches)
  assert len(slices) == 8, slices
  # Parameters and optimiser state really are split over fsdp.
  weight = state.params["visual"]["transformer"]["resblocks_0"]["attn"]["in_proj"]["weight"]
  assert weight.sharding.spec[0] == "fsdp", weight.sharding
  mu = state.opt_state[0].mu["visual"]["transformer"]["resblocks_0"]["attn"]["in_proj"]["weight"]
  assert mu.sharding.spec[0] == "fsdp", mu.sharding
  # Each device's slice is blended on its own (partners, lam and box per slice), as the NumPy reference of the
  # official blending computes it; that blended batch is then the one-device step's input, as soft targets, so that
  # sharding and accumulation are seen to leave the rest of the step as it is.
  kinds, reference_batches = [], []
  for batch, metrics in zip(batches, history):
    video, labels = metrics["blended_video"], metrics["blended_label"]
    kinds += official_blending.assert_official_blend(
      batch["video"], batch["label"], video, labels, tiny.NUM_CLASSES, 0.1, groups=slices
    )
    reference_batches.append({"video": video, "label": labels})
  assert {"mixup", "cutmix"} <= set(kinds), kinds
  reference, reference_history, _ = run(single, 1, reference_batches)
  np.testing.assert_allclose([m["loss"] for m in history], [m["loss"] for m in reference_history], rtol=1e-5)
  params, reference_params = jax.device_get((state.params, reference.params))
  tiny.assert_updates_close(tiny.model().params, params, reference_params, tolerance=UPDATE_TOLERANCE)
  print("sharded step matches")


if __name__ == "__main__":
  main()
