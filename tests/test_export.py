"""`python -m xclip_jax.export`: the tiny model in each serving format, run by that format's runtime, gives the
probabilities of `XCLIPModel.logits` through both entry points; a user's mistakes are one-line errors."""

import contextlib
import io
import logging
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import jax
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

from input_pipeline import annotations
from input_pipeline import normalization
from tests.fixtures import forked_commands
from tests.fixtures import tiny
import xclip_jax
from xclip_jax import export
from xclip_jax.weights import official

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = ["a shape sliding", "a shape spinning", "a shape standing still"]
# Served through the features entry point of the same files: another label set, of another size.
OTHER_CLASSES = ["cooking", "dancing", "juggling", "knitting", "surfing"]
BATCH_SIZES = (1, 3)
FILES = {
  "saved_model": {"saved_model.pb", "variables", "assets", "fingerprint.pb"},
  "stablehlo": {"probabilities.jax_exported", "probabilities_from_features.jax_exported"},
  "onnx": {"probabilities.onnx", "probabilities_from_features.onnx"},
}


def run_export(*args):
  """The command, in a process of its own: what it shows from its start to its end."""
  return subprocess.run(
    [sys.executable, "-m", "xclip_jax.export", *map(str, args)], cwd=REPO, capture_output=True, text=True
  )


@pytest.fixture(scope="module")
def export_command():
  """The command run for its mistakes: each run a child forked from one process that imported its dependencies
  (tests/fixtures/forked_commands.py), seconds of start-up saved a run; run_export's test sees the start-up."""
  with forked_commands.command("xclip_jax.export", REPO) as run:
    yield run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return tiny.model().save(tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="module")
def model(checkpoint):
  return xclip_jax.load_pretrained(checkpoint)


class SavedModel:
  error = tf.errors.InvalidArgumentError

  def __init__(self, out):
    self.signatures = tf.saved_model.load(str(out)).signatures

  def __call__(self, frames, text_features=None):
    if text_features is None:
      return self.signatures["serving_default"](frames=tf.constant(frames))["probabilities"].numpy()
    inputs = dict(frames=tf.constant(frames), text_features=tf.constant(text_features))
    return self.signatures["probabilities_from_features"](**inputs)["probabilities"].numpy()


class StableHLO:
  error = ValueError

  def __init__(self, out):
    self.exported = {
      name: jax.export.deserialize((out / f"{name}.jax_exported").read_bytes())
      for name in ("probabilities", "probabilities_from_features")
    }

  def __call__(self, frames, text_features=None):
    if text_features is None:
      return np.asarray(self.exported["probabilities"].call(frames))
    return np.asarray(self.exported["probabilities_from_features"].call(frames, text_features))


class ONNX:
  error = onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument

  def __init__(self, out):
    self.sessions = {
      name: onnxruntime.InferenceSession(out / f"{name}.onnx", providers=["CPUExecutionProvider"])
      for name in ("probabilities", "probabilities_from_features")
    }

  def __call__(self, frames, text_features=None):
    if text_features is None:
      return self.sessions["probabilities"].run(["probabilities"], {"frames": frames})[0]
    inputs = {"frames": frames, "text_features": text_features}
    return self.sessions["probabilities_from_features"].run(["probabilities"], inputs)[0]


@pytest.fixture(scope="module")
def exports(model, checkpoint, tmp_path_factory):
  """Each format exported once: StableHLO by the command (from the checkpoint), the others by `export.export`; the
  SavedModel from the model loaded with cuDNN's attention (test_exports_run_attention_that_lowers_for_every_platform),
  lowered like StableHLO for every platform."""
  root = tmp_path_factory.mktemp("exports")
  with contextlib.redirect_stdout(io.StringIO()) as stdout:
    assert export.command(checkpoint, root / "stablehlo", classes=CLASSES, fmt="stablehlo") == 0
  assert "frames (B, 2, 32, 32, 3) uint8 -> probabilities (B, 3)" in stdout.getvalue()
  export.export(xclip_jax.load_pretrained(checkpoint, attention="cudnn"), CLASSES, root / "saved_model", "saved_model")
  export.export(model, CLASSES, root / "onnx", "onnx")
  return root


@pytest.fixture(scope="module", params=list(FILES))
def served(request, exports):
  fmt = request.param
  runtime = {"saved_model": SavedModel, "stablehlo": StableHLO, "onnx": ONNX}[fmt]
  return fmt, exports / fmt, runtime(exports / fmt)


def frames(batch_size: int) -> np.ndarray:
  size = tiny.ARCH["image_resolution"]
  rng = np.random.default_rng(batch_size)
  return rng.integers(0, 256, (batch_size, tiny.ARCH["num_frames"], size, size, 3), np.uint8)


def expected_probabilities(model, frames, text_features) -> np.ndarray:
  """Softmax of `XCLIPModel.logits` of the frames normalised as the evaluation does."""
  mean, std = np.float32(normalization.MEAN_RGB), np.float32(normalization.STD_RGB)
  logits = np.asarray(model.logits((frames.astype(np.float32) - mean) / std, text_features=text_features))
  exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return exp / exp.sum(axis=-1, keepdims=True)


def test_each_format_writes_its_files_the_labels_and_the_text_features(served, model):
  fmt, out, runtime = served
  assert {path.name for path in out.iterdir()} == FILES[fmt] | {"labels.csv", "text_features.npy"}
  if fmt == "saved_model":
    assert set(runtime.signatures) == {"serving_default", "probabilities", "probabilities_from_features"}
  assert annotations.read_label_list(out / "labels.csv") == CLASSES
  text_features = np.load(out / "text_features.npy")
  assert text_features.dtype == np.float32
  np.testing.assert_allclose(text_features, model.encode_text(xclip_jax.tokenize(CLASSES)), atol=1e-6)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_baked_classes_give_the_models_probabilities(served, model, batch_size):
  _, _, runtime = served
  video = frames(batch_size)
  probabilities = runtime(video)
  text_features = model.encode_text(xclip_jax.tokenize(CLASSES))
  assert probabilities.shape == (batch_size, len(CLASSES)) and probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities, expected_probabilities(model, video, text_features), atol=1e-4)


# Both symbolic sizes vary: the batch, and the number of classes (the baked ones as features, then another set).
def test_exports_run_attention_that_lowers_for_every_platform(model, exports):
  """Whatever attention the model was loaded with: cuDNN's kernel (what `auto` runs on a GPU) lowers for CUDA only,
  and does not run on this CPU at all. The SavedModel of `exports`, lowered for every platform as StableHLO is, was
  exported from the model loaded with attention="cudnn"."""
  video = frames(3)  # the batch size of test_baked_classes_give_the_models_probabilities, whose programs it reuses
  text_features = model.encode_text(xclip_jax.tokenize(CLASSES))
  served = SavedModel(exports / "saved_model")(video)
  np.testing.assert_allclose(served, expected_probabilities(model, video, text_features), atol=1e-4)


@pytest.mark.parametrize("batch_size, class_names", [(1, None), (3, OTHER_CLASSES)])
def test_text_features_entry_point_serves_any_label_set(served, model, batch_size, class_names):
  _, out, runtime = served
  video = frames(batch_size)
  if class_names is None:
    text_features = np.load(out / "text_features.npy")
    np.testing.assert_allclose(runtime(video, text_features), runtime(video), atol=1e-6)
  else:
    text_features = np.asarray(model.encode_text(xclip_jax.tokenize(class_names)))
  probabilities = runtime(video, text_features)
  assert probabilities.shape == (batch_size, len(text_features)) and probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities, expected_probabilities(model, video, text_features), atol=1e-4)


def test_frames_of_another_size_are_refused(served):
  _, _, runtime = served
  with pytest.raises(runtime.error):
    runtime(frames(1)[:, :, :-1])


@pytest.mark.parametrize(
  "case, message",
  [
    ("missing", "error: no checkpoint at MISSING\n"),
    ("not_a_checkpoint", "error: OTHER: neither a torch zip archive nor a legacy torch.save file"),
  ],
)
def test_a_missing_or_foreign_checkpoint_is_a_one_line_error_and_nothing_is_written(
  export_command, tmp_path, case, message
):
  checkpoint = tmp_path / case
  if case == "not_a_checkpoint":
    checkpoint.write_text("a text file, not a checkpoint\n")
  # One run of the real command, which shows what it writes from its start (no library's start-up lines).
  run = run_export if case == "missing" else export_command
  result = run(checkpoint, tmp_path / "out", "--classes=a,b", "--format=onnx")
  assert result.returncode == 2 and result.stdout == ""
  expected = message.replace("MISSING", str(checkpoint)).replace("OTHER", str(checkpoint))
  assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
  assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_checkpoint_is_named_once_in_its_error(tmp_path, capsys):
  """Not 'error: checkpoint PATH: PATH: neither ...': the reader's message names the file already."""
  (tmp_path / "text.pth").write_text("a text file, not a checkpoint\n")
  assert export.command(tmp_path / "text.pth", tmp_path / "out", classes=CLASSES, fmt="stablehlo") == 2
  captured = capsys.readouterr()
  assert captured.out == "" and captured.err.count("\n") == 1, captured.err
  assert captured.err.startswith(f"error: {tmp_path / 'text.pth'}: neither a torch zip archive nor a legacy torch.save")
  assert [path.name for path in tmp_path.iterdir()] == ["text.pth"]


@pytest.mark.parametrize(
  "arguments, message",
  [
    (dict(classes=["a"], fmt="tflite"), "error: --format=tflite: unknown format; use one of saved_model, stablehlo"),
    (dict(), "error: pass exactly one of --labels and --classes"),
    (dict(classes=["a", "b", "a"]), "error: --classes lists 'a' more than once"),
    (dict(labels="missing.csv"), "error: --labels: "),
    (dict(classes=["a"], out="taken"), "exists and is not an empty directory"),
    (dict(classes=["a"], out="taken/file/out"), "cannot write TMP/taken/file/out: TMP/taken/file is not a directory"),
  ],
)
def test_mistakes_are_one_line_errors_before_the_checkpoint_is_read(tmp_path, capsys, arguments, message):
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "file").touch()
  if "labels" in arguments:
    arguments["labels"] = tmp_path / arguments["labels"]
  out = tmp_path / arguments.pop("out", "out")
  # A checkpoint that is not there: the mistake is found first.
  assert export.command(tmp_path / "no_checkpoint", out, **arguments) == 2
  captured = capsys.readouterr()
  message = message.replace("TMP", str(tmp_path))
  assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
  assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("missing", ["jax2onnx", "onnxruntime"])
def test_a_format_whose_extra_is_missing_is_a_one_line_error_before_the_checkpoint_is_read(
  tmp_path, capsys, monkeypatch, missing
):
  find_spec = export.importlib.util.find_spec
  monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == missing else find_spec(name))
  assert export.command(tmp_path / "no_checkpoint", tmp_path / "out", classes=["a"], fmt="onnx") == 2
  assert capsys.readouterr().err == (
    f"error: --format=onnx needs {missing}: pip install '.[export]' in the xclip-jax checkout\n"
  )
  assert not any(tmp_path.iterdir())


def test_an_export_its_runtime_cannot_run_is_a_one_line_error_naming_the_versions(
  checkpoint, tmp_path, capsys, monkeypatch
):
  def fails(out, frames):
    # As TensorFlow's errors: several lines, the cause the last that says "error:".
    raise RuntimeError("Graph execution error:\n<unknown>:0: error: cannot read this artifact\n\t [[node]]")

  monkeypatch.setitem(export.SERVERS, "stablehlo", fails)
  assert export.command(checkpoint, tmp_path / "out", classes=CLASSES, fmt="stablehlo") == 2
  captured = capsys.readouterr()
  expected = f"error: --format=stablehlo failed (jax {jax.__version__}): RuntimeError: <unknown>:0: error: cannot read"
  assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith(expected), captured.err
  assert not any(tmp_path.iterdir())


def test_a_write_that_fails_after_the_export_is_a_one_line_error_and_leaves_nothing(
  checkpoint, tmp_path, capsys, monkeypatch
):
  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(export.csv, "writer", disk_full)  # the last file written, the labels
  assert export.command(checkpoint, tmp_path / "out", classes=CLASSES, fmt="stablehlo") == 2
  captured = capsys.readouterr()
  assert captured.err == f"error: cannot write {tmp_path / 'out'}: [Errno 28] No space left on device\n"
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("error", [0.05, float("nan")])
def test_an_export_whose_runtime_gives_other_probabilities_is_refused(checkpoint, tmp_path, capsys, monkeypatch, error):
  serve = export.SERVERS["stablehlo"]
  monkeypatch.setitem(export.SERVERS, "stablehlo", lambda out, frames: serve(out, frames) + error)
  assert export.command(checkpoint, tmp_path / "out", classes=CLASSES, fmt="stablehlo") == 2
  captured = capsys.readouterr()
  message = f"error: --format=stablehlo: the exported model's probabilities differ from JAX's by {error:.3g} (shape"
  assert captured.err.count("\n") == 1 and captured.err.startswith(message), captured.err
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
  "arguments, message",
  [
    (("CKPT", "OUT", "--classes=a,b", "--num_frames=0"), "--num_frames=0: 0 is not a positive integer"),
    (("CKPT", "OUT", "--classes=a,b", "--num_frames=-1"), "--num_frames=-1: -1 is not a positive integer"),
    (
      ("CKPT", "--classes=a,b"),
      "usage: python -m xclip_jax.export CHECKPOINT OUT --labels=FILE|--classes=a,b,c [--format=...]",
    ),
  ],
)
def test_command_line_mistakes_are_one_line_errors(export_command, checkpoint, tmp_path, arguments, message):
  out = tmp_path / "out"
  result = export_command(*[{"CKPT": checkpoint, "OUT": out}.get(argument, argument) for argument in arguments])
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr == f"error: {message}\n", result.stderr
  assert not out.exists()


@pytest.mark.parametrize("num_frames", [0, -1, 2.5])
def test_frames_below_one_from_python_are_a_one_line_error_naming_num_frames(checkpoint, tmp_path, capsys, num_frames):
  assert export.command(checkpoint, tmp_path / "out", classes=CLASSES, fmt="stablehlo", num_frames=num_frames) == 2
  captured = capsys.readouterr()
  expected = f"error: checkpoint {checkpoint}: num_frames must be an integer of at least 1, got {num_frames}\n"
  assert captured.out == "" and captured.err == expected, captured.err
  assert not any(tmp_path.iterdir())


def test_a_clip_checkpoint_exports_with_a_warning_that_its_xclip_modules_are_untrained(tmp_path, caplog, monkeypatch):
  clip = tiny.save_clip_checkpoint(tmp_path / "clip.pt")
  monkeypatch.setattr(export, "export", lambda model, class_names, out, fmt: out)  # the warning comes before it
  # The new modules' values say nothing here.
  monkeypatch.setattr(official, "init_params", tiny.zero_init_params)
  with caplog.at_level(logging.WARNING):
    assert export.command(clip, tmp_path / "out", classes=CLASSES, fmt="stablehlo") == 0
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [
    f"{clip} is a CLIP model: X-CLIP's message tokens, MIT and prompt generator are untrained, so these are not a "
    "trained X-CLIP's results; use an X-CLIP checkpoint, or one trained from this one"
  ]


def test_a_symbolic_link_to_nothing_as_out_is_a_one_line_error_before_the_checkpoint_is_read(tmp_path, capsys):
  (tmp_path / "out").symlink_to(tmp_path / "gone")
  assert export.command(tmp_path / "no_checkpoint", tmp_path / "out", classes=CLASSES, fmt="stablehlo") == 2
  captured = capsys.readouterr()
  expected = f"error: cannot write {tmp_path / 'out'}: {tmp_path / 'out'} is a symbolic link to {tmp_path / 'gone'}"
  assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith(expected), captured.err
  assert [path.name for path in tmp_path.iterdir()] == ["out"] and (tmp_path / "out").is_symlink()


def test_onnx_external_weights_get_the_permissions_of_the_other_files(model, tmp_path, monkeypatch):
  """onnx's save writes them 0600: a server running as another user could read the graph but not its weights."""
  import onnx

  save_model = onnx.save_model
  # Weights of 4 KB and more to the .onnx.data file, as a real model's of 1 MB and more (the tiny model has none).
  # (Shape constants stay in the graph, where onnxruntime needs them.)
  monkeypatch.setattr(
    onnx, "save_model", lambda *args, **kwargs: save_model(*args, **{**kwargs, "size_threshold": 4096})
  )
  previous = os.umask(0o027)
  try:
    out = export.export(model, CLASSES, tmp_path / "out", "onnx")
  finally:
    os.umask(previous)
  expected = 0o666 & ~0o027
  for name in ("probabilities.onnx.data", "probabilities_from_features.onnx.data", "labels.csv"):
    assert stat.S_IMODE((out / name).stat().st_mode) == expected, name


def test_a_model_of_a_smaller_vocabulary_than_clips_is_a_one_line_error_and_nothing_is_written(tmp_path, capsys):
  """A Hugging Face X-CLIP may set any vocab_size; CLIP's tokenizer gives ids up to 49407 (its end of text)."""
  small = tiny.model(vocab_size=1000).save(tmp_path / "small")
  assert export.command(small, tmp_path / "out", classes=["a", "b"], fmt="stablehlo") == 2
  captured = capsys.readouterr()
  expected = "error: the class names' CLIP token ids reach 49407, but the model's vocabulary has 1000 tokens"
  assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith(expected), captured.err
  assert [path.name for path in tmp_path.iterdir()] == ["small"]


def test_an_out_on_cloud_storage_is_a_one_line_error(checkpoint, capsys):
  assert export.command(checkpoint, "gs://bucket/out", classes=CLASSES, fmt="stablehlo") == 2
  expected = "error: gs://bucket/out: export writes a local path; copy the result to cloud storage afterwards\n"
  assert capsys.readouterr().err == expected


def test_an_out_inside_the_checkpoint_is_a_one_line_error_and_the_checkpoint_is_kept(checkpoint, tmp_path, capsys):
  source = pathlib.Path(shutil.copytree(checkpoint, tmp_path / "source"))
  before = sorted(path.relative_to(source) for path in source.rglob("*"))
  assert export.command(source, source / "out", classes=CLASSES, fmt="stablehlo") == 2
  captured = capsys.readouterr()
  assert captured.err == f"error: {source / 'out'} is inside the checkpoint {source}: write it elsewhere\n"
  assert sorted(path.relative_to(source) for path in source.rglob("*")) == before
