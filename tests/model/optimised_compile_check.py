"""Run by tests/test_optimised_compile.py with XCLIP_JAX_TEST_OPTIMISED=1: the golden tests, compiled as XLA optimises.

`python -m tests.model.optimised_compile_check OUTPUT.json` runs the forward parity tests of test_model_parity.py and
the golden train step tests of test_train_golden.py in this process, with their own fixtures and tolerances, and
writes to OUTPUT.json the XLA_FLAGS they ran under (tests/conftest.py sets them before jax is imported) and each
test's outcome, so that the calling test can tell a pass from a skip and an optimised compile from an unoptimised one.
"""

import json
import os
import pathlib
import sys

import pytest

FILES = ["tests/model/test_model_parity.py", "tests/train/test_train_golden.py"]
# The tests against the official outputs: the forward pass and the five train steps.
SELECTION = "match_official or test_train_golden"


class _Outcomes:
  """Each test's outcome: its first phase that did not pass, else the outcome of its call."""

  def __init__(self):
    self.outcomes = {}

  def pytest_runtest_logreport(self, report):
    if (report.outcome != "passed" or report.when == "call") and self.outcomes.get(report.nodeid) in (None, "passed"):
      self.outcomes[report.nodeid] = report.outcome


def main(output: str) -> int:
  if os.environ.get("XCLIP_JAX_TEST_OPTIMISED") != "1":
    raise SystemExit("run with XCLIP_JAX_TEST_OPTIMISED=1")
  recorder = _Outcomes()
  exit_code = pytest.main(["-q", "-p", "no:cacheprovider", "-k", SELECTION, *FILES], plugins=[recorder])
  result = {"exit_code": int(exit_code), "xla_flags": os.environ.get("XLA_FLAGS", ""), "outcomes": recorder.outcomes}
  pathlib.Path(output).write_text(json.dumps(result, indent=1) + "\n")
  return int(exit_code)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1]))
