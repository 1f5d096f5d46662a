"""Inference with frames split over `time`, alone and with FSDP, gives one device's results (the checks run in
sharded_inference_check.py, in a process with 8 forced CPU devices)."""

import pytest

from tests.fixtures import forced_devices


@pytest.fixture(scope="module")
def check_output() -> str:
  return forced_devices.run_check("tests.parallel.sharded_inference_check")


def _assert_passed(output: str, check: str):
  lines = [line for line in output.split("\n") if line.startswith(("PASS ", "FAIL "))]
  assert f"PASS {check}" in lines, output[-5000:]


def test_load_pretrained_on_a_mesh_gives_one_devices_logits(check_output):
  # load_pretrained(..., mesh=) with time=2 and with time=2, fsdp=2: parameters laid out by the rules, logits equal.
  _assert_passed(check_output, "load_pretrained_on_mesh")


def test_evaluation_step_on_a_mesh_ranks_classes_as_one_device(check_output):
  # evaluate.make_eval_step as the trainer builds it, with time=2 and with time=2, fsdp=2: the top-5 classes of the
  # softmax averaged over 3 views equal those computed view by view on one device.
  _assert_passed(check_output, "eval_step")
