"""The pictures and the summary a finished run shows, from what the run logged."""

from clu import metric_writers
import numpy as np

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


def test_an_evaluation_without_training_draws_only_the_confusion_matrix(tmp_path):
  results = {"top1": 0.5, "num_videos": 2, "views": 1, "confusion_matrix": [[1, 0], [1, 0]]}
  assert report.write_plots(tmp_path, results, ["a", "b"]) == [tmp_path / report.CONFUSION_FILE]
  # Hundreds of classes: a picture without names on the axes.
  many = np.eye(report.MAX_NAMED_CLASSES + 1, dtype=int).tolist()
  path = report.plot_confusion_matrix(many, [f"class {i}" for i in range(len(many))], tmp_path / "many.png")
  assert _png(path)


def test_summary_names_accuracy_control_time_and_files():
  results = {"top1": 0.95, "num_videos": 300, "views": 12, "single_frame_top1": 0.17, "confusion_matrix": [[0] * 6] * 6}
  table = report.run_summary(results, 185.4, [("results", "runs/demo/eval_results.json")])
  lines = table.splitlines()
  assert "95.0%" in lines[0] and "300 videos, 12 views" in lines[0]
  assert "single-frame control" in lines[1] and "17.0%" in lines[1] and "chance 16.7%" in lines[1]
  assert "3 min 05 s" in lines[2]
  assert lines[3].split() == ["results", "runs/demo/eval_results.json"]
