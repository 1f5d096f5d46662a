"""JAX's persistent compilation cache for the command-line programs: a second run loads its compiled programs.

The cache folder is, in order: the `--compilation_cache_dir` flag, the environment variable XCLIP_JAX_CACHE_DIR,
`$XDG_CACHE_HOME/xclip_jax/jax`, `~/.cache/xclip_jax/jax`. The value `none` (or an empty one) turns caching off.
Call `enable` before anything is compiled.
"""

import os
import pathlib

from absl import flags
from absl import logging
import jax

ENV_VAR = "XCLIP_JAX_CACHE_DIR"
_OFF = ("", "none")


def default_dir() -> pathlib.Path:
  """`xclip_jax/jax` in the user's cache folder (XDG: `$XDG_CACHE_HOME`, else `~/.cache`)."""
  xdg = os.environ.get("XDG_CACHE_HOME", "")
  # The XDG spec says to ignore a relative path.
  base = pathlib.Path(xdg) if os.path.isabs(xdg) else pathlib.Path.home() / ".cache"
  return base / "xclip_jax" / "jax"


def define_flag():
  """Defines `--compilation_cache_dir` for a program that passes its value to `enable`."""
  return flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    f"Folder of JAX's persistent compilation cache ('none' turns it off). Default: ${ENV_VAR}, else "
    "$XDG_CACHE_HOME/xclip_jax/jax or ~/.cache/xclip_jax/jax.",
  )


def folder(cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
  """The cache folder `enable(cache_dir)` uses; None when caching is off."""
  if cache_dir is None:
    cache_dir = os.environ.get(ENV_VAR, default_dir())
  if str(cache_dir).strip().lower() in _OFF:
    return None
  return pathlib.Path(cache_dir).expanduser().absolute()


def enable(cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache; returns its folder, or None when turned off.

  Args:
    cache_dir: the folder, or 'none' / '' to turn the cache off; None: $XCLIP_JAX_CACHE_DIR, else `default_dir()`.
  """
  path = folder(cache_dir)
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.warning("No compilation cache: cannot create %s (%s).", path, e)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  # Cache every program, however small or quick to compile: on CPU, compiling is most of a short run's time.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return path
