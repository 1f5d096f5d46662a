"""Frames split over the mesh's `time` axis: the same numbers as unsplit, and only message-sized traffic between the
devices of a video (the checks run in frame_sharding_check.py, in a process with 8 forced CPU devices)."""

import jax
import numpy as np
import pytest

from tests.fixtures import forced_devices
from xclip_jax.parallel import sharding


@pytest.fixture(scope="module")
def check_output() -> str:
  return forced_devices.run_check("tests.parallel.frame_sharding_check")


def _assert_passed(output: str, check: str):
  lines = [line for line in output.split("\n") if line.startswith(("PASS ", "FAIL "))]
  assert f"PASS {check}" in lines, output[-5000:]


def test_sharded_forward_logits_equal_unsharded(check_output):
  _assert_passed(check_output, "forward")


def test_train_step_with_frames_split_equals_one_device(check_output):
  # time=2 (with the hand-written attention and with jax.nn.dot_product_attention) and time=4 with data filling the
  # rest, and time=2 with fsdp=2, in float32: loss, gradient norm and every parameter after the step (updates within
  # 1e-3); time=2 with fsdp=2, remat and bfloat16: the parameters' update directions against float32's. Drop path on.
  _assert_passed(check_output, "train_step")


def test_only_message_sized_tensors_cross_the_time_axis(check_output):
  _assert_passed(check_output, "time_axis_collectives")


def test_time_axis_traffic_is_the_message_sized_accounting(check_output):
  # Bytes across `time` per step at most the message keys and values per block (gathered forward, and again backward
  # by the hand-written core), their gradients, frame class tokens and the prompt mean.
  _assert_passed(check_output, "traffic_is_message_sized")


def test_frames_not_divisible_by_the_time_axis_are_refused():
  mesh = sharding.make_mesh({"data": 1, "time": 1}, jax.devices()[:1])
  sharding.check_frames_divisible(8, mesh)
  fake = type("Mesh", (), {"shape": {"time": 3}})()
  with pytest.raises(ValueError, match="8 frames cannot be split over the mesh's time axis of size 3"):
    sharding.check_frames_divisible(8, fake)


def test_collective_replica_groups_in_every_printed_form():
  from xclip_jax.parallel import collectives

  hlo = "\n".join(
    [
      "ENTRY %main {",
      "  %a = f32[2,4,64]{2,1,0} all-gather(%x), replica_groups=[4,2]<=[8], dimensions={1}",
      "  %b = f32[2,4]{1,0} all-reduce(%y), replica_groups={{0,2},{1,3}}, to_apply=%add",
      "  %c = f32[8]{0} all-reduce(%z), replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, to_apply=%add",
      "  %d = f32[1,4]{1,0} all-gather(%w), replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=4], "
      "device_ids=([4,2]T(1,0)) {'axis_1'}, dimensions={1}",
      "  %e = f32[3]{0} reduce-scatter(%v), replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}",
      "}",
    ]
  )
  ops = {op.name: op for op in collectives.read(hlo)}
  assert ops["a"].groups == ((0, 1), (2, 3), (4, 5), (6, 7)) and ops["a"].nbytes == 2 * 4 * 64 * 4
  assert ops["b"].groups == ((0, 2), (1, 3))
  assert ops["c"].groups == ((0, 2, 4, 6), (1, 3, 5, 7))
  assert ops["d"].groups == ((0, 1), (2, 3), (4, 5), (6, 7))
  assert ops["e"].groups == ((0, 2, 4, 6), (1, 3, 5, 7)) and ops["e"].nbytes == 3 * 4 * 4
  mesh = type("Mesh", (), {"devices": np.zeros((4, 1, 2)), "axis_names": ("data", "fsdp", "time"), "size": 8})()
  assert collectives.crosses(ops["a"], mesh, "time") and not collectives.crosses(ops["a"], mesh, "data")
  assert collectives.crosses(ops["c"], mesh, "data") and not collectives.crosses(ops["c"], mesh, "time")


def test_collective_payloads_async_starts_loops_and_traffic_by_kind():
  from xclip_jax.parallel import collectives

  # A 2 x 2 x 2 mesh: groups [4,2]<=[8] pair devices along `time`, the last axis.
  mesh = type(
    "Mesh",
    (),
    {
      "devices": np.zeros((2, 2, 2)),
      "axis_names": ("data", "fsdp", "time"),
      "size": 8,
      "shape": {"data": 2, "fsdp": 2, "time": 2},
    },
  )()
  hlo = "\n".join(
    [
      "ENTRY %main {",
      # An async start's result tuple holds its operand, then its result: the gathered (2, 8).
      "  %s = (f32[2,4]{1,0}, f32[2,8]{1,0}) all-gather-start(%x), replica_groups=[4,2]<=[8], dimensions={1}",
      # A parameter of 16 split over all 8 devices.
      "  %q = f32[2]{0} all-reduce(%u), replica_groups=[4,2]<=[8], to_apply=%add",
      # Each device gives 2 x 3 floats to get its 3.
      "  %r = f32[3]{0} reduce-scatter(%v), replica_groups=[4,2]<=[8], dimensions={0}",
      "}",
    ]
  )
  ops = {op.name: op for op in collectives.read(hlo)}
  assert ops["s"].shapes == (("f32", (2, 8)),) and ops["s"].nbytes == 64
  params = {"w": np.zeros((2, 8)), "v": np.zeros(16)}
  assert collectives.traffic(hlo, mesh, "time", params) == {"parameters": 64 + 8, "activations": 2 * 3 * 4}
  looped = "\n".join(
    [
      "%body (p: f32[4]) -> f32[4] {",
      "  %g = f32[8]{0} all-gather(%x), replica_groups=[4,2]<=[8], dimensions={0}",
      "}",
      "ENTRY %main {",
      '  %w = f32[4]{0} while(%t), condition=%cond, body=%body, metadata={op_name="loop"}',
      "}",
    ]
  )
  (gather,) = collectives.read(looped)
  assert gather.in_loop
  with pytest.raises(ValueError, match="g crosses time inside a loop"):
    collectives.traffic(looped, mesh, "time", params)
