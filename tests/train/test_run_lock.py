"""One run at a time in a workdir: the lock a run holds, refused while its process lives, taken over once it ended."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from xclip_jax.train import run_lock

REPO = pathlib.Path(__file__).resolve().parents[2]


def _lock(workdir, pid, host=None):
  workdir.mkdir(exist_ok=True)
  (workdir / run_lock.LOCK_FILE).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid}))


def _ended_process() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_a_run_holds_the_lock_while_it_goes_on_and_removes_it_after(tmp_path):
  with run_lock.held(tmp_path):
    holder = json.loads((tmp_path / run_lock.LOCK_FILE).read_text())
    assert holder == {"host": socket.gethostname(), "pid": os.getpid()}
  assert not (tmp_path / run_lock.LOCK_FILE).exists()


@pytest.fixture
def live_process():
  process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  yield process.pid
  process.kill()
  process.wait()


@pytest.mark.parametrize("host", [None, "another-host"])
def test_a_workdir_held_by_a_live_run_or_one_of_another_host_is_refused(tmp_path, host, live_process):
  """On another host liveness cannot be told, so the user decides."""
  _lock(tmp_path, live_process, host)
  before = (tmp_path / run_lock.LOCK_FILE).read_text()
  with (
    pytest.raises(run_lock.WorkdirInUseError, match=f"^{tmp_path} is in use by the run of process {live_process} on "),
    run_lock.held(tmp_path),
  ):
    pytest.fail("entered a held workdir")
  assert (tmp_path / run_lock.LOCK_FILE).read_text() == before
  assert sorted(path.name for path in tmp_path.iterdir()) == [run_lock.LOCK_FILE]


def test_a_lock_of_this_process_id_is_of_a_killed_run_whose_container_restarted(tmp_path):
  """A container that runs training as process 1 under a fixed host name has the killed run's host and pid."""
  _lock(tmp_path, os.getpid())
  with run_lock.held(tmp_path):
    assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
  assert not (tmp_path / run_lock.LOCK_FILE).exists()


@pytest.mark.parametrize("content", ["ended", "half-written", "no-pid"])
def test_a_lock_left_by_a_run_that_ended_is_taken_over(tmp_path, content):
  if content == "ended":
    _lock(tmp_path, _ended_process())
  else:
    (tmp_path / run_lock.LOCK_FILE).write_text({"half-written": '{"host": ', "no-pid": '{"host": "h"}'}[content])
  with run_lock.held(tmp_path):
    assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
  assert not (tmp_path / run_lock.LOCK_FILE).exists()


def test_a_workdir_held_by_a_live_process_of_another_user_is_refused(tmp_path, monkeypatch):
  def not_allowed(pid, signal):
    raise PermissionError(1, "Operation not permitted")

  _lock(tmp_path, 1)
  monkeypatch.setattr(run_lock.os, "kill", not_allowed)
  with pytest.raises(run_lock.WorkdirInUseError), run_lock.held(tmp_path):
    pytest.fail("entered a held workdir")


def test_on_a_file_system_without_hard_links_the_lock_is_created_exclusively(tmp_path, monkeypatch, live_process):
  def no_hard_links(source, destination):
    raise PermissionError(1, "Operation not permitted")

  monkeypatch.setattr(run_lock.os, "link", no_hard_links)
  with run_lock.held(tmp_path):
    assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
  _lock(tmp_path, live_process)
  with pytest.raises(run_lock.WorkdirInUseError), run_lock.held(tmp_path):
    pytest.fail("entered a held workdir")


_OTHER_RUN = """
import sys, time
from xclip_jax.train import run_lock
print("started", flush=True)
try:
  with run_lock.held(sys.argv[1]):
    print("held", flush=True)
    time.sleep(3)
except run_lock.WorkdirInUseError as error:
  print(f"refused: {error}", flush=True)
"""


def test_of_two_runs_taking_over_one_left_lock_at_once_only_one_goes_on(tmp_path, monkeypatch):
  """Another run comes while this one judges the left lock: one of the two holds the workdir, the other is refused."""
  _lock(tmp_path, _ended_process())
  judge, other = run_lock._ended, []

  def judging_while_another_run_comes(holder):
    if not other:
      other.append(
        subprocess.Popen([sys.executable, "-c", _OTHER_RUN, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE)
      )
      assert other[0].stdout.readline() == b"started\n"
      time.sleep(1)  # time for it to take the lock over, unless this run's takeover keeps it out
    return judge(holder)

  monkeypatch.setattr(run_lock, "_ended", judging_while_another_run_comes)
  try:
    with run_lock.held(tmp_path):
      this_run_held, lines = True, other[0].communicate(timeout=60)[0].decode().splitlines()
  except run_lock.WorkdirInUseError:
    this_run_held, lines = False, other[0].communicate(timeout=60)[0].decode().splitlines()
  assert (this_run_held, lines[0].split(":")[0]) in [(True, "refused"), (False, "held")]
