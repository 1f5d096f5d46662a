"""Check scripts that need 8 CPU devices, run in a fresh process: JAX fixes the device count when it starts."""

import os
import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parent


def run_check(script: str) -> str:
  """Runs tests/`script` with 8 forced CPU devices; its stdout, once it has exited with status 0."""
  env = {
    **os.environ,
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
    "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
  }
  result = subprocess.run(
    [sys.executable, str(TESTS / script)], capture_output=True, text=True, cwd=TESTS.parent, env=env
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result.stdout
