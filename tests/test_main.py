"""`python -m xclip_jax.main` end to end on generated videos: training, checkpoints, resuming, evaluation, bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import common
from tests.fixtures import tiny
from tests.fixtures import video_fixtures
from xclip_jax import convert
from xclip_jax.parallel import sharding
from xclip_jax.train import trainer
from xclip_jax.weights import torch_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL = 12, 7  # 7 validation videos with eval batches of 2: the last batch is padded
TOTAL_STEPS = 8  # 2 epochs of the small config's 4 steps


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  videos = root / "videos"
  lines = []
  for i in range(NUM_TRAIN + NUM_VAL):
    path = f"v{i}.mp4"
    video_fixtures.write_indexed_video(videos / path, 10 + 3 * (i % 5), width=40, height=36)
    lines.append(f"{path} {i % tiny.NUM_CLASSES}\n")
  (root / "train.txt").write_text("".join(lines[:NUM_TRAIN]))
  (root / "val.txt").write_text("".join(lines[NUM_TRAIN:]))
  names = ["abseiling", "air drumming", "archery", "baking cookies"]
  (root / "labels.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
  checkpoint = tiny.model().save(root / "tiny_xclip")
  return root, checkpoint


def overrides(dataset) -> dict:
  root, checkpoint = dataset
  return {
    "arch": "",
    "init.checkpoint": str(checkpoint),
    "num_classes": tiny.NUM_CLASSES,
    "num_frames": tiny.ARCH["num_frames"],
    "input_size": tiny.ARCH["image_resolution"],
    "data.root": str(root / "videos"),
    "data.train_file": str(root / "train.txt"),
    "data.val_file": str(root / "val.txt"),
    "data.label_list": str(root / "labels.csv"),
    "epochs": 2,
    "warmup_epochs": 1,
    "batch_size": 4,
    "eval_batch_size": 2,
    "lr": 1e-3,
    "log_every_steps": 2,
    "checkpoint_every_steps": 2,
    "final_eval_clips": 2,
    "final_eval_crops": 3,
  }


def main_command(dataset, workdir, **extra) -> list[str]:
  flags = [f"--config.{key}={value}" for key, value in {**overrides(dataset), **extra}.items()]
  return [sys.executable, "-m", "xclip_jax.main", "--config=configs/k400.py:small=True", f"--workdir={workdir}", *flags]


def run_main(dataset, workdir, **extra):
  return subprocess.run(main_command(dataset, workdir, **extra), cwd=REPO, capture_output=True, text=True, env=_env())


def _env():
  # The runs share the test session's compilation cache (conftest), as a user's reruns share theirs.
  return {**os.environ, "PYTHONUNBUFFERED": "1"}


def final_params(workdir: pathlib.Path) -> dict:
  state = ocp.PyTreeCheckpointer().restore((workdir / "checkpoints" / str(TOTAL_STEPS) / "state").absolute())
  return sharding.flat_names(state["params"])


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = run_main(dataset, workdir)
  assert result.returncode == 0, result.stderr[-4000:]
  return workdir, result


def test_trains_end_to_end_with_checkpoints_metrics_and_results(uninterrupted, tmp_path):
  workdir, result = uninterrupted
  results = json.loads((workdir / trainer.RESULTS_FILE).read_text())
  assert results["num_videos"] == NUM_VAL and results["views"] == 6
  assert 0 <= results["top1"] <= results["top5"] <= 1
  assert set(results["per_class"]) <= {"abseiling", "air drumming", "archery", "baking cookies"}
  assert np.sum(results["confusion_matrix"]) == NUM_VAL
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == TOTAL_STEPS
  assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard events"
  for watched in ("loss", "lr", "grad_norm", "clips_per_second", "eta_seconds", "skipped_videos", "eval/top1"):
    assert f"{watched} =" in result.stderr or f"{watched}=" in result.stderr, watched
  assert "trainable" in result.stderr  # the parameter overview
  # The best checkpoint exports for the official code.
  exported = convert.convert(workdir / "best", tmp_path / "best.pth", to="official")
  state_dict, _ = torch_checkpoint.read_state_dict(exported)
  assert "visual.transformer.resblocks.0.message_fc.weight" in state_dict


def test_killed_and_resumed_run_ends_like_the_uninterrupted_one(dataset, uninterrupted, tmp_path):
  workdir = tmp_path / "interrupted"
  # SIGTERM once the first checkpoint exists: the run saves and exits cleanly.
  process = subprocess.Popen(main_command(dataset, workdir), cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, process)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  assert "SIGTERM" in stderr
  stopped_at = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert stopped_at < TOTAL_STEPS
  # Resume, then kill -9 after the next checkpoint, and resume again to the end.
  process = subprocess.Popen(main_command(dataset, workdir), cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(workdir, process, after=stopped_at)
  process.kill()
  process.communicate(timeout=60)
  result = run_main(dataset, workdir)
  assert result.returncode == 0, result.stderr[-4000:]
  assert "Resumed from the checkpoint" in result.stderr
  ours, reference = final_params(workdir), final_params(uninterrupted[0])
  for name in reference:
    np.testing.assert_allclose(ours[name], reference[name], rtol=1e-6, atol=1e-7, err_msg=name)


def _wait_for_checkpoint(workdir: pathlib.Path, process, after: int = 0, timeout: float = 600):
  deadline = time.time() + timeout
  while time.time() < deadline:
    directory = workdir / "checkpoints"
    if directory.is_dir() and any(p.name.isdigit() and int(p.name) > after for p in directory.iterdir()):
      return
    if process.poll() is not None:
      raise AssertionError(f"the run ended before a checkpoint after step {after}: {process.stderr.read()[-3000:]}")
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


def in_process_config(dataset, **extra):
  config = common.experiment_config(small=True)
  for key, value in {**overrides(dataset), **extra}.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def test_eval_mode_counts_every_video_once(dataset, tmp_path):
  results = trainer.train_and_evaluate(in_process_config(dataset, mode="eval", eval_batch_size=4), tmp_path)
  # 7 videos in batches of 4: one padded row; 2 clips x 3 crops.
  assert results["num_videos"] == NUM_VAL and results["views"] == 6
  assert np.sum(results["confusion_matrix"]) == NUM_VAL
  assert json.loads((tmp_path / trainer.RESULTS_FILE).read_text())["num_videos"] == NUM_VAL


@pytest.mark.parametrize(
  "field, value, error",
  [
    ("data.train_file", "/nonexistent/train.txt", "config.data.train_file: /nonexistent/train.txt does not exist"),
    ("num_classes", 5, "config.num_classes is 5 but"),
    ("input_size", 64, "config.input_size is 64 but the model takes 32px"),
    ("init.checkpoint", "/nonexistent/model.pth", "config.init.checkpoint: /nonexistent/model.pth does not exist"),
    ("batch_size", 3, "not divisible by accumulation_steps"),
  ],
)
def test_bad_setups_are_refused_naming_the_problem(dataset, tmp_path, field, value, error):
  extra = {field: value}
  if field == "batch_size":
    extra["accumulation_steps"] = 2
  with pytest.raises((ValueError, FileNotFoundError), match=error):
    trainer.train_and_evaluate(in_process_config(dataset, **extra), tmp_path)


def test_diverging_loss_stops_naming_the_step(dataset, tmp_path):
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    trainer.train_and_evaluate(in_process_config(dataset, lr=1e38, warmup_epochs=0), tmp_path)


def test_zero_shot_evaluation_reports_each_split_and_the_mean(dataset, tmp_path):
  root, _ = dataset
  # Two split files of all classes, and "novel" classes: those not in a known list, in two random subsets of 2.
  (root / "known.csv").write_text("id,name\n0,abseiling\n")
  config = in_process_config(dataset, mode="eval", eval_batch_size=2)
  with config.unlocked():
    config.zero_shot_clips, config.zero_shot_crops = 1, 1
    config.zero_shot = {
      "splits": {
        "root": str(root / "videos"),
        "val_files": (str(root / "val.txt"), str(root / "train.txt")),
        "label_list": str(root / "labels.csv"),
        "known_label_list": "",
      },
      "novel": {
        "root": str(root / "videos"),
        "val_files": (str(root / "val.txt"),),
        "label_list": str(root / "labels.csv"),
        "known_label_list": str(root / "known.csv"),
        "num_subsets": 2,
        "subset_size": 2,
        "seed": 0,
      },
    }
  results = trainer.train_and_evaluate(config, tmp_path)["zero_shot"]
  assert [s["num_videos"] for s in results["splits"]["splits"]] == [NUM_VAL, NUM_TRAIN]
  top1 = [s["top1"] for s in results["splits"]["splits"]]
  assert results["splits"]["top1_mean"] == pytest.approx(np.mean(top1))
  assert results["splits"]["top1_std"] == pytest.approx(np.std(top1))
  novel = results["novel"]["splits"]
  assert len(novel) == 2
  for split in novel:
    # Only videos of the subset's 2 classes (never 'abseiling', the known class), labels renumbered to 0..1.
    assert len(split["confusion_matrix"]) == 2 and "abseiling" not in split["per_class"]
    assert split["num_videos"] == np.sum(split["confusion_matrix"]) > 0


def test_few_shot_trains_on_k_videos_per_class(dataset, tmp_path):
  results = trainer.train_and_evaluate(
    in_process_config(dataset, **{"data.shots": 2, "steps_per_epoch": None, "epochs": 1, "batch_size": 4}), tmp_path
  )
  lines = (tmp_path / "train_2shot.txt").read_text().splitlines()
  labels = sorted(int(line.split()[1]) for line in lines)
  assert labels == [0, 0, 1, 1, 2, 2, 3, 3]
  assert results["num_videos"] == NUM_VAL
  # steps_per_epoch from the data: 8 videos in batches of 4.
  assert (tmp_path / "checkpoints" / "2").is_dir()
