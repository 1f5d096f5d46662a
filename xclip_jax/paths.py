"""Paths that may be local or on cloud storage (`gs://bucket/...`), read and written through etils.epath."""

from collections.abc import Iterator
import contextlib
import errno
import fcntl
import json
import os
import pathlib
import shutil
import tempfile

from etils import epath


def is_remote(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a URI (gs://, s3://, ...) rather than a local path."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike[str]) -> epath.Path:
  """`path` as an epath.Path; local paths made absolute (orbax wants them so), URIs as given."""
  return epath.Path(path) if is_remote(path) else epath.Path(path).absolute()


def within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str | None:
  """An empty string where `path` is `folder`, "inside " where it is inside it, None elsewhere; symbolic links
  followed (paths on cloud storage compared as written)."""
  if is_remote(path) or is_remote(folder):
    path, folder = str(path).rstrip("/"), str(folder).rstrip("/")
    inside = path.startswith(folder + "/")
  else:
    path, folder = pathlib.Path(os.path.realpath(path)), pathlib.Path(os.path.realpath(folder))
    inside = folder in path.parents
  return "" if path == folder else "inside " if inside else None


def read_json(path: str | os.PathLike[str]):
  """The JSON value in the file at `path` (local or remote); ValueError naming the file where it is not JSON."""
  path = epath.Path(path)
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ValueError(f"{path}: invalid JSON ({error})") from None


def copy_to_local(source: str | os.PathLike[str], destination: pathlib.Path) -> pathlib.Path:
  """Copies the file or folder tree `source` (local or remote) to the local `destination`; returns `destination`."""
  source = epath.Path(source)
  if source.is_dir():
    destination.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
      copy_to_local(child, destination / child.name)
  else:
    with source.open("rb") as reader, destination.open("wb") as writer:
      shutil.copyfileobj(reader, writer)
  return destination


# The prefix of the staging folder `written_beside` makes inside an existing destination folder.
STAGING_PREFIX = ".xclip-jax-staging."


def is_new_or_empty_directory(path: pathlib.Path) -> bool:
  """Whether `path` is free for a command's output folder: absent, or a directory empty but for the staging folders
  of writes into it (a killed one's is removed as the write starts; a running one's stops the new write then)."""
  if not path.exists():
    return True
  return path.is_dir() and all(entry.name.startswith(STAGING_PREFIX) for entry in path.iterdir())


def why_not_creatable(path: pathlib.Path) -> str | None:
  """Why `written_beside` could not write `path`: it or an ancestor is a symbolic link to nothing; an existing folder
  (written inside) is not writable; else an ancestor is a file, or the nearest existing one is not writable. None
  where it could."""
  path = pathlib.Path(os.path.abspath(path))
  ancestor = path if path.is_dir() else path.parent
  for link in (path, *path.parents):  # a link to nothing: creating it, or through it, fails after the work
    if link.is_symlink() and not link.exists():
      return f"{link} is a symbolic link to {os.readlink(link)}, which does not exist"
  while not ancestor.exists():
    ancestor = ancestor.parent
  if not ancestor.is_dir():
    return f"{ancestor} is not a directory"
  if not os.access(ancestor, os.W_OK | os.X_OK):
    return f"cannot write in {ancestor}"
  return None


@contextlib.contextmanager
def written_beside(dst: pathlib.Path, *, replace: bool = True) -> Iterator[pathlib.Path]:
  """A local path to write `dst`'s file or folder to, in a private temporary folder beside it: renamed to `dst` when
  the block ends, removed with everything else written otherwise (the folders made for `dst` too), so that a failed
  write leaves nothing behind.

  A file replaces a `dst` that is there by then, unless `replace` is False: then a `dst` that appeared meanwhile (a
  second command writing it) stays and the write fails, with a FileExistsError naming it (the file is hard-linked to
  `dst`, which never replaces, then unlinked from the staging folder). A folder fails so where a folder that is not
  empty, or a file, is there (a rename onto an empty one replaces it).

  Where `dst` is an existing (empty) directory, the temporary folder is inside it and its entries move into it: the
  directory stays (it may be the user's working directory), and a rename within it stays on its file system (a
  mounted folder's parent is on another, where a rename fails). One write at a time holds the directory's lock
  (OSError for a second); the staging folders it finds there were left by killed writes and are removed.
  """
  dst = pathlib.Path(os.path.abspath(dst))  # "." has no name to write beside
  into_directory = dst.is_dir()
  # The folders this creates for `dst`, deepest first: a failed write removes them too.
  created = [] if into_directory else [folder for folder in dst.parents if not os.path.lexists(folder)]
  scratch, written, lock = None, False, None
  try:
    if into_directory:
      lock = _lock_for_writing(dst)
      for left in dst.glob(f"{STAGING_PREFIX}*"):  # by a write that was killed: no other holds the lock
        shutil.rmtree(left)
      scratch = pathlib.Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dst))
    else:
      dst.parent.mkdir(parents=True, exist_ok=True)
      scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    staging = scratch / dst.name
    yield staging
    if into_directory:
      # Folders move in before files, so that a checkpoint's config, which makes it one, comes last.
      for entry in sorted(staging.iterdir(), key=lambda entry: not entry.is_dir()):
        entry.rename(dst / entry.name)
    else:
      _move(staging, dst, replace)
    written = True
  finally:
    if scratch is not None:
      shutil.rmtree(scratch, ignore_errors=True)
    if lock is not None:
      os.close(lock)
    if not written:
      for folder in created:
        if not os.path.lexists(folder):  # not made: the write failed before
          continue
        try:
          folder.rmdir()
        except OSError:  # not empty: someone else wrote there meanwhile
          break


def _move(staging: pathlib.Path, dst: pathlib.Path, replace: bool):
  """Renames the file or folder `staging` to `dst` (see `written_beside`); FileExistsError naming `dst` where a `dst`
  that appeared meanwhile stays."""
  if not replace and not staging.is_dir():
    try:
      os.link(staging, dst)  # never replaces
    except FileExistsError:
      raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst)) from None
    except OSError as error:
      # A file system without hard links: the rename, after a last look.
      if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS) or os.path.lexists(dst):
        raise
    else:
      staging.unlink()
      return
  try:
    staging.rename(dst)
  except OSError as error:  # a folder onto a folder that is not empty, or onto a file
    if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR) and os.path.lexists(dst):
      raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst)) from None
    raise


def _lock_for_writing(directory: pathlib.Path) -> int:
  """An open descriptor of `directory` holding its exclusive flock, for one write into it at a time; OSError naming
  it where another holds it."""
  descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
  try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(descriptor)
    raise OSError(f"another command is writing into {directory}") from None
  return descriptor
