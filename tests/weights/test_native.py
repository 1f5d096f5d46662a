"""xclip-jax's own checkpoints read back: a config that does not describe the stored params, and a training workdir
whose newest checkpoint is damaged."""

import json
import logging
import pathlib
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from tests.fixtures import tiny
import xclip_jax
from xclip_jax.train import checkpoints
from xclip_jax.weights import native
from xclip_jax.weights import official

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return pathlib.Path(tiny.model().save(tmp_path_factory.mktemp("native") / "tiny"))


def _with_config(checkpoint, directory, **fields):
  """A copy of `checkpoint` (its params linked, not copied) whose config has `fields` changed."""
  directory.mkdir()
  (directory / native.PARAMS_DIR).symlink_to(checkpoint / native.PARAMS_DIR)
  meta = json.loads((checkpoint / native.CONFIG_FILE).read_text())
  meta["config"].update(fields)
  (directory / native.CONFIG_FILE).write_text(json.dumps(meta))
  return directory


@pytest.mark.parametrize(
  "fields, message",
  [
    # tiny: 2 frames, 2 vision layers of width 64, embed_dim 32.
    (
      dict(num_frames=4),
      r"^PARAMS: parameter mit/positional_embedding has shape \(1, 2, 32\), xclip_config\.json describes \(1, 4, 32\)$",
    ),
    (
      dict(vision_width=128),
      r"^PARAMS: parameter \S+ has shape \([^)]*\b64\b[^)]*\), xclip_config\.json describes \([^)]*\b128\b[^)]*\)$",
    ),
    (
      dict(vision_layers=1),
      r"^PARAMS has parameter visual/transformer/resblocks_1/\S+ \(shape \([^)]+\)\) that xclip_config\.json "
      r"does not describe$",
    ),
    (
      dict(vision_layers=3),
      r"^PARAMS lacks parameter visual/transformer/resblocks_2/\S+ \(shape \([^)]+\)\) that xclip_config\.json "
      r"describes$",
    ),
  ],
)
def test_a_config_that_does_not_describe_the_params_names_the_first_mismatch(checkpoint, tmp_path, fields, message):
  """One short line naming the parameter and both shapes, before any array is read (not flax's error at the first
  call, nor orbax's dump of the whole stored tree)."""
  edited = _with_config(checkpoint, tmp_path / "edited", **fields)
  with pytest.raises(official.CheckpointMismatchError) as error:
    xclip_jax.load_pretrained(edited)
  text = str(error.value)
  assert re.fullmatch(message.replace("PARAMS", re.escape(str(edited / native.PARAMS_DIR))), text), text
  assert len(text) < 300


def test_a_config_that_is_not_json_is_one_error_naming_it(checkpoint, tmp_path):
  damaged = _with_config(checkpoint, tmp_path / "damaged")
  (damaged / native.CONFIG_FILE).write_text('{"format": ')
  with pytest.raises(ValueError, match=re.escape(f"{damaged / native.CONFIG_FILE}: invalid JSON (")):
    xclip_jax.load_pretrained(damaged)


@pytest.mark.parametrize(
  "record, message",
  [
    ({"format": "xclip-jax", "version": 2}, "no 'config' object holding the model's architecture"),
    ([1, 2], "is not an xclip-jax checkpoint config"),
    ({"format": "xclip-jax", "version": 2, "config": {"embed_dim": 64}}, "X-CLIP config lacks the fields ["),
    ({"format": "xclip-jax", "version": 2, "config": {**tiny.ARCH, "vision_heads": 5}}, "vision_heads=5 does not"),
    (
      {"format": "xclip-jax", "version": 2, "config": {**tiny.ARCH, "prompts_alpha": None}},
      ": prompts_alpha must be a finite number, got None",
    ),
  ],
)
def test_a_config_without_a_usable_architecture_is_one_error_naming_it(checkpoint, tmp_path, record, message):
  damaged = _with_config(checkpoint, tmp_path / "damaged")
  (damaged / native.CONFIG_FILE).write_text(json.dumps(record))
  with pytest.raises(ValueError, match=f"^{re.escape(str(damaged / native.CONFIG_FILE))}.*{re.escape(message)}"):
    xclip_jax.load_pretrained(damaged)


@pytest.mark.parametrize("damaged_file", ["manifest.ocdbt", "_METADATA"])
def test_damaged_params_are_one_short_error_naming_them(checkpoint, tmp_path, damaged_file):
  damaged = tmp_path / "damaged"
  shutil.copytree(checkpoint, damaged)
  (damaged / native.PARAMS_DIR / damaged_file).write_bytes(b"")
  with pytest.raises(ValueError) as error:
    xclip_jax.load_pretrained(damaged)
  text = str(error.value)
  assert text.startswith(f"{damaged / native.PARAMS_DIR} cannot be read: ") and len(text) < 500, text


def test_other_frames_are_still_interpolated_from_the_stored_ones(checkpoint):
  """`num_frames` other than the config's resamples the stored embedding on purpose: not a mismatch."""
  model = xclip_jax.load_pretrained(checkpoint, num_frames=4)
  assert model.config.num_frames == 4 and model.params["mit"]["positional_embedding"].shape == (1, 4, 32)


def test_a_write_that_fails_leaves_no_config(tmp_path, monkeypatch):
  """The config, which makes a directory a checkpoint, is written once the params are: a failed write leaves none
  describing params that are not there."""

  def fails(self, directory, *args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(native.ocp.StandardCheckpointer, "save", fails)
  with pytest.raises(OSError, match="No space left"):
    tiny.model().save(tmp_path / "tiny")
  assert not native.is_checkpoint(tmp_path / "tiny")


@pytest.mark.parametrize("kind", ["notes", "workdir", "file", "checkpoint-and-notes"])
def test_saving_over_anything_but_a_checkpoint_is_refused_and_leaves_it(tmp_path, kind):
  """A folder with other files (a workdir, notes in params/, notes beside a checkpoint), or a file: the saved model
  would replace or hide them."""
  target = tmp_path / "target"
  if kind == "checkpoint-and-notes":
    tiny.model().save(target)
    (target / "notes.txt").write_text("mine\n")
  elif kind == "notes":
    (target / native.PARAMS_DIR).mkdir(parents=True)
    (target / native.PARAMS_DIR / "notes.txt").write_text("mine\n")
  elif kind == "workdir":
    _workdir(target, steps=(2,))
    shutil.rmtree(target / native.WORKDIR_BEST)
  else:
    target.write_text("mine\n")
  before = _listing(tmp_path)
  with pytest.raises(
    ValueError, match=re.escape(f"{target} exists and is neither an empty directory nor an xclip-jax")
  ):
    tiny.model().save(target)
  assert _listing(tmp_path) == before


@pytest.mark.parametrize("first_write", [True, False])
def test_saving_over_what_a_killed_write_left_finishes_the_checkpoint(tmp_path, first_write):
  """A kill or a full disk while orbax writes the params leaves its temporary folder (with or without the config of
  an earlier write, as a workdir's best/): the next save must not refuse the folder, or every rerun of the training
  stops at its first better validation."""
  target = tmp_path / "best"
  if not first_write:
    tiny.model(seed=1).save(target)
    shutil.rmtree(target / native.PARAMS_DIR)
  unfinished = target / f"{native.PARAMS_DIR}.orbax-checkpoint-tmp-1765100000"
  unfinished.mkdir(parents=True)
  (unfinished / "partial").write_bytes(b"\0" * 10)
  tiny.model(seed=2).save(target)
  assert sorted(path.name for path in target.iterdir()) == sorted([native.CONFIG_FILE, native.PARAMS_DIR])
  loaded = xclip_jax.load_pretrained(target).params["mit"]["positional_embedding"]
  np.testing.assert_array_equal(loaded, tiny.model(seed=2).params["mit"]["positional_embedding"])


def test_saving_over_a_checkpoint_replaces_it(tmp_path):
  """As training does with a workdir's best/."""
  tiny.model(seed=1).save(tmp_path / "checkpoint")
  tiny.model(seed=2).save(tmp_path / "checkpoint")
  loaded = xclip_jax.load_pretrained(tmp_path / "checkpoint").params["mit"]["positional_embedding"]
  np.testing.assert_array_equal(loaded, tiny.model(seed=2).params["mit"]["positional_embedding"])


def _workdir(root: pathlib.Path, steps) -> dict[int, dict]:
  """A training workdir of the tiny model: best/, and a checkpoint (as training writes it) of other params at each
  step; returns each step's params."""
  tiny.model().save(root / native.WORKDIR_BEST)
  manager = checkpoints.make_manager(root, keep=len(steps))
  saved = {}
  for step in steps:
    saved[step] = tiny.model(seed=step).params
    state = types.SimpleNamespace(step=np.int32(step), params=saved[step], opt_state=np.zeros(1), rng=np.zeros(2))
    checkpoints.save(manager, state, position=0, batch_size=2)
  manager.wait_until_finished()
  return saved


def _damage(root: pathlib.Path, step: int):
  """Cuts every data file of the checkpoint at `step` to zero bytes, as a disk that filled up mid-write."""
  for path in (root / native.WORKDIR_CHECKPOINTS / str(step) / "state" / "ocdbt.process_0" / "d").iterdir():
    path.write_bytes(b"")


def _listing(root: pathlib.Path) -> list[str]:
  return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_a_workdir_stopped_before_its_first_validation_is_read_with_the_architecture_of_its_record(tmp_path):
  """No best/ yet: the run's record (config.json) says what model its checkpoints hold."""
  workdir = tmp_path / "workdir"
  saved = _workdir(workdir, steps=(2,))
  architecture = xclip_jax.load_pretrained(workdir / native.WORKDIR_BEST).config.architecture()
  shutil.rmtree(workdir / native.WORKDIR_BEST)
  (workdir / native.WORKDIR_RECORD).write_text(json.dumps({"config": {}, "architecture": architecture}))
  model = xclip_jax.load_pretrained(workdir, dtype="bfloat16")
  assert model.config.architecture() == architecture and model.config.dtype == "bfloat16"
  np.testing.assert_array_equal(model.params["mit"]["positional_embedding"], saved[2]["mit"]["positional_embedding"])


def test_a_workdir_record_without_an_architecture_is_one_error_naming_it(tmp_path):
  workdir = tmp_path / "workdir"
  _workdir(workdir, steps=(2,))
  shutil.rmtree(workdir / native.WORKDIR_BEST)
  (workdir / native.WORKDIR_RECORD).write_text(json.dumps({"config": {}}))
  message = f"{workdir / native.WORKDIR_RECORD}: no 'architecture' object holding the model's architecture"
  with pytest.raises(ValueError, match=re.escape(message)):
    xclip_jax.load_pretrained(workdir)


def test_a_damaged_checkpoints_error_is_told_by_its_innermost_cause_but_not_a_context_dropped_with_from_none():
  # As json raises for an empty file: its StopIteration(0) is an internal detail, which `from None` hides.
  def read_empty_json():
    try:
      next(iter([]))
    except StopIteration:
      raise ValueError("Expecting value: line 1 column 1 (char 0)") from None

  try:
    try:
      read_empty_json()
    except ValueError as error:
      raise RuntimeError("restoring data failed") from error
  except RuntimeError as error:
    assert native.one_line(error) == "Expecting value: line 1 column 1 (char 0)"


def test_a_damaged_newest_checkpoint_is_skipped_with_a_one_line_warning(tmp_path):
  """The newest intact checkpoint is read; one warning line names the damaged step (none of orbax's abandoned reads'
  tracebacks); the workdir is left as it was."""
  workdir = tmp_path / "workdir"
  saved = _workdir(workdir, steps=(2, 4))
  _damage(workdir, 4)
  before = _listing(workdir)
  result = subprocess.run(
    [sys.executable, "-m", "xclip_jax.convert", str(workdir), str(tmp_path / "out")],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr
  assert result.stderr.count("\n") == 1, result.stderr
  assert result.stderr.startswith("warning: The checkpoint at step 4 cannot be read (")
  assert result.stderr.endswith("); reading step 2 instead.\n"), result.stderr
  params = xclip_jax.load_pretrained(tmp_path / "out").params
  np.testing.assert_array_equal(params["mit"]["positional_embedding"], saved[2]["mit"]["positional_embedding"])
  assert _listing(workdir) == before


def test_a_workdir_without_a_readable_checkpoint_is_one_error_naming_each_step(tmp_path):
  workdir = tmp_path / "workdir"
  _workdir(workdir, steps=(2, 4))
  _damage(workdir, 2)
  _damage(workdir, 4)
  with pytest.raises(ValueError) as error:
    xclip_jax.load_pretrained(workdir)
  text = str(error.value)
  assert text.startswith(f"no checkpoint in {workdir / native.WORKDIR_CHECKPOINTS} can be read (step 4: "), text
  assert "; step 2: " in text and "\n" not in text


def test_a_workdir_whose_best_config_does_not_describe_its_checkpoints_names_the_mismatch(tmp_path):
  workdir = tmp_path / "workdir"
  _workdir(workdir, steps=(2,))
  meta = json.loads((workdir / native.WORKDIR_BEST / native.CONFIG_FILE).read_text())
  meta["config"]["num_frames"] = 4
  (workdir / native.WORKDIR_BEST / native.CONFIG_FILE).write_text(json.dumps(meta))
  state = workdir / native.WORKDIR_CHECKPOINTS / "2" / "state"
  with pytest.raises(
    official.CheckpointMismatchError,
    match=rf"^{re.escape(str(state))}: parameter mit/positional_embedding has shape \(1, 2, 32\), "
    r"best/xclip_config\.json describes \(1, 4, 32\)$",
  ):
    xclip_jax.load_pretrained(workdir)


def test_checkpoints_and_workdirs_load_from_relative_paths(checkpoint, tmp_path, monkeypatch):
  """A path as a user types it (`convert converted/ ...`, `--checkpoint=runs/demo/best`): orbax wants absolute paths,
  the loader makes them so; saving to a relative path works too."""
  _workdir(tmp_path / "workdir", steps=(2,))
  monkeypatch.chdir(tmp_path)
  expected = xclip_jax.load_pretrained(checkpoint).params["mit"]["positional_embedding"]
  (tmp_path / "linked").symlink_to(checkpoint)
  for relative in ("linked", "workdir/best", "workdir"):
    xclip_jax.load_pretrained(relative)
  np.testing.assert_array_equal(xclip_jax.load_pretrained("linked").params["mit"]["positional_embedding"], expected)
  xclip_jax.load_pretrained("linked").save("saved")
  np.testing.assert_array_equal(xclip_jax.load_pretrained("saved").params["mit"]["positional_embedding"], expected)


def test_a_model_whose_xclip_modules_are_untrained_reads_back_untrained(tmp_path):
  trained = tiny.model()
  untrained = xclip_jax.XCLIPModel(trained.config, trained.params, xclip_modules_trained=False)
  untrained.save(tmp_path / "untrained")
  trained.save(tmp_path / "trained")
  assert not xclip_jax.load_pretrained(tmp_path / "untrained").xclip_modules_trained
  assert xclip_jax.load_pretrained(tmp_path / "trained").xclip_modules_trained


def test_frames_of_a_model_from_clip_are_interpolated_without_a_warning_of_published_accuracy(tmp_path, caplog):
  """A model converted from CLIP has no published accuracy at its frames: its MIT embedding is an initialisation. A
  trained one still gets the warning."""
  model = tiny.model()
  xclip_jax.XCLIPModel(model.config, model.params, xclip_modules_trained=False).save(tmp_path / "from_clip")
  model.save(tmp_path / "trained")
  with caplog.at_level(logging.INFO):
    assert xclip_jax.load_pretrained(tmp_path / "from_clip", num_frames=4).config.num_frames == 4
  assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
  assert any(
    "untrained (a model from CLIP), is interpolated from 2 frames to 4" in r.getMessage() for r in caplog.records
  )
  caplog.clear()
  xclip_jax.load_pretrained(tmp_path / "trained", num_frames=4)
  (warning,) = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
  assert "(evaluate at 2 frames for its published accuracy)" in warning


def test_a_checkpoint_written_before_the_mark_was_recorded_reads_as_trained(checkpoint, tmp_path):
  old = _with_config(checkpoint, tmp_path / "old")
  meta = json.loads((old / native.CONFIG_FILE).read_text())
  meta.pop("xclip_modules_trained", None)
  (old / native.CONFIG_FILE).write_text(json.dumps(meta))
  assert xclip_jax.load_pretrained(old).xclip_modules_trained


def test_a_mark_that_is_not_a_boolean_is_one_error_naming_the_file(checkpoint, tmp_path):
  odd = _with_config(checkpoint, tmp_path / "odd")
  meta = json.loads((odd / native.CONFIG_FILE).read_text())
  meta["xclip_modules_trained"] = "no"
  (odd / native.CONFIG_FILE).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match=re.escape(f"{odd / native.CONFIG_FILE}: xclip_modules_trained is 'no'")):
    xclip_jax.load_pretrained(odd)
