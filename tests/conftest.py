"""Shared test fixtures: where the reference material lives."""
import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
LABELS = SHARED / "labels"


@pytest.fixture(scope="session")
def golden_dir():
  path = GOLDEN / "xclip_tiny"
  if not path.is_dir():
    pytest.skip(f"reference outputs not found at {path} (../shared is absent)")
  return path


@pytest.fixture(scope="session")
def tokenizer_golden_dir():
  path = GOLDEN / "tokenizer"
  if not path.is_dir():
    pytest.skip(f"reference token ids not found at {path} (../shared is absent)")
  return path


@pytest.fixture(scope="session")
def labels_dir():
  if not LABELS.is_dir():
    pytest.skip(f"label lists not found at {LABELS} (../shared is absent)")
  return LABELS
