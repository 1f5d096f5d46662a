"""Run by test_sharded_inference with 8 forced CPU devices: inference with each video's frames split over `time`
(alone and with FSDP) gives one device's results: `load_pretrained(..., mesh=)` logits, and the evaluation step as
the trainer builds it (`evaluate.make_eval_step`).

Prints one line per check, `PASS name` or `FAIL name: why`, so that the test can report each check by name.
"""

import pathlib
import sys
import tempfile
import traceback

import jax
import numpy as np

from tests.fixtures import tiny
from xclip_jax import pretrained
from xclip_jax.evaluation import evaluate
from xclip_jax.parallel import sharding
from xclip_jax.weights import official
from xclip_jax.weights import torch_writer

FRAMES = 4
BATCH = 8
VIEWS = 3
NUM_CLASSES = 8
# Frames split two ways (2 per device), with the rest of the devices on data, then on data and fsdp.
MESHES = {"time=2": {"data": 4, "fsdp": 1, "time": 2}, "time=2,fsdp=2": {"data": 2, "fsdp": 2, "time": 2}}
# Float32 logits against one device's, relative to the largest: the same sums in another order. Measured 5.8e-7
# (1.3e-5 with logits up to 23, time=2 and fsdp=2).
TOLERANCE = 1e-5


def write_checkpoint(directory) -> pathlib.Path:
  """The tiny model at FRAMES frames, as the official training script saves it ({'model': state_dict}), with CLIP's
  logit scale of 100, so that the classes' probabilities stand apart."""
  path = pathlib.Path(directory) / "xclip_tiny.pth"
  params = jax.device_get(tiny.model(num_frames=FRAMES).params)
  params["logit_scale"] = np.full_like(params["logit_scale"], np.log(100.0))
  torch_writer.save_torch_checkpoint({"model": official.official_from_params(params)}, path)
  return path


def check_load_pretrained(path, model, video, text):
  expected = np.asarray(model.logits(video, text))
  for name, axes in MESHES.items():
    model = pretrained.load_pretrained(path, mesh=sharding.make_mesh(axes))
    weight = model.params["visual"]["transformer"]["resblocks_0"]["attn"]["in_proj"]["weight"]
    assert weight.addressable_shards[0].data.shape[0] == weight.shape[0] // axes["fsdp"], (name, weight.sharding)
    logits = model.logits(video, text)
    assert logits.sharding.mesh.shape["time"] == axes["time"], (name, logits.sharding)
    np.testing.assert_allclose(
      np.asarray(logits), expected, rtol=0, atol=TOLERANCE * np.abs(expected).max(), err_msg=name
    )


def check_eval_step(model, views, text):
  """The evaluation step's top-5 classes equal those of the softmax averaged over views, computed view by view from
  one device's logits."""
  text_features = np.asarray(model.encode_text(text))
  probabilities = np.mean(
    [jax.nn.softmax(np.asarray(model.logits(views[:, v], text_features=text_features))) for v in range(VIEWS)], axis=0
  )
  order = np.argsort(-probabilities, axis=1)
  # The ranking is a fair test where the classes it orders stand apart: each of the six most probable of a video is
  # above the next by far more than float32 rounding (1e-6 of a probability).
  ranked = np.take_along_axis(probabilities, order, axis=1)[:, : evaluate.TOP_K + 1]
  gaps = -np.diff(ranked, axis=1) / ranked[:, :-1]
  assert gaps.min() > 1e-3, gaps.min()
  labels = np.arange(BATCH, dtype=np.int32) % NUM_CLASSES
  local_batch = {
    "video": views,
    "label": labels,
    "mask": np.ones(BATCH, np.int32),
    "index": np.arange(BATCH, dtype=np.int32) + 100,
  }
  for name, axes in MESHES.items():
    mesh = sharding.make_mesh(axes)
    param_shardings = sharding.tree_shardings(model.params, mesh)
    eval_step = evaluate.make_eval_step(model.module, mesh, param_shardings)
    params = jax.device_put(model.params, param_shardings)
    features = jax.device_put(text_features, sharding.replicated(mesh))
    out = jax.device_get(eval_step(params, features, sharding.global_batch(local_batch, mesh)))
    np.testing.assert_array_equal(out["top"], order[:, : evaluate.TOP_K], err_msg=name)
    for key in ("label", "mask", "index"):
      np.testing.assert_array_equal(out[key], local_batch[key], err_msg=f"{name} {key}")


def main():
  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(0)
  views = rng.normal(size=(BATCH, VIEWS, FRAMES, 32, 32, 3)).astype(np.float32)
  text = tiny.text_ids(NUM_CLASSES)
  with tempfile.TemporaryDirectory() as directory:
    path = write_checkpoint(directory)
    model = pretrained.load_pretrained(path)  # one device
    checks = [
      ("load_pretrained_on_mesh", lambda: check_load_pretrained(path, model, views[:, 0], text)),
      ("eval_step", lambda: check_eval_step(model, views, text)),
    ]
    for name, check in checks:
      try:
        check()
        print(f"PASS {name}", flush=True)
      except Exception:  # every failure is reported by name, with its traceback
        print(f"FAIL {name}: {traceback.format_exc()}", flush=True)
  sys.stdout.flush()


if __name__ == "__main__":
  main()
