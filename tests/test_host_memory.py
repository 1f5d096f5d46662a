"""The training command's restart with glibc's huge-page tunable (`xclip_jax.host_memory`)."""

import os
import pathlib
import subprocess
import sys

import pytest

from xclip_jax import host_memory

REPO = pathlib.Path(__file__).resolve().parents[1]
_WITHOUT_TUNABLES = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
needs_madvise_huge_pages = pytest.mark.skipif(
  not host_memory.would_help(_WITHOUT_TUNABLES),
  reason="the restart changes nothing here: needs Linux, glibc >= 2.35 and transparent huge pages on `madvise`",
)


def _python(code: str, *args: str, environ=_WITHOUT_TUNABLES) -> list[str]:
  result = subprocess.run(
    [sys.executable, "-c", code, *args], env=environ, cwd=REPO, capture_output=True, text=True, check=True
  )
  return result.stdout.splitlines()


def test_the_tunable_comes_after_those_already_set():
  environ = {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
  assert host_memory.with_huge_pages(environ) == {
    "HOME": "/h",
    "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1",
  }
  assert host_memory.with_huge_pages({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_a_value_the_user_gave_the_tunable_is_read_as_glibc_reads_it():
  assert host_memory.tunable_value({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == "0"
  assert host_memory.tunable_value({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0"}) == "0"
  assert host_memory.tunable_value({"GLIBC_TUNABLES": "glibc.malloc.hugetlb_x=1"}) is None
  assert host_memory.tunable_value({}) is None
  assert not host_memory.would_help({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})


@needs_madvise_huge_pages
def test_the_command_starts_again_once_with_the_tunable_and_its_own_arguments():
  code = (
    "import os, sys; from xclip_jax import host_memory; print('started', flush=True); "
    "host_memory.restart_with_huge_pages(); print(os.environ['GLIBC_TUNABLES']); print(sys.argv[1:])"
  )
  environ = {**_WITHOUT_TUNABLES, "GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
  lines = _python(code, "a b", "--x=1", environ=environ)
  assert lines == ["started", "started", "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1", "['a b', '--x=1']"]


@needs_madvise_huge_pages
def test_the_user_can_turn_it_off():
  code = "import os; from xclip_jax import host_memory; host_memory.restart_with_huge_pages(); print('ran')"
  assert _python(code, environ={**_WITHOUT_TUNABLES, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == ["ran"]


@needs_madvise_huge_pages
def test_after_the_restart_a_large_block_takes_far_fewer_page_faults():
  # A 256 MiB block from malloc (as XLA's temporaries; NumPy asks for huge pages itself), written once: 65,536 faults
  # on 4 KiB pages, about 128 on 2 MiB ones.
  code = (
    "import ctypes, resource; from xclip_jax import host_memory; host_memory.restart_with_huge_pages(); "
    "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; block = libc.malloc(2**28); "
    "ctypes.memset(block, 1, 2**28); print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"
  )
  huge = int(_python(code)[-1])
  small = int(_python(code, environ={**_WITHOUT_TUNABLES, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})[-1])
  assert small >= 60_000
  assert huge < small / 20


@needs_madvise_huge_pages
def test_the_training_command_restarts_with_the_tunable():
  # runpy runs xclip_jax.main as `python -m` does; --helpshort makes absl print its flags and exit.
  code = (
    "import atexit, os, runpy, sys; atexit.register(lambda: print(os.environ.get('GLIBC_TUNABLES'))); "
    "sys.argv = ['xclip_jax.main', '--helpshort']; runpy.run_module('xclip_jax.main', run_name='__main__')"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], env=_WITHOUT_TUNABLES, cwd=REPO, capture_output=True, text=True, check=False
  )
  assert result.stdout.splitlines()[-1] == "glibc.malloc.hugetlb=1", result.stderr[-2000:]


@needs_madvise_huge_pages
def test_the_training_command_restarts_before_importing_jax():
  """What the first process imported before its restart is imported again: JAX alone took 1.7 s of CPU."""
  code = (
    "import os, runpy, sys; execve = os.execve; "
    "os.execve = lambda *args: (print('jax' in sys.modules, flush=True), execve(*args)); "
    "sys.argv = ['xclip_jax.main', '--helpshort']; runpy.run_module('xclip_jax.main', run_name='__main__')"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], env=_WITHOUT_TUNABLES, cwd=REPO, capture_output=True, text=True, check=False
  )
  assert result.stdout.splitlines()[0] == "False", result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize("version, helps", [((2, 34), False), ((2, 35), True), ((3, 0), True)])
def test_the_tunable_needs_glibc_2_35(monkeypatch, version, helps):
  """glibc.malloc.hugetlb came with glibc 2.35; an older glibc ignores it, and a restart would change nothing."""
  monkeypatch.setattr(host_memory.sys, "platform", "linux")
  monkeypatch.setattr(host_memory, "huge_page_mode", lambda: "madvise")
  monkeypatch.setattr(host_memory, "glibc_version", lambda: version)
  assert host_memory.would_help(_WITHOUT_TUNABLES) == helps
