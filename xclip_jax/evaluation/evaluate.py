"""Evaluation: softmax averaged over views, top-1 / top-5, per-class accuracy and the confusion matrix.

Every video counts exactly once over all processes: each process evaluates its share of the list, padding is
masked, and the per-video results are gathered by the video's line in the annotation file.
"""

from collections.abc import Sequence
import logging

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from input_pipeline import datasets
from input_pipeline import video_dataset
from xclip_jax import console
from xclip_jax.model import tokenizer
from xclip_jax.model import xclip
from xclip_jax.parallel import sharding

TOP_K = 5


def make_eval_step(module: xclip.XCLIP, mesh: jax.sharding.Mesh, param_shardings):
  """(params, text features (K, D), batch) -> per-video top-5 classes with the batch's label, mask and index.

  batch["video"] is (B, V, T, H, W, 3); the softmax of each view's logits is averaged over the V views, as the
  official validation does. Views run one after the other, so memory holds one view of the batch at a time.
  """

  def step(params, text_features, batch):
    def view_probabilities(view):
      logits = module.apply({"params": params}, view, text_features, method=xclip.XCLIP.logits_from_features)
      return jax.nn.softmax(logits, axis=-1)

    probabilities = jax.lax.map(view_probabilities, jnp.moveaxis(batch["video"], 1, 0)).mean(axis=0)
    top = jax.lax.top_k(probabilities, min(TOP_K, probabilities.shape[-1]))[1]
    return {"top": top, "label": batch["label"], "mask": batch["mask"], "index": batch["index"]}

  def sharded_step(params, text_features, batch):
    with sharding.activation_mesh(mesh):
      return step(params, text_features, batch)

  batch_sharding = sharding.batch_sharding(mesh)
  batch_shardings = {
    "video": sharding.video_sharding(mesh, ndim=6),
    **{key: batch_sharding for key in ("label", "mask", "index")},
  }
  return jax.jit(
    sharded_step,
    in_shardings=(param_shardings, sharding.replicated(mesh), batch_shardings),
    out_shardings=batch_sharding,
  )


def make_text_encoder(module: xclip.XCLIP):
  return jax.jit(lambda params, ids: module.apply({"params": params}, ids, method=xclip.XCLIP.encode_text))


def evaluate(
  eval_step, params, text_features, dataset, mesh, class_names: Sequence[str], views: int, name: str
) -> dict:
  """Runs `dataset` (from datasets.eval_stream) through `eval_step`, showing its progress as `name`; returns the
  results of all processes."""
  outputs = []
  progress = console.EvalProgress(name, dataset.num_videos)
  try:
    for local_batch in dataset.as_numpy_iterator():
      batch = sharding.global_batch(local_batch, mesh)
      outputs.append(eval_step(params, text_features, batch))
      progress.advance(len(batch["label"]))
  finally:
    progress.close()
  gathered = [multihost_utils.process_allgather(out, tiled=True) for out in outputs]
  if not gathered:
    raise ValueError("the evaluation list is empty")
  merged = {key: np.concatenate([g[key] for g in gathered]) for key in gathered[0]}
  keep = merged["mask"].astype(bool)
  # Padding and failed videos are masked; a video appears once, but dedupe by line to be sure of it.
  _, first = np.unique(merged["index"][keep], return_index=True)
  top, labels = merged["top"][keep][first], merged["label"][keep][first]
  if not len(labels):
    raise ValueError(f"evaluating {name}: none of its videos could be read (the warnings name them)")
  return summarize(top, labels, class_names, views)


def summarize(top: np.ndarray, labels: np.ndarray, class_names: Sequence[str], views: int) -> dict:
  """Accuracy figures from per-video top-k predictions (N, k) and labels (N,)."""
  num_classes = len(class_names)
  correct1 = top[:, 0] == labels
  correct5 = (top == labels[:, None]).any(axis=1)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, top[:, 0]), 1)
  per_class = {class_names[c]: float(correct1[labels == c].mean()) for c in range(num_classes) if (labels == c).any()}
  return {
    "top1": float(correct1.mean()),
    "top5": float(correct5.mean()),
    "num_videos": int(len(labels)),
    "views": int(views),
    "per_class": per_class,
    "confusion_matrix": confusion.tolist(),
  }


def top5_tells(results: dict) -> bool:
  """Whether `results`' top-5 says anything: with TOP_K classes or fewer, every video's class is among them."""
  return len(results["confusion_matrix"]) > TOP_K


def run_eval_set(
  config, eval_set: datasets.EvalSet, eval_step, text_encoder, params, mesh, num_clips: int, num_crops: int
):
  """Encodes the set's class names and evaluates it; returns the summary and the number of skipped videos."""
  text_ids = xclip.truncate_text_ids(tokenizer.tokenize(list(eval_set.class_names)))
  text_features = text_encoder(params, text_ids)
  failures = video_dataset.FailureLog()
  dataset = datasets.eval_stream(config, eval_set, num_clips, num_crops, failures)
  views = num_clips * num_crops
  results = evaluate(eval_step, params, text_features, dataset, mesh, eval_set.class_names, views, eval_set.name)
  # Each process reads its own slice of the list. Lines, not paths: a video listed twice counts twice in num_videos.
  results["skipped_videos"] = int(np.sum(multihost_utils.process_allgather(np.int64(failures.count))))
  allowed = video_dataset.eval_failure_allowance(config.data.max_failure_fraction, dataset.num_videos)
  if results["skipped_videos"] > allowed:  # each process allowed the whole list's share: together they may pass it
    raise video_dataset.TooManyFailuresError(
      f"{console.count(results['skipped_videos'], 'video')} of {eval_set.name}'s {dataset.num_videos} failed to "
      f"decode over all processes, more than data.max_failure_fraction allows ({allowed:g})"
    )
  logging.info(
    "%s: top-1 %.2f%%, top-5 %.2f%% over %d videos, %d views (%d skipped)",
    eval_set.name,
    100 * results["top1"],
    100 * results["top5"],
    results["num_videos"],
    results["views"],
    results["skipped_videos"],
  )
  return results
