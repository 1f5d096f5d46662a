"""Damaged checkpoints, in the pieces that the end-to-end tests (tests/test_main.py, tests/parallel) cannot reach
cheaply: a step set aside twice, and the reports of the reads that orbax abandons when one fails."""

import asyncio
import gc
import logging
import os
import signal
import sys
import traceback
import types

import pytest

from xclip_jax.train import checkpoints
from xclip_jax.weights import native


def test_a_step_set_aside_twice_keeps_both(tmp_path):
  """A checkpoint set aside under a name already taken (the same step damaged again after a rerun) replaces nothing."""
  manager = checkpoints.make_manager(tmp_path, keep=3)
  folder = tmp_path / "checkpoints"
  (folder / f"6{checkpoints.DAMAGED_SUFFIX}").mkdir()
  (folder / f"6{checkpoints.DAMAGED_SUFFIX}" / "first").write_text("")
  (folder / "6").mkdir()
  (folder / "6" / "second").write_text("")
  checkpoints._set_aside(manager, {6: "cut short"}, resumed_step=4)
  assert sorted(p.name for p in folder.iterdir()) == ["6.damaged", "6.damaged2"]
  assert (folder / "6.damaged" / "first").exists() and (folder / "6.damaged2" / "second").exists()


def test_the_reads_abandoned_after_a_failed_one_are_not_reported(monkeypatch):
  """Once a read has failed, the reports of the reads orbax abandons are dropped (as each finishes, it finds its event
  loop closed; as each is collected, it raises with a traceback of some 60 lines); anything else is still reported."""
  reported = []
  monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(_described(unraisable)))
  native.quiet_abandoned_reads()
  for read in (_read_array_index_and_device_put, _another_coroutine):
    coroutine = read()
    coroutine.send(None)
    # Closed while suspended, it raises as orbax's does: Python reports that through sys.unraisablehook.
    del coroutine
    gc.collect()
  # What TensorStore reports, through the same hook, when a read hands its result to a closed loop.
  loop = asyncio.new_event_loop()
  loop.close()
  for hand_back in (loop.call_soon_threadsafe, _another_closed_loop):
    try:
      hand_back(print)
    except RuntimeError as error:
      sys.unraisablehook(types.SimpleNamespace(exc_value=error, exc_traceback=error.__traceback__, object=None))
  assert reported == ["_another_coroutine", "_another_closed_loop"]


def test_the_abandoned_reads_that_asyncio_reports_when_collected_are_not_reported(caplog):
  """A failed read whose task, or the future gathering it, nobody awaits any more: asyncio logs "exception was never
  retrieved" with the read's 60-line error as each is collected. Those are dropped; other such reports still go out."""
  native.quiet_abandoned_reads()

  async def _read_array_index_and_device_put():  # named as orbax's, failing as a damaged file makes it
    try:
      raise ValueError("OUT_OF_RANGE")
    except ValueError as error:
      raise Exception("Encountered error while reading array index") from error

  async def async_deserialize():  # orbax's open of an array, whose metadata a damaged file cannot give
    raise ValueError('OUT_OF_RANGE: Error opening "zarr" driver: Error reading "params.a/.zarray"')

  async def another_coroutine():
    raise Exception("something else")

  class TensorStoreFuture:
    """An awaitable that is no coroutine (asyncio wraps it in a task of its own) and fails without a Python frame of
    its own, as TensorStore's futures do."""

    def __init__(self, message):
      self.failed = asyncio.get_running_loop().create_future()
      self.failed.set_exception(ValueError(message))

    def __await__(self):
      return self.failed.__await__()

  def tensorstore_read(message):
    return lambda: TensorStoreFuture(message)

  def failed_future(message):
    # A future that a TensorStore read's callback failed: its error has no traceback at all.
    def read():
      failed = asyncio.get_running_loop().create_future()
      failed.set_exception(ValueError(message))
      return failed

    return read

  async def abandon(read):
    # Started, left to fail, never awaited: as orbax leaves the others once one read has failed.
    task = asyncio.ensure_future(read())
    gathering = asyncio.gather(read())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert task.done() and gathering.done()

  with caplog.at_level(logging.ERROR, logger="asyncio"):
    reads = (
      _read_array_index_and_device_put,
      async_deserialize,
      tensorstore_read('OUT_OF_RANGE: Error reading "a/0"'),
      failed_future('OUT_OF_RANGE: Error opening "zarr" driver: Error reading "a/.zarray"'),
    )
    for read in (
      *reads,
      another_coroutine,
      tensorstore_read("not TensorStore's"),
      failed_future("DATA_LOSS: not a read"),
    ):
      asyncio.run(abandon(read))
      gc.collect()
  reported = sorted((record.getMessage().splitlines()[0], str(record.exc_info[1])) for record in caplog.records)
  assert reported == [
    ("Future exception was never retrieved", "DATA_LOSS: not a read"),
    ("Task exception was never retrieved", "not TensorStore's"),
    ("Task exception was never retrieved", "something else"),
    ("_GatheringFuture exception was never retrieved", "DATA_LOSS: not a read"),
    ("_GatheringFuture exception was never retrieved", "not TensorStore's"),
    ("_GatheringFuture exception was never retrieved", "something else"),
  ]


def _described(unraisable) -> str:
  if unraisable.object is not None:
    return unraisable.object.__qualname__
  return traceback.extract_tb(unraisable.exc_traceback)[-1].name  # where it was raised


def _another_closed_loop(callback):
  del callback
  raise RuntimeError("Event loop is closed")


@types.coroutine
def _suspend():
  yield


async def _read_array_index_and_device_put():
  # Named as orbax's read of one array index, which turns any exception, GeneratorExit included, into another.
  try:
    await _suspend()
  except BaseException as error:
    raise Exception("Encountered error while reading array index") from error


async def _another_coroutine():
  try:
    await _suspend()
  except BaseException as error:
    raise Exception("something else") from error


def test_ctrl_c_asks_the_loop_to_save_and_stop_and_a_second_one_stops_at_once():
  sigterm_handler = signal.getsignal(signal.SIGTERM)  # xclip_jax.main's, outside the training steps
  sigint_handler = signal.getsignal(signal.SIGINT)  # SIG_IGN where a shell started pytest in the background
  preemption = checkpoints.Preemption(first_step=0)
  try:
    assert not preemption.requested(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.requested(2) and preemption.received == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    preemption.restore_handler()
  assert signal.getsignal(signal.SIGINT) is sigint_handler
  assert signal.getsignal(signal.SIGTERM) is sigterm_handler
