"""`python -m xclip_jax.main` end to end on generated videos: training, checkpoints, resuming, evaluation, bad input."""

import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

from absl import app
from absl import flags
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import common
from configs import demo
from configs import k400
from configs import zero_shot as zero_shot_config
from input_pipeline import video_dataset
from tests.fixtures import tiny
from tests.fixtures import video_fixtures
import xclip_jax
from xclip_jax import console
from xclip_jax import convert
from xclip_jax import main
from xclip_jax.evaluation import evaluate
from xclip_jax.evaluation import report
from xclip_jax.parallel import sharding
from xclip_jax.train import checkpoints
from xclip_jax.train import run_lock
from xclip_jax.train import trainer
from xclip_jax.weights import torch_pickle

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


def main_command(dataset, workdir, verbose: bool = False, **extra) -> list[str]:
  """`verbose`: every INFO line on stderr, where tests read them, whatever the terminal shows by default."""
  flags = [f"--config.{key}={value}" for key, value in {**overrides(dataset), **extra}.items()]
  flags += ["--verbosity=0"] if verbose else []
  return [sys.executable, "-m", "xclip_jax.main", "--config=configs/k400.py:small=True", f"--workdir={workdir}", *flags]


def run_main(dataset, workdir, verbose: bool = False, **extra):
  command = main_command(dataset, workdir, verbose, **extra)
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=_env())


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
  workdir, _ = uninterrupted
  results = json.loads((workdir / trainer.RESULTS_FILE).read_text())
  assert results["num_videos"] == NUM_VAL and results["views"] == 6
  assert 0 <= results["top1"] <= results["top5"] <= 1
  assert set(results["per_class"]) <= {"abseiling", "air drumming", "archery", "baking cookies"}
  assert np.sum(results["confusion_matrix"]) == NUM_VAL
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == TOTAL_STEPS
  assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard events"
  log = (workdir / "logs" / "process_0.log").read_text()  # the full log, where the terminal's quiet run puts it all
  for watched in ("loss", "lr", "grad_norm", "clips_per_second", "eta_seconds", "skipped_videos", "eval/top1"):
    assert f"{watched} =" in log or f"{watched}=" in log, watched
  assert "trainable" in log  # the parameter overview
  # What was evaluated: the final step's model, which load_pretrained(workdir) reads.
  assert results["evaluated"] == {
    "checkpoint": str(workdir),
    "frames_interpolated_from": None,
    "num_frames": tiny.ARCH["num_frames"],
    "clips": 2,
    "crops": 3,
  }
  # The best checkpoint converts like any other (not to the official format: the tiny model's 2 text heads are not
  # the official rule's 1).
  converted = xclip_jax.load_pretrained(convert.convert(workdir / "best", tmp_path / "best"))
  assert "message_fc" in converted.params["visual"]["transformer"]["resblocks_0"]


def test_the_results_file_holds_each_confusion_matrix_row_on_one_line(uninterrupted):
  """One number a line, Kinetics-400's matrix would take 160,000 lines."""
  lines = [line.strip().rstrip(",") for line in (uninterrupted[0] / trainer.RESULTS_FILE).read_text().splitlines()]
  matrix = json.loads((uninterrupted[0] / trainer.RESULTS_FILE).read_text())["confusion_matrix"]
  assert all(f"[{', '.join(map(str, row))}]" in lines for row in matrix)


def test_killed_and_resumed_run_ends_like_the_uninterrupted_one(dataset, uninterrupted, tmp_path):
  """A run stopped mid-way (SIGTERM, then kill -9) resumes each time from its checkpoint's step and data position."""
  workdir = tmp_path / "interrupted"
  batch_size = overrides(dataset)["batch_size"]
  # Metrics every step tell where a run is. Once step 1 is logged the SIGTERM handler is installed and 7 steps and an
  # evaluation remain: the run saves after the step it is at and exits cleanly, mid-run.
  log = tmp_path / "stopped.log"
  process = _start_main(dataset, workdir, log)
  _wait_until(process, log, lambda text: _logged_steps(text), "step 1 logged")
  process.send_signal(signal.SIGTERM)
  # Saved and stopped, unfinished: ended by the signal, as a shell script running it would be.
  assert process.wait(timeout=300) == -signal.SIGTERM, log.read_text()[-3000:]
  stopped_at = _newest_checkpoint(workdir)
  assert 0 < stopped_at < TOTAL_STEPS, f"SIGTERM landed after the last step ({stopped_at})"
  assert f"Stopped at step {stopped_at} on SIGTERM" in log.read_text()
  position = _data_position(workdir, stopped_at)
  assert position == stopped_at * batch_size
  # Resumed, it trains from the next step at the saved data position. kill -9 as it saves its first checkpoint (done
  # or not by then: the next run resumes from the newest complete one), with steps left.
  log = tmp_path / "resumed.log"
  process = _start_main(dataset, workdir, log)
  _wait_until(
    process, log, lambda text: _logged_steps(text) and "Saved checkpoint at step" in text, "a checkpoint saved"
  )
  process.kill()
  assert process.wait(timeout=60) == -signal.SIGKILL, "the resumed run ended before kill -9"
  text = log.read_text()
  assert f"Resumed from the checkpoint at step {stopped_at} (data position {position})" in text
  assert _logged_steps(text)[0] == stopped_at + 1
  killed_at = _newest_checkpoint(workdir)
  assert killed_at < TOTAL_STEPS, "kill -9 landed after the last checkpoint"
  position = _data_position(workdir, killed_at)
  # Resumed again, to the end.
  result = run_main(dataset, workdir, verbose=True, log_every_steps=1)
  assert result.returncode == 0, result.stderr[-4000:]
  assert f"Resumed from the checkpoint at step {killed_at} (data position {position})" in result.stderr
  assert _logged_steps(result.stderr) == list(range(killed_at + 1, TOTAL_STEPS + 1))
  ours, reference = final_params(workdir), final_params(uninterrupted[0])
  for name in reference:
    np.testing.assert_allclose(ours[name], reference[name], rtol=1e-6, atol=1e-7, err_msg=name)


def _start_main(dataset, workdir: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
  """`python -m xclip_jax.main` logging the metrics of every step to `log`."""
  with log.open("w") as output:
    return subprocess.Popen(
      main_command(dataset, workdir, verbose=True, log_every_steps=1), cwd=REPO, env=_env(), stderr=output, text=True
    )


def _wait_until(process: subprocess.Popen, log: pathlib.Path, condition, what: str, timeout: float = 600):
  """Polls `condition(log text)` while the process runs; the timeout only ends a run that hangs."""
  deadline = time.time() + timeout
  while not condition(log.read_text()):
    assert process.poll() is None, f"the run ended before {what}: {log.read_text()[-3000:]}"
    assert time.time() < deadline, f"no {what} within {timeout} s"
    time.sleep(0.1)


def _logged_steps(log: str) -> list[int]:
  """The steps whose training metrics a run logged (clu's lines: `[STEP] clips_per_second=..., loss=...`)."""
  return [int(step) for step in re.findall(r"\[(\d+)\] [^\n]*\bloss=", log)]


def _newest_checkpoint(workdir: pathlib.Path) -> int:
  """The step of the newest complete checkpoint (orbax writes each in a temporary folder, then renames it), or 0."""
  directory = workdir / "checkpoints"
  return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=0) if directory.is_dir() else 0


def _data_position(workdir: pathlib.Path, step: int) -> int:
  return json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())["data_position"]


def _damage(step_dir: pathlib.Path) -> pathlib.Path:
  """Cuts the largest OCDBT data file of a checkpoint to 90% of its size, as a copy interrupted near its end would:
  orbax fails on some arrays while others are still being read, and abandons those."""
  largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"), key=_size)
  with largest.open("r+b") as f:
    f.truncate(_size(largest) * 9 // 10)
  return largest


def _size(path: pathlib.Path) -> int:
  return path.stat().st_size


def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_newest_intact_one(
  dataset, uninterrupted, tmp_path
):
  """A cut data file in the newest checkpoint, the run's last: one warning, the folder renamed (kept), the run resumed
  from the step before (its step compiled then: the newest checkpoint said nothing was left to train) and ended like
  an uninterrupted run."""
  workdir = tmp_path / "damaged"
  last = TOTAL_STEPS
  for step in (last - 2, last):
    shutil.copytree(uninterrupted[0] / "checkpoints" / str(step), workdir / "checkpoints" / str(step))
  damaged = _damage(workdir / "checkpoints" / str(last))
  damaged_size = _size(damaged)
  result = run_main(dataset, workdir, verbose=True)
  assert result.returncode == 0, result.stderr[-4000:]
  set_aside = workdir / "checkpoints" / f"{last}{checkpoints.DAMAGED_SUFFIX}"
  warnings = [line for line in result.stderr.splitlines() if "cannot be read" in line]
  assert len(warnings) == 1 and warnings[0].startswith("W"), warnings
  assert f"checkpoint at step {last} cannot be read (OUT_OF_RANGE" in warnings[0] and str(set_aside) in warnings[0]
  assert "Traceback" not in result.stderr
  # Kept as it was, under a name orbax does not list.
  kept = set_aside / damaged.relative_to(workdir / "checkpoints" / str(last))
  assert kept.is_file() and _size(kept) == damaged_size, "the damaged checkpoint was not kept as it was"
  batch_size = overrides(dataset)["batch_size"]
  assert f"Resumed from the checkpoint at step {last - 2} (data position {(last - 2) * batch_size})" in result.stderr
  assert "Compiled the train step" in result.stderr
  ours, reference = final_params(workdir), final_params(uninterrupted[0])
  for name in reference:
    np.testing.assert_allclose(ours[name], reference[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_rerunning_a_finished_run_evaluates_again_without_compiling_the_train_step(
  dataset, uninterrupted, tmp_path, caplog
):
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0] / "checkpoints" / str(TOTAL_STEPS), workdir / "checkpoints" / str(TOTAL_STEPS))
  with caplog.at_level(logging.INFO):
    trainer.train_and_evaluate(in_process_config(dataset), workdir)
  assert f"Resumed from the checkpoint at step {TOTAL_STEPS}" in caplog.text
  reference_log = (uninterrupted[0] / "logs" / "process_0.log").read_text()
  assert "Compiled the train step" in reference_log and "Compiled the train step" not in caplog.text
  ours, reference = (json.loads((w / trainer.RESULTS_FILE).read_text()) for w in (workdir, uninterrupted[0]))
  assert ours["top1"] == reference["top1"] and ours["confusion_matrix"] == reference["confusion_matrix"]


def test_a_rerun_removes_what_an_earlier_runs_unfinished_save_left(dataset, uninterrupted, tmp_path):
  """A second Ctrl-C or a kill mid-save leaves orbax's temporary folder of a step that may never be saved again."""
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  unfinished = workdir / "checkpoints" / "3.orbax-checkpoint-tmp-1765100000"
  (unfinished / "state").mkdir(parents=True)
  trainer.train_and_evaluate(in_process_config(dataset), workdir)
  assert not unfinished.exists()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(
    p.name for p in (uninterrupted[0] / "checkpoints").iterdir()
  )


def test_without_an_intact_checkpoint_the_run_stops_naming_the_folder_and_what_it_tried(
  dataset, uninterrupted, tmp_path
):
  """Every checkpoint unreadable: one line names the folder and each step's failure; nothing is set aside."""
  workdir = tmp_path / "damaged"
  shutil.copytree(uninterrupted[0] / "checkpoints" / "6", workdir / "checkpoints" / "6")
  _damage(workdir / "checkpoints" / "6")
  result = run_main(dataset, workdir)
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: no checkpoint in {workdir / 'checkpoints'} can be read (step 6: OUT_OF_RANGE")
  assert "Traceback" not in result.stderr  # neither main's nor the reads' own reports
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["6"]


def in_process_config(dataset, **extra):
  config = common.experiment_config(small=True)
  for key, value in {**overrides(dataset), **extra}.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


@pytest.mark.parametrize("field", ["init.checkpoint", "init.clip"])
def test_eval_mode_refuses_a_clip_checkpoint_whose_xclip_modules_are_untrained(dataset, tmp_path, field):
  clip = tiny.save_clip_checkpoint(tmp_path / "clip.pt")
  config = in_process_config(dataset, mode="eval", **{"init.checkpoint": None, field: str(clip)})
  with pytest.raises(
    ValueError, match=re.escape(f"mode=eval evaluates a trained X-CLIP, but {field} {clip} is a CLIP")
  ):
    trainer.train_and_evaluate(config, tmp_path / "run")
  assert list((tmp_path / "run").rglob("*")) == []


def test_eval_mode_counts_every_video_once(dataset, tmp_path):
  results = trainer.train_and_evaluate(in_process_config(dataset, mode="eval", eval_batch_size=4), tmp_path)
  # 7 videos in batches of 4: one padded row; 2 clips x 3 crops.
  assert results["num_videos"] == NUM_VAL and results["views"] == 6
  assert np.sum(results["confusion_matrix"]) == NUM_VAL
  assert json.loads((tmp_path / trainer.RESULTS_FILE).read_text())["num_videos"] == NUM_VAL


def test_eval_mode_results_say_what_was_evaluated(dataset, tmp_path):
  """The checkpoint, its frames (here interpolated from the tiny model's 2), and the views: the terminal's warning
  of an interpolation is in the file too."""
  frames = tiny.ARCH["num_frames"] + 1
  config = in_process_config(dataset, mode="eval", eval_batch_size=4, num_frames=frames, final_eval_crops=1)
  trainer.train_and_evaluate(config, tmp_path)
  assert json.loads((tmp_path / trainer.RESULTS_FILE).read_text())["evaluated"] == {
    "checkpoint": str(dataset[1]),
    "frames_interpolated_from": tiny.ARCH["num_frames"],
    "num_frames": frames,
    "clips": 2,
    "crops": 1,
  }


def _val_list_with_a_broken_video(dataset, tmp_path, good_lines: int) -> str:
  """The first `good_lines` of the validation list, and a video that cannot be read listed twice."""
  root, _ = dataset
  (root / "videos" / "broken.mp4").write_bytes(b"not a video")
  lines = (root / "val.txt").read_text().splitlines(keepends=True)[:good_lines]
  (tmp_path / "val.txt").write_text("".join(lines) + "broken.mp4 0\nbroken.mp4 0\n")
  return str(tmp_path / "val.txt")


def test_eval_mode_counts_skipped_videos_by_line_as_it_counts_the_others(dataset, tmp_path):
  val_file = _val_list_with_a_broken_video(dataset, tmp_path, NUM_VAL)
  config = in_process_config(
    dataset, mode="eval", eval_batch_size=4, **{"data.val_file": val_file, "data.max_failure_fraction": 0.5}
  )
  results = trainer.train_and_evaluate(config, tmp_path / "run")
  assert (results["num_videos"], results["skipped_videos"]) == (NUM_VAL, 2)


def test_an_evaluation_stops_where_its_processes_together_skipped_more_than_the_list_allows(
  dataset, tmp_path, monkeypatch
):
  """Each process allows the whole list's share (one may hold all its broken videos), so the sum over processes is
  checked: 2 of 9 lines skipped here, as many on a second process stood in for by the count exchange, 3.15 allowed."""
  val_file = _val_list_with_a_broken_video(dataset, tmp_path, NUM_VAL)
  config = in_process_config(dataset, mode="eval", **{"data.val_file": val_file, "data.max_failure_fraction": 0.35})
  exchange = types.SimpleNamespace(
    process_allgather=lambda value, tiled=False: value if tiled else np.stack([value] * 2)
  )
  monkeypatch.setattr(evaluate, "multihost_utils", exchange)
  message = (
    r"^4 videos of val's 9 failed to decode over all processes, more than data.max_failure_fraction allows \(3.15\)$"
  )
  with pytest.raises(video_dataset.TooManyFailuresError, match=message):
    trainer.train_and_evaluate(config, tmp_path / "run")


def test_an_evaluation_of_no_readable_video_is_an_error_not_zero_percent(dataset, tmp_path):
  val_file = _val_list_with_a_broken_video(dataset, tmp_path, 0)
  config = in_process_config(dataset, mode="eval", **{"data.val_file": val_file, "data.max_failure_fraction": 1.0})
  with pytest.raises(ValueError, match="^evaluating val: none of its videos could be read"):
    trainer.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / trainer.RESULTS_FILE).exists()


@pytest.mark.parametrize(
  "field, value, error",
  [
    ("data.train_file", "/nonexistent/train.txt", "config.data.train_file: /nonexistent/train.txt does not exist"),
    ("num_classes", 5, "config.num_classes is 5 but"),
    # arch "": only the init checkpoint tells the model's input size.
    ("input_size", 64, "config.input_size is 64 but the model takes 32px"),
  ],
)
def test_bad_setups_are_refused_naming_the_problem(dataset, tmp_path, field, value, error):
  with pytest.raises((ValueError, FileNotFoundError), match=error):
    trainer.train_and_evaluate(in_process_config(dataset, **{field: value}), tmp_path)


@pytest.mark.parametrize(
  "lr",
  [
    1e30,  # the warm-up's first steps are saved, until their huge updates make a loss NaN
    1e38,  # the first update is NaN (10 x lr overflows float32 for the new modules) with a finite loss
  ],
)
def test_diverging_training_stops_naming_the_step_and_saves_nothing_of_it(dataset, tmp_path, lr):
  """The first step that breaks is named and nothing of it or later is saved; the checkpoints left are intact."""
  # A checkpoint every step, so that saving the step that breaks would show; the checkpoint is the first to read each
  # step's metrics (metrics and evaluation only at the end).
  config = in_process_config(
    dataset, lr=lr, checkpoint_every_steps=1, log_every_steps=TOTAL_STEPS, eval_every_epochs=TOTAL_STEPS
  )
  with pytest.raises(FloatingPointError, match=r"step \d+;") as error:
    trainer.train_and_evaluate(config, tmp_path)
  failed = int(re.search(r"step (\d+);", str(error.value))[1])
  # Complete checkpoints only (none still being written), all of earlier steps, with finite parameters.
  saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  assert all(name.isdigit() and int(name) < failed for name in saved), (saved, str(error.value))
  for name in saved:
    state = ocp.PyTreeCheckpointer().restore((tmp_path / "checkpoints" / name / "state").absolute())
    assert all(np.isfinite(leaf).all() for leaf in sharding.flat_names(state["params"]).values()), name


def test_a_loss_that_is_not_finite_stops_the_run_naming_it(dataset, tmp_path):
  """Read every step (log_every_steps=1), no checkpoint due: the loss itself stops the run, not the parameters'
  check before a save."""
  config = in_process_config(dataset, lr=1e30, checkpoint_every_steps=100, log_every_steps=1)
  with pytest.raises(FloatingPointError, match=r"^the training loss is (nan|inf|-inf) at step \d+; nothing of this"):
    trainer.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_only_the_newest_keep_checkpoints_are_kept(dataset, tmp_path):
  trainer.train_and_evaluate(in_process_config(dataset, checkpoint_every_steps=1, keep_checkpoints=2), tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [str(TOTAL_STEPS - 1), str(TOTAL_STEPS)]


def test_the_final_evaluation_reads_the_test_list_where_there_is_one(dataset, tmp_path):
  root, _ = dataset
  results = trainer.train_and_evaluate(
    in_process_config(dataset, **{"data.test_file": str(root / "train.txt")}), tmp_path
  )
  assert results["num_videos"] == NUM_TRAIN  # not the validation list's NUM_VAL


def test_a_new_run_replaces_the_best_model_an_earlier_run_left_without_a_checkpoint(dataset, tmp_path, caplog):
  """An earlier run that diverged before its first checkpoint left best/ with a higher validation top-1 than this
  run reaches (here 1.0): a run from step 0 does not compete with it, and its first validation replaces it."""
  tiny.model(seed=7).save(tmp_path / "best")
  (tmp_path / "best.json").write_text(json.dumps({"step": 3, "top1": 1.0}))
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(in_process_config(dataset), tmp_path)
  assert "holds the best model of an earlier run that left no checkpoint" in caplog.text
  assert json.loads((tmp_path / "best.json").read_text())["step"] in (4, 8)
  stale = tiny.model(seed=7).params["logit_scale"]
  assert xclip_jax.load_pretrained(tmp_path / "best").params["logit_scale"] != stale


def test_speed_and_time_left_leave_out_the_time_of_validations(dataset, tmp_path, monkeypatch):
  """A validation of 3 s after step 4: the window that holds it (steps 5 and 6) still shows the steps' own speed."""
  run_eval_set, shown = evaluate.run_eval_set, {}

  def slow(*args):
    time.sleep(3)
    return run_eval_set(*args)

  update = console.Progress.update
  monkeypatch.setattr(evaluate, "run_eval_set", slow)
  monkeypatch.setattr(
    console.Progress, "update", lambda self, step, scalars: shown.update({step: scalars}) or update(self, step, scalars)
  )
  trainer.train_and_evaluate(in_process_config(dataset, log_every_steps=2), tmp_path)
  # Two steps of 4 clips in the window: under 3 s unless the validation is counted.
  assert 2 * 4 / shown[6]["clips_per_second"] < 2.5, shown[6]
  assert shown[6]["eta_seconds"] < 2.5, shown[6]
  assert shown[6]["epoch"] == 6 / 4  # 4 steps an epoch


def test_the_progress_figures_of_a_window_of_steps(monkeypatch):
  """4 steps of 8 clips in 2 s, 6 steps of 10 left: 16 clips/s, 3 s left; the mean loss, the last learning rate."""
  clock = iter([100.0, 102.0, 102.0])  # the window opens, closes, and the next one opens
  monkeypatch.setattr(trainer, "time", types.SimpleNamespace(time=lambda: next(clock)))
  window = trainer._MetricWindow()
  for step, loss in zip(range(1, 5), (4.0, 3.0, 2.0, 1.0)):
    window.add(step, {"loss": np.float32(loss), "grad_norm": np.float32(1.0), "lr": np.float32(step / 10)})
  scalars = window.summary(4, 10, batch_size=8)
  assert scalars == pytest.approx(
    {"loss": 2.5, "grad_norm": 1.0, "lr": 0.4, "clips_per_second": 16.0, "eta_seconds": 3.0}
  )


def test_the_single_frame_control_reports_the_top1_of_its_own_list(dataset, tmp_path, monkeypatch):
  root, _ = dataset
  run_eval_set = evaluate.run_eval_set

  def rigged(config, eval_set, *args):
    results = run_eval_set(config, eval_set, *args)
    return {**results, "top1": 0.25, "top5": 0.75} if eval_set.name == "single_frame" else results

  monkeypatch.setattr(evaluate, "run_eval_set", rigged)
  config = in_process_config(dataset, mode="eval")
  with config.unlocked():
    config.data.single_frame_file = str(root / "val.txt")
  results = trainer.train_and_evaluate(config, tmp_path)
  assert results["single_frame_top1"] == 0.25


def test_best_holds_the_model_of_the_best_validation(dataset, tmp_path, monkeypatch):
  """Validation top-1 of 0.9 after epoch 1 (step 4), 0.3 after epoch 2: best/ is step 4's model."""
  run_eval_set, validations = evaluate.run_eval_set, iter([0.9, 0.3])

  def rigged(config, eval_set, eval_step, text_encoder, params, mesh, num_clips, num_crops):
    results = run_eval_set(config, eval_set, eval_step, text_encoder, params, mesh, num_clips, num_crops)
    return {**results, "top1": next(validations)} if (num_clips, num_crops) == (1, 1) else results

  monkeypatch.setattr(evaluate, "run_eval_set", rigged)
  trainer.train_and_evaluate(in_process_config(dataset), tmp_path)
  assert json.loads((tmp_path / "best.json").read_text())["step"] == 4
  best = sharding.flat_names(xclip_jax.load_pretrained(tmp_path / "best").params)
  state = ocp.PyTreeCheckpointer().restore((tmp_path / "checkpoints" / "4" / "state").absolute())
  for name, value in sharding.flat_names(state["params"]).items():
    np.testing.assert_array_equal(best[name], value, err_msg=name)


def _with_one_zero_shot_task(config, name: str, videos, val_file, root):
  """`config` with the zero-shot task `name`: the list val_file of videos, the classes of root/labels.csv, 1 view."""
  with config.unlocked():
    config.zero_shot_clips, config.zero_shot_crops = 1, 1
    config.zero_shot = {
      name: {"root": str(videos), "val_files": (str(val_file),), "label_list": str(root / "labels.csv")}
    }
  return config


def test_zero_shot_data_is_checked_before_training(dataset, tmp_path):
  root, _ = dataset
  config = _with_one_zero_shot_task(in_process_config(dataset), "ucf101", tmp_path / "nope", root / "val.txt", root)
  with pytest.raises(
    FileNotFoundError, match=re.escape(f"config.zero_shot.ucf101.root: {tmp_path / 'nope'} does not exist")
  ):
    trainer.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("field, value, error", [("clips", 0, "must be at least 1"), ("crops", 2, "must be 1 or 3")])
def test_zero_shot_views_out_of_range_are_refused_before_training(dataset, tmp_path, field, value, error):
  config = in_process_config(dataset)
  with config.unlocked():
    config.zero_shot_clips, config.zero_shot_crops = 1, 1
    config[f"zero_shot_{field}"] = value
    config.zero_shot = {}
  with pytest.raises(ValueError, match=re.escape(f"config.zero_shot_{field}={value} {error}")):
    trainer.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_zero_shot_evaluation_reports_each_split_and_the_mean(dataset, tmp_path, capsys):
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
  top5 = [s["top5"] for s in results["splits"]["splits"]]
  assert results["splits"]["top1_mean"] == pytest.approx(np.mean(top1))
  assert results["splits"]["top1_std"] == pytest.approx(np.std(top1))
  assert results["splits"]["top5_mean"] == pytest.approx(np.mean(top5))
  assert results["splits"]["top5_std"] == pytest.approx(np.std(top5))
  # The line printed when the task ends gives the figure as the summary table does: one decimal, as the paper.
  expected = f"zero-shot splits: top-1 {100 * np.mean(top1):.1f} +- {100 * np.std(top1):.1f}%"
  assert expected in capsys.readouterr().out.splitlines()
  novel = results["novel"]["splits"]
  assert len(novel) == 2
  for split in novel:
    # Only videos of the subset's 2 classes (never 'abseiling', the known class), labels renumbered to 0..1.
    assert len(split["confusion_matrix"]) == 2 and "abseiling" not in split["per_class"]
    assert split["num_videos"] == np.sum(split["confusion_matrix"]) > 0


def test_results_done_before_a_zero_shot_set_fails_are_kept(dataset, tmp_path):
  root, _ = dataset
  (root / "garbage").mkdir()
  (root / "garbage" / "0.mp4").write_bytes(b"not a video")
  (root / "garbage.txt").write_text("0.mp4 0\n")
  config = in_process_config(dataset, mode="eval", eval_batch_size=2, final_eval_clips=1, final_eval_crops=1)
  config = _with_one_zero_shot_task(config, "unreadable", root / "garbage", root / "garbage.txt", root)
  with pytest.raises(video_dataset.TooManyFailuresError, match="1 video failed to decode"):
    trainer.train_and_evaluate(config, tmp_path)
  kept = json.loads((tmp_path / trainer.RESULTS_FILE).read_text())
  assert kept["num_videos"] == NUM_VAL and "top1" in kept


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


# Mistakes and errors as the terminal shows them: one line each.


def run_command(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "xclip_jax.main", *args], cwd=REPO, capture_output=True, text=True, env=_env()
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["--config=configs/k400.py:arch=ViT-X/99"],
      "--config: unknown architecture 'ViT-X/99'; choose one of ['ViT-B/16', 'ViT-B/32', 'ViT-L/14', 'ViT-L/14-336']",
    ),
    (["--config=configs/demo.py", "--config.no.such=1"], "--config.no.such: no such field"),
    (["--config=configs/nope.py"], "--config: [Errno 2] No such file or directory: 'configs/nope.py'"),
    (["--config=configs/demo.py", "extra"], "unexpected arguments: extra"),
    (["--config=TMP/config.py"], "--config: SyntaxError: invalid syntax (config.py, line 1)"),
    (["--config=TMP/config.py"], "--config: the file defines no get_config()"),
    (["--config=TMP/config.py"], "--config: RuntimeError: no data set named k999"),
    (
      ["--config=TMP/config.py"],
      "--config: get_config() of TMP/config.py returned None: it must return an ml_collections ConfigDict",
    ),
    (
      ["--config=TMP/config.py"],
      "--config: get_config() of TMP/config.py returned a dict: it must return an ml_collections ConfigDict",
    ),
    # configs/common.py locks the experiment config: a misspelt field fails where it is set, not silently ignored.
    (
      ["--config=TMP/config.py"],
      "--config: TMP/config.py:4 sets 'roots', which the experiment config has no field for (did you mean 'root'?); "
      "a config that adds a field does so in `with config.unlocked():`",
    ),
    (
      ["--config=configs/model.py"],
      "--config: not an experiment config (it has no field 'mode'): use configs/k400.py, k600.py, hmdb51.py, "
      "ucf101.py, zero_shot.py or demo.py, or one made like them",
    ),
    # An unset $WORKDIR: the run would write into the current folder.
    (["--config=configs/demo.py", "--workdir="], "--workdir is empty: give the folder (or gs:// path) the run writes"),
    (["--config=configs/demo.py", "--workdir=TMP/config.py"], "--workdir=TMP/config.py is a file, not a folder"),
    # Found by the run's early config check, before the demo's videos are written: nothing is. `=None` sets
    # None (init.clip 'None' would be refused as a missing file first).
    (
      [
        "--config=configs/demo.py",
        "--config.steps_per_epoch=None",
        "--config.init.clip=None",
        "--config.dtype=float16",
      ],
      "config.dtype must be 'float32' or 'bfloat16', got 'float16'",
    ),
  ],
  ids=[
    "config-argument",
    "unknown-field",
    "missing-config-file",
    "extra-argument",
    "syntax",
    "no-get-config",
    "raise",
    "returns-none",
    "returns-dict",
    "misspelt-field",
    "model-config",
    "empty-workdir",
    "workdir-file",
    "config-value",
  ],
)
def test_a_command_line_mistake_is_one_line_with_exit_status_2_and_runs_nothing(
  tmp_path, args, message, request, monkeypatch, capfd
):
  config_files = {
    "syntax": "def get_config(:\n",
    "no-get-config": "CONFIG = {}\n",
    "raise": "def get_config():\n  raise RuntimeError('no data set named k999')\n",
    # ml_collections' warning of it, with absl's "Logging before flag parsing" line, is left out.
    "returns-none": "def get_config():\n  return None\n",
    "returns-dict": "def get_config():\n  return {'mode': 'train'}\n",
    "misspelt-field": (
      "from configs import common\ndef get_config():\n  config = common.experiment_config()\n  config.data.roots = '/v'\n"
      "  return config\n"
    ),
  }
  (tmp_path / "config.py").write_text(config_files.get(request.node.callspec.id, ""))
  workdir = tmp_path / "run"
  command = [f"--workdir={workdir}", *[arg.replace("TMP", str(tmp_path)) for arg in args]]
  if request.node.callspec.id in _MISTAKES_RUN_AS_COMMANDS:
    result = run_command(*command)
    status, stderr = result.returncode, result.stderr
  else:
    status, _, stderr = _command_line_checks_in_this_process(command, monkeypatch, capfd)
  assert status == 2
  assert stderr.splitlines() == [f"error: {message.replace('TMP', str(tmp_path))}"]
  assert not workdir.exists()


# A mistake of each kind that main finds (in parsing the command line, in its own checks, in the run's config check,
# with ml_collections' warning of a get_config() that returned None left out) is run as the command; the others go
# through the same parsing and checks in the test's process, seconds sooner each.
_MISTAKES_RUN_AS_COMMANDS = ("unknown-field", "empty-workdir", "config-value", "returns-none")


def _command_line_checks_in_this_process(args, monkeypatch, capfd) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of main's parsing of `args` and its checks before the run starts (up to importing the
  trainer, which a mistake found by then never reaches)."""

  def past_the_checks():
    raise AssertionError("the command line was taken as correct")

  monkeypatch.chdir(REPO)
  monkeypatch.setattr(console, "native_start_up", past_the_checks)
  # ml_collections loads the config file into the module `config_config`, the last one loaded where there is one.
  monkeypatch.delitem(sys.modules, "config_config", raising=False)
  capfd.readouterr()
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as exited:
      main.main(main._parse_flags(["xclip_jax.main", *args]))
  finally:
    flags.FLAGS.unparse_flags()
    sys.modules.pop("config_config", None)
  output = capfd.readouterr()
  return exited.value.code, output.out, output.err


def test_none_overrides_are_taken_out_of_the_command_line_for_main_to_set():
  argv = ["main", "--config=configs/k400.py", "--config.init.clip=x", "--config.init.clip=None"]
  argv += ["--config.steps_per_epoch=None", "--config.steps_per_epoch=3", "--workdir=w"]
  kept = ["main", "--config=configs/k400.py", "--config.init.clip=x", "--config.steps_per_epoch=3", "--workdir=w"]
  assert main._split_none_overrides(argv) == (kept, ["init.clip"])
  # The value as the next argument, as absl reads it.
  argv = ["main", "--config", "configs/k400.py", "--config.init.clip", "None", "--config.lr", "1", "--workdir=w"]
  kept = ["main", "--config", "configs/k400.py", "--config.lr", "1", "--workdir=w"]
  assert main._split_none_overrides(argv) == (kept, ["init.clip"])


def test_none_is_set_only_where_a_config_field_may_be_none():
  config = k400.get_config("small=True")
  config.init.clip = "clip.pt"
  assert main._set_none(config, "steps_per_epoch") and config.steps_per_epoch is None  # 4 with small=True
  assert main._set_none(config, "init.clip") and config.init.clip is None
  assert not main._set_none(config, "lr") and config.lr == 8e-6


def test_an_error_in_the_run_is_one_line_naming_the_log_that_holds_its_traceback(tmp_path):
  workdir = tmp_path / "run"
  labels = "/nonexistent/labels.csv"
  result = run_command(
    "--config=configs/k400.py:small=True", f"--workdir={workdir}", f"--config.data.label_list={labels}"
  )
  log = workdir / "logs" / "process_0.log"
  assert result.returncode == 1
  error = f"config.data.label_list: {labels} does not exist (set --config.data.label_list=PATH)"
  assert result.stderr.splitlines() == [f"error: {error} (traceback in {log})"]
  text = log.read_text()
  assert "Traceback (most recent call last)" in text
  assert f"FileNotFoundError: {error}" in text


def test_an_error_of_bad_input_shows_its_message_and_any_other_its_type_too():
  assert main._describe(ValueError("no such\n  file")) == "no such file"
  assert main._describe(torch_pickle.CheckpointFormatError("not a checkpoint")) == "not a checkpoint"
  assert main._describe(KeyError("step")) == "KeyError: 'step'"


def test_a_config_file_refuses_fewer_than_one_frame():
  with pytest.raises(ValueError, match=re.escape("config argument frames=0 must be at least 1")):
    k400.get_config("frames=0")


@pytest.mark.parametrize(
  "field, value, error",
  [
    ("batch_size", 0, "config.batch_size=0 must be a finite number of at least 1"),
    ("eval_batch_size", -1, "config.eval_batch_size=-1 must be a finite number of at least 1"),
    ("accumulation_steps", 0, "config.accumulation_steps=0 must be a finite number of at least 1"),
    ("num_frames", 0, "config.num_frames=0 must be a finite number of at least 1"),
    ("lr", -1.0, "config.lr=-1.0 must be a finite number of at least 0"),
    ("lr", float("inf"), "config.lr=inf must be a finite number of at least 0"),
    ("weight_decay", -0.1, "config.weight_decay=-0.1 must be a finite number of at least 0"),
    ("weight_decay", float("inf"), "config.weight_decay=inf must be a finite"),
    ("new_modules_lr_multiplier", float("nan"), "config.new_modules_lr_multiplier=nan must be a finite"),
    ("mixup", -0.8, "config.mixup=-0.8 must be a finite number of at least 0"),
    ("epochs", 0, "config.epochs=0 must be a finite number more than 0"),
    ("final_eval_crops", 2, "config.final_eval_crops=2 must be 1 or 3"),
    ("data.max_failure_fraction", -1.0, "config.data.max_failure_fraction=-1.0 must be in [0, 1]"),
    ("data.max_failure_fraction", float("nan"), "config.data.max_failure_fraction=nan must be in [0, 1]"),
    # A target of -0.25 for the true class: trained away from the right answer.
    ("label_smoothing", 1.5, "config.label_smoothing=1.5 must be in [0, 1]"),
    # NaN never chose CutMix.
    ("mixup_switch_prob", float("nan"), "config.mixup_switch_prob=nan must be in [0, 1]"),
    ("data.shots", -2, "config.data.shots=-2 must be at least 0 (0: every training video)"),
    # numpy's generator refuses it, inside tf.data, after compiling.
    ("seed", -1, "config.seed=-1 must be in [0, 2**32)"),
  ],
)
def test_a_config_number_out_of_range_is_refused_naming_the_field_before_anything_is_written(
  dataset, tmp_path, field, value, error
):
  workdir = tmp_path / "run"
  with pytest.raises(trainer.ConfigError, match=re.escape(error)):
    trainer.train_and_evaluate(in_process_config(dataset, **{field: value}), workdir)
  assert not workdir.exists()


@pytest.mark.parametrize(
  "fields, error",
  [
    # The learning rate would never reach config.lr.
    ({"warmup_epochs": 5}, "config.warmup_epochs=5 is more than config.epochs=2: the learning rate would never reach"),
    ({"dtype": "float16"}, "config.dtype must be 'float32' or 'bfloat16', got 'float16'"),
    ({"attention": "flash"}, "config.attention must be one of ('auto', 'hand', 'xla', 'cudnn'), got 'flash'"),
    ({"droppath": 1.0}, "config.droppath must be a number in [0, 1), got 1.0"),
    ({"accumulation_steps": 3}, "config.batch_size=4 is not divisible by config.accumulation_steps=3"),
    ({"mode": "eval", "init.checkpoint": None}, "mode=eval needs a model: set --config.init.checkpoint=PATH"),
    ({"init.clip": "/nonexistent/clip.pt"}, "set one of config.init.checkpoint and config.init.clip, not both"),
    ({"init.checkpoint": "/nonexistent/model.pth"}, "config.init.checkpoint: /nonexistent/model.pth does not exist"),
    (
      {"init.checkpoint": None, "arch": "ViT-B/32", "input_size": 64},
      "config.input_size is 64 but the model takes 224px frames",
    ),
    ({"init.checkpoint": None, "arch": "ViT-X/99"}, "config.arch: unknown architecture 'ViT-X/99'"),
  ],
)
def test_a_config_value_that_cannot_make_a_run_is_refused_before_anything_is_written(dataset, tmp_path, fields, error):
  workdir = tmp_path / "run"
  with pytest.raises(trainer.ConfigError, match=re.escape(error)):
    trainer.train_and_evaluate(in_process_config(dataset, **fields), workdir)
  assert not workdir.exists()


@pytest.mark.parametrize(
  "workdir, where",
  [
    ("model", ""),
    ("model/eval", "inside "),
    ("link", ""),  # a symbolic link to the checkpoint's folder
  ],
)
def test_a_workdir_in_the_checkpoint_it_evaluates_is_refused_before_anything_is_written(
  dataset, tmp_path, workdir, where
):
  """Its results and logs among the checkpoint's files: an xclip-jax checkpoint could no longer be saved over."""
  model = shutil.copytree(dataset[1], tmp_path / "model")
  (tmp_path / "link").symlink_to(model)
  written = _files(model)
  config = in_process_config(dataset, mode="eval", **{"init.checkpoint": str(model)})
  refusal = f"the workdir {tmp_path / workdir} is {where}the checkpoint config.init.checkpoint={model}: the run would"
  with pytest.raises(trainer.ConfigError, match=re.escape(refusal)):
    trainer.train_and_evaluate(config, tmp_path / workdir)
  assert _files(model) == written and sorted(p.name for p in tmp_path.iterdir()) == ["link", "model"]


def _training_workdir(dataset, folder: pathlib.Path) -> pathlib.Path:
  """What load_pretrained takes for a training workdir (a best model and checkpoints/), with no checkpoint in it."""
  shutil.copytree(dataset[1], folder / "best")
  (folder / "checkpoints").mkdir()
  return folder


@pytest.mark.parametrize("inside", ["best", "checkpoints", "best/eval"])
def test_a_workdir_in_the_best_model_or_checkpoints_of_the_training_workdir_it_evaluates_is_refused(
  dataset, tmp_path, inside
):
  trained = _training_workdir(dataset, tmp_path / "trained")
  written = _files(trained)
  config = in_process_config(dataset, mode="eval", **{"init.checkpoint": str(trained)})
  folder = "best model" if inside.startswith("best") else "checkpoints"
  refusal = (
    f"the workdir {trained / inside} is {'inside ' if '/' in inside else ''}{trained / inside.split('/')[0]}, the "
    f"{folder} of the training workdir config.init.checkpoint={trained}: the run would write"
  )
  with pytest.raises(trainer.ConfigError, match=re.escape(refusal)):
    trainer.train_and_evaluate(config, trained / inside)
  assert _files(trained) == written


def test_a_zero_shot_config_left_without_data_sets_is_refused():
  config = zero_shot_config.get_config()
  with config.unlocked():
    config.zero_shot = {}  # as --config.zero_shot={} gives it
  with pytest.raises(trainer.ConfigError, match=re.escape("config.zero_shot names no data set to evaluate")):
    trainer.check_config(config)


@pytest.mark.parametrize(
  "field, value, error",
  [
    ("dtype", "float16", "config.dtype must be"),
    ("arch", "ViT-B/16", "config.arch='ViT-B/16' would be ignored: this config's `model` gives the architecture"),
  ],
)
def test_the_demo_refuses_a_config_value_before_writing_its_videos(tmp_path, field, value, error):
  config = demo.get_config("small=True")
  config[field] = value
  with pytest.raises(ValueError, match=re.escape(error)):
    trainer.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_an_error_mid_run_leaves_the_checkpoint_being_written_complete(dataset, tmp_path, monkeypatch):
  """An error just after a checkpoint has started to be written (in the background): the run finishes it first."""
  save = checkpoints.save

  def save_then_fail(*args, **kwargs):
    save(*args, **kwargs)
    raise RuntimeError("the data failed")

  monkeypatch.setattr(checkpoints, "save", save_then_fail)
  with pytest.raises(RuntimeError, match="the data failed"):
    trainer.train_and_evaluate(in_process_config(dataset), tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]  # no STEP.orbax-checkpoint-tmp
  assert _data_position(tmp_path, 2) == 2 * overrides(dataset)["batch_size"]


def _run_main_after(patch: str, dataset, workdir) -> subprocess.CompletedProcess:
  """xclip_jax.main as `-m` runs it, in a process where the Python source `patch` has run first."""
  script = f"""{patch}
import runpy, sys
sys.argv = ["xclip_jax.main", *sys.argv[1:]]
runpy.run_module("xclip_jax.main", run_name="__main__", alter_sys=True)
"""
  command = main_command(dataset, workdir)
  return subprocess.run(
    [sys.executable, "-c", script, *command[3:]], cwd=REPO, capture_output=True, text=True, env=_env()
  )


# Ctrl-C pressed twice as the step-2 checkpoint is written: the first as its save starts, the second while the run
# waits for it to finish, with orbax's threads still writing.
_CTRL_C_TWICE_WHILE_SAVING = """
import orbax.checkpoint as ocp
from xclip_jax.train import checkpoints
save = checkpoints.save
def save_then_ctrl_c(*args, **kwargs):
  save(*args, **kwargs)
  raise KeyboardInterrupt
def ctrl_c_again(manager):
  raise KeyboardInterrupt
checkpoints.save = save_then_ctrl_c
ocp.CheckpointManager.wait_until_finished = ctrl_c_again
"""


def test_a_second_ctrl_c_while_saving_stops_at_once_with_one_line(dataset, tmp_path):
  result = _run_main_after(_CTRL_C_TWICE_WHILE_SAVING, dataset, tmp_path / "run")
  assert result.returncode == -signal.SIGINT, result.stderr[-3000:]
  assert result.stderr.splitlines() == [
    "error: Interrupted; rerun the same command to resume from the newest checkpoint, if there is one."
  ], result.stderr[-3000:]


# A SIGTERM as the final evaluation starts, after the training steps.
_SIGTERM_IN_THE_FINAL_EVALUATION = """
import os, signal
from xclip_jax import console
with console.native_start_up():  # as xclip_jax.main imports TensorFlow: its start-up lines go to the log
  from xclip_jax.train import trainer
final_evaluation = trainer._final_evaluation
def terminated_first(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGTERM)
  return final_evaluation(*args, **kwargs)
trainer._final_evaluation = terminated_first
"""


def test_a_sigterm_outside_the_training_steps_ends_the_run_with_one_line_and_frees_the_workdir(
  dataset, uninterrupted, tmp_path
):
  # A finished run's rerun goes straight to the final evaluation (the training steps' own handler of SIGTERM, which
  # saves after the step, is given back after them: tests/train/test_checkpoints.py).
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0] / "checkpoints" / str(TOTAL_STEPS), workdir / "checkpoints" / str(TOTAL_STEPS))
  result = _run_main_after(_SIGTERM_IN_THE_FINAL_EVALUATION, dataset, workdir)
  assert result.returncode == -signal.SIGTERM, result.stderr[-3000:]
  assert result.stderr.splitlines() == [
    "error: Stopped by SIGTERM outside the training steps; rerun the same command to resume from the newest "
    "checkpoint, if there is one."
  ], result.stderr[-3000:]
  assert not (workdir / run_lock.LOCK_FILE).exists()
  assert _newest_checkpoint(workdir) == TOTAL_STEPS


def test_a_stopped_run_logs_the_steps_since_its_last_log_line(dataset, tmp_path, monkeypatch):
  """A SIGTERM after step 3 with a line every 2 steps: step 3's metrics are written before the run exits (the rerun's
  first line, at step 4, covers step 4 only)."""
  monkeypatch.setattr(checkpoints.Preemption, "requested", lambda self, step: step == 3)
  results = trainer.train_and_evaluate(in_process_config(dataset, log_every_steps=2), tmp_path)
  assert results == {"stopped_at_step": 3, "stopped_by": "SIGTERM"}
  assert [step for step, _ in report.read_scalars(tmp_path)["loss"]] == [2, 3]


def test_a_checkpoint_that_fails_in_the_background_stops_the_run_at_its_next_step(dataset, tmp_path, monkeypatch):
  """A full disk while the step-2 checkpoint is written: the run stops at step 3, not at the next save, and says so
  (orbax raises a failed save only at the next one)."""
  saved_steps = []
  save = checkpoints.save

  def recording_save(manager, state, *args, **kwargs):
    save(manager, state, *args, **kwargs)
    saved_steps.append(int(state.step))

  def disk_full_after_a_save(manager):
    if saved_steps == [2]:
      raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpoints, "save", recording_save)
  monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", disk_full_after_a_save)
  with pytest.raises(OSError, match=r"^a checkpoint could not be written: \[Errno 28\] No space left on device$"):
    trainer.train_and_evaluate(in_process_config(dataset, checkpoint_every_steps=2), tmp_path)
  assert saved_steps == [2, 3]  # step 3 saved before stopping, as after any error


def test_an_error_mid_run_saves_the_steps_done_since_the_last_checkpoint(dataset, tmp_path, monkeypatch):
  """A validation that fails at step 4 (a bad video): step 4 is saved before the run stops, with its data position,
  so that the rerun goes on from there instead of from the last periodic checkpoint (none here)."""

  def failing_validation(*args, **kwargs):
    raise RuntimeError("2 videos failed to decode")

  monkeypatch.setattr(evaluate, "run_eval_set", failing_validation)
  with pytest.raises(RuntimeError, match="2 videos failed to decode"):
    trainer.train_and_evaluate(in_process_config(dataset, checkpoint_every_steps=100), tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4"]  # validation after epoch 1's 4 steps
  assert _data_position(tmp_path, 4) == 4 * overrides(dataset)["batch_size"]


def _files(directory: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
  "fields, error",
  [
    ({"accumulation_steps": 3}, "config.batch_size=4 is not divisible by config.accumulation_steps=3"),
    ({"batch_size": 8}, "were written with batch_size=4, this run has config.batch_size=8"),
  ],
)
def test_a_rerun_refused_by_its_config_keeps_the_record_of_the_run_it_would_resume(
  dataset, uninterrupted, tmp_path, fields, error
):
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  record = (workdir / trainer.CONFIG_FILE).read_bytes()
  with pytest.raises(ValueError, match=re.escape(error)):
    trainer.train_and_evaluate(in_process_config(dataset, **fields), workdir)
  assert (workdir / trainer.CONFIG_FILE).read_bytes() == record


def test_a_workdir_without_a_best_model_loads_by_the_record_the_run_wrote(uninterrupted, tmp_path):
  """A run stopped before its first validation has checkpoints but no best/: its config.json says what they hold."""
  workdir = tmp_path / "no_best"
  shutil.copytree(uninterrupted[0], workdir)
  expected = xclip_jax.load_pretrained(workdir).params
  shutil.rmtree(workdir / "best")
  for ours, theirs in zip(jax.tree.leaves(xclip_jax.load_pretrained(workdir).params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(ours, theirs)


def test_resuming_with_fewer_steps_than_the_newest_checkpoint_is_refused(dataset, uninterrupted, tmp_path, monkeypatch):
  """Its final evaluation would report the checkpoint's model as a step that does not exist."""
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  written = _files(workdir)
  monkeypatch.setattr(checkpoints, "make_manager", _no_checkpoint_manager)
  with pytest.raises(
    ValueError, match=re.escape(f"the newest checkpoint in {workdir} is of step {TOTAL_STEPS}, past this run's 4 steps")
  ):
    trainer.train_and_evaluate(in_process_config(dataset, epochs=1), workdir)
  assert _files(workdir) == written


def test_a_second_run_on_a_workdir_in_use_is_refused_and_changes_nothing(dataset, uninterrupted, tmp_path):
  workdir = tmp_path / "in_use"
  shutil.copytree(uninterrupted[0], workdir)
  # Held by a live process: this one's parent.
  (workdir / run_lock.LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
  written = _files(workdir)
  with pytest.raises(run_lock.WorkdirInUseError, match=re.escape(f"{workdir} is in use by the run of process")):
    trainer.train_and_evaluate(in_process_config(dataset, epochs=3), workdir)
  assert _files(workdir) == written


def test_an_evaluation_in_a_training_workdir_keeps_the_training_runs_results_aside(
  dataset, uninterrupted, tmp_path, caplog
):
  workdir = tmp_path / "trained"
  shutil.copytree(uninterrupted[0], workdir)
  trained = {name: (workdir / name).read_bytes() for name in (trainer.RESULTS_FILE, report.CONFUSION_FILE)}
  with caplog.at_level(logging.WARNING):
    # Its own final model, evaluated into it (a training workdir may be its own init.checkpoint).
    config = in_process_config(dataset, mode="eval", eval_batch_size=4, **{"init.checkpoint": str(workdir)})
    trainer.train_and_evaluate(config, workdir)
  assert (workdir / "eval_results.1.json").read_bytes() == trained[trainer.RESULTS_FILE]
  assert (workdir / "confusion_matrix.1.png").read_bytes() == trained[report.CONFUSION_FILE]
  assert json.loads((workdir / trainer.RESULTS_FILE).read_text())["step"] == 0  # this evaluation's
  assert (workdir / report.CONFUSION_FILE).exists()
  assert (
    f"This evaluation would replace the results of an earlier one in {workdir}: they are kept as eval_results.1.json, "
    "confusion_matrix.1.png."
  ) in caplog.messages


def _earlier_results(workdir: pathlib.Path) -> dict[str, bytes]:
  """What an earlier evaluation left in `workdir`, and a confusion matrix an evaluation before it was kept as."""
  earlier = {
    trainer.RESULTS_FILE: b'{"step": 0, "top1": 0.25}\n',
    report.CONFUSION_FILE: b"earlier picture",
    "confusion_matrix.1.png": b"a picture kept before",
  }
  workdir.mkdir(parents=True, exist_ok=True)
  for name, content in earlier.items():
    (workdir / name).write_bytes(content)
  return earlier


def test_an_evaluation_keeps_an_earlier_ones_files_under_a_number_none_of_them_has_yet(dataset, tmp_path, caplog):
  earlier = _earlier_results(tmp_path)
  with caplog.at_level(logging.WARNING):
    results = trainer.train_and_evaluate(in_process_config(dataset, mode="eval", eval_batch_size=4), tmp_path)
  # 2, not 1: one earlier evaluation's files keep one number, and confusion_matrix.1.png is taken.
  assert (tmp_path / "eval_results.2.json").read_bytes() == earlier[trainer.RESULTS_FILE]
  assert (tmp_path / "confusion_matrix.2.png").read_bytes() == earlier[report.CONFUSION_FILE]
  assert (tmp_path / "confusion_matrix.1.png").read_bytes() == earlier["confusion_matrix.1.png"]
  assert not (tmp_path / "eval_results.1.json").exists()
  assert json.loads((tmp_path / trainer.RESULTS_FILE).read_text())["top1"] == results["top1"]
  assert (tmp_path / report.CONFUSION_FILE).read_bytes().startswith(b"\x89PNG")
  kept = [message for message in caplog.messages if "results of an earlier one" in message]
  assert kept == [
    f"This evaluation would replace the results of an earlier one in {tmp_path}: they are kept as eval_results.2.json, "
    "confusion_matrix.2.png."
  ]


def test_an_evaluation_that_fails_leaves_an_earlier_ones_files_as_they_were(dataset, tmp_path, monkeypatch):
  earlier = _earlier_results(tmp_path)

  def failing(*args, **kwargs):
    raise RuntimeError("the evaluation failed midway")

  monkeypatch.setattr(evaluate, "run_eval_set", failing)
  with pytest.raises(RuntimeError, match="the evaluation failed midway"):
    trainer.train_and_evaluate(in_process_config(dataset, mode="eval"), tmp_path)
  assert _files(tmp_path) == earlier


def test_a_workdir_record_that_is_not_json_is_an_error_naming_it(dataset, uninterrupted, tmp_path):
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  (workdir / trainer.CONFIG_FILE).write_text("garbage{")
  with pytest.raises(ValueError, match=re.escape(f"{workdir / trainer.CONFIG_FILE}: invalid JSON (Expecting value")):
    trainer.train_and_evaluate(in_process_config(dataset), workdir)


def test_resuming_with_a_model_of_another_architecture_is_refused_before_anything_is_written(
  dataset, uninterrupted, tmp_path
):
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  written = _files(workdir)
  one_head = tiny.model(transformer_heads=1).save(tmp_path / "one_head")  # the tiny model has 2
  config = in_process_config(dataset, **{"init.checkpoint": str(one_head)})
  refusal = f"the checkpoints in {workdir} are of another model (transformer_heads 2 -> 1)"
  with pytest.raises(ValueError, match=re.escape(refusal)):
    trainer.train_and_evaluate(config, workdir)
  assert _files(workdir) == written


def test_resuming_with_other_parameters_trained_is_refused_before_anything_is_written(dataset, uninterrupted, tmp_path):
  """The optimiser state of the checkpoints holds the parameters they trained: another set cannot be read into."""
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  written = _files(workdir)
  trained_text = json.loads((workdir / trainer.CONFIG_FILE).read_text())["config"]["freeze_text"]
  config = in_process_config(dataset, freeze_text=not trained_text)
  refusal = f"the checkpoints in {workdir} train other parameters (freeze_text {trained_text} -> {not trained_text})"
  with pytest.raises(ValueError, match=re.escape(refusal)):
    trainer.train_and_evaluate(config, workdir)
  assert _files(workdir) == written


def _no_checkpoint_manager(*args, **kwargs):
  # orbax's clean-up thread, which a manager starts, outlived a run refused at once: its traceback followed the error.
  raise AssertionError("the checkpoint manager started before the resumed run was checked")


def test_resuming_with_another_batch_size_is_refused_before_anything_is_written(
  dataset, uninterrupted, tmp_path, monkeypatch
):
  """The checkpoints' data position counts batches of their size; refused before the train step compiles (and the
  checkpoint manager starts), not after a warning that training goes on."""
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  written = _files(workdir)
  monkeypatch.setattr(checkpoints, "make_manager", _no_checkpoint_manager)
  batch_size = json.loads((workdir / trainer.CONFIG_FILE).read_text())["config"]["batch_size"]
  refusal = (
    f"the checkpoints in {workdir} were written with batch_size={batch_size}, this run has "
    f"config.batch_size={batch_size // 2}: their data position counts other batches"
  )
  with pytest.raises(ValueError, match=re.escape(refusal)):
    trainer.train_and_evaluate(in_process_config(dataset, batch_size=batch_size // 2), workdir)
  assert _files(workdir) == written


def test_resuming_after_the_data_moved_names_the_move_once(dataset, uninterrupted, tmp_path, caplog):
  """Four data paths that moved from one folder to another are one change, not four paths written out twice."""
  root, checkpoint = dataset
  workdir, moved = tmp_path / "finished", tmp_path / "moved"
  shutil.copytree(uninterrupted[0], workdir)
  shutil.copytree(root, moved)
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(in_process_config((moved, checkpoint), lr=2e-3), workdir)
  warnings = [record.getMessage() for record in caplog.records if "config differs" in record.getMessage()]
  assert warnings == [
    f"This run's config differs from that of the checkpoints it resumes in {workdir} (data.label_list, data.root, "
    f"data.train_file, data.val_file '{root}/...' -> '{moved}/...'; lr 0.001 -> 0.002); training goes on with this "
    "run's."
  ]


def test_resuming_with_other_config_values_warns_naming_them_and_goes_on(dataset, uninterrupted, tmp_path, caplog):
  """Fields that cannot change what is trained (how often to log) are left out."""
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(in_process_config(dataset, lr=2e-3, log_every_steps=1), workdir)
  warnings = [record.getMessage() for record in caplog.records if "config differs" in record.getMessage()]
  assert warnings == [
    f"This run's config differs from that of the checkpoints it resumes in {workdir} (lr 0.001 -> 0.002); training "
    "goes on with this run's."
  ]
  assert json.loads((workdir / trainer.CONFIG_FILE).read_text())["config"]["lr"] == 2e-3


class _StoppedHere(Exception):
  pass


def test_resuming_a_run_made_longer_warns_that_its_schedule_is_recomputed(
  dataset, uninterrupted, tmp_path, caplog, monkeypatch
):
  workdir = tmp_path / "finished"
  shutil.copytree(uninterrupted[0], workdir)
  epochs = json.loads((workdir / trainer.CONFIG_FILE).read_text())["config"]["epochs"]

  def stop(*args, **kwargs):  # right after the check of the resumed run: the warning is the claim
    raise _StoppedHere

  monkeypatch.setattr(trainer.metric_writers, "create_default_writer", stop)
  with caplog.at_level(logging.WARNING), pytest.raises(_StoppedHere):
    trainer.train_and_evaluate(in_process_config(dataset, epochs=epochs + 1), workdir)
  warnings = [record.getMessage() for record in caplog.records if "config differs" in record.getMessage()]
  assert warnings == [
    f"This run's config differs from that of the checkpoints it resumes in {workdir} (epochs {epochs} -> "
    f"{epochs + 1}); training goes on with this run's, its learning-rate schedule recomputed over the new length (the "
    "rate may rise again)."
  ]


def test_help_lists_the_compilation_cache_flag_that_the_readme_tells_users_to_give():
  # absl's --help lists the main module's key flags; the others only under --helpfull.
  assert "compilation_cache_dir" in [flag.name for flag in flags.FLAGS.get_key_flags_for_module(main)]


def test_help_prints_the_usage_and_ends_with_exit_status_0(monkeypatch, capfd):
  """absl's --help ends with status 1, as a failed command would: a script asking for the usage would stop."""
  app.define_help_flags()  # as app.run does
  status, stdout, _ = _command_line_checks_in_this_process(["--help"], monkeypatch, capfd)
  assert status == 0 and "Try --helpfull" in stdout  # the usage, printed
