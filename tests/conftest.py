"""Shared test fixtures: where the reference material lives; how the tests compile.

Tests compare results, they do not time them, so XLA compiles without LLVM's costly optimisations (about half the
compile time of a tiny model; the programs compute the same thing). All tests of a run, their subprocesses and both
xdist workers share one persistent compilation cache, so a program that several tests build compiles once. The test
model and other helpers are in tests/fixtures (tiny.py: the one tiny X-CLIP).
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# Before anything imports jax. xdist's workers inherit these from the process that starts them.
if FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
if "XCLIP_JAX_TEST_SESSION_CACHE" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="xclip_jax_test_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["XCLIP_JAX_TEST_SESSION_CACHE"] = _cache
  # Subprocesses (main, classify) read it from here, unless a test gives them another.
  os.environ["XCLIP_JAX_CACHE_DIR"] = _cache

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
LABELS = SHARED / "labels"


def _shared(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.is_dir():
    pytest.skip(f"{what} not found at {path} (../shared is absent)")
  return path


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
