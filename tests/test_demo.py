"""The demo: its generated data, and `python -m xclip_jax.main --config=configs/demo.py` end to end (shortened)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo as demo_config
from input_pipeline import annotations
from input_pipeline import demo_data
from input_pipeline import video_decode
import xclip_jax
from xclip_jax.evaluation import report
from xclip_jax.parallel import sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = demo_data.Settings(num_train=6, num_val=2, num_test=7, seed=3)


def _decode_all(path) -> np.ndarray:
  data = pathlib.Path(path).read_bytes()
  return video_decode.decode_sampled_frames(data, lambda total: np.arange(total))[0]


def test_each_class_changes_over_time_and_only_standing_still_does_not():
  for label, name in enumerate(demo_data.CLASS_NAMES):
    frames = demo_data.render(label, np.random.default_rng([0, 0, label])).astype(np.float32)
    change = np.abs(frames[-1] - frames[0]).mean()
    if name == "a shape standing still":
      assert change == 0, name
    else:
      assert change > 0.5, name


def test_videos_are_drawn_from_their_seed_and_the_splits_from_disjoint_seeds():
  first = demo_data.render(2, np.random.default_rng([0, 0, 5]))
  np.testing.assert_array_equal(first, demo_data.render(2, np.random.default_rng([0, 0, 5])))
  # Video 5 of another split (or another seed) is another video.
  assert not np.array_equal(first, demo_data.render(2, np.random.default_rng([0, 1, 5])))


def test_write_lays_out_the_official_files_and_a_single_frame_copy_of_the_test_split(tmp_path):
  demo_data.write(tmp_path, SETTINGS)
  names = annotations.read_label_list(tmp_path / "labels.csv")
  assert tuple(names) == demo_data.CLASS_NAMES
  for split in demo_data.SPLITS:
    records = annotations.read_annotations(tmp_path / f"{split}.txt", len(names))
    assert len(records) == SETTINGS.count(split)
    assert [r.label for r in records] == [i % len(names) for i in range(len(records))]
  test = annotations.read_annotations(tmp_path / "test.txt", len(names))
  control = annotations.read_annotations(tmp_path / f"{demo_data.SINGLE_FRAME}.txt", len(names))
  assert [r.label for r in control] == [r.label for r in test]
  for original, copy in zip(test[:2], control[:2]):
    moving, still = _decode_all(tmp_path / "videos" / original.path), _decode_all(tmp_path / "videos" / copy.path)
    assert moving.shape == still.shape  # as many frames, so that sampling takes the same positions
    # Every frame of the copy is the middle frame (up to the video coding).
    assert np.abs(still.astype(int) - still[len(still) // 2]).mean() < 1
    assert np.abs(still[0].astype(int) - moving[len(moving) // 2]).mean() < 2


def test_prepare_writes_once_and_refuses_data_made_with_other_settings(tmp_path):
  config = demo_config.get_config("small=True")
  prepared = demo_data.prepare(config, tmp_path)
  assert prepared.data.test_file == str(tmp_path.absolute() / "demo_data" / "test.txt")
  assert config.data.test_file == ""  # the config passed in is left as it was
  labels = tmp_path / "demo_data" / "labels.csv"
  written = labels.stat().st_mtime_ns
  demo_data.prepare(config, tmp_path)
  assert labels.stat().st_mtime_ns == written
  config.demo.num_train += 1
  with pytest.raises(ValueError, match="holds demo data made with"):
    demo_data.prepare(config, tmp_path)


def test_demo_trains_evaluates_the_control_and_draws_its_pictures(tmp_path):
  workdir = tmp_path / "demo"
  command = [sys.executable, "-m", "xclip_jax.main", "--config=configs/demo.py:small=True", f"--workdir={workdir}"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-4000:]
  config = demo_config.get_config("small=True")
  results = json.loads((workdir / "eval_results.json").read_text())
  assert results["num_videos"] == config.demo.num_test
  assert 0 <= results["top1"] <= 1 and 0 <= results["single_frame_top1"] <= 1
  assert np.sum(results["confusion_matrix"]) == config.demo.num_test
  for picture in (report.CURVES_FILE, report.CONFUSION_FILE):
    assert (workdir / picture).read_bytes()[:4] == b"\x89PNG"
  assert (workdir / "demo_data" / demo_data.MANIFEST).exists()
  # The summary table on stdout names the results and where everything is.
  assert "single-frame control top-1" in result.stdout and str(workdir / "eval_results.json") in result.stdout
  final = workdir / "checkpoints" / str(results["step"])
  assert (
    f"final model {final}".split() == next(line for line in result.stdout.splitlines() if "final model" in line).split()
  )
  # The workdir loads as a model: the parameters of its newest checkpoint.
  model = xclip_jax.load_pretrained(workdir)
  assert model.config.vision_layers == config.model.vision_layers
  saved = sharding.flat_names(ocp.PyTreeCheckpointer().restore(final.absolute() / "state")["params"])
  for name, value in sharding.flat_names(model.params).items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)
