"""tests/conftest.py and .ci/run: in CI a test that needs ../shared cannot pass by being skipped.

Each case runs pytest in a subprocess on a tiny test file whose conftest takes tests/conftest.py's fixtures and hooks,
with ../shared pointed at a temporary folder that exists or not.
"""

import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFTEST = """
import pathlib

from tests import conftest as suite

suite.SHARED = pathlib.Path({shared!r})
suite.GOLDEN, suite.LABELS = suite.SHARED / "golden", suite.SHARED / "labels"
from tests.conftest import *  # noqa: F403
"""
TESTS = """
import pytest


@pytest.fixture
def train_tiny(golden_dir):
  pytest.skip("reference training steps not found")  # as tests/train/test_train_golden.py does


def test_golden(golden_dir):
  pass


def test_labels(labels_dir):
  pass


def test_train_steps(train_tiny):
  pass


def test_elsewhere():
  pytest.skip("a reason of its own")
"""


def _run(tmp_path, shared_exists: bool, ci: str | None) -> tuple[dict[str, str], str]:
  """Runs the tiny test file with ../shared holding golden/xclip_tiny only, or absent; returns each test's outcome
  and the output."""
  shared = tmp_path / "shared"
  if shared_exists:
    (shared / "golden" / "xclip_tiny").mkdir(parents=True)
  (tmp_path / "conftest.py").write_text(CONFTEST.format(shared=str(shared)))
  (tmp_path / "test_tiny.py").write_text(TESTS)
  env = {key: value for key, value in os.environ.items() if key != "CI"}
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  if ci is not None:
    env["CI"] = ci
  command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA", "test_tiny.py"]
  result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  outcomes = dict(re.findall(r"^test_tiny\.py::test_(\w+) (PASSED|FAILED|ERROR|SKIPPED)", result.stdout, re.M))
  return outcomes, result.stdout


def test_in_ci_a_skipped_test_of_the_reference_material_fails_where_shared_exists(tmp_path):
  outcomes, output = _run(tmp_path, shared_exists=True, ci="true")
  assert outcomes == {"golden": "PASSED", "labels": "ERROR", "train_steps": "ERROR", "elsewhere": "SKIPPED"}, output
  assert "skipped in CI although" in output and "label lists not found at" in output, output
  assert "reference training steps not found" in output, output


def test_outside_ci_a_test_of_the_reference_material_is_skipped(tmp_path):
  outcomes, output = _run(tmp_path, shared_exists=True, ci=None)
  assert outcomes == {"golden": "PASSED", "labels": "SKIPPED", "train_steps": "SKIPPED", "elsewhere": "SKIPPED"}


def test_in_ci_without_shared_the_tests_of_the_reference_material_are_skipped_saying_why(tmp_path):
  outcomes, output = _run(tmp_path, shared_exists=False, ci="true")
  assert outcomes == {"golden": "SKIPPED", "labels": "SKIPPED", "train_steps": "SKIPPED", "elsewhere": "SKIPPED"}
  assert output.count("(../shared is absent)") == 3, output


def test_ci_run_sets_ci_for_the_tests(tmp_path):
  # .ci/run with a stand-in python3 that logs each command and the CI it sees, on a machine that does not set CI.
  log = tmp_path / "calls.log"
  fake = tmp_path / "bin" / "python3"
  fake.parent.mkdir()
  fake.write_text(f'#!/bin/sh\necho "CI=${{CI-unset}} $*" >> {log}\n')
  fake.chmod(0o755)
  env = {key: value for key, value in os.environ.items() if key != "CI"}
  env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
  subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, check=True, capture_output=True, timeout=60)
  (pytest_call,) = [line for line in log.read_text().splitlines() if " -m pytest " in line]
  assert pytest_call.startswith("CI=true "), pytest_call
