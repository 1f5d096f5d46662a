"""The golden forward pass and train step hold when XLA optimises, as programs run outside the tests.

The suite compiles without XLA's costly optimisations (tests/conftest.py, FAST_COMPILE), which compute the same thing
in principle; an optimisation that changes the numbers (a fusion that reorders a reduction, a rewrite of a division)
would only show in an optimised compile. So the tests against the official outputs (../shared/golden/xclip_tiny and
train_tiny) run once more, with the same tolerances, in one subprocess whose XLA_FLAGS leave out the conftest's flags
(tests/model/optimised_compile_check.py runs them).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests import conftest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_golden_forward_and_train_step_match_the_official_ones_when_xla_optimises(golden_dir, tmp_path):
  if not (golden_dir.parent / "train_tiny").is_dir():
    pytest.skip(f"reference training steps not found at {golden_dir.parent / 'train_tiny'}")
  env = dict(os.environ, XCLIP_JAX_TEST_OPTIMISED="1")
  env["XLA_FLAGS"] = " ".join(
    flag for flag in env.get("XLA_FLAGS", "").split() if flag not in conftest.FAST_COMPILE.split()
  )
  output = tmp_path / "outcomes.json"
  command = [sys.executable, "-m", "tests.model.optimised_compile_check", str(output)]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  found = json.loads(output.read_text())
  # Compiled as XLA optimises: none of the conftest's flags reached XLA.
  assert not set(found["xla_flags"].split()) & set(conftest.FAST_COMPILE.split()), found["xla_flags"]
  assert "optimization_level" not in found["xla_flags"] and "disable_expensive_passes" not in found["xla_flags"]
  # Every selected test ran and passed (none skipped), from both files.
  outcomes = found["outcomes"]
  assert {nodeid.split("::")[0] for nodeid in outcomes} == {
    "tests/model/test_model_parity.py",
    "tests/train/test_train_golden.py",
  }, outcomes
  assert len(outcomes) >= 9 and set(outcomes.values()) == {"passed"}, outcomes
