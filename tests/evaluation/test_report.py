"""The pictures and the summary a finished run shows, from what the run logged."""

import contextlib
import os
from unittest import mock

from clu import metric_writers
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing
import numpy as np
import pytest

from xclip_jax.evaluation import report


def _png(path) -> bool:
  return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_scalars_keeps_the_last_value_written_for_a_step(tmp_path):
  writer = metric_writers.create_default_writer(tmp_path)
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss": 10.0 - step, "lr": 0.1 * step})
  writer.write_scalars(3, {"eval/top1": 0.5})
  writer.flush()
  # A resumed run writes a second event file that logs step 3 again.
  resumed = metric_writers.create_default_writer(tmp_path)
  resumed.write_scalars(3, {"loss": 42.0})
  resumed.write_scalars(4, {"loss": 5.0})
  resumed.flush()
  scalars = report.read_scalars(tmp_path)
  assert scalars["loss"] == [(1, 9.0), (2, 8.0), (3, 42.0), (4, 5.0)]
  assert [step for step, _ in scalars["lr"]] == [1, 2, 3]
  assert scalars["eval/top1"] == [(3, 0.5)]


def test_plots_are_written_for_a_run_with_curves_and_a_confusion_matrix(tmp_path):
  writer = metric_writers.create_default_writer(tmp_path)
  for step in range(1, 11):
    writer.write_scalars(step, {"loss": 2.0 / step, "lr": 1e-3 * step / 10})
  writer.write_scalars(10, {"eval/top1": 0.75, "eval/top5": 1.0, "final/top1": 0.8})
  writer.flush()
  names = ["a shape sliding", "a shape spinning", "a shape standing still"]
  results = {"top1": 0.8, "num_videos": 10, "views": 12, "confusion_matrix": [[4, 0, 0], [1, 2, 0], [0, 1, 2]]}
  written = report.write_plots(tmp_path, results, names)
  assert written == [tmp_path / report.CURVES_FILE, tmp_path / report.CONFUSION_FILE]
  assert all(_png(path) for path in written)


@pytest.mark.filterwarnings("error")
def test_curves_of_a_run_stopped_before_its_first_evaluation_draw_without_a_warning(tmp_path):
  """The console of such a run shows no warning from matplotlib about an empty legend."""
  path = report.plot_training_curves({"loss": [(1, 2.0), (2, 1.5)], "lr": [(1, 1e-3), (2, 2e-3)]}, tmp_path / "c.png")
  assert _png(path)


@contextlib.contextmanager
def _bucket(folder):
  """gs://bucket served from the local `folder` through epath, as google-cloud-storage would serve it."""

  def local(path):
    return os.fspath(path).replace("gs://bucket", os.fspath(folder), 1)

  def mapped(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def glob(original, pattern):
    return [os.fspath(path).replace(os.fspath(folder), "gs://bucket", 1) for path in original(local(pattern))]

  # With TensorFlow installed epath reads gs:// through tf.io.gfile, which mock_epath does not replace.
  with (
    mock.patch.object(gpath, "_is_tf_installed", lambda: False),
    epath_testing.mock_epath(open=mapped, exists=mapped, isdir=mapped, glob=glob, makedirs=mapped, stat=mapped),
  ):
    yield


def test_plots_of_a_run_on_cloud_storage_are_drawn_from_its_events_there(tmp_path):
  """A gs:// workdir (`--workdir=gs://...` on a TPU VM): its events are read and its pictures written there."""
  run = tmp_path / "run"
  writer = metric_writers.create_default_writer(run)
  writer.write_scalars(1, {"loss": 2.0, "lr": 1e-3})
  writer.flush()
  results = {"top1": 0.5, "num_videos": 2, "views": 1, "confusion_matrix": [[1, 0], [1, 0]]}
  with _bucket(tmp_path):
    assert report.read_scalars("gs://bucket/run")["loss"] == [(1, 2.0)]
    written = report.write_plots(epath.Path("gs://bucket/run"), results, ["a", "b"])
  assert [os.fspath(path) for path in written] == [
    f"gs://bucket/run/{report.CURVES_FILE}",
    f"gs://bucket/run/{report.CONFUSION_FILE}",
  ]
  assert _png(run / report.CURVES_FILE) and _png(run / report.CONFUSION_FILE)


def test_an_evaluation_without_training_draws_only_the_confusion_matrix(tmp_path):
  results = {"top1": 0.5, "num_videos": 2, "views": 1, "confusion_matrix": [[1, 0], [1, 0]]}
  assert report.write_plots(tmp_path, results, ["a", "b"]) == [tmp_path / report.CONFUSION_FILE]
  # Hundreds of classes: a picture without names on the axes.
  many = np.eye(report.MAX_NAMED_CLASSES + 1, dtype=int).tolist()
  path = report.plot_confusion_matrix(many, [f"class {i}" for i in range(len(many))], tmp_path / "many.png")
  assert _png(path)


def test_summary_names_accuracy_skipped_videos_control_time_and_files():
  results = {
    "top1": 0.95,
    "top5": 0.99,
    "num_videos": 300,
    "views": 12,
    "skipped_videos": 2,
    "single_frame_top1": 0.17,
    "confusion_matrix": [[0] * 6] * 6,
  }
  table = report.run_summary(results, 185.4, [("results", "runs/demo/eval_results.json")])
  lines = table.splitlines()
  assert "95.0%" in lines[0] and "300 videos, 12 views" in lines[0]
  assert lines[1].split() == ["top-5", "99.0%"]
  assert lines[2].split()[:3] == ["skipped", "videos", "2"]
  assert "single-frame control" in lines[3] and "17.0%" in lines[3] and "chance 16.7%" in lines[3]
  assert "3 min 05 s" in lines[4]
  assert lines[5].split() == ["results", "runs/demo/eval_results.json"]


def test_summary_leaves_out_top5_of_five_classes_or_fewer_and_no_skipped_videos():
  results = {
    "top1": 0.4,
    "top5": 1.0,
    "num_videos": 5,
    "views": 1,
    "skipped_videos": 0,
    "confusion_matrix": [[0] * 5] * 5,
  }
  lines = report.run_summary(results, 1, []).splitlines()
  assert [line.split()[0] for line in lines] == ["top-1", "wall"]
  assert lines[0].endswith("(5 videos, 1 view)")


def test_the_confusion_picture_colours_each_true_class_row_by_its_shares(tmp_path, monkeypatch):
  drawn = {}
  imshow, set_properties = report.plt.Axes.imshow, report.plt.Axes.set

  def recording_imshow(self, image, **kwargs):
    drawn["image"] = image
    return imshow(self, image, **kwargs)

  def recording_set(self, **properties):
    drawn.update(properties)
    return set_properties(self, **properties)

  monkeypatch.setattr(report.plt.Axes, "imshow", recording_imshow)
  monkeypatch.setattr(report.plt.Axes, "set", recording_set)
  # Row: the true class. Class a: 3 videos, 1 taken for b; class b: 1 video, right; class c: none.
  report.plot_confusion_matrix([[2, 1, 0], [0, 1, 0], [0, 0, 0]], ["a", "b", "c"], tmp_path / "c.png")
  np.testing.assert_allclose(drawn["image"], [[2 / 3, 1 / 3, 0], [0, 1, 0], [0, 0, 0]])
  assert (drawn["xlabel"], drawn["ylabel"]) == ("predicted", "true")


def test_summary_gives_each_zero_shot_data_set_as_mean_and_std_of_top1():
  results = {"zero_shot": {"hmdb51": {"top1_mean": 0.446, "top1_std": 0.012, "top5_mean": 0.8, "top5_std": 0.05}}}
  (line, _) = report.run_summary(results, 61, []).splitlines()
  assert line.split() == ["zero-shot", "hmdb51", "top-1", "44.6", "+-", "1.2%"]
