"""Paths on cloud storage (gs://) or local: what orbax is given, and init checkpoints read through a local copy."""

import os
import pathlib
import re

import jax
import numpy as np
import pytest

from tests.fixtures import tiny
from xclip_jax import paths
from xclip_jax import pretrained
from xclip_jax.parallel import sharding


def test_uris_stay_as_given_and_local_paths_become_absolute(tmp_path, monkeypatch):
  assert os.fspath(paths.absolute("gs://bucket/runs/k400")) == "gs://bucket/runs/k400"
  assert os.fspath(paths.absolute("gs://bucket/runs") / "checkpoints") == "gs://bucket/runs/checkpoints"
  monkeypatch.chdir(tmp_path)
  assert os.fspath(paths.absolute("runs/k400")) == os.fspath(tmp_path / "runs" / "k400")
  assert paths.is_remote("s3://bucket/x") and not paths.is_remote(tmp_path / "x")


def test_a_remote_init_checkpoint_is_read_from_a_local_copy_that_is_deleted_afterwards(tmp_path, monkeypatch):
  model = tiny.model()
  source = tmp_path / "bucket" / "tiny_xclip"
  model.save(source)
  # The same code as for gs://, with a local folder standing in for the bucket.
  is_remote, copies = paths.is_remote, []
  monkeypatch.setattr(paths, "is_remote", lambda path: os.fspath(path) == os.fspath(source) or is_remote(path))
  copy_to_local = paths.copy_to_local
  monkeypatch.setattr(paths, "copy_to_local", lambda src, dst: copies.append(copy_to_local(src, dst)) or dst)
  mesh = sharding.make_mesh({"data": -1})
  loaded = pretrained.load_pretrained(source, mesh=mesh)
  assert loaded.mesh is mesh  # the options reach the local copy's reader
  top = copies[-1]  # the folder, copied after its files
  assert top.name == source.name and not top.exists()
  for ours, theirs in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(model.params)):
    np.testing.assert_array_equal(ours, theirs)


def test_a_file_that_is_not_json_is_an_error_naming_it(tmp_path):
  (tmp_path / "best.json").write_text('{"top1": 0.5')
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'best.json'}: invalid JSON (Expecting ")):
    paths.read_json(tmp_path / "best.json")
  (tmp_path / "best.json").write_text('{"top1": 0.5}')
  assert paths.read_json(tmp_path / "best.json") == {"top1": 0.5}


def test_into_an_existing_empty_directory_folders_move_before_files(tmp_path, monkeypatch):
  """A checkpoint's config, which makes a folder one, arrives after its params: an interrupted move never looks like
  a complete checkpoint."""
  (tmp_path / "dst").mkdir()
  moved = []
  rename = paths.pathlib.Path.rename
  monkeypatch.setattr(
    paths.pathlib.Path, "rename", lambda self, target: moved.append(self.name) or rename(self, target)
  )
  with paths.written_beside(tmp_path / "dst") as staging:
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    (staging / "params").mkdir()
    (staging / "params" / "data").write_text("x")
  assert moved == ["params", "config.json"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"] and (tmp_path / "dst/params/data").exists()


def test_into_an_existing_directory_the_output_is_staged_inside_it(tmp_path):
  """A mounted output folder is on another file system than its parent: staged there, the output could not be
  renamed into it."""
  (tmp_path / "mounted").mkdir()
  with paths.written_beside(tmp_path / "mounted") as staging:
    assert tmp_path / "mounted" in staging.parents
    staging.mkdir()
    (staging / "model.onnx").write_text("x")
  assert [p.name for p in (tmp_path / "mounted").iterdir()] == ["model.onnx"]
  assert [p.name for p in tmp_path.iterdir()] == ["mounted"]


def test_a_write_that_fails_before_making_every_folder_removes_those_it_made(tmp_path):
  """A name too long for the file system: the first new folder is made, the next cannot be."""
  with pytest.raises(OSError), paths.written_beside(tmp_path / "new" / ("x" * 300) / "out"):
    pytest.fail("a folder named 300 characters was made")
  assert list(tmp_path.iterdir()) == []


def _writable_except(monkeypatch, unwritable: pathlib.Path):
  """As if `unwritable` were not writable (the tests run as root, who may write anything)."""
  access = os.access
  monkeypatch.setattr(
    paths.os, "access", lambda path, mode: os.fspath(path) != os.fspath(unwritable) and access(path, mode)
  )


def test_an_existing_directory_that_is_not_writable_cannot_be_written(tmp_path, monkeypatch):
  (tmp_path / "out").mkdir()
  _writable_except(monkeypatch, tmp_path / "out")
  assert paths.why_not_creatable(tmp_path / "out") == f"cannot write in {tmp_path / 'out'}"


def test_a_writable_directory_under_a_parent_that_is_not_writable_can_be_written(tmp_path, monkeypatch):
  (tmp_path / "out").mkdir()
  _writable_except(monkeypatch, tmp_path)
  assert paths.why_not_creatable(tmp_path / "out") is None
  assert paths.why_not_creatable(tmp_path / "new") == f"cannot write in {tmp_path}"


def test_a_failed_write_removes_the_folders_it_made_and_keeps_those_that_were_there(tmp_path):
  (tmp_path / "there").mkdir()
  dst = tmp_path / "there" / "new" / "newer" / "out"
  with pytest.raises(OSError, match="No space left"), paths.written_beside(dst) as staging:
    staging.write_text("half")
    raise OSError(28, "No space left on device")
  assert [path.name for path in tmp_path.iterdir()] == ["there"] and not any((tmp_path / "there").iterdir())


@pytest.mark.parametrize("output", ["link", "link/out"])
def test_a_symbolic_link_to_nothing_cannot_be_written(tmp_path, output):
  (tmp_path / "link").symlink_to(tmp_path / "gone")
  expected = f"{tmp_path / 'link'} is a symbolic link to {tmp_path / 'gone'}, which does not exist"
  assert paths.why_not_creatable(tmp_path / output) == expected


def test_the_staging_folder_of_a_killed_write_into_a_directory_is_removed_by_the_next(tmp_path):
  """A killed export into an existing empty folder (a mounted one) leaves its hidden staging folder: the rerun
  writes there, and the folder holds its output alone."""
  left = tmp_path / "out" / f"{paths.STAGING_PREFIX}killed" / "out"
  left.mkdir(parents=True)
  (left / "model.onnx").write_text("half")
  assert paths.is_new_or_empty_directory(tmp_path / "out")
  with paths.written_beside(tmp_path / "out") as staging:
    staging.mkdir()
    (staging / "model.onnx").write_text("whole")
  assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.onnx"]
  assert (tmp_path / "out" / "model.onnx").read_text() == "whole"


def test_a_second_write_into_a_directory_being_written_is_refused_and_leaves_the_first_alone(tmp_path):
  (tmp_path / "out").mkdir()
  with paths.written_beside(tmp_path / "out") as first:
    first.mkdir()
    (first / "model.onnx").write_text("first")
    refused = pytest.raises(OSError, match=re.escape(f"another command is writing into {tmp_path / 'out'}"))
    with refused, paths.written_beside(tmp_path / "out"):
      pytest.fail("two writes into one folder at once")
    assert (first / "model.onnx").read_text() == "first"
  assert (tmp_path / "out" / "model.onnx").read_text() == "first"


def test_a_file_written_without_replacing_keeps_a_file_that_appeared_meanwhile(tmp_path):
  """`replace=False` (convert's): a second command's file at DST, written while the first wrote beside it, stays;
  the first fails naming DST, and leaves nothing."""
  dst = tmp_path / "out.pth"
  with pytest.raises(FileExistsError) as raised, paths.written_beside(dst, replace=False) as staging:
    staging.write_text("mine")
    dst.write_text("theirs")
  assert raised.value.filename == str(dst) and str(dst) in str(raised.value)
  assert [path.name for path in tmp_path.iterdir()] == ["out.pth"] and dst.read_text() == "theirs"
  with paths.written_beside(tmp_path / "new.pth", replace=False) as staging:  # where nothing is, it is written
    staging.write_text("mine")
  assert sorted(path.name for path in tmp_path.iterdir()) == ["new.pth", "out.pth"]
  assert (tmp_path / "new.pth").read_text() == "mine"


def test_a_file_written_replacing_replaces_and_a_folder_never_replaces_one_that_is_not_empty(tmp_path):
  """The default (classify's --embed file, which replaces an earlier .npz); a folder written meanwhile stays."""
  dst = tmp_path / "embeddings.npz"
  dst.write_text("earlier")
  with paths.written_beside(dst) as staging:
    staging.write_text("new")
  assert dst.read_text() == "new" and [path.name for path in tmp_path.iterdir()] == ["embeddings.npz"]
  folder = tmp_path / "out"
  with pytest.raises(FileExistsError) as raised, paths.written_beside(folder, replace=False) as staging:
    staging.mkdir()
    (staging / "model.onnx").write_text("mine")
    folder.mkdir()
    (folder / "model.onnx").write_text("theirs")
  assert raised.value.filename == str(folder) and (folder / "model.onnx").read_text() == "theirs"
  assert sorted(path.name for path in tmp_path.iterdir()) == ["embeddings.npz", "out"]
