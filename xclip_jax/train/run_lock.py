"""One run at a time in a workdir: a command started on a workdir whose run is still going is refused.

Two runs in one workdir would interleave their checkpoints and overwrite each other's best model and results.
Process 0 holds WORKDIR/run.lock (its host and process id) while its run goes on. A lock left by a run that was
killed is taken over when its process is gone from this host; one from another host is left to the user, who is told
where it is. Local workdirs only: cloud storage has no exclusive create.
"""

from collections.abc import Iterator
import contextlib
import json
import logging
import os
import pathlib
import socket
import tempfile

import jax

from xclip_jax import paths

LOCK_FILE = "run.lock"


class WorkdirInUseError(RuntimeError):
  """Another run holds the workdir."""


@contextlib.contextmanager
def held(workdir) -> Iterator[None]:
  """Holds `workdir`'s lock for the block (on process 0 of a local workdir), or raises WorkdirInUseError."""
  if jax.process_index() != 0 or paths.is_remote(workdir):
    yield
    return
  path = pathlib.Path(workdir) / LOCK_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  # The lock appears whole: written beside it, then linked to its name, which fails where it exists. (Created empty
  # and then written, a second run starting at that moment would read it as left half-written and take it over.)
  descriptor, written = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", dir=path.parent)
  with os.fdopen(descriptor, "w") as f:
    json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
  try:
    while True:
      try:
        _place(written, path)
        break
      except FileExistsError:
        holder = _holder(path)
        if holder is not None and not _ended(holder):
          raise WorkdirInUseError(
            f"{workdir} is in use by the run of process {holder['pid']} on {holder['host']}: wait for it or stop it "
            f"(if it is not running, delete {path})"
          ) from None
        logging.info("Taking over %s, left by a run that ended without removing it.", path)
        path.unlink(missing_ok=True)
  finally:
    os.unlink(written)
  try:
    yield
  finally:
    path.unlink(missing_ok=True)


def _place(written: str, path: pathlib.Path):
  """Gives the lock file `written` the name `path`, or raises FileExistsError where a lock is."""
  try:
    os.link(written, path)
  except FileExistsError:
    raise
  except OSError:  # a file system without hard links (FAT): create exclusively, then write
    with open(path, "x") as f:
      f.write(pathlib.Path(written).read_text())


def _holder(path: pathlib.Path) -> dict | None:
  """The host and process id in a lock file; None if it cannot be read (written half, by a killed run)."""
  try:
    holder = json.loads(path.read_text())
    return holder if isinstance(holder, dict) and {"host", "pid"} <= holder.keys() else None
  except (OSError, ValueError):
    return None


def _ended(holder: dict) -> bool:
  """Whether the process that wrote the lock has ended: known only on its own host."""
  if holder["host"] != socket.gethostname():
    return False
  if int(holder["pid"]) == os.getpid():
    # This process has not taken the lock: a container restarted after a kill, whose run has the same host name
    # and process id (often 1) as the killed one.
    return True
  try:
    os.kill(int(holder["pid"]), 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # a process of another user
    return False
  return False
