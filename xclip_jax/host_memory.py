"""Large host allocations on transparent huge pages, for the training command (glibc's `glibc.malloc.hugetlb=1`).

On a CPU, XLA allocates the temporaries of each call of a compiled program as one block: 391 MiB for ViT-B/32's
train step at batch 2. glibc maps a block that large afresh from the system on every call, and the kernel faults it
in and zeroes it 4 KiB at a time: 105,000 page faults a step. With the tunable, glibc asks the kernel to back such
blocks with 2 MiB pages (`madvise(MADV_HUGEPAGE)`, which is what counts where the system's transparent huge page
mode is `madvise`, the usual default): 512 times fewer faults, and fewer TLB misses in the step's matrix multiplies.
On a 2-core AMD EPYC (Zen 5) the ViT-B/32 train step took 1.21-1.25 s instead of 1.31-1.37 s, and the demo trained at
430-460 clips/s instead of 360-375; the eval forward pass was unchanged.

glibc reads its tunables only when a process starts, so `restart_with_huge_pages` starts the command again in the
same process (`exec`) with the tunable added to GLIBC_TUNABLES. It leaves the process as it is where that would not
help (not Linux, glibc older than 2.35, huge pages `always` or `never`) and where GLIBC_TUNABLES already names the
tunable: `GLIBC_TUNABLES=glibc.malloc.hugetlb=0` turns it off.
"""

from collections.abc import Mapping
import contextlib
import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
_ENV_VAR = "GLIBC_TUNABLES"
_MIN_GLIBC = (2, 35)  # the first glibc with the tunable
_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, ...] | None:
  """(2, 36) for glibc 2.36; None for another C library (musl, macOS)."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else None
  except (AttributeError, OSError, ValueError):
    return None


def huge_page_mode() -> str | None:
  """The system's transparent huge page mode ('always', 'madvise', 'never': the word in brackets); None if unknown."""
  try:
    with open(_MODE_FILE, encoding="ascii") as f:
      words = f.read().split()
  except OSError:
    return None
  return next((word[1:-1] for word in words if word.startswith("[") and word.endswith("]")), None)


def tunable_value(environ: Mapping[str, str]) -> str | None:
  """The value GLIBC_TUNABLES gives the tunable (the last one, as glibc reads them); None if it does not name it."""
  values = [
    value
    for name, _, value in (item.partition("=") for item in environ.get(_ENV_VAR, "").split(":"))
    if name == TUNABLE
  ]
  return values[-1] if values else None


def would_help(environ: Mapping[str, str]) -> bool:
  """Whether restarting with the tunable changes anything: Linux with glibc 2.35 or later, huge pages on `madvise`,
  and GLIBC_TUNABLES not naming the tunable yet (a value the user chose is kept)."""
  return (
    sys.platform.startswith("linux")
    and (glibc_version() or (0,)) >= _MIN_GLIBC
    and huge_page_mode() == "madvise"
    and tunable_value(environ) is None
  )


def with_huge_pages(environ: Mapping[str, str]) -> dict[str, str]:
  """A copy of `environ` with the tunable added to GLIBC_TUNABLES, after the tunables already there."""
  tunables = [item for item in environ.get(_ENV_VAR, "").split(":") if item] + [f"{TUNABLE}=1"]
  return {**environ, _ENV_VAR: ":".join(tunables)}


def as_training_runs(environ: Mapping[str, str]) -> dict[str, str]:
  """A copy of `environ` for a process that should run as the training command does: with the tunable where it
  `would_help`."""
  return with_huge_pages(environ) if would_help(environ) else dict(environ)


def restart_with_huge_pages():
  """Starts this command again with the tunable, in this process, where it `would_help`; else returns.

  Call it first thing in a command's `__main__` module: whatever ran before runs again after the restart.
  """
  if not would_help(os.environ):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # Where it cannot start again (no interpreter path), it goes on with 4 KiB pages; `status` says so in the log.
  with contextlib.suppress(OSError):
    os.execve(sys.executable, sys.orig_argv, with_huge_pages(os.environ))


def status() -> str:
  """One line for the log: whether this process's large allocations use huge pages, and why."""
  value = tunable_value(os.environ)
  if value is not None:
    return f"{_ENV_VAR} sets {TUNABLE}={value} (1: large host allocations on 2 MiB pages)"
  mode = huge_page_mode()
  if mode == "always":
    return "transparent huge pages: always (the system puts large allocations on 2 MiB pages)"
  if would_help(os.environ):
    return f"4 KiB pages: started without {TUNABLE}=1, which would help here"
  return f"4 KiB pages (transparent huge pages: {mode or 'unknown'}, glibc: {glibc_version() or 'none'})"
