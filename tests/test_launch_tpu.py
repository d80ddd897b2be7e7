"""launch_tpu/: the dry-run command sequence, input errors, the worker-side scripts run locally, and shellcheck.

No test reaches Google Cloud: a fake `gcloud` comes first on PATH, and the `env` fixture fails any test that made it
run. The worker-side scripts (launch_tpu/remote/) are run here as the exact --command text a dry run prints, with
HOME in a temporary directory and fakes for python, sudo and the venv.
"""

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch_tpu"
TPU = ["--name", "sparkjax-v5p", "--zone", "us-east5-a"]
CONFIG_7B = "configs/qwen25_math_7b_grpo.py"
# Settings the scripts read from the environment: cleared so that the caller's shell cannot change a test.
SETTINGS = ("TPU_NAME", "ZONE", "TPU_TYPE", "PROJECT", "RUNTIME_VERSION", "CAPACITY", "REPO_URL", "BRANCH", "PYTHON",
            "CONFIG", "RUN_NAME", "BUCKET", "WORKDIR", "WORKER", "DRY_RUN")


def _executable(path: Path, text: str) -> Path:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


@pytest.fixture
def env(tmp_path):
  """Environment whose `gcloud` only leaves a marker; the test fails if the marker exists at its end."""
  fake_bin = tmp_path / "fake_gcloud_bin"
  fake_bin.mkdir()
  marker = tmp_path / "gcloud_was_called"
  _executable(fake_bin / "gcloud", f'#!/bin/sh\necho "$*" >> {shlex.quote(str(marker))}\nexit 97\n')
  env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
  env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
  yield env
  assert not marker.exists(), f"gcloud was run: {marker.read_text()}"


def launch(script, *args, env, check=True):
  proc = subprocess.run([str(LAUNCH / script), *args], env=env, capture_output=True, text=True, timeout=60)
  if check:
    assert proc.returncode == 0, f"{script} {args} exited {proc.returncode}: {proc.stderr}"
  return proc


def commands(stdout: str) -> list[list[str]]:
  """The commands a dry run printed, one per shell command line (a quoted argument may span lines)."""
  out, pending = [], ""
  for line in stdout.splitlines(keepends=True):
    pending += line
    try:
      argv = shlex.split(pending)
    except ValueError:  # an open quote: the command goes on on the next line
      continue
    if argv:
      out.append(argv)
    pending = ""
  assert not pending.strip(), f"unterminated quote in dry-run output: {pending!r}"
  return out


def only_command(stdout: str) -> list[str]:
  cmds = commands(stdout)
  assert len(cmds) == 1, cmds
  return cmds[0]


def remote(argv: list[str]) -> str:
  """The script a `gcloud ... tpu-vm ssh ... --command SCRIPT` sends to the workers."""
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  return argv[argv.index("--command") + 1]


def assert_valid_bash(script: str):
  proc = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
  assert proc.returncode == 0, f"{proc.stderr}\n{script}"


# ------------------------------------------------------------------------------------------------ dry-run sequence


def test_dry_run_of_the_v5p_64_sequence(env):
  """create -> setup -> run (7B config + an override) -> logs -> delete, printed in order, nothing run."""
  steps = [
      launch("create.sh", *TPU, "--type", "v5p-64", "--spot", "--dry-run", env=env),
      launch("setup.sh", *TPU, "--repo", "https://github.com/acme/sparkjax.git", "--branch", "main", "--dry-run",
             env=env),
      launch("run.sh", *TPU, "--config", CONFIG_7B, "--run-name", "q7b", "--bucket", "acme-runs", "--dry-run", "--",
             "--config.rl.kl_coef=0", env=env),
      launch("logs.sh", *TPU, "--run-name", "q7b", env={**env, "DRY_RUN": "1"}),  # the environment's form
      launch("delete.sh", *TPU, "--dry-run", env=env),
  ]
  create, setup, run, logs, delete = (only_command(p.stdout) for p in steps)
  print("\n".join(p.stdout for p in steps))  # shown with -s: the whole sequence as a user sees it

  assert [c[4] for c in (create, setup, run, logs, delete)] == ["create", "ssh", "ssh", "ssh", "delete"]
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "sparkjax-v5p", "--zone", "us-east5-a",
                    "--accelerator-type", "v5p-64", "--version", "v2-alpha-tpuv5", "--spot"]

  assert setup[5:8] == ["sparkjax-v5p", "--zone", "us-east5-a"] and "--worker=all" in setup
  script = remote(setup)
  assert script.startswith("REPO_URL=https://github.com/acme/sparkjax.git\nBRANCH=main\nPYTHON=python3.11\n")
  for piece in ("git clone", "fetch", "-m venv sparkjax_venv", 'pip install -q -e ".[tpu]"'):
    assert piece in script

  assert "--worker=all" in run
  script = remote(run)
  assert "nohup" in script and "~/sparkjax_logs/" in script
  assert "python -m sparkjax.main --config=configs/qwen25_math_7b_grpo.py --workdir=gs://acme-runs/runs/q7b" in script
  assert shlex.split(script.splitlines()[0]) == [
      "set", "--", "~/sparkjax_venv/bin/python", "-m", "sparkjax.main", f"--config={CONFIG_7B}",
      "--workdir=gs://acme-runs/runs/q7b", "--config.rl.kl_coef=0"]
  assert "logs.sh --name sparkjax-v5p --zone us-east5-a --run-name q7b" in steps[2].stderr

  assert logs[-3:] == ["--worker=0", "--command", "tail -n 200 -F ~/sparkjax_logs/q7b.log"]
  assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "sparkjax-v5p", "--zone", "us-east5-a",
                    "--quiet"]
  for argv in (setup, run, logs):
    assert_valid_bash(remote(argv))


def test_dry_run_v5e_v6e_project_and_runtime_override(env):
  v5e = only_command(launch("create.sh", *TPU, "--type=v5litepod-16", "--project", "acme", "--preemptible",
                            "--dry-run", env=env).stdout)
  assert v5e[5:] == ["sparkjax-v5p", "--zone", "us-east5-a", "--project", "acme", "--accelerator-type",
                     "v5litepod-16", "--version", "v2-alpha-tpuv5-lite", "--preemptible"]
  v6e = only_command(launch("create.sh", *TPU, "--type", "v6e-8", "--version", "v2-alpha-tpuv6e-custom", "--dry-run",
                            env=env).stdout)
  assert v6e[-4:] == ["--accelerator-type", "v6e-8", "--version", "v2-alpha-tpuv6e-custom"]


def test_up_prints_create_setup_run_in_order(env):
  proc = launch("up.sh", *TPU, "--type", "v6e-8", "--repo", "https://github.com/acme/sparkjax.git", "--config",
                "configs/arith.py:runlocal", "--run-name", "smoke", "--dry-run", "--", "--config.rl.kl_coef=0", env=env)
  create, setup, run = commands(proc.stdout)
  assert create[4] == "create" and "v6e-8" in create
  assert "git clone" in remote(setup)
  # No --bucket: the workdir is under the worker's $HOME, expanded there; the user is told it is not shared.
  assert shlex.split(remote(run).splitlines()[0])[5:] == [
      "--config=configs/arith.py:runlocal", "--workdir=$HOME/sparkjax_runs/smoke", "--config.rl.kl_coef=0"]
  assert "own disk" in proc.stderr


def test_without_dry_run_the_printed_command_is_what_runs(tmp_path, env):
  """`run` executes exactly the argv a dry run prints (here with a recording gcloud, first on PATH)."""
  record = tmp_path / "argv.json"
  recorder = tmp_path / "recording_bin"
  recorder.mkdir()
  _executable(recorder / "gcloud",
              f"#!{sys.executable}\nimport json, sys\n"
              f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
  real = {**env, "PATH": f"{recorder}{os.pathsep}{env['PATH']}"}
  args = [*TPU, "--config", "configs/arith.py:format=think", "--run-name", "r1", "--", "--config.x=it's \"$HOME\""]
  printed = only_command(launch("run.sh", "--dry-run", *args, env=env).stdout)
  launch("run.sh", *args, env=real)
  assert ["gcloud", *json.loads(record.read_text())] == printed


# ------------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("script,args,message", [
    ("create.sh", [*TPU, "--type", "v5p-64", "--bogus"], "unknown argument '--bogus'"),
    ("delete.sh", [*TPU, "--type", "v5p-64"], "unknown argument '--type'"),
    ("create.sh", ["--zone", "us-east5-a", "--type", "v5p-64"], "missing --name"),
    ("delete.sh", ["--zone", "us-east5-a"], "missing --name"),
    ("create.sh", ["--name", "a", "--type", "v5p-64"], "missing --zone"),
    ("create.sh", [*TPU, "--type", "v4-8"], "--type 'v4-8' is not supported: expected v5p-N, v5litepod-N"),
    ("create.sh", [*TPU, "--type", "v5p"], "--type 'v5p' is not supported"),
    ("create.sh", [*TPU, "--type", "v5e-16"], "v5litepod-16"),
    ("create.sh", [*TPU], "missing --type"),
    ("create.sh", [*TPU, "--type"], "flag --type needs a value"),
    ("create.sh", ["--name", "--zone", "us-east5-a"], "flag --name needs a value"),
    ("create.sh", ["--name", "My_TPU", "--zone", "us-east5-a", "--type", "v6e-8"], "--name 'My_TPU' is not a valid TPU name"),
    ("create.sh", [*TPU, "--type", "v6e-8", "--spot", "--preemptible"], "--spot and --preemptible exclude"),
    ("setup.sh", [*TPU], "missing --repo"),
    ("run.sh", [*TPU], "missing --config"),
    ("run.sh", [*TPU, "--config", "configs/arith"], "expected configs/NAME.py"),
    ("run.sh", [*TPU, "--config", "configs/arith.py", "--run-name", "a b"], "--run-name 'a b'"),
    ("logs.sh", [*TPU, "--worker", "first"], "--worker 'first'"),
    # sparkjax.main has no --dry-run: after `--` it is a misplaced one, and the run would really start.
    ("run.sh", [*TPU, "--config", "configs/arith.py", "--", "--dry-run"], "--dry-run after '--'"),
    # up.sh checks everything before it creates the TPU: nothing may be printed or run.
    ("up.sh", [*TPU, "--type", "v5p-64", "--repo", "https://x/y.git"], "missing --config"),
])
def test_bad_input_fails_before_any_command(env, script, args, message):
  proc = launch(script, *args, env=env, check=False)  # not a dry run: the fake gcloud would catch a call
  assert proc.returncode != 0
  assert message in proc.stderr and proc.stderr.startswith(f"launch_tpu/{script}: error: ")
  assert proc.stdout == ""


def test_help(env):
  proc = launch("create.sh", "--help", env=env)
  assert "usage: launch_tpu/create.sh" in proc.stdout and "v2-alpha-tpuv5-lite" in proc.stdout
  assert "shellcheck" not in proc.stdout


# ----------------------------------------------------------------------------- worker-side scripts, run locally


def _git(*args, cwd):
  subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                 capture_output=True)


def test_setup_on_a_worker_is_idempotent(tmp_path, env):
  """The setup command, run twice on a 'worker': clones, then updates to the new commit; one venv; no sudo."""
  origin, home, fakes, log = tmp_path / "origin", tmp_path / "home", tmp_path / "worker_bin", tmp_path / "calls.log"
  for d in (origin, home, fakes):
    d.mkdir()
  _git("init", "-q", "-b", "main", cwd=origin)
  (origin / "setup.py").write_text("# v1\n")
  _git("add", ".", cwd=origin)
  _git("commit", "-q", "-m", "v1", cwd=origin)
  # git is there and so is "python3.11 with venv": nothing may be installed with sudo.
  _executable(fakes / "sudo", f'#!/bin/sh\necho "sudo $*" >> {log}\nexit 1\n')
  _executable(fakes / "python3.11", f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = venv ]; then
  echo "venv $3" >> {log}
  mkdir -p "$3/bin"
  printf '#!/bin/sh\\necho "venv-python $(pwd) $*" >> {log}\\n' > "$3/bin/python"
  chmod +x "$3/bin/python"
fi
""")
  script = remote(only_command(launch("setup.sh", *TPU, "--repo", str(origin), "--dry-run", env=env).stdout))
  worker = {**env, "HOME": str(home), "PATH": f"{fakes}{os.pathsep}{env['PATH']}"}

  def setup():
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=worker, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout

  assert "installed in ~/sparkjax_venv" in setup()
  (origin / "setup.py").write_text("# v2\n")
  _git("commit", "-q", "-am", "v2", cwd=origin)
  setup()

  assert (home / "sparkjax" / "setup.py").read_text() == "# v2\n"
  calls = log.read_text().splitlines()
  assert calls == ["venv sparkjax_venv",
                   f"venv-python {home}/sparkjax -m pip install -q -e .[tpu]",
                   f"venv-python {home}/sparkjax -m pip install -q -e .[tpu]"]


def _pid_runs_sparkjax(pid: int) -> bool:
  try:
    return b"sparkjax.main" in Path(f"/proc/{pid}/cmdline").read_bytes()
  except OSError:
    return False


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists() or not shutil.which("setsid"),
                    reason="the worker-side run/stop scripts need Linux (/proc, setsid)")
def test_run_and_stop_on_a_worker(tmp_path, env):
  """The run command returns at once with the run alive in the background, arguments intact; a second run is
  refused while it lives; stop ends it."""
  home, log = tmp_path / "home", tmp_path / "home" / "sparkjax_logs" / "r1.log"
  (home / "sparkjax" / "configs").mkdir(parents=True)
  (home / "sparkjax" / "configs" / "arith.py").write_text("")
  (home / "sparkjax_venv" / "bin").mkdir(parents=True)
  _executable(home / "sparkjax_venv" / "bin" / "python",
              '#!/usr/bin/env bash\nfor a in "$@"; do echo "arg: $a"; done\nsleep 120\n')
  override = "--config.x=it's \"$HOME\""
  args = [*TPU, "--config", "configs/arith.py:runlocal", "--run-name", "r1", "--dry-run", "--", override]
  run_script = remote(only_command(launch("run.sh", *args, env=env).stdout))
  stop_script = remote(only_command(launch("stop.sh", *TPU, "--dry-run", env=env).stdout))
  worker = {**env, "HOME": str(home)}

  def on_worker(script):  # capture_output would hang here if the run kept the ssh session's streams open
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, env=worker, capture_output=True, text=True,
                          timeout=30)

  pid = None
  try:
    proc = on_worker(run_script)
    assert proc.returncode == 0, proc.stderr
    assert "started r1" in proc.stdout
    pid = int((home / "sparkjax_logs" / "r1.pid").read_text())
    for _ in range(100):
      if log.exists() and override in log.read_text():
        break
      time.sleep(0.05)
    assert log.read_text().splitlines() == [
        "arg: -m", "arg: sparkjax.main", "arg: --config=configs/arith.py:runlocal",
        f"arg: --workdir={home}/sparkjax_runs/r1", f"arg: {override}"]
    assert _pid_runs_sparkjax(pid)

    again = on_worker(run_script)
    assert again.returncode != 0 and "r1 is still running" in again.stderr

    proc = on_worker(stop_script)
    assert proc.returncode == 0 and "stopped r1" in proc.stdout, proc.stderr
    for _ in range(100):
      if not _pid_runs_sparkjax(pid):
        break
      time.sleep(0.05)
    assert not _pid_runs_sparkjax(pid)
    assert not (home / "sparkjax_logs" / "r1.pid").exists()
  finally:
    if pid is not None and _pid_runs_sparkjax(pid):
      os.killpg(pid, signal.SIGKILL)  # the process group this test started


def test_run_on_a_worker_without_the_config_says_so(tmp_path, env):
  home = tmp_path / "home"
  (home / "sparkjax").mkdir(parents=True)
  script = remote(only_command(launch("run.sh", *TPU, "--config", CONFIG_7B, "--dry-run", env=env).stdout))
  proc = subprocess.run(["bash", "-c", script], env={**env, "HOME": str(home)}, capture_output=True, text=True,
                        timeout=30)
  assert proc.returncode != 0 and f"no {CONFIG_7B} in ~/sparkjax" in proc.stderr


# ------------------------------------------------------------------------------------------------------ shellcheck


def test_shellcheck_clean():
  if not shutil.which("shellcheck"):
    pytest.skip("shellcheck is not on PATH (apt-get install shellcheck); the launch_tpu scripts were not linted")
  scripts = sorted(str(p.relative_to(ROOT)) for p in [*LAUNCH.glob("*.sh"), *LAUNCH.glob("remote/*.sh")])
  assert len(scripts) >= 10, scripts
  proc = subprocess.run(["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
