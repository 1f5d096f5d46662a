"""Shared test fixtures: where the reference material lives; how the tests compile.

Tests compare results, they do not time them, so XLA compiles without LLVM's costly optimisations (about half the
compile time of a tiny model; the programs compute the same thing). With XCLIP_JAX_TEST_OPTIMISED=1 a run compiles
with XLA's default optimisation instead: tests/test_optimised_compile.py runs the golden tests so once more. All tests
of a run, their subprocesses and both xdist workers share one persistent compilation cache, so a program that several
tests build compiles once (XLA_FLAGS are part of its keys). The test model and other helpers are in tests/fixtures
(tiny.py: the one tiny X-CLIP).

The reference material is in ../shared; a test that needs it is skipped, saying so, where ../shared is absent. In CI
(the environment variable CI set to true, as CI services and .ci/run set it), a test that needs the reference material
and is skipped although ../shared exists fails instead: CI must not pass with the golden data missing.
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
OPTIMISED = os.environ.get("XCLIP_JAX_TEST_OPTIMISED") == "1"
# Before anything imports jax. xdist's workers and subprocesses inherit these from the process that starts them.
_other_flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if flag not in FAST_COMPILE.split()]
os.environ["XLA_FLAGS"] = " ".join(_other_flags if OPTIMISED else [*_other_flags, *FAST_COMPILE.split()])
if "XCLIP_JAX_TEST_SESSION_CACHE" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="xclip_jax_test_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["XCLIP_JAX_TEST_SESSION_CACHE"] = _cache
  # Subprocesses (main, classify) read it from here, unless a test gives them another.
  os.environ["XCLIP_JAX_CACHE_DIR"] = _cache

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
LABELS = SHARED / "labels"


# The fixtures of the reference material: a test that asks for one needs ../shared.
SHARED_FIXTURES = frozenset({"golden_dir", "tokenizer_golden_dir", "labels_dir"})


def _shared(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_dir():
    pytest.skip(f"{what} not found at {path}" + ("" if SHARED.is_dir() else " (../shared is absent)"))
  return path


def _in_ci() -> bool:
  return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  """In CI, where ../shared exists, a skipped test that needs the reference material fails, saying why."""
  report = yield
  if (
    report.skipped
    and not hasattr(report, "wasxfail")
    and SHARED_FIXTURES & set(getattr(item, "fixturenames", ()))
    and _in_ci()
    and SHARED.is_dir()
  ):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped in CI although {SHARED} exists (incomplete reference material?): {reason}"
  return report


@pytest.fixture(scope="session")
def golden_dir():
  return _shared(GOLDEN / "xclip_tiny", "reference outputs")


@pytest.fixture(scope="session")
def tokenizer_golden_dir():
  return _shared(GOLDEN / "tokenizer", "reference token ids")


@pytest.fixture(scope="session")
def labels_dir():
  return _shared(LABELS, "label lists")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache():
  # Only where this process uses JAX: test modules import it when collected, before this runs. Static tests
  # (test_layout) import nothing of the project; subprocesses find the cache through XCLIP_JAX_CACHE_DIR either way.
  if "jax" not in sys.modules:
    return
  # Imported here: it imports jax, which must see XLA_FLAGS as set above.
  from xclip_jax import compilation_cache as cache

  cache.enable(os.environ["XCLIP_JAX_TEST_SESSION_CACHE"])
