"""The project installs as a package (`pip install .`, built in isolation with the backend pinned in pyproject) that
works outside the repository: every module imports, the data files are there, the console scripts run.

The install goes into a fresh virtual environment whose pip and setuptools are Python's stock ones (ensurepip), so
the build cannot lean on what the machine happens to have. The dependencies (large) are the running interpreter's,
made visible to that environment by a .pth file; the checkout itself is not on its path.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import venv

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("xclip-classify", "xclip-convert", "xclip-build-tfds", "xclip-export")
# Run in the environment: imports every module of the installed packages (walked with pkgutil), and reports each
# module's file, or the traceback of its import.
IMPORT_ALL = """
import importlib, json, pkgutil, sys, traceback

def refuse(name):
  raise ImportError(f"cannot import the package {name}")

files, failures = {}, {}
for top in ("xclip_jax", "input_pipeline"):
  package = importlib.import_module(top)
  names = [top, *(m.name for m in pkgutil.walk_packages(package.__path__, top + ".", onerror=refuse))]
  for name in names:
    try:
      files[name] = importlib.import_module(name).__file__
    except Exception:
      failures[name] = traceback.format_exc()
print(json.dumps({"files": files, "failures": failures}))
"""


class Installed:
  def __init__(self, env_dir: pathlib.Path, elsewhere: pathlib.Path):
    self.env_dir, self.elsewhere = env_dir, elsewhere
    # Without PYTHONPATH, from a folder of its own: nothing of the checkout is importable.
    self.env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

  def run(self, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
      [str(self.env_dir / "bin" / command[0]), *command[1:]],
      cwd=self.elsewhere,
      env=self.env,
      capture_output=True,
      text=True,
      timeout=600,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
  root = tmp_path_factory.mktemp("install")
  env_dir = root / "venv"
  venv.create(env_dir, with_pip=True)
  # The running interpreter's packages (the dependencies), after the environment's own site-packages: the entries of
  # sys.path that the environment lacks (not the standard library, which it has), less the checkout (pytest adds it).
  python = str(env_dir / "bin" / "python")
  query = "import json, sys, sysconfig; print(json.dumps([sysconfig.get_paths()['purelib'], sys.path]))"
  site_packages, env_path = json.loads(subprocess.run([python, "-c", query], capture_output=True, check=True).stdout)
  dependencies = [
    p
    for p in dict.fromkeys(sys.path)
    if p and os.path.isdir(p) and p not in env_path and pathlib.Path(p).resolve() != REPO
  ]
  (pathlib.Path(site_packages) / "running_interpreter_packages.pth").write_text("".join(f"{p}\n" for p in dependencies))
  # Built from a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout.
  source = root / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "__pycache__", "build", "*.egg-info", "workdir*"))
  install = subprocess.run(
    [python, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", "."],
    cwd=source,
    capture_output=True,
    text=True,
  )
  assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  return Installed(env_dir, elsewhere)


def test_installed_package_tokenizes_from_another_directory(installed):
  script = "import xclip_jax; print(xclip_jax.__file__); print(xclip_jax.tokenize('a')[0, :3].tolist())"
  result = installed.run("python", "-c", script)
  assert result.returncode == 0, result.stderr[-3000:]
  module_file, ids = result.stdout.strip().splitlines()[-2:]
  assert pathlib.Path(module_file).is_relative_to(installed.env_dir), module_file  # the installed copy
  assert ids == "[49406, 320, 49407]"  # start, 'a', end: the bundled BPE vocabulary was installed


def test_every_installed_module_imports_from_the_installed_copy(installed):
  result = installed.run("python", "-c", IMPORT_ALL)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert not report["failures"], "\n".join(f"{name}:\n{error}" for name, error in report["failures"].items())
  # Every module of the checkout's packages, each from the installed copy.
  expected = {
    ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for top in ("xclip_jax", "input_pipeline")
    for path in (REPO / top).rglob("*.py")
    if "__pycache__" not in path.parts
  }
  assert set(report["files"]) == expected
  for name, module_file in report["files"].items():
    assert pathlib.Path(module_file).is_relative_to(installed.env_dir), (name, module_file)


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_runs(installed, script):
  result = installed.run(script, "--help")
  assert "USAGE" in result.stdout or "flags" in result.stdout, (script, result.stdout[-2000:], result.stderr[-2000:])
  assert result.returncode == 0, script  # absl's own --help ends with 1


def test_installed_package_ships_the_kinetics_600_zero_shot_splits(installed):
  script = (
    "import json; from input_pipeline import subsets; "
    "print([len(s) for s in json.loads(subsets.KINETICS600_ZERO_SHOT_SPLITS.read_text())['splits']])"
  )
  result = installed.run("python", "-c", script)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "[160, 160, 160]"
