"""What a finished run shows its user: pictures of the training curves and of the confusion matrix, and a summary.

The curves are read back from the TensorBoard event files the run's metric writer wrote (what the console and
TensorBoard showed), the confusion matrix from the final evaluation's results.
"""

import collections
import io
import pathlib
import tempfile

from etils import epath
import matplotlib

matplotlib.use("Agg")  # files only, never a window
from matplotlib import pyplot as plt
import numpy as np
import tensorflow as tf

from xclip_jax import console
from xclip_jax import paths
from xclip_jax.evaluation import evaluate
from xclip_jax.evaluation import zero_shot

CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
# Beyond this many classes the matrix has no room for names on its axes (Kinetics-400 is a 400 x 400 picture).
MAX_NAMED_CLASSES = 60


def read_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """Every scalar the run logged, by tag: (step, value) pairs by step.

  A resumed run logs again the steps after its checkpoint; the value written last counts.
  """
  events = []
  with tempfile.TemporaryDirectory() as scratch:
    for path in sorted(epath.Path(workdir).glob("events.out.tfevents.*")):
      if paths.is_remote(path):  # read from a local copy, as every other remote file here is read
        path = paths.copy_to_local(path, pathlib.Path(scratch) / path.name)
      # Each record of an events file is one Event (summary_iterator, which reads them too, prints a deprecation).
      for event in map(tf.compat.v1.Event.FromString, tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
        for value in event.summary.value:
          number = value.simple_value if value.HasField("simple_value") else tf.make_ndarray(value.tensor)
          if np.ndim(number) == 0 and np.issubdtype(np.asarray(number).dtype, np.number):
            events.append((event.wall_time, value.tag, event.step, float(number)))
  by_tag = collections.defaultdict(dict)
  for _, tag, step, number in sorted(events, key=lambda e: e[0]):
    by_tag[tag][step] = number
  return {tag: sorted(values.items()) for tag, values in by_tag.items()}


def _save(figure, path) -> epath.Path:
  """Writes `figure` as a PNG to `path`, local or on cloud storage (matplotlib writes local files only)."""
  png = io.BytesIO()
  figure.savefig(png, format="png", dpi=110)
  plt.close(figure)
  path = epath.Path(path)
  path.write_bytes(png.getvalue())
  return path


def plot_training_curves(scalars: dict[str, list[tuple[int, float]]], path) -> epath.Path | None:
  """Loss, learning rate and accuracy over the steps, side by side; None if nothing was logged."""
  if "loss" not in scalars:
    return None
  figure, (loss, lr, accuracy) = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
  loss.plot(*zip(*scalars["loss"]), color="tab:blue")
  loss.set(title="training loss", xlabel="step", yscale="log")
  lr.plot(*zip(*scalars["lr"]), color="tab:orange")
  lr.set(title="learning rate", xlabel="step")
  lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
  for tag, label, style in (("eval/top1", "validation top-1 (1 view)", "o-"), ("eval/top5", "top-5", ".:")):
    if tag in scalars:
      steps, values = zip(*scalars[tag])
      accuracy.plot(steps, 100 * np.array(values), style, label=label)
  if "final/top1" in scalars:
    steps, values = zip(*scalars["final/top1"])
    accuracy.plot(steps, 100 * np.array(values), "*", markersize=12, color="tab:red", label="final top-1 (all views)")
  accuracy.set(title="accuracy", xlabel="step", ylabel="%", ylim=(0, 101))
  accuracy.grid(alpha=0.3)
  if accuracy.lines:  # a run stopped before its first evaluation has no accuracy to name
    accuracy.legend(loc="lower right", fontsize="small")
  for axes in (loss, lr, accuracy):
    axes.set_xlim(left=0)
  return _save(figure, path)


def plot_confusion_matrix(confusion, class_names, path, title: str = "") -> epath.Path:
  """Rows the true class, columns the prediction; each row coloured by its share, cells counted when few."""
  confusion = np.asarray(confusion)
  num_classes = len(class_names)
  named = num_classes <= MAX_NAMED_CLASSES
  side = min(4 + 0.55 * num_classes, 30) if named else 12
  figure, axes = plt.subplots(figsize=(side + 2, side), layout="constrained")
  shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  figure.colorbar(image, ax=axes, fraction=0.04, label="share of the true class")
  if named:
    axes.set_xticks(range(num_classes), class_names, rotation=35, ha="right")
    axes.set_yticks(range(num_classes), class_names)
  if num_classes <= 20:
    for (row, column), count in np.ndenumerate(confusion):
      if count:
        colour = "white" if shares[row, column] > 0.5 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize="small")
  axes.set(xlabel="predicted", ylabel="true", title=title)
  return _save(figure, path)


def write_plots(workdir, results: dict, class_names) -> list[epath.Path]:
  """The pictures of a run in `workdir` (local or gs://): the curves if it trained, the confusion matrix if it was
  evaluated."""
  workdir = epath.Path(workdir)
  written = [plot_training_curves(read_scalars(workdir), workdir / CURVES_FILE)]
  if "confusion_matrix" in results:
    title = f"top-1 {100 * results['top1']:.1f}% over {_videos_and_views(results)}"
    written.append(plot_confusion_matrix(results["confusion_matrix"], class_names, workdir / CONFUSION_FILE, title))
  return [path for path in written if path]


def _videos_and_views(results: dict) -> str:
  return f"{console.count(results['num_videos'], 'video')}, {console.count(results['views'], 'view')}"


def run_summary(results: dict, seconds: float, files: list[tuple[str, str]]) -> str:
  """The table a run ends with: its accuracy (and the single-frame control's), wall time, and (name, path) files."""
  rows = []
  if "top1" in results:
    rows.append(("top-1", f"{100 * results['top1']:.1f}%  ({_videos_and_views(results)})"))
    if evaluate.top5_tells(results):
      rows.append(("top-5", f"{100 * results['top5']:.1f}%"))
    if results.get("skipped_videos"):
      rows.append(("skipped videos", f"{results['skipped_videos']} (unreadable; the warnings name them)"))
  if "single_frame_top1" in results:
    chance = 100 / len(results["confusion_matrix"])
    rows.append(("single-frame control top-1", f"{100 * results['single_frame_top1']:.1f}%  (chance {chance:.1f}%)"))
  for name, task in results.get("zero_shot", {}).items():
    rows.append((f"zero-shot {name} top-1", zero_shot.top1_text(task)))
  minutes, rest = divmod(round(seconds), 60)
  rows.append(("wall time", f"{minutes} min {rest:02d} s"))
  width = max(len(name) for name, _ in rows + files)
  return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows + files)
