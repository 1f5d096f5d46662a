"""One run at a time in a workdir: a command started on a workdir whose run is still going is refused.

Two runs in one workdir would interleave their checkpoints and overwrite each other's best model and results.
Process 0 holds WORKDIR/run.lock (its host and process id) while its run goes on. A lock left by a run that was
killed is taken over when its process is gone from this host; one from another host is left to the user, who is told
where it is. Local workdirs only: cloud storage has no exclusive create.
"""

from collections.abc import Iterator
import contextlib
import fcntl
import json
import logging
import os
import pathlib
import socket
import tempfile
import time

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
        _remove_if_ended(path, workdir)
  finally:
    os.unlink(written)
  try:
    yield
  finally:
    path.unlink(missing_ok=True)


def _remove_if_ended(path: pathlib.Path, workdir):
  """Removes the lock at `path` if its run has ended; raises WorkdirInUseError if it goes on.

  Runs that find a lock at once each read and remove it holding its file's flock, once they see that its name still
  leads to it: removed unseen, the lock that the first of them just placed would let the second in too.
  """
  try:
    descriptor = os.open(path, os.O_RDWR)
  except FileNotFoundError:  # removed by a run taking it over
    return
  try:
    if not _flock(descriptor):
      return  # another run is judging it: the next try reads what it decided
    holder = _holder(descriptor)
    if holder is not None and not _ended(holder):
      raise WorkdirInUseError(
        f"{workdir} is in use by the run of process {holder['pid']} on {holder['host']}: wait for it or stop it "
        f"(if it is not running, delete {path})"
      )
    try:
      still_there = os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
      still_there = False
    if still_there:
      logging.info("Taking over %s, left by a run that ended without removing it.", path)
      path.unlink()
  finally:
    os.close(descriptor)


def _flock(descriptor: int) -> bool:
  """Takes `descriptor`'s file's exclusive flock: False if another process holds it; True where flock is unknown."""
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    time.sleep(0.01)
    return False
  except OSError:  # a file system without flock: unguarded, as nothing better is there
    pass
  return True


def _place(written: str, path: pathlib.Path):
  """Gives the lock file `written` the name `path`, or raises FileExistsError where a lock is."""
  try:
    os.link(written, path)
  except FileExistsError:
    raise
  except OSError:  # a file system without hard links (FAT): create exclusively, then write under its flock
    with open(path, "x") as f:
      _flock(f.fileno())
      f.write(pathlib.Path(written).read_text())


def _holder(descriptor: int) -> dict | None:
  """The host and process id in a lock file; None if it cannot be read (written half, by a killed run)."""
  try:
    holder = json.loads(os.pread(descriptor, 1 << 16, 0))
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
