"""Paths that may be local or on cloud storage (`gs://bucket/...`), read and written through etils.epath."""

import os
import pathlib
import shutil

from etils import epath


def is_remote(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a URI (gs://, s3://, ...) rather than a local path."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike[str]) -> epath.Path:
  """`path` as an epath.Path; local paths made absolute (orbax wants them so), URIs as given."""
  return epath.Path(path) if is_remote(path) else epath.Path(path).absolute()


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
