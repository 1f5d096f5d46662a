"""`python -m xclip_jax.main` as several processes on one machine, as on the hosts of a TPU pod or a GPU cluster.

Two processes with 2 CPU devices each against one process with 4, the parameters sharded over all 4 devices
(`mesh.fsdp=4`). Two processes train 6 steps; one process resumes their step-2 checkpoint and ends with their
parameters and their evaluation; two processes, given its step-4 checkpoint and the two processes' step-6 one with a
file that only one of them reads cut short, set that one aside and resume, both, from step 4, and a SIGTERM to one of
them stops both after the same step, with the parameters of the one-process run. Of the files in the workdir they
share, process 1 writes none of those process 0 alone writes (recorded by an audit hook in each process). A killed or
failing process stops the other, which finds it gone within the heartbeat timeout (by its own log's clock) and says
so. Each process start costs seconds (imports, tracing, tf.data), so there are few, and tests that check different
facts of one run share it; the runs share the test session's compilation cache (conftest), so that each program
compiles once per process count.
"""

import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from absl import app
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.fixtures import tiny
from tests.fixtures import video_fixtures
from xclip_jax import host_memory
from xclip_jax.evaluation import report
from xclip_jax.parallel import distributed
from xclip_jax.train import checkpoints
from xclip_jax.train import trainer
from xclip_jax.weights import native

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_VAL = 8, 5  # 5 validation videos (and one that cannot be read) in global batches of 4: padding too
TOTAL_STEPS = 6  # 3 epochs of 2 steps, a checkpoint after each
# The runs are compared with each other, not timed: XLA compiles faster without LLVM's optimisations.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Seconds. The tests of a dying process use a short timeout: the other must find it gone within two of these, by its
# log's clock. The other runs keep the default, which a loaded machine's compilations (several processes on 2 cores)
# cannot exceed.
DEATH_HEARTBEAT_TIMEOUT = 10
HEARTBEAT_TIMEOUT = 100
# The death tests' waits only end a run that hangs: they claim no wall time.
HANG_SECONDS = 600


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  lines = []
  for i in range(NUM_TRAIN + NUM_VAL):
    video_fixtures.write_indexed_video(root / "videos" / f"v{i}.mp4", 6 + 2 * (i % 3), width=40, height=36)
    lines.append(f"v{i}.mp4 {i % tiny.NUM_CLASSES}\n")
  (root / "train.txt").write_text("".join(lines[:NUM_TRAIN]))
  # And one validation video that cannot be read, where process 1 reads it: each process counts its own.
  (root / "videos" / "broken.mp4").write_bytes(b"not a video")
  val = lines[NUM_TRAIN:]
  val.insert(3, "broken.mp4 0\n")
  (root / "val.txt").write_text("".join(val))
  (root / "labels.csv").write_text("id,name\n" + "".join(f"{i},class {i}\n" for i in range(tiny.NUM_CLASSES)))
  model = tiny.model()
  model.save(root / "tiny_xclip")
  return root, model.params


def _command(dataset, workdir, overrides: dict, heartbeat_timeout: int) -> list[str]:
  root, _ = dataset
  config = {
    "arch": "",
    "init.checkpoint": root / "tiny_xclip",
    "num_classes": tiny.NUM_CLASSES,
    "num_frames": tiny.ARCH["num_frames"],
    "input_size": tiny.ARCH["image_resolution"],
    "data.root": root / "videos",
    "data.train_file": root / "train.txt",
    "data.val_file": root / "val.txt",
    "data.label_list": root / "labels.csv",
    "mesh.data": 1,
    "mesh.fsdp": 4,
    "epochs": 3,
    "steps_per_epoch": 2,
    "warmup_epochs": 0,
    "lr": 1e-3,
    "batch_size": 4,
    "eval_batch_size": 4,
    "eval_every_epochs": 3,
    "checkpoint_every_steps": 2,
    "log_every_steps": 1,
    "final_eval_clips": 1,
    "final_eval_crops": 1,
    "data.max_failure_fraction": 0.5,
    **overrides,
  }
  return [
    sys.executable,
    "-m",
    "xclip_jax.main",
    "--config=configs/k400.py:small=True",
    f"--workdir={workdir}",
    f"--heartbeat_timeout_seconds={heartbeat_timeout}",
    # Every INFO line on the process's output, where the tests read them, whatever the terminal shows by default.
    "--verbosity=0",
    *(f"--config.{key}={value}" for key, value in config.items()),
  ]


# Runs xclip_jax.main as `-m` does, recording each file that the process itself opens for writing or renames into
# place, one path a line, in the file its first argument names (Python's audit hooks: writes of C++ code such as
# TensorFlow's and TensorStore's escape them). A hook must not raise: it writes with os.write, which is not audited.
_RECORDING_WRITES = """
import os, runpy, sys
record = os.open(sys.argv.pop(1), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
def audit(event, args):
  if event == "open" and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
    os.write(record, f"{args[0]}\\n".encode(errors="replace"))
  elif event == "open" and args[1] is None and (args[2] or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
    os.write(record, f"{args[0]}\\n".encode(errors="replace"))
  elif event == "os.rename":
    os.write(record, f"{args[1]}\\n".encode(errors="replace"))
sys.addaudithook(audit)
runpy.run_module("xclip_jax.main", run_name="__main__", alter_sys=True)
"""


class Run:
  """`num_processes` processes of one run, each with 4 // num_processes CPU devices, logging to files.

  `overrides` change the config of every process, `process_overrides[i]` that of process i alone; with
  `record_writes`, `written(i)` lists the files that process i wrote.
  """

  def __init__(
    self,
    dataset,
    workdir: pathlib.Path,
    num_processes: int,
    process_overrides=None,
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
    record_writes: bool = False,
    **overrides,
  ):
    self.workdir = workdir
    workdir.mkdir(parents=True, exist_ok=True)
    # With the huge-page tunable that xclip_jax.main would restart itself with (test_host_memory tests the restart):
    # not importing jax twice saves each process seconds.
    env = host_memory.as_training_runs(
      {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={4 // num_processes} {FAST_COMPILE}",
        "PYTHONUNBUFFERED": "1",
      }
    )
    distributed = []
    if num_processes > 1:
      distributed = [f"--coordinator_address=127.0.0.1:{_free_port()}", f"--num_processes={num_processes}"]
    self.logs = [workdir / f"process{i}.log" for i in range(num_processes)]
    self.writes = [workdir / f"process{i}.writes" for i in range(num_processes)]
    self.processes = []
    for i, log in enumerate(self.logs):
      config = {**overrides, **(process_overrides or {}).get(i, {})}
      command = _command(dataset, workdir, config, heartbeat_timeout) + distributed
      if num_processes > 1:
        command.append(f"--process_id={i}")
      if record_writes:
        command[1:3] = ["-c", _RECORDING_WRITES, str(self.writes[i])]
      with log.open("w") as output:
        self.processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT))

  def log(self, i: int) -> str:
    return self.logs[i].read_text()

  def written(self, i: int) -> set[pathlib.Path]:
    return {pathlib.Path(line) for line in self.writes[i].read_text().splitlines()}

  def wait(self, timeout: float = 400) -> list[int]:
    deadline = time.time() + timeout
    try:
      return [process.wait(timeout=max(deadline - time.time(), 1)) for process in self.processes]
    finally:
      for process in self.processes:
        if process.poll() is None:
          process.kill()

  def succeed(self, status: int = 0):
    codes = self.wait()
    for i, code in enumerate(codes):
      assert code == status, f"process {i} exited with {code}:\n{self.log(i)[-5000:]}"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / native.WORKDIR_CHECKPOINTS
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _params(workdir: pathlib.Path, step: int = TOTAL_STEPS) -> dict:
  """The parameters of a checkpoint, as numpy arrays (it was written from 4 devices, this process has 1)."""
  path = (workdir / native.WORKDIR_CHECKPOINTS / str(step) / "state").absolute()
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(
    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), checkpointer.metadata(path).item_metadata.tree
  )
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))["params"]


def _resume_from(source: pathlib.Path, step: int, workdir: pathlib.Path) -> pathlib.Path:
  """A fresh workdir holding only `source`'s checkpoint at `step`."""
  shutil.copytree(source / native.WORKDIR_CHECKPOINTS / str(step), workdir / native.WORKDIR_CHECKPOINTS / str(step))
  return workdir


def _results(workdir: pathlib.Path) -> dict:
  return json.loads((workdir / trainer.RESULTS_FILE).read_text())


def _assert_same_training(ours: dict, reference: dict, initial: dict):
  # Cross-process sums add in another order, and the CPU's matmul kernels block sums by its vector width: after 6
  # steps most updates agree to 1e-5 relative, but those of the prompt generator's query and key path (decoder_0's
  # norm1, q_proj, k_proj), whose gradients nearly cancel, to 2e-4 on an AMD EPYC (AVX2) and 1.02e-3 on an Intel Xeon
  # (AVX-512). A resume one step off would change each update by about a sixth, other batches or a lost optimiser
  # state by the order of the updates themselves.
  tiny.assert_updates_close(initial, ours, reference, tolerance=5e-3)


def _assert_same_evaluation(ours: dict, reference: dict):
  assert ours["num_videos"] == reference["num_videos"] == NUM_VAL
  assert ours["skipped_videos"] == reference["skipped_videos"] == 1
  assert np.sum(ours["confusion_matrix"]) == NUM_VAL
  for key in ("top1", "top5", "per_class", "confusion_matrix"):
    assert ours[key] == reference[key], key


@pytest.fixture(scope="module")
def two_processes(dataset, tmp_path_factory):
  """Two processes, 2 devices each, the whole run."""
  run = Run(dataset, tmp_path_factory.mktemp("two"), 2, record_writes=True)
  run.succeed()
  assert _checkpoint_steps(run.workdir) == [2, 4, TOTAL_STEPS]
  return run


@pytest.fixture(scope="module")
def one_process(dataset, two_processes, tmp_path_factory):
  """One process, 4 devices, from the two processes' step-2 checkpoint to the end, with a checkpoint every step."""
  workdir = _resume_from(two_processes.workdir, 2, tmp_path_factory.mktemp("one"))
  run = Run(dataset, workdir, 1, checkpoint_every_steps=1, keep_checkpoints=TOTAL_STEPS)
  run.succeed()
  return run


def test_two_processes_log_their_index(two_processes):
  for i in (0, 1):
    assert f"[process {i}/2] JAX: 2 processes, 4 devices (cpu)" in two_processes.log(i)


def test_only_process_0_writes_the_results_the_pictures_and_the_metrics(two_processes):
  """Process 1 writes no eval_results.json, best.json, pictures or TensorBoard events in the workdir they share."""
  names = {trainer.RESULTS_FILE, "best.json", report.CURVES_FILE, report.CONFUSION_FILE}
  # The files of each process, as it opened them: process 0's show that the recording sees every one of them.
  written = [{path.name for path in two_processes.written(i) if path.parent == two_processes.workdir} for i in (0, 1)]
  assert names <= written[0], names - written[0]
  events = [_events_files(two_processes.workdir, process.pid) for process in two_processes.processes]
  assert len(events[0]) == 1, events
  assert not (names & written[1]) and not events[1], (names & written[1], events[1])


def _events_files(workdir: pathlib.Path, pid: int) -> list[str]:
  """The TensorBoard events files of process `pid`: TensorFlow writes them in C++ (no audit hook sees it), naming
  them events.out.tfevents.TIME.HOST.PID.N.v2."""
  files = [path.name for path in workdir.glob("events.out.tfevents.*")]
  return [name for name in files if re.search(rf"\.{pid}\.\d+\.v2$", name)]


def test_one_process_resumes_a_two_process_checkpoint_and_ends_like_them(dataset, two_processes, one_process):
  log = one_process.log(0)
  assert "No cluster found (Cloud TPU, SLURM, Open MPI): running as a single process." in log
  assert "Resumed from the checkpoint at step 2 (data position 8)" in log
  _assert_same_training(_params(one_process.workdir), _params(two_processes.workdir), dataset[1])
  # Evaluation over both processes: every video once, the one-process accuracy.
  _assert_same_evaluation(_results(two_processes.workdir), _results(one_process.workdir))


@pytest.fixture(scope="module")
def resumed_and_stopped(dataset, two_processes, one_process, tmp_path_factory):
  """Two processes, given the one process's step-4 checkpoint and the two processes' step-6 one with a data file of
  process 1 cut short; once process 1 has resumed, a SIGTERM to it. Its `codes`: the processes' exit statuses.

  Orbax writes the chunks of replicated arrays from every process in turn, so which process reads the damaged part
  varies from run to run; one that does not learns from the other that the checkpoint cannot be read."""
  workdir = _resume_from(one_process.workdir, 4, tmp_path_factory.mktemp("resumed"))
  _resume_from(two_processes.workdir, TOTAL_STEPS, workdir)
  # The largest data file process 1 wrote: its shards of the sharded arrays, and maybe chunks of replicated ones.
  files = (workdir / native.WORKDIR_CHECKPOINTS / str(TOTAL_STEPS) / "state" / "ocdbt.process_1" / "d").iterdir()
  largest = max(files, key=lambda path: path.stat().st_size)
  with largest.open("r+b") as f:
    f.truncate(largest.stat().st_size // 2)
  run = Run(dataset, workdir, 2)
  try:
    _wait_for_line(run, 1, "Resumed from the checkpoint at step 4 (data position 16)")
  except BaseException:
    for process in run.processes:
      process.kill()
    raise
  run.processes[1].send_signal(signal.SIGTERM)
  run.codes = run.wait()
  return run


def test_two_processes_resume_a_one_process_checkpoint_and_a_sigterm_stops_both_after_one_step(
  dataset, one_process, resumed_and_stopped
):
  run = resumed_and_stopped
  for i, code in enumerate(run.codes):
    # Both stopped unfinished: ended by the signal.
    assert code == -signal.SIGTERM, f"process {i} exited with {code}:\n{run.log(i)[-5000:]}"
  stopped = _checkpoint_steps(run.workdir)[-1]
  assert stopped > 4
  for i in (0, 1):
    assert f"Stopped at step {stopped} on SIGTERM" in run.log(i), run.log(i)[-3000:]
  _assert_same_training(_params(run.workdir, stopped), _params(one_process.workdir, stopped), dataset[1])


def test_two_processes_set_aside_a_checkpoint_that_only_one_of_them_cannot_read(
  dataset, one_process, resumed_and_stopped
):
  """Both set the step-6 checkpoint aside and resume from step 4, the same state: the steps after it are the one
  process's."""
  run = resumed_and_stopped
  for i in (0, 1):
    reason = rf"\((OUT_OF_RANGE|unreadable on process {1 - i})"
    assert re.search(rf"The checkpoint at step {TOTAL_STEPS} cannot be read {reason}", run.log(i)), run.log(i)[-3000:]
    assert "Resumed from the checkpoint at step 4 (data position 16)" in run.log(i), run.log(i)[-3000:]
  assert (run.workdir / native.WORKDIR_CHECKPOINTS / f"{TOTAL_STEPS}{checkpoints.DAMAGED_SUFFIX}").is_dir()
  stopped = _checkpoint_steps(run.workdir)[-1]
  assert stopped > 4
  _assert_same_training(_params(run.workdir, stopped), _params(one_process.workdir, stopped), dataset[1])


@pytest.mark.parametrize("death", ["killed", "failing"])
def test_a_process_that_dies_stops_the_other_with_a_clear_message(dataset, tmp_path, death):
  """The other process finds the dead one out within the heartbeat timeout, on its own log's clock, says that
  another process died, and exits."""
  if death == "killed":
    run = Run(dataset, tmp_path, 2, heartbeat_timeout=DEATH_HEARTBEAT_TIMEOUT)
    # Killed once both have joined, the other blocks in its first exchange with it.
    _wait_for_line(run, 1, "JAX: 2 processes")
    run.processes[1].kill()
    died = time.time()
  else:
    # Process 1 alone cannot open its log file (a folder of that name is in the way), with the config of the others:
    # it says so, with its index, and exits at once.
    (tmp_path / "logs" / "process_1.log").mkdir(parents=True)
    run = Run(dataset, tmp_path, 2, heartbeat_timeout=DEATH_HEARTBEAT_TIMEOUT)
    assert run.processes[1].wait(timeout=HANG_SECONDS) == 1
    assert "[process 1/2] Process 1 of 2 failed" in run.log(1) and "process_1.log" in run.log(1)
    died = _logged_time(run.log(1), "Process 1 of 2 failed")
  # Only a guard against a hang: how soon it stopped is read from its log below, whatever else loads the machine.
  codes = run.wait(timeout=HANG_SECONDS)
  assert codes[0] != 0
  log = run.log(0)
  if "another task died" in log:
    # The coordination service (in process 0) logs when it finds a process gone: a heartbeat timeout after its last
    # heartbeat (within one check interval), however busy the process's own threads were.
    found = _logged_time(log, "stopped sending heartbeats") - died
  else:
    # On CPUs, a process in an exchange with the dead one finds its connection closed at once (gloo), and stops.
    assert "Connection closed by peer" in log, log[-3000:]
    found = _logged_time(log, "Process 0 of 2 failed") - died
  print(f"{death}: process 0 found process 1 gone {found:.1f} s after it died")
  assert 0 < found < 2 * DEATH_HEARTBEAT_TIMEOUT


def test_processes_given_different_configs_stop_before_training(dataset, tmp_path):
  """Another seed on one host: it would read videos of the other's share and skip some of its own."""
  run = Run(dataset, tmp_path, 2, process_overrides={1: {"seed": 7}})
  codes = run.wait(timeout=HANG_SECONDS)
  for i in (0, 1):
    assert codes[i] == 1 and "the processes were given different configs (process 1's differs" in run.log(i)
  assert not (tmp_path / "checkpoints").exists()


def _logged_time(log: str, text: str) -> float:
  """When the first line of `log` that holds `text` was logged: absl's and XLA's `LMMDD HH:MM:SS.micros` prefix, in
  the machine's local time, as seconds since the epoch (the year is this one's)."""
  line = next(line for line in log.splitlines() if text in line)
  stamp = re.match(r"[IWEF](\d{4} \d\d:\d\d:\d\d\.\d+)", line)
  assert stamp, line
  return datetime.datetime.strptime(f"{datetime.date.today().year}{stamp[1]}", "%Y%m%d %H:%M:%S.%f").timestamp()


def _wait_for_line(run: Run, process: int, text: str, timeout: float = 300):
  deadline = time.time() + timeout
  while text not in run.log(process):
    assert time.time() < deadline, f"no {text!r} in the log of process {process}"
    assert run.processes[process].poll() is None, run.log(process)[-3000:]
    time.sleep(0.1)


def test_distributed_flags_come_all_together():
  with pytest.raises(app.UsageError, match="all of --coordinator_address, --num_processes and --process_id"):
    distributed.initialize("127.0.0.1:1234", 2, None, DEATH_HEARTBEAT_TIMEOUT)


@pytest.mark.parametrize("num_processes, process_id", [(2, 5), (2, -1)])
def test_a_process_id_outside_the_processes_is_a_usage_error(num_processes, process_id):
  with pytest.raises(app.UsageError, match=re.escape(f"--process_id={process_id} must be in [0, --num_processes=")):
    distributed.initialize("127.0.0.1:1234", num_processes, process_id, DEATH_HEARTBEAT_TIMEOUT)


@pytest.mark.parametrize(
  "address, num_processes, heartbeat, message",
  [
    # jax.distributed crashed the process (a segmentation fault) on a port that is not a number, failed with an
    # IndexError without one, and waited for ever on one out of range.
    ("localhost:abc", 1, 100, "--coordinator_address=localhost:abc is not HOST:PORT (a port from 1 to 65535)"),
    ("localhost", 1, 100, "--coordinator_address=localhost is not HOST:PORT"),
    ("localhost:70000", 2, 100, "--coordinator_address=localhost:70000 is not HOST:PORT"),
    (":1234", 2, 100, "--coordinator_address=:1234 is not HOST:PORT"),
    ("localhost:1234", 0, 100, "--num_processes=0 must be at least 1"),
    ("localhost:1234", 2, 0, "--heartbeat_timeout_seconds=0 must be at least 1"),
  ],
)
def test_malformed_distributed_flags_are_usage_errors(address, num_processes, heartbeat, message):
  with pytest.raises(app.UsageError, match=re.escape(message)):
    distributed.initialize(address, num_processes, 0, heartbeat)


def test_an_ipv6_coordinator_address_is_accepted_as_host_and_port():
  assert distributed._is_host_and_port("[::1]:1234") and distributed._is_host_and_port("10.0.0.2:8476")
