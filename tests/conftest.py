"""Shared test fixtures: where the reference material lives."""

import pathlib

import pytest

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
