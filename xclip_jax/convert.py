r"""Converts an X-CLIP or CLIP checkpoint for xclip-jax, or exports one back to the official PyTorch format.

  python -m xclip_jax.convert SRC DST                 # any supported checkpoint -> xclip-jax (orbax) directory
  python -m xclip_jax.convert SRC DST --num_frames=8  # ... with the MIT temporal embedding resampled to 8 frames
  python -m xclip_jax.convert SRC DST.pth --to=official   # -> {'model': state_dict}, as the official code loads

SRC is anything `xclip_jax.load_pretrained` reads; the conversion never executes code from it and needs no PyTorch.
"""

import pathlib

from absl import app
from absl import flags

from xclip_jax import compilation_cache
from xclip_jax import console
from xclip_jax import pretrained
from xclip_jax.weights import official
from xclip_jax.weights import torch_writer

FLAGS = flags.FLAGS


def convert(src, dst, to: str = "jax", num_frames: int | None = None) -> pathlib.Path:
  model = pretrained.load_pretrained(src, num_frames=num_frames)
  dst = pathlib.Path(dst)
  if to == "jax":
    model.save(dst)
  elif to == "official":
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch_writer.save_torch_checkpoint({"model": official.official_from_params(model.params)}, dst)
  else:
    raise ValueError(f"unknown target format {to!r}; use 'jax' or 'official'")
  return dst


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m xclip_jax.convert SRC DST [--to=jax|official] [--num_frames=N]")
  console.setup()
  compilation_cache.enable(FLAGS.compilation_cache_dir)  # a CLIP checkpoint compiles the X-CLIP modules' init
  dst = convert(argv[1], argv[2], FLAGS.to, FLAGS.num_frames)
  console.info(f"Wrote {dst} ({FLAGS.to} format).")


def define_flags():
  """Command-line flags, defined only when run as a program so that importing defines none."""
  flags.DEFINE_enum(
    "to",
    "jax",
    ["jax", "official"],
    "jax: an xclip-jax checkpoint directory; official: a .pth the official PyTorch code loads.",
  )
  flags.DEFINE_integer("num_frames", None, "Frames per video (default: the checkpoint's).")
  compilation_cache.define_flag()


def run():
  """The console entry point."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
