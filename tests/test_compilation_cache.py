"""The persistent compilation cache: where it lives, how it is turned off, and a second run that compiles nothing."""

import os
import pathlib
import subprocess
import sys

import pytest

from tests.fixtures import tiny
from tests.fixtures import video_fixtures
from xclip_jax import compilation_cache
from xclip_jax import console

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def no_cache_env(monkeypatch):
  monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
  return monkeypatch


def test_folder_is_in_the_xdg_cache_home(no_cache_env, tmp_path):
  no_cache_env.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation_cache.folder() == tmp_path / "xclip_jax" / "jax"
  # The XDG spec ignores a relative XDG_CACHE_HOME.
  no_cache_env.setenv("XDG_CACHE_HOME", "relative")
  no_cache_env.setenv("HOME", str(tmp_path))
  assert compilation_cache.folder() == tmp_path / ".cache" / "xclip_jax" / "jax"


def test_environment_variable_and_argument_move_or_turn_off_the_cache(no_cache_env, tmp_path):
  no_cache_env.setenv(compilation_cache.ENV_VAR, str(tmp_path / "env"))
  assert compilation_cache.folder() == tmp_path / "env"
  assert compilation_cache.folder(tmp_path / "flag") == tmp_path / "flag"
  assert compilation_cache.folder("none") is None
  for off in ("", "none", "None"):
    no_cache_env.setenv(compilation_cache.ENV_VAR, off)
    assert compilation_cache.folder() is None


def run_classify(args, cache_dir):
  # JAX logs every persistent cache hit and miss with these two settings.
  env = {**os.environ, "JAX_LOG_COMPILES": "1", "JAX_EXPLAIN_CACHE_MISSES": "1", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "xclip_jax.classify", f"--compilation_cache_dir={cache_dir}", *map(str, args)]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_second_classify_run_loads_every_program_from_the_cache(tmp_path):
  checkpoint = tiny.model().save(tmp_path / "checkpoint")
  video = video_fixtures.write_indexed_video(tmp_path / "clip.mp4", num_frames=20)
  (tmp_path / "broken.mp4").write_bytes(b"not a video")
  args = [f"--checkpoint={checkpoint}", "--classes=juggling,knitting,surfing water", video, tmp_path / "broken.mp4"]
  cache = tmp_path / "cache"

  first = run_classify(args, cache)
  # The unreadable video is named on stderr and fails the run, but the other one is classified.
  assert first.returncode == console.EXIT_ERROR, first.stderr
  assert f"{tmp_path / 'broken.mp4'}: cannot classify: not a readable video" in first.stderr
  assert first.stdout.splitlines()[0] == str(video) and len(first.stdout.splitlines()) == 4
  assert "PERSISTENT COMPILATION CACHE MISS for 'jit_apply'" in first.stderr
  entries = sorted(path.name for path in cache.iterdir())
  assert any(name.startswith("jit_apply-") for name in entries)

  second = run_classify(args, cache)
  assert second.returncode == console.EXIT_ERROR and second.stdout == first.stdout
  assert "Persistent compilation cache hit for 'jit_apply'" in second.stderr
  assert "PERSISTENT COMPILATION CACHE MISS" not in second.stderr
  assert sorted(path.name for path in cache.iterdir()) == entries
