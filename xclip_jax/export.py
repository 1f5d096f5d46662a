r"""Exports an X-CLIP checkpoint as a video classifier for serving: SavedModel, StableHLO (jax.export) or ONNX.

  python -m xclip_jax.export k400_32_8.pth out/k400 --labels=kinetics_400_labels.csv --format=saved_model
  python -m xclip_jax.export CKPT out/hlo --classes="dancing,cooking,playing guitar" --format=stablehlo
  python -m xclip_jax.export CKPT out/onnx --labels=L.csv --format=onnx --num_frames=8

CHECKPOINT is anything `xclip_jax.load_pretrained` reads. Every export has two entry points:
  probabilities(frames) -> (B, K): the class probabilities (softmax of the logits) for the K classes of --labels or
    --classes, whose text features are computed once at export and stored in the file as a constant;
  probabilities_from_features(frames, text_features) -> (B, K): the same for any K classes, given as their (K, D)
    float32 `XCLIPModel.encode_text` features, so that one file serves any label set.
`frames` is (B, T, S, S, 3) uint8 RGB with T the model's frames and S its input size (printed at export; both are fixed
in the file) and B any batch size. Sampling, resizing and cropping are the caller's job (`classify.eval_crops` does the
evaluation's); the frames are normalised inside as the evaluation does: (x - mean) / std on 0-255 values, in float32.

OUT, a new or empty directory, receives, besides `labels.csv` (the K classes in order, the `id,name` CSV that --labels
reads) and `text_features.npy` ((K, D) float32, the baked features):
  saved_model: a SavedModel with the signatures `serving_default` (also named `probabilities`) and
    `probabilities_from_features`, inputs `frames` and `text_features`, output `probabilities`; through orbax-export
    (jax2tf): the weights are variables and the computation XlaCallModule ops, lowered for CPU, CUDA and TPU.
  stablehlo: `probabilities.jax_exported` and `probabilities_from_features.jax_exported`, serialised
    `jax.export.Exported` (`jax.export.deserialize(data).call(frames)`) with the weights inside, for CPU, CUDA and TPU.
  onnx: `probabilities.onnx` and `probabilities_from_features.onnx` (opset 23, through jax2onnx), same input and output
    names; weights beyond 1 MB go to a `.onnx.data` file beside each (with the .onnx's permissions).
SavedModel and ONNX need the `export` extras: pip install '.[export]' in the xclip-jax checkout.

Before the files reach OUT, the format's runtime (TensorFlow, jax, onnxruntime) runs `probabilities` on two clips and
must give JAX's probabilities, so that an export that would fail at serving fails here instead: with jax 0.11, say,
TensorFlow 2.21 cannot read the SavedModel's StableHLO and jax2onnx 0.17 cannot convert.

Errors are one line on stderr and exit status 2, with nothing written: a checkpoint that is missing or not an
X-CLIP/CLIP checkpoint, an unknown --format, a --num_frames below 1, no (or a bad) label list, a model whose vocabulary
is smaller than the CLIP tokenizer's, an OUT that is not empty or is inside CHECKPOINT, a missing extra, an export that
its runtime cannot run (naming the versions involved).
"""

from collections.abc import Callable, Sequence
import csv
import importlib.metadata
import importlib.util
import logging as python_logging
import os
import pathlib
import stat

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import normalization
from xclip_jax import classify
from xclip_jax import console
from xclip_jax import paths
from xclip_jax import pretrained
from xclip_jax.model import xclip

FLAGS = flags.FLAGS

FORMATS = ("saved_model", "stablehlo", "onnx")
# The modules each format needs beyond the core dependencies (the `export` extras): to write its files, and to run
# them as the export checks.
EXTRAS = {"saved_model": ("orbax.export",), "onnx": ("jax2onnx", "onnxruntime")}
# SavedModel and StableHLO are lowered for all of these, so that one file serves on any of them.
PLATFORMS = ("cpu", "cuda", "tpu")
# Parameters of the text encoder, which the exported functions never run (they start from text features); flax builds
# these submodules only when called, so the SavedModel's variables can leave them out (a third of ViT-B's weights).
TEXT_ENCODER = ("token_embedding", "transformer", "ln_final")
STABLEHLO_SUFFIX = ".jax_exported"
MEAN_RGB = np.asarray(normalization.MEAN_RGB, np.float32)
STD_RGB = np.asarray(normalization.STD_RGB, np.float32)


def probabilities(model: pretrained.XCLIPModel, params, frames, text_features) -> jax.Array:
  """(B, K) class probabilities of (B, T, S, S, 3) uint8 frames, normalised as the evaluation does, against (K, D)
  text features."""
  video = (frames.astype(jnp.float32) - MEAN_RGB) / STD_RGB
  logits = model.module.apply({"params": params}, video, text_features, method=xclip.XCLIP.logits_from_features)
  return jax.nn.softmax(logits, axis=-1)


def _input_specs(config) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """The frames and text features, of symbolic batch `b` and class count `k`."""
  batch, classes = jax.export.symbolic_shape("b, k")
  size = config.image_resolution
  frames = jax.ShapeDtypeStruct((batch, config.num_frames, size, size, 3), jnp.uint8)
  return frames, jax.ShapeDtypeStruct((classes, config.embed_dim), jnp.float32)


def entry_points(model: pretrained.XCLIPModel, text_features: np.ndarray) -> dict[str, tuple[Callable, tuple]]:
  """Name -> (function of the inputs, with the weights and baked text features as constants; input specs)."""
  frames, features = _input_specs(model.config)
  return {
    "probabilities": (lambda f: probabilities(model, model.params, f, text_features), (frames,)),
    "probabilities_from_features": (lambda f, t: probabilities(model, model.params, f, t), (frames, features)),
  }


def _write_stablehlo(model, text_features, out: pathlib.Path):
  for name, (fn, specs) in entry_points(model, text_features).items():
    exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(*specs)
    (out / f"{name}{STABLEHLO_SUFFIX}").write_bytes(exported.serialize())


def _write_onnx(model, text_features, out: pathlib.Path):
  import jax2onnx  # an optional extra, imported when used

  for name, (fn, specs) in entry_points(model, text_features).items():
    input_names = ["frames", "text_features"][: len(specs)]
    jax2onnx.to_onnx(
      fn,
      specs,
      model_name=name,
      return_mode="file",
      output_path=out / f"{name}.onnx",
      input_names=input_names,
      output_names=["probabilities"],
    )
    # onnx writes the external weights private (0600): give them the permissions of the .onnx file beside them,
    # which follow the umask as every other file written.
    graph, weights = out / f"{name}.onnx", out / f"{name}.onnx.data"
    if weights.exists():
      os.chmod(weights, stat.S_IMODE(graph.stat().st_mode))


def _write_saved_model(model, text_features, out: pathlib.Path):
  # Imported when used: orbax-export is an optional extra, and TensorFlow takes seconds to import.
  from orbax import export as oex
  import tensorflow as tf

  config = model.config
  size = config.image_resolution
  frames = tf.TensorSpec((None, config.num_frames, size, size, 3), tf.uint8, name="frames")
  features = tf.TensorSpec((None, config.embed_dim), tf.float32, name="text_features")
  module = oex.JaxModule(
    {key: value for key, value in model.params.items() if key not in TEXT_ENCODER},
    {
      "probabilities": lambda params, x: {"probabilities": probabilities(model, params, x["frames"], text_features)},
      "probabilities_from_features": lambda params, x: {
        "probabilities": probabilities(model, params, x["frames"], x["text_features"])
      },
    },
    trainable=False,
    input_polymorphic_shape={
      "probabilities": {"frames": "(b, ...)"},
      "probabilities_from_features": {"frames": "(b, ...)", "text_features": "(k, _)"},
    },
    jax2tf_kwargs={
      name: {"native_serialization_platforms": PLATFORMS} for name in ("probabilities", "probabilities_from_features")
    },
  )
  serving_configs = [
    oex.ServingConfig(
      ["serving_default", "probabilities"], input_signature=[{"frames": frames}], method_key="probabilities"
    ),
    oex.ServingConfig(
      "probabilities_from_features",
      input_signature=[{"frames": frames, "text_features": features}],
      method_key="probabilities_from_features",
    ),
  ]
  oex.ExportManager(module, serving_configs).save(os.fspath(out))


WRITERS = {"saved_model": _write_saved_model, "stablehlo": _write_stablehlo, "onnx": _write_onnx}


def _serve_saved_model(out: pathlib.Path, frames: np.ndarray) -> np.ndarray:
  import tensorflow as tf

  signature = tf.saved_model.load(os.fspath(out)).signatures["serving_default"]
  return signature(frames=tf.constant(frames))["probabilities"].numpy()


def _serve_stablehlo(out: pathlib.Path, frames: np.ndarray) -> np.ndarray:
  return np.asarray(jax.export.deserialize((out / f"probabilities{STABLEHLO_SUFFIX}").read_bytes()).call(frames))


def _serve_onnx(out: pathlib.Path, frames: np.ndarray) -> np.ndarray:
  import onnxruntime  # an optional extra, imported when used

  session = onnxruntime.InferenceSession(os.fspath(out / "probabilities.onnx"), providers=["CPUExecutionProvider"])
  return session.run(["probabilities"], {"frames": frames})[0]


# Each format's `probabilities` run from its files, and the distributions that write and run them (named in errors).
SERVERS = {"saved_model": _serve_saved_model, "stablehlo": _serve_stablehlo, "onnx": _serve_onnx}
PACKAGES = {
  "saved_model": ("jax", "orbax-export", "tensorflow-cpu", "tensorflow"),
  "stablehlo": ("jax",),
  "onnx": ("jax", "jax2onnx", "onnxruntime"),
}
# How far the runtime's probabilities may be from JAX's: float32 rounding gives 1e-5, TF32 matmuls on a GPU 1e-3;
# wrong weights or a wrong normalisation move them by far more.
SERVED_ATOL = 1e-2


def _versions(fmt: str) -> str:
  versions = []
  for package in PACKAGES[fmt]:
    try:
      versions.append(f"{package} {importlib.metadata.version(package)}")
    except importlib.metadata.PackageNotFoundError:
      continue  # TensorFlow is one of tensorflow-cpu and tensorflow
  return ", ".join(versions)


def write_and_check(model: pretrained.XCLIPModel, text_features: np.ndarray, out: pathlib.Path, fmt: str):
  """Writes `fmt` to `out`, then runs its `probabilities` on two clips in the format's runtime against JAX's: an
  export that cannot be written or served, whatever the library's error, is a UserError naming the versions."""
  config = model.config
  size = config.image_resolution
  frames = np.random.default_rng(0).integers(0, 256, (2, config.num_frames, size, size, 3), np.uint8)
  with jax.default_matmul_precision("highest"):
    expected = np.asarray(probabilities(model, model.params, frames, text_features))
  failure = None
  # What C code writes to stderr meanwhile (TensorFlow's start-up lines, its errors' details) goes to the log, and to
  # the terminal with --verbosity, not among what the export prints.
  with console.native_start_up():
    try:
      WRITERS[fmt](model, text_features, out)
      served = SERVERS[fmt](out, frames)
    except Exception as e:  # each library raises its own types; the message says which libraries, of which versions
      failure = e
  if failure is not None:
    lines = [line.strip() for line in str(failure).splitlines() if line.strip()] or [""]
    # TensorFlow's errors run over many lines, the cause the last that says "error:"; the others' are one line.
    reason = [line for line in lines if "error:" in line.lower()][-1:] or lines[:1]
    name = type(failure).__name__
    raise classify.UserError(f"--format={fmt} failed ({_versions(fmt)}): {name}: {reason[0][:300]}") from failure
  error = np.max(np.abs(served - expected)) if served.shape == expected.shape else np.inf
  if not error <= SERVED_ATOL:
    raise classify.UserError(
      f"--format={fmt}: the exported model's probabilities differ from JAX's by {error:.3g} (shape "
      f"{served.shape}, expected {expected.shape}; {_versions(fmt)})"
    )


def check_destination(out, fmt: str, checkpoint=None) -> pathlib.Path:
  """`out` as a path, or UserError for an unknown format, a missing extra, or an `out` that is not a new or empty
  directory, is inside the checkpoint directory `checkpoint`, or cannot be created."""
  if fmt not in FORMATS:
    raise classify.UserError(f"--format={fmt}: unknown format; use one of {', '.join(FORMATS)}")
  missing = [module for module in EXTRAS.get(fmt, ()) if importlib.util.find_spec(module) is None]
  if missing:
    raise classify.UserError(
      f"--format={fmt} needs {' and '.join(missing)}: pip install '.[export]' in the xclip-jax checkout"
    )
  if paths.is_remote(out):  # written beside it and renamed there, which cloud storage cannot do
    raise classify.UserError(f"{out}: export writes a local path; copy the result to cloud storage afterwards")
  out = pathlib.Path(out)
  if not paths.is_new_or_empty_directory(out):
    raise classify.UserError(f"{out} exists and is not an empty directory")
  # Written there, the export would change the checkpoint (as convert refuses too).
  if checkpoint is not None and paths.within(out, checkpoint) is not None:
    raise classify.UserError(f"{out} is inside the checkpoint {checkpoint}: write it elsewhere")
  if reason := paths.why_not_creatable(out):
    raise classify.UserError(f"cannot write {out}: {reason}")
  return out


def export(model: pretrained.XCLIPModel, class_names: Sequence[str], out, fmt: str = "saved_model") -> pathlib.Path:
  """Writes `model` as a classifier of `class_names` in `fmt` (see the module doc) to `out`, a new or empty directory.

  The files are written to a temporary directory beside `out`, run in their runtime (`write_and_check`) and moved
  there at the end: a failed export leaves nothing behind.
  """
  out = check_destination(out, fmt)
  class_names = classify.check_class_names(class_names, "the label list")
  # The hand-written attention core, plain XLA operations, whatever the model was loaded with: it lowers for every
  # platform, which cuDNN's kernel (what `auto` runs on a GPU) does not.
  model = pretrained.XCLIPModel(model.config.replace(attention="hand"), model.params)
  text_features = np.asarray(model.encode_text(classify.text_ids(model, class_names)), np.float32)
  with paths.written_beside(out) as staging:
    staging.mkdir()  # with the user's permissions (mkdtemp's are private)
    write_and_check(model, text_features, staging, fmt)
    np.save(staging / "text_features.npy", text_features)
    with open(staging / "labels.csv", "w", newline="", encoding="utf-8") as f:
      csv.writer(f, lineterminator="\n").writerows([("id", "name"), *enumerate(class_names)])
  return out


def command(
  checkpoint: str,
  out: str,
  *,
  labels: str | None = None,
  classes: Sequence[str] | None = None,
  fmt: str = "saved_model",
  num_frames: int | None = None,
) -> int:
  """What `python -m xclip_jax.export` does with its arguments; returns the exit status, a mistake is one line on
  stderr."""
  try:
    # The cheap checks first: a mistake is reported before the checkpoint is read.
    class_names = classify.read_class_names(labels, classes)
    check_destination(out, fmt, checkpoint)
    try:
      model = pretrained.load_pretrained(checkpoint, num_frames=num_frames)
    except (OSError, ValueError) as e:
      raise classify.UserError(pretrained.load_error(checkpoint, e)) from None
    classify.warn_if_untrained(model, checkpoint)
    try:
      out = export(model, class_names, out, fmt)
    except OSError as e:
      raise classify.UserError(f"cannot write {out}: {e}") from None
  except classify.UserError as e:
    return console.error(str(e))
  config = model.config
  size = config.image_resolution
  print(
    f"Wrote {out} ({fmt}): frames (B, {config.num_frames}, {size}, {size}, 3) uint8 -> probabilities (B, "
    f"{len(class_names)}); probabilities_from_features takes text features (K, {config.embed_dim}) float32."
  )
  return 0


def main(argv):
  if len(argv) != 3:
    return console.error(
      "usage: python -m xclip_jax.export CHECKPOINT OUT --labels=FILE|--classes=a,b,c [--format=...]"
    )
  console.setup()  # libraries' INFO lines (XLA, orbax, TensorFlow) only with --verbosity
  # Library warnings that say nothing about the export: onnx_ir drops the shape annotations of intermediate values
  # (the graph is complete); jax2onnx skips, with tracebacks, plugins for other libraries that fail to import (dm_pix's
  # under this jax), which the conversion does not use.
  for name in ("onnx_ir", "jax2onnx.plugins.plugin_system"):
    python_logging.getLogger(name).setLevel(python_logging.ERROR)
  return command(
    argv[1], argv[2], labels=FLAGS.labels, classes=FLAGS.classes, fmt=FLAGS.format, num_frames=FLAGS.num_frames
  )


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  flags.DEFINE_string("labels", None, "An `id,name` CSV of class names.")
  flags.DEFINE_list("classes", None, "Comma-separated class names (instead of --labels).")
  # A string, not an enum: an unknown format is a one-line error with exit status 2, as the other mistakes.
  flags.DEFINE_string("format", "saved_model", f"One of {', '.join(FORMATS)}.")
  flags.DEFINE_integer("num_frames", None, "Frames per video (default: the checkpoint's).", lower_bound=1)


def run():
  """The console entry point."""
  define_flags()
  app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
  run()
