r"""Converts an X-CLIP or CLIP checkpoint for xclip-jax, or exports one back to the official PyTorch format.

  python -m xclip_jax.convert SRC DST                 # any supported checkpoint -> xclip-jax (orbax) directory
  python -m xclip_jax.convert SRC DST --num_frames=8  # ... with the MIT temporal embedding resampled to 8 frames
  python -m xclip_jax.convert SRC DST.pth --to=official   # -> {'model': state_dict}, as the official code loads

SRC is anything `xclip_jax.load_pretrained` reads; the conversion never executes code from it and needs no PyTorch.
DST is a new or empty directory (--to=jax) or a new file (--to=official): nothing is overwritten, the source least of
all. Errors are one line on stderr and exit status 2, with nothing written: a checkpoint that is missing or not an
X-CLIP/CLIP checkpoint, an unknown --to, a --num_frames below 1, a DST that exists (or appears while converting, as
a second conversion's does), is inside SRC or cannot be written, a DST ending in / with --to=official, a model the
official format cannot describe (head counts other than width // 64, as Hugging Face configs may set; X-CLIP modules
untrained, as in a model started from CLIP, which only an xclip-jax checkpoint records).
"""

import os
import pathlib

from absl import app
from absl import flags

from xclip_jax import classify
from xclip_jax import compilation_cache
from xclip_jax import console
from xclip_jax import paths
from xclip_jax import pretrained
from xclip_jax.weights import official
from xclip_jax.weights import torch_writer

FLAGS = flags.FLAGS

FORMATS = ("jax", "official")
USAGE = "usage: python -m xclip_jax.convert SRC DST [--to=jax|official] [--num_frames=N]"


def check_arguments(dst, to: str, num_frames: int | None, src=None) -> pathlib.Path:
  """`dst` as a path, or UserError for an unknown format, a --num_frames below 1, a `dst` that exists (other than
  as an empty directory, for --to=jax), or one inside the checkpoint `src`."""
  if to not in FORMATS:
    raise classify.UserError(f"--to={to}: unknown format; use one of {', '.join(FORMATS)}")
  if num_frames is not None and num_frames < 1:
    raise classify.UserError(f"--num_frames={num_frames}: a video has at least 1 frame")
  if to == "official" and os.fspath(dst).endswith(("/", os.sep)):  # pathlib would drop the slash
    raise classify.UserError(f"{dst} names a directory; --to=official writes a file: name it, e.g. {dst}model.pth")
  if paths.is_remote(dst):  # written beside it and renamed there, which cloud storage cannot do
    raise classify.UserError(f"{dst}: convert writes a local path; copy the result to cloud storage afterwards")
  dst = pathlib.Path(dst)
  if to == "jax" and not paths.is_new_or_empty_directory(dst):
    raise classify.UserError(f"{dst} exists and is not an empty directory")
  if to == "official" and (dst.exists() or dst.is_symlink()):
    raise classify.UserError(f"{dst} exists")
  if src is not None and paths.within(dst, src) is not None:
    raise classify.UserError(f"{dst} is inside the checkpoint {src}: write it elsewhere")
  if reason := paths.why_not_creatable(dst):
    raise classify.UserError(f"cannot write {dst}: {reason}")
  return dst


def check_recordable(model: pretrained.XCLIPModel, to: str, source="the model"):
  """UserError where format `to` cannot record that `model`'s X-CLIP modules are untrained (a model from CLIP): read
  back, it would pass for a trained X-CLIP, which classify, export and --config.mode=eval take it for."""
  if to != "jax" and not model.xclip_modules_trained:
    raise classify.UserError(
      f"{source}: a CLIP model, whose X-CLIP modules are untrained: an official checkpoint cannot say so; "
      "convert it to xclip-jax or train it first"
    )


def write(model: pretrained.XCLIPModel, dst, to: str = "jax", source="the model") -> pathlib.Path:
  """Writes `model` to `dst` in format `to` (see the module doc); UserError if `dst` exists, or if `to` cannot
  record that the model's X-CLIP modules are untrained (`check_recordable`, naming `source`).

  The output is written beside `dst` and moved there at the end (`paths.written_beside`): a failed conversion leaves
  nothing behind, and a `dst` that appears meanwhile (a second conversion to it) is kept, a UserError.
  """
  dst = check_arguments(dst, to, None)
  check_recordable(model, to, source)
  try:
    with paths.written_beside(dst, replace=False) as staging:
      if to == "jax":
        model.save(staging)  # a folder with the user's permissions, in mkdtemp's private one
      else:
        torch_writer.save_torch_checkpoint({"model": official_state_dict(model)}, staging)
  except FileExistsError as error:
    if error.filename != os.path.abspath(dst):
      raise
    raise classify.UserError(f"{dst} appeared while this conversion ran: it is kept, and nothing was written") from None
  return dst


def official_state_dict(model: pretrained.XCLIPModel) -> dict:
  """The model's official state dict; UserError where the official code would read another architecture off it: it
  derives head counts from the widths (width // 64), which Hugging Face configs may set otherwise."""
  state_dict = official.official_from_params(model.params)
  read_back = official.config_from_official(state_dict).architecture()
  # prompts_alpha only initialises a parameter, which the state dict holds.
  differences = [
    f"{name}={value} (the official code reads {read_back[name]})"
    for name, value in model.config.architecture().items()
    if name != "prompts_alpha" and read_back[name] != value
  ]
  if differences:
    raise classify.UserError(f"--to=official cannot hold this model's {', '.join(differences)}")
  return state_dict


def convert(src, dst, to: str = "jax", num_frames: int | None = None) -> pathlib.Path:
  """Converts the checkpoint `src` to `dst` (`write`), checking the arguments before reading it."""
  check_arguments(dst, to, num_frames, src)
  return write(pretrained.load_pretrained(src, num_frames=num_frames), dst, to, src)


def command(src: str, dst: str, *, to: str = "jax", num_frames: int | None = None) -> int:
  """What `python -m xclip_jax.convert` does with its arguments; returns the exit status, a mistake is one line on
  stderr."""
  try:
    # The cheap checks first: a mistake is reported before the checkpoint is read.
    check_arguments(dst, to, num_frames, src)
    try:
      model = pretrained.load_pretrained(src, num_frames=num_frames)
    except (OSError, ValueError) as e:
      raise classify.UserError(pretrained.load_error(src, e)) from None
    try:
      dst = write(model, dst, to, src)
    except OSError as e:
      raise classify.UserError(f"cannot write {dst}: {e}") from None
  except classify.UserError as e:
    return console.error(str(e))
  console.info(f"Wrote {dst} ({to} format).")
  return 0


def main(argv):
  if len(argv) != 3:
    return console.error(USAGE)
  console.setup()
  compilation_cache.enable(FLAGS.compilation_cache_dir)  # a CLIP checkpoint compiles the X-CLIP modules' init
  return command(argv[1], argv[2], to=FLAGS.to, num_frames=FLAGS.num_frames)


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  # A string, not an enum: an unknown format is a one-line error with exit status 2, as the other mistakes.
  flags.DEFINE_string(
    "to", "jax", "jax: an xclip-jax checkpoint directory; official: a .pth the official PyTorch code loads."
  )
  flags.DEFINE_integer("num_frames", None, "Frames per video (default: the checkpoint's).")
  compilation_cache.define_flag()
  flags.adopt_module_key_flags(compilation_cache)  # listed by --help, with this module's own


def run():
  """The console entry point."""
  define_flags()
  app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
  run()
