"""The project installs as a package (`pip install .`) that works outside the repository, data files included."""

import os
import pathlib
import shutil
import subprocess
import venv

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_installed_package_tokenizes_from_another_directory(tmp_path):
  env_dir = tmp_path / "venv"
  # The system site-packages provide the (large) dependencies; the install itself is what is tested.
  venv.create(env_dir, system_site_packages=True, with_pip=True)
  python = env_dir / "bin" / "python"
  # Built from a copy, so that the build leaves nothing (build/, *.egg-info) in the checkout.
  source = tmp_path / "source"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "__pycache__", "build", "*.egg-info", "workdir*"))
  subprocess.run(
    [
      str(python),
      "-m",
      "pip",
      "install",
      "-q",
      "--no-deps",
      "--no-build-isolation",
      "--disable-pip-version-check",
      ".",
    ],
    cwd=source,
    check=True,
  )
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
  script = "import xclip_jax, input_pipeline; print(xclip_jax.__file__); print(xclip_jax.tokenize('a')[0, :3].tolist())"
  result = subprocess.run(
    [str(python), "-c", script], cwd=elsewhere, env=env, check=True, capture_output=True, text=True
  )
  module_file, ids = result.stdout.strip().splitlines()[-2:]
  assert pathlib.Path(module_file).is_relative_to(env_dir), module_file  # the installed copy, not the checkout
  assert ids == "[49406, 320, 49407]"  # start, 'a', end: the bundled BPE vocabulary was installed
  for script_name in ("xclip-classify", "xclip-convert", "xclip-build-tfds"):
    help_text = subprocess.run(
      [str(env_dir / "bin" / script_name), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
    ).stdout
    assert "USAGE" in help_text or "flags" in help_text, (script_name, help_text)
