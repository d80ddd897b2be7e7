"""sparkjax.cli: the huge-pages environment and the re-exec that applies it."""

import os
import platform
import subprocess
import sys

import pytest

from sparkjax import cli


def _glibc_with_tunable() -> bool:
  lib, version = platform.libc_ver()
  return sys.platform == "linux" and lib == "glibc" and tuple(int(x) for x in version.split(".")[:2]) >= (2, 35)


def test_huge_pages_env_adds_the_tunable_once_and_keeps_others():
  if not _glibc_with_tunable():
    assert cli.huge_pages_env({}) is None
    return
  assert cli.huge_pages_env({})["GLIBC_TUNABLES"] == cli.HUGE_PAGES_TUNABLE
  env = cli.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1", "X": "1"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=1:" + cli.HUGE_PAGES_TUNABLE and env["X"] == "1"
  assert cli.huge_pages_env({"GLIBC_TUNABLES": cli.HUGE_PAGES_TUNABLE}) is None  # no second re-exec
  assert cli.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None  # the user's own choice stands
  assert cli.huge_pages_env({"SPARKJAX_HUGE_PAGES": "0"}) is None


@pytest.mark.skipif(not _glibc_with_tunable(), reason="glibc >= 2.35 on Linux only")
def test_reexec_restarts_the_program_with_the_tunable_and_its_arguments():
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  code = ("import sys; from sparkjax import cli; print('start', flush=True); cli.reexec_with_huge_pages(); "
          "import os; print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
  out = subprocess.run([sys.executable, "-c", code, "a", "--b=1"], env=env, capture_output=True, text=True,
                       timeout=60, check=True).stdout.split("\n")
  assert out[:3] == ["start", "start", f"{cli.HUGE_PAGES_TUNABLE} ['a', '--b=1']"], out
  env["SPARKJAX_HUGE_PAGES"] = "0"
  out = subprocess.run([sys.executable, "-c", code.replace("os.environ['GLIBC_TUNABLES']", "'none'")], env=env,
                       capture_output=True, text=True, timeout=60, check=True).stdout.split("\n")
  assert out[:2] == ["start", "none []"], out
