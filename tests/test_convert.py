"""Checkpoint conversion: official X-CLIP and OpenAI CLIP files in, xclip-jax and official files out."""

import functools
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading

from absl import flags
import jax
import numpy as np
import pytest

from tests.fixtures import console_state
from tests.fixtures import tiny
import xclip_jax
from xclip_jax import classify
from xclip_jax import console
from xclip_jax import convert
from xclip_jax.weights import native
from xclip_jax.weights import official
from xclip_jax.weights import torch_checkpoint
from xclip_jax.weights import torch_pickle
from xclip_jax.weights import torch_writer


@pytest.fixture(scope="module")
def golden(golden_dir):
  state_dict, _ = torch_checkpoint.read_state_dict(golden_dir / "xclip_official.pth")
  return golden_dir, state_dict, dict(np.load(golden_dir / "io.npz"))


# The official code derives every head count from its width (width // 64, at least 1): the tiny model's 2 text heads
# of width 64 do not survive the official format.
OFFICIAL_HEADS = dict(transformer_heads=1)


def clip_only(state_dict):
  return {
    k: v for k, v in state_dict.items() if not k.startswith(official.XCLIP_ONLY_PREFIXES) and ".message_" not in k
  }


@pytest.fixture(scope="module")
def round_trip(golden, tmp_path_factory):
  """The official checkpoint converted to xclip-jax, and that converted back to the official format: the paths."""
  root = tmp_path_factory.mktemp("round_trip")
  convert.convert(golden[0] / "xclip_official.pth", root / "jax")
  convert.convert(root / "jax", root / "back.pth", to="official")
  return root / "jax", root / "back.pth"


def test_round_trip_official_to_jax_to_official_is_bit_exact(golden, round_trip):
  _, state_dict, _ = golden
  exported = torch_pickle.load_torch_file(round_trip[1])
  assert set(exported) == {"model"}
  assert set(exported["model"]) == set(state_dict)
  for name, value in state_dict.items():
    assert exported["model"][name].dtype == value.dtype, name
    np.testing.assert_array_equal(exported["model"][name], value, err_msg=name)


def test_exported_checkpoint_loads_in_torch_with_weights_only(golden, round_trip):
  torch = pytest.importorskip("torch")
  _, state_dict, _ = golden
  loaded = torch.load(round_trip[1], weights_only=True)["model"]
  for name, value in state_dict.items():
    np.testing.assert_array_equal(loaded[name].numpy(), value, err_msg=name)


def test_converted_directory_reproduces_the_official_logits(golden, round_trip):
  _, _, io = golden
  model = xclip_jax.load_pretrained(round_trip[0])
  logits = model.logits(io["video"].transpose(0, 1, 3, 4, 2), io["text"])
  np.testing.assert_allclose(logits, io["logits"], rtol=1e-4, atol=1e-4)


def test_bare_state_dict_with_module_prefix_loads(golden, tmp_path):
  _, state_dict, io = golden
  torch_writer.save_torch_state_dict({f"module.{k}": v for k, v in state_dict.items()}, tmp_path / "bare.pth")
  model = xclip_jax.load_pretrained(tmp_path / "bare.pth")
  np.testing.assert_allclose(model.encode_text(io["text"]), io["text_features"], rtol=1e-4, atol=1e-4)


def test_clip_state_dict_initialises_xclip_with_clip_text_encoder(golden, tmp_path, monkeypatch):
  _, state_dict, io = golden
  clip = clip_only(state_dict)
  clip.update(input_resolution=np.array(32), context_length=np.array(77), vocab_size=np.array(49408))
  torch_writer.save_torch_state_dict(clip, tmp_path / "clip.pt")
  model = xclip_jax.load_pretrained(tmp_path / "clip.pt", num_frames=6)
  np.testing.assert_allclose(model.encode_text(io["text"]), io["text_features"], rtol=1e-4, atol=1e-4)
  assert model.config.num_frames == 6 and model.config.mit_layers == 1 and model.config.prompts_layers == 2
  # The new modules start as the official code initialises them.
  np.testing.assert_array_equal(model.params["prompts_generator"]["alpha"], np.full(64, 0.1, np.float32))
  assert model.params["mit"]["positional_embedding"].shape == (1, 6, 64)
  assert 0.01 < float(np.std(model.params["mit"]["positional_embedding"])) < 0.03
  np.testing.assert_array_equal(model.params["prompts_visual_ln"]["scale"], np.ones(128, np.float32))
  np.testing.assert_array_equal(model.params["visual"]["conv1"]["weight"], state_dict["visual.conv1.weight"])
  video = np.zeros((1, 6, 32, 32, 3), np.float32)
  assert np.isfinite(model.logits(video, io["text"])).all()
  # CLIP's default, as officially. Only the config is looked at: the new modules' values (checked above) are not drawn
  # again, which would compile the initialisation once more for 8 frames.
  with monkeypatch.context() as patch:
    patch.setattr(official, "init_params", tiny.zero_init_params)
    assert xclip_jax.load_pretrained(tmp_path / "clip.pt").config.num_frames == 8
  # A start for training, not a classifier; an X-CLIP checkpoint is one.
  assert not model.xclip_modules_trained
  assert xclip_jax.load_pretrained(golden[0] / "xclip_official.pth").xclip_modules_trained


def test_torchscript_clip_archive_with_fp16_weights_loads(golden, tmp_path):
  torch = pytest.importorskip("torch")
  _, state_dict, io = golden
  clip = clip_only(state_dict)

  class Holder(torch.nn.Module):
    def forward(self, x):
      return x

  root = Holder()
  for name, value in clip.items():
    *parents, leaf = name.split(".")
    module = root
    for part in parents:
      if not hasattr(module, part):
        module.add_module(part, Holder())
      module = getattr(module, part)
    module.register_parameter(leaf, torch.nn.Parameter(torch.from_numpy(value.copy())))
  root.register_buffer("input_resolution", torch.tensor(32))
  torch.jit.save(torch.jit.script(root.half()), str(tmp_path / "ViT-tiny.pt"))

  # 6 frames, as the test above: the new modules' initialisation is the program compiled there (one compile).
  model = xclip_jax.load_pretrained(tmp_path / "ViT-tiny.pt", num_frames=6)
  rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in clip.items()}
  torch_writer.save_torch_state_dict(rounded, tmp_path / "rounded.pt")
  reference = xclip_jax.load_pretrained(tmp_path / "rounded.pt", num_frames=6)
  # fp16 weights widen exactly to float32: the archive gives the same model as the rounded state dict.
  assert {leaf.dtype for leaf in jax.tree.leaves(model.params)} == {np.dtype(np.float32)}
  np.testing.assert_array_equal(model.encode_text(io["text"]), reference.encode_text(io["text"]))
  np.testing.assert_allclose(model.encode_text(io["text"]), io["text_features"], rtol=0.05, atol=0.05)


def test_wrong_shape_names_the_entry_and_both_shapes(golden, tmp_path):
  _, state_dict, _ = golden
  broken = dict(state_dict)
  broken["visual.transformer.resblocks.1.mlp.c_fc.weight"] = np.zeros((256, 128), np.float32)
  torch_writer.save_torch_state_dict(broken, tmp_path / "broken.pth")
  with pytest.raises(
    official.CheckpointMismatchError,
    match=r"visual\.transformer\.resblocks\.1\.mlp\.c_fc\.weight.*\(256, 128\).*\(512, 128\)",
  ):
    xclip_jax.load_pretrained(tmp_path / "broken.pth")


def test_missing_and_unknown_entries_are_named(golden):
  _, state_dict, _ = golden
  config = official.config_from_official(state_dict)
  missing = {k: v for k, v in state_dict.items() if k != "mit.resblocks.0.ln_2.bias"}
  with pytest.raises(official.CheckpointMismatchError, match=r"mit\.resblocks\.0\.ln_2\.bias"):
    official.params_from_official(missing, config)
  extra = {**state_dict, "visual.extra_head.weight": np.zeros((2, 2), np.float32)}
  with pytest.raises(official.CheckpointMismatchError, match=r"visual\.extra_head\.weight"):
    official.params_from_official(extra, config)


def test_many_missing_entries_are_counted_after_the_first_three(golden):
  _, state_dict, _ = golden
  config = official.config_from_official(state_dict)
  without_mit = {k: v for k, v in state_dict.items() if not k.startswith("mit.resblocks.")}
  num_missing = len(state_dict) - len(without_mit)
  with pytest.raises(official.CheckpointMismatchError) as error:
    official.params_from_official(without_mit, config)
  assert str(error.value).startswith(f"checkpoint lacks {num_missing} parameters of the model: 'mit.resblocks.0.")
  assert str(error.value).endswith(f" and {num_missing - 3} more")


@pytest.mark.parametrize("name", ["text_projection", "visual.positional_embedding", "ln_final.weight"])
def test_a_tensor_the_architecture_is_read_from_missing_is_named(golden, tmp_path, name):
  _, state_dict, _ = golden
  torch_writer.save_torch_state_dict({k: v for k, v in state_dict.items() if k != name}, tmp_path / "broken.pth")
  with pytest.raises(official.CheckpointMismatchError, match=f"not an X-CLIP/CLIP state dict: '{name}' is missing"):
    xclip_jax.load_pretrained(tmp_path / "broken.pth")


def test_a_tensor_the_architecture_is_read_from_of_another_rank_is_named(golden):
  _, state_dict, _ = golden
  broken = {**state_dict, "mit.positional_embedding": state_dict["mit.positional_embedding"][0]}
  with pytest.raises(
    official.CheckpointMismatchError, match=r"'mit\.positional_embedding' has shape \(4, 64\); X-CLIP's has 3 dim"
  ):
    official.config_from_official(broken)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
  resnet_clip = {
    "visual.layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32),
    "text_projection": np.zeros((512, 1024), np.float32),
  }
  torch_writer.save_torch_state_dict(resnet_clip, tmp_path / "RN50.pt")
  with pytest.raises(official.CheckpointMismatchError, match="not a ViT"):
    xclip_jax.load_pretrained(tmp_path / "RN50.pt")


def test_pickle_that_would_run_a_command_is_refused_by_load_pretrained(tmp_path):
  import pickle

  marker = tmp_path / "pwned"

  class Exploit:
    def __reduce__(self):
      import os

      return os.system, (f"touch {marker}",)

  (tmp_path / "evil.pth").write_bytes(pickle.dumps({"model": Exploit()}))
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="system"):
    xclip_jax.load_pretrained(tmp_path / "evil.pth")
  assert not marker.exists()


def test_missing_path_and_unknown_directory_are_refused(tmp_path):
  with pytest.raises(FileNotFoundError):
    xclip_jax.load_pretrained(tmp_path / "nope.pth")
  with pytest.raises(ValueError, match="neither an xclip-jax checkpoint"):
    xclip_jax.load_pretrained(tmp_path)


def test_converted_directory_of_another_format_version_is_refused_with_advice(tmp_path):
  # The tiny model's weights are drawn with numpy: `from_config`'s official initialisation would compile for seconds.
  directory = tiny.model().save(tmp_path / "jax")
  meta = json.loads((directory / "xclip_config.json").read_text())
  assert xclip_jax.load_pretrained(directory).config.vision_width == 64
  del meta["version"]  # as written before weights kept PyTorch's layout
  (directory / "xclip_config.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="checkpoint format 1.*convert the original checkpoint again"):
    xclip_jax.load_pretrained(directory)


def test_command_prints_what_it_wrote_and_keeps_library_logs_off_the_terminal(tmp_path):
  """`python -m xclip_jax.convert`: one line on stdout, nothing on stderr (orbax's and JAX's INFO lines stay in the
  log, which --verbosity=0 shows)."""
  src, dst = tmp_path / "tiny", tmp_path / "tiny.pth"
  tiny.model(**OFFICIAL_HEADS).save(src)
  command = [sys.executable, "-m", "xclip_jax.convert", str(src), "--to=official"]
  repo = pathlib.Path(__file__).resolve().parents[1]
  quiet = subprocess.run([*command, str(dst)], cwd=repo, capture_output=True, text=True)
  assert quiet.returncode == 0, quiet.stderr
  assert (quiet.stdout, quiet.stderr) == (f"Wrote {dst} (official format).\n", "")
  verbose = subprocess.run(
    [*command, str(tmp_path / "verbose.pth"), "--verbosity=0"], cwd=repo, capture_output=True, text=True
  )
  assert verbose.returncode == 0 and "orbax" in verbose.stderr, verbose.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return pathlib.Path(tiny.model(**OFFICIAL_HEADS).save(tmp_path_factory.mktemp("convert") / "tiny"))


def test_heads_the_official_format_cannot_hold_are_refused_and_nothing_is_written(tmp_path, capsys):
  # The official code reads every head count as width // 64; the tiny model has 2 text heads of width 64.
  tiny.model().save(tmp_path / "tiny")
  assert convert.command(str(tmp_path / "tiny"), str(tmp_path / "tiny.pth"), to="official") == 2
  _one_line_error(
    capsys, "error: --to=official cannot hold this model's transformer_heads=2 (the official code reads 1)"
  )
  assert not (tmp_path / "tiny.pth").exists()


def _contents(root: pathlib.Path) -> dict[str, bytes]:
  return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _one_line_error(capsys, message: str):
  captured = capsys.readouterr()
  assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err


@pytest.mark.parametrize("num_frames", [0, -2])
def test_frames_below_one_are_a_one_line_error_and_a_conversion_in_place_keeps_its_source(
  checkpoint, tmp_path, capsys, num_frames
):
  """`convert SRC SRC --num_frames=0` once left SRC with only a config of 0 frames and orbax's temporary folder."""
  source = tmp_path / "source"
  shutil.copytree(checkpoint, source)
  before = _contents(source)
  assert convert.command(str(source), str(source), num_frames=num_frames) == 2
  _one_line_error(capsys, f"error: --num_frames={num_frames}: a video has at least 1 frame")
  assert _contents(source) == before
  assert convert.command(str(source), str(tmp_path / "new"), num_frames=num_frames) == 2
  _one_line_error(capsys, f"error: --num_frames={num_frames}: a video has at least 1 frame")
  assert sorted(path.name for path in tmp_path.iterdir()) == ["source"]


def test_a_conversion_into_its_own_source_is_refused(checkpoint, tmp_path, capsys):
  source = tmp_path / "source"
  shutil.copytree(checkpoint, source)
  before = _contents(source)
  assert convert.command(str(source), str(source), num_frames=4) == 2
  _one_line_error(capsys, f"error: {source} exists and is not an empty directory")
  assert _contents(source) == before


def test_a_destination_inside_the_source_is_refused(checkpoint, tmp_path, capsys):
  source = tmp_path / "source"
  shutil.copytree(checkpoint, source)
  before = _contents(source)
  assert convert.command(str(source), str(source / "inner")) == 2
  _one_line_error(capsys, f"error: {source / 'inner'} is inside the checkpoint {source}: write it elsewhere")
  assert _contents(source) == before and not (source / "inner").exists()
  with pytest.raises(classify.UserError, match="is inside the checkpoint"):  # from Python too
    convert.convert(source, source / "inner")


@pytest.mark.parametrize("to", ["jax", "official"])
def test_a_destination_on_cloud_storage_is_refused_before_loading(checkpoint, capsys, to):
  assert convert.command(str(checkpoint), "gs://bucket/out", to=to) == 2
  _one_line_error(capsys, "error: gs://bucket/out: convert writes a local path; copy the result to cloud storage")


def test_a_directory_as_the_official_destination_is_refused(checkpoint, tmp_path, capsys):
  assert convert.command(str(checkpoint), f"{tmp_path / 'new'}/", to="official") == 2
  _one_line_error(capsys, f"error: {tmp_path / 'new'}/ names a directory; --to=official writes a file")
  assert not (tmp_path / "new").exists()


def test_the_working_directory_empty_is_a_destination_and_stays_the_same_directory(checkpoint, tmp_path, monkeypatch):
  (tmp_path / "here").mkdir()
  monkeypatch.chdir(tmp_path / "here")
  inode = os.stat(".").st_ino
  assert convert.command(str(checkpoint), ".") == 0
  assert os.stat(".").st_ino == inode and os.stat(tmp_path / "here").st_ino == inode  # not replaced under the user
  assert xclip_jax.load_pretrained(tmp_path / "here").config.num_frames == tiny.ARCH["num_frames"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]  # the staging folder is gone


@pytest.mark.parametrize(
  "existing, to, message",
  [
    ("converted", "jax", "DST exists and is not an empty directory"),
    ("directory_with_a_file", "jax", "DST exists and is not an empty directory"),
    ("file", "jax", "DST exists and is not an empty directory"),
    ("file", "official", "DST exists"),
    ("empty_directory", "official", "DST exists"),
  ],
)
def test_an_existing_destination_is_refused_and_kept(checkpoint, tmp_path, capsys, existing, to, message):
  dst = tmp_path / "dst"
  if existing == "converted":
    tiny.model(seed=1).save(dst)
  elif existing == "directory_with_a_file":
    dst.mkdir()
    (dst / "notes.txt").write_text("mine\n")
  elif existing == "file":
    dst.write_text("mine\n")
  else:
    dst.mkdir()
  before = _contents(tmp_path)
  assert convert.command(str(checkpoint), str(dst), to=to) == 2
  _one_line_error(capsys, f"error: {message.replace('DST', str(dst))}")
  assert _contents(tmp_path) == before and dst.exists()


@pytest.mark.parametrize("to", ["jax", "official"])
def test_a_destination_that_cannot_be_created_is_a_one_line_error_before_reading(tmp_path, capsys, to):
  (tmp_path / "file").write_text("mine\n")
  assert convert.command(str(tmp_path / "no_checkpoint"), str(tmp_path / "file" / "dst"), to=to) == 2
  _one_line_error(capsys, f"error: cannot write {tmp_path / 'file' / 'dst'}: {tmp_path / 'file'} is not a directory")
  assert (tmp_path / "file").read_text() == "mine\n"


def test_an_empty_directory_is_a_destination(checkpoint, tmp_path):
  (tmp_path / "empty").mkdir()
  convert.convert(checkpoint, tmp_path / "empty")
  assert xclip_jax.load_pretrained(tmp_path / "empty").config.num_frames == tiny.ARCH["num_frames"]


@pytest.mark.parametrize("to", ["jax", "official"])
def test_a_write_that_fails_leaves_nothing_behind(checkpoint, tmp_path, capsys, monkeypatch, to):
  """The output is written beside DST and moved there at the end: a write that fails midway (a full disk) leaves
  neither DST, nor the partial files, nor the folders made for DST."""

  def fails_midway(path):
    path = pathlib.Path(path)
    if to == "jax":
      path.mkdir()
      path = path / "params"
    path.write_bytes(b"half")
    raise OSError(28, "No space left on device")

  if to == "jax":
    monkeypatch.setattr(xclip_jax.XCLIPModel, "save", lambda self, path: fails_midway(path))
  else:
    monkeypatch.setattr(torch_writer, "save_torch_checkpoint", lambda value, path: fails_midway(path))
  (tmp_path / "there").mkdir()
  dst = tmp_path / "there" / "new" / "newer" / "dst"
  assert convert.command(str(checkpoint), str(dst), to=to) == 2
  _one_line_error(capsys, f"error: cannot write {dst}: [Errno 28] No space left on device")
  # The folders it made for DST are gone too; the one that was there stays.
  assert [path.name for path in tmp_path.iterdir()] == ["there"] and not any((tmp_path / "there").iterdir())


@pytest.mark.parametrize("to", ["jax", "official"])
def test_a_destination_written_meanwhile_is_kept_and_the_conversion_is_a_one_line_error(
  checkpoint, tmp_path, capsys, monkeypatch, to
):
  """DST is checked before the checkpoint is read: a second conversion to it may finish first. Its output stays
  (a file was replaced, despite 'convert never overwrites')."""
  dst = tmp_path / "dst"
  theirs = dst / "xclip_config.json" if to == "jax" else dst

  def other_conversion_first(writer):
    def writes(value, path):
      writer(value, path)
      theirs.parent.mkdir(exist_ok=True)
      theirs.write_text("the other conversion's\n")

    return writes

  if to == "jax":
    monkeypatch.setattr(xclip_jax.XCLIPModel, "save", other_conversion_first(xclip_jax.XCLIPModel.save))
  else:
    monkeypatch.setattr(
      torch_writer, "save_torch_checkpoint", other_conversion_first(torch_writer.save_torch_checkpoint)
    )
  assert convert.command(str(checkpoint), str(dst), to=to) == 2
  _one_line_error(capsys, f"error: {dst} appeared while this conversion ran: it is kept, and nothing was written")
  assert _contents(tmp_path) == {str(theirs.relative_to(tmp_path)): b"the other conversion's\n"}


@pytest.fixture
def terminal(monkeypatch):
  """The terminal as the commands set it up (`console.setup`: errors and warnings, one line each), undone after."""
  with console_state.restored(monkeypatch):
    console.setup(verbose=False)
    yield


def test_a_full_disk_under_orbax_is_a_one_line_error_and_leaves_nothing(
  checkpoint, tmp_path, capsys, monkeypatch, terminal
):
  """A full disk as orbax 0.12 meets it (seen on a 64 KB tmpfs), simulated after a real save: its background thread
  logs the failure with a traceback through absl's logger, `wait_until_finished` raises it as a ValueError of
  TensorStore's status, and one of TensorStore's writes, still running, makes its folder again 20 ms later. The
  command told it in a 335-line traceback, exit status 1; the folder could stay behind."""
  checkpointer = native.ocp.StandardCheckpointer
  save, wait, saved, stray = checkpointer.save, checkpointer.wait_until_finished, [], []

  def saves(self, directory, *args, **kwargs):
    save(self, directory, *args, **kwargs)
    saved.append(pathlib.Path(directory))

  def full_disk(self):
    wait(self)  # the save's writes, done
    if not saved:  # the save's own wait, for earlier saves
      return
    written = saved[0].with_name(f"{saved[0].name}.orbax-checkpoint-tmp")
    error = ValueError(
      f'RESOURCE_EXHAUSTED: Error writing local file "{written}/_sharding": Failed writing: "{written}/_sharding.'
      "__lock\": Failed to write 12765 bytes to file 4: No space left on device [os_error_code='28']"
    )
    absl = logging.getLogger("absl")
    orbax_file = sys.modules[native.ocp.AsyncCheckpointer.__module__].__file__
    message = "[process=0] Failed to run 2 Handler Commit operations or the Commit callback in background save thread"
    absl.handle(absl.makeRecord("absl", logging.ERROR, orbax_file, 264, message, (), (ValueError, error, None)))
    stray.append(threading.Timer(0.02, (written / "ocdbt.process_0" / "d").mkdir, kwargs=dict(parents=True)))
    stray[0].start()
    raise error

  monkeypatch.setattr(checkpointer, "save", saves)
  monkeypatch.setattr(checkpointer, "wait_until_finished", full_disk)
  dst = tmp_path / "dst"
  assert convert.command(str(checkpoint), str(dst)) == 2
  stray[0].join()
  _one_line_error(capsys, f"error: cannot write {dst}: [Errno 28] No space left on device")
  assert not any(tmp_path.iterdir())  # neither DST nor the staging folder beside it


@pytest.mark.parametrize(
  "source, message",
  [
    ("missing.pth", "error: no checkpoint at SRC\n"),
    ("text.pth", "error: SRC: neither a torch zip archive nor a legacy torch.save file"),
    ("arrays.npz", "error: SRC: expected exactly one '<archive>/data.pkl' record, found none"),
    ("foreign.pth", "error: checkpoint SRC: not a ViT X-CLIP/CLIP state dict"),
    ("directory", "error: SRC is a directory but neither an xclip-jax checkpoint"),
    ("hf_model", "error: SRC/config.json: invalid JSON (Expecting ',' delimiter: line 1 column 24"),
  ],
)
def test_a_source_that_is_not_a_checkpoint_is_a_one_line_error_and_nothing_is_written(
  tmp_path, capsys, source, message
):
  path = tmp_path / source
  if source == "text.pth":
    path.write_text("a text file, not a checkpoint\n")
  elif source == "arrays.npz":
    np.savez(path, a=np.zeros(3))
  elif source == "foreign.pth":
    torch_writer.save_torch_checkpoint({"model": {"foo.weight": np.zeros((3, 4), np.float32)}}, path)
  elif source == "directory":
    path.mkdir()
    (path / "notes.txt").write_text("not a checkpoint\n")
  elif source == "hf_model":  # a Hugging Face model whose config.json is damaged
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "xclip" "projection_dim": 512}')
    (path / "model.safetensors").write_bytes(b"")
  before = _contents(tmp_path)
  assert convert.command(str(path), str(tmp_path / "out")) == 2
  _one_line_error(capsys, message.replace("SRC", str(path)))
  assert _contents(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
  "path, message, expected",
  [
    ("runs/best/", "runs/best/params cannot be read: OUT_OF_RANGE", "runs/best/params cannot be read: OUT_OF_RANGE"),
    ("k400.pth", f"{os.path.abspath('k400.pth')}: neither", f"{os.path.abspath('k400.pth')}: neither"),
    ("gone", "no checkpoint at gone", "no checkpoint at gone"),
    ("a", "not a ViT X-CLIP/CLIP state dict", "checkpoint a: not a ViT X-CLIP/CLIP state dict"),
    ("model", "model_type 'bert' is not X-CLIP", "checkpoint model: model_type 'bert' is not X-CLIP"),
  ],
)
def test_a_load_error_names_the_checkpoint_once(path, message, expected):
  assert xclip_jax.pretrained.load_error(path, ValueError(message)) == expected


def test_an_unknown_format_is_a_one_line_error(checkpoint, tmp_path, capsys):
  assert convert.command(str(checkpoint), str(tmp_path / "out"), to="onnx") == 2
  _one_line_error(capsys, "error: --to=onnx: unknown format; use one of jax, official")
  assert not any(tmp_path.iterdir())


def test_help_lists_the_compilation_cache_flag(monkeypatch):
  """The README says convert takes --compilation_cache_dir; --help lists only the program's key flags."""
  defined = flags.FlagValues()  # the command's flags, defined apart from this process's
  for name in ("DEFINE_string", "DEFINE_integer", "adopt_module_key_flags"):
    monkeypatch.setattr(flags, name, functools.partial(getattr(flags, name), flag_values=defined))
  convert.define_flags()
  assert "--compilation_cache_dir: Folder of JAX's persistent compilation cache" in defined.module_help(convert)


def test_a_missing_destination_argument_is_a_one_line_usage_error(checkpoint):
  repo = pathlib.Path(__file__).resolve().parents[1]
  result = subprocess.run(
    [sys.executable, "-m", "xclip_jax.convert", str(checkpoint)], cwd=repo, capture_output=True, text=True
  )
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr == "error: usage: python -m xclip_jax.convert SRC DST [--to=jax|official] [--num_frames=N]\n"


def test_a_clip_checkpoint_converted_to_xclip_jax_stays_marked_untrained(tmp_path):
  """Converted, it would otherwise pass for a trained X-CLIP: no warning from classify and export, and
  --config.mode=eval would evaluate it."""
  clip = tiny.save_clip_checkpoint(tmp_path / "clip.pt")
  assert convert.command(str(clip), str(tmp_path / "cc")) == 0
  assert not xclip_jax.load_pretrained(tmp_path / "cc").xclip_modules_trained


@pytest.mark.parametrize("source", ["clip", "converted_clip"])
def test_an_untrained_model_to_the_official_format_is_refused_and_nothing_is_written(tmp_path, capsys, source):
  """The official format cannot record that the X-CLIP modules are untrained; read back, it would pass for a trained
  X-CLIP."""
  path = tiny.save_clip_checkpoint(tmp_path / "clip.pt")
  if source == "converted_clip":
    model = xclip_jax.load_pretrained(path)
    path = tmp_path / "cc"
    model.save(path)
  capsys.readouterr()
  before = _contents(tmp_path)
  assert convert.command(str(path), str(tmp_path / "out.pth"), to="official") == 2
  _one_line_error(
    capsys,
    f"error: {path}: a CLIP model, whose X-CLIP modules are untrained: an official checkpoint cannot say so; "
    "convert it to xclip-jax or train it first",
  )
  assert _contents(tmp_path) == before


@pytest.mark.parametrize(
  "dropped, message",
  [
    (
      "visual.transformer.resblocks.1.",
      "lacks layer 1 of visual.transformer.resblocks (no 'visual.transformer.resblocks.1.*' entries) but has layer 2",
    ),
    ("mit.resblocks.", "has 'mit.positional_embedding' but no MIT layer ('mit.resblocks.0.*')"),
  ],
)
def test_a_state_dict_missing_whole_layers_is_a_one_line_error_naming_the_first(tmp_path, capsys, dropped, message):
  """Read off the remaining layers, it would load as a smaller model."""
  state_dict = official.official_from_params(tiny.model(vision_layers=3).params)
  torch_writer.save_torch_state_dict(
    {name: value for name, value in state_dict.items() if not name.startswith(dropped)}, tmp_path / "damaged.pth"
  )
  assert convert.command(str(tmp_path / "damaged.pth"), str(tmp_path / "out")) == 2
  _one_line_error(capsys, f"error: checkpoint {tmp_path / 'damaged.pth'}: checkpoint {message}")
  assert not (tmp_path / "out").exists()


def test_a_float16_checkpoint_comes_back_as_float32_of_the_same_values(tmp_path):
  """What the README says of the round trip: xclip-jax keeps its parameters in float32."""
  half = {
    name: value.astype(np.float16)
    for name, value in official.official_from_params(tiny.model(**OFFICIAL_HEADS).params).items()
  }
  torch_writer.save_torch_state_dict(half, tmp_path / "half.pth")
  convert.convert(tmp_path / "half.pth", tmp_path / "jax")
  convert.convert(tmp_path / "jax", tmp_path / "back.pth", to="official")
  back = torch_pickle.load_torch_file(tmp_path / "back.pth")["model"]
  assert set(back) == set(half)
  for name, value in half.items():
    assert back[name].dtype == np.float32, name
    np.testing.assert_array_equal(back[name], value.astype(np.float32), err_msg=name)
