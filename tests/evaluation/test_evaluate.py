"""The evaluation's figures on inputs whose answers are worked out by hand: top-1, top-5, per-class accuracy, the
confusion matrix, and the softmax averaged over views."""

import jax
import numpy as np

from xclip_jax.evaluation import evaluate
from xclip_jax.model import xclip
from xclip_jax.parallel import sharding

CLASS_NAMES = ["archery", "bowling", "cooking", "dancing", "fencing", "juggling"]
# Six videos: their labels and their five best classes, best first.
LABELS = np.array([0, 0, 1, 2, 5, 2])
TOP = np.array(
  [
    [0, 1, 2, 3, 4],  # archery: right
    [2, 0, 1, 3, 4],  # archery: taken for cooking, right in the top 5
    [1, 0, 2, 3, 4],  # bowling: right
    [0, 1, 3, 4, 2],  # cooking: taken for archery, right only as the fifth guess
    [1, 0, 2, 3, 4],  # juggling: taken for bowling, not in the top 5
    [2, 3, 4, 5, 0],  # cooking: right
  ]
)


def test_top1_counts_the_first_guess_and_top5_all_five():
  results = evaluate.summarize(TOP, LABELS, CLASS_NAMES, views=12)
  # Right first: videos 0, 2, 5. Right among five: all but video 4 (video 3 only by its fifth guess).
  assert results["top1"] == 3 / 6
  assert results["top5"] == 5 / 6
  assert (results["num_videos"], results["views"]) == (6, 12)


def test_per_class_accuracy_is_top1_over_the_videos_of_each_true_class():
  results = evaluate.summarize(TOP, LABELS, CLASS_NAMES, views=1)
  # dancing and fencing have no videos and no entry.
  assert results["per_class"] == {"archery": 0.5, "bowling": 1.0, "cooking": 0.5, "juggling": 0.0}


def test_confusion_matrix_has_a_row_per_true_class_and_a_column_per_first_guess():
  # The picture of evaluation/report.py labels the rows "true" and the columns "predicted".
  results = evaluate.summarize(TOP, LABELS, CLASS_NAMES, views=1)
  assert results["confusion_matrix"] == [
    [1, 0, 1, 0, 0, 0],  # archery: once right, once cooking
    [0, 1, 0, 0, 0, 0],  # bowling: right
    [1, 0, 1, 0, 0, 0],  # cooking: once archery, once right
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 1, 0, 0, 0, 0],  # juggling: bowling
  ]


class _ViewsAreLogits:
  """Stands in for the XCLIP module in `make_eval_step`: a view's logits are its pixels (one per class) against the
  class text features, so that a test chooses each view's logits."""

  def apply(self, variables, view, text_features, method):
    assert method is xclip.XCLIP.logits_from_features
    return variables["params"]["scale"] * view.reshape(view.shape[0], -1) @ text_features.T


def _softmax(logits):
  exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return exp / exp.sum(axis=-1, keepdims=True)


def test_eval_step_ranks_classes_by_the_softmax_averaged_over_views():
  # (video, view, class) logits. Video 0: view 0 is sure of bowling (1), view 1 leans to archery (0). Averaged
  # logits would rank archery first (1.5 against 0); averaged probabilities rank bowling first (0.494 against 0.417).
  logits = np.array(
    [
      [[0, 6, 0.3, 0.2, 0.1, -1], [3, -6, 0.3, 0.2, 0.1, -1]],
      [[-1, 0.1, 0.2, 0.3, 4, 2], [-1, 0.1, 0.2, 0.3, -2, 2.5]],
    ],
    np.float32,
  )
  probabilities = _softmax(logits).mean(axis=1)
  expected = np.argsort(-probabilities, axis=1)[:, :5]
  np.testing.assert_array_equal(expected, [[1, 0, 2, 3, 4], [5, 4, 3, 2, 1]])
  assert np.argmax(logits.mean(axis=1)[0]) == 0  # the example tells the two averages apart

  mesh = sharding.make_mesh({"data": -1})
  params = {"scale": np.float32(1.0)}
  step = evaluate.make_eval_step(_ViewsAreLogits(), mesh, {"scale": sharding.replicated(mesh)})
  batch = {
    "video": logits.reshape(2, 2, 1, 1, 6, 1),  # (B, V, T, H, W, 3): each view a 1-frame, 1 x 6 image
    "label": np.array([1, 4], np.int32),
    "mask": np.array([1, 0], np.int32),
    "index": np.array([7, 3], np.int32),
  }
  out = step(params, np.eye(6, dtype=np.float32), batch)
  np.testing.assert_array_equal(out["top"], expected)
  for key in ("label", "mask", "index"):
    np.testing.assert_array_equal(out[key], batch[key])


class _Batches:
  def __init__(self, batches, num_videos=2):
    self._batches = batches
    self.num_videos = num_videos

  def as_numpy_iterator(self):
    return iter(self._batches)


def test_videos_that_failed_and_padding_rows_are_left_out_and_each_video_counted_once():
  # Rows: video 0 (archery, right), video 1 that failed to decode (label -1, masked), a padding row (index -1), and
  # video 0 again.
  batch = {
    "top": np.array([[0, 1], [0, 1], [1, 0], [0, 1]], np.int32),
    "label": np.array([0, -1, 0, 0], np.int32),
    "mask": np.array([1, 0, 0, 1], np.int32),
    "index": np.array([0, 1, -1, 0], np.int32),
  }
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  passed_through = lambda params, text_features, batch: batch
  results = evaluate.evaluate(
    passed_through, None, None, _Batches([batch]), mesh, ["archery", "bowling"], views=1, name="val"
  )
  assert (results["num_videos"], results["top1"]) == (1, 1.0)
  assert results["confusion_matrix"] == [[1, 0], [0, 0]]
