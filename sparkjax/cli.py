"""What every command-line program of sparkjax shares: a quiet start, user errors as one line with exit code 2,
progress that suits a terminal and a log file alike, and checks of output paths before any work.

Import this module before jax or transformers (it sets environment variables they read at import time).

User errors are the exceptions sparkjax raises for bad input: ValueError (config, data, model files), the OSError
family (missing, unreadable or unwritable files and directories) and FloatingPointError (a non-finite loss). Each
ends the program with one line `<prog>: error: <message>` on stderr and exit code 2; set SPARKJAX_TRACEBACK=1 to get
the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

# transformers announces at import that PyTorch is absent; sparkjax never needs it, so the line is only noise.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

USER_ERRORS = (ValueError, OSError, FloatingPointError)
EXIT_USER_ERROR = 2

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_pages_env(environ=None) -> dict | None:
  """The environment with glibc's malloc told to back its large blocks with transparent huge pages
  (GLIBC_TUNABLES += glibc.malloc.hugetlb=1), or None when there is nothing to change: not Linux with glibc >= 2.35
  (older ones lack the tunable), the tunable already set, or SPARKJAX_HUGE_PAGES=0.

  Why: XLA:CPU takes each jitted call's temporaries (hundreds of MB in a training step) from malloc, above glibc's
  largest mmap threshold (32 MiB), so every call maps fresh 4 KiB pages and faults on each one. A discriminative
  PRM step of the world (256 rows of 59 tokens) faulted ~65,600 times per call: 0.290 s -> 0.214 s per step with the
  tunable, ~720 faults (benchmarks/huge_pages.py; one run, AMD EPYC, figures in benchmarks/README.md).
  """
  import platform

  env = dict(os.environ if environ is None else environ)
  if sys.platform != "linux" or env.get("SPARKJAX_HUGE_PAGES") == "0":
    return None
  lib, version = platform.libc_ver()
  try:
    major, minor = (int(x) for x in version.split(".")[:2])
  except ValueError:
    return None
  if lib != "glibc" or (major, minor) < (2, 35):
    return None
  tunables = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in tunables:
    return None
  env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
  return env


def reexec_with_huge_pages() -> None:
  """Starts this program again, same interpreter and arguments, under `huge_pages_env` when it changes anything
  (glibc reads its tunables only at process start). Call it first thing in a `__main__`, before jax is imported;
  it returns only when nothing needs to change."""
  env = huge_pages_env()
  if env is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def quiet_logs() -> None:
  """Library INFO chatter (orbax, absl, jax backend probing) off; on a machine with no TPU attached, an installed
  libtpu (the plan tool's) makes jax warn that it cannot start a TPU backend: that warning is silenced too."""
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  if not (glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")):
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)


def one_line(e: BaseException) -> str:
  """The exception's message on one line (multi-line library messages joined)."""
  msg = " ".join(str(e).split())
  if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
    msg = f"{e.filename}: {msg}"
  return msg or type(e).__name__


def run(prog: str, fn: Callable[[], int | None]) -> int:
  """Runs `fn()`; a user error becomes `prog: error: ...` on stderr and exit code 2 (see the module docstring)."""
  try:
    return fn() or 0
  except USER_ERRORS as e:
    if os.environ.get("SPARKJAX_TRACEBACK"):
      raise
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
  """Makes sure `path` is, or can be created as, a writable directory; raises a one-line OSError/ValueError naming
  `what` (e.g. '--out') otherwise. Creates the directory (and its parents)."""
  if not str(path).strip():
    raise ValueError(f"{what} is empty: give a directory path")
  p = Path(path).expanduser()
  for parent in [p, *p.parents]:
    if parent.exists():
      if not parent.is_dir():
        raise NotADirectoryError(f"{what}={path}: {parent} is a file, not a directory")
      break
  try:
    p.mkdir(parents=True, exist_ok=True)
    probe = p / f".sparkjax-write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise OSError(f"{what}={path}: cannot write there ({e.strerror or e})") from None
  return p


def _hms(seconds: float) -> str:
  s = int(round(seconds))
  return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
  """A progress bar on a terminal (tqdm); plain lines at most every `every_s` seconds when stderr is a log file, so a
  redirected log holds readable progress instead of carriage-return updates. Iterate over it; `set_postfix(**kw)`
  as tqdm."""

  def __init__(self, iterable: Iterable, *, total: int | None = None, initial: int = 0, desc: str = "",
               disable: bool = False, every_s: float = 30.0, unit: str = "it"):
    self._it, self.total, self.n, self.desc, self.disable = iterable, total, initial, desc, disable
    self.every_s, self.unit = every_s, unit
    self._postfix: dict = {}
    self._bar = None
    if not disable and sys.stderr.isatty():
      from tqdm import tqdm

      self._bar = tqdm(iterable, total=total, initial=initial, desc=desc, file=sys.stderr, unit=unit)

  def __iter__(self):
    if self._bar is not None:
      yield from self._bar
      return
    start = last = time.time()
    done0 = self.n
    for x in self._it:
      yield x
      self.n += 1
      now = time.time()
      if not self.disable and (now - last >= self.every_s or self.n == self.total):
        last = now
        rate = (self.n - done0) / max(now - start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        # Slow loops (minutes per iteration) read as time per item; "0.00 it/s" says nothing.
        speed = f"{rate:.2f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}"
        eta = f", eta {_hms((self.total - self.n) / rate)}" if self.total and self.n < self.total else ""
        post = "".join(f", {k}={v}" for k, v in self._postfix.items())
        print(f"{self.desc}: {self.n}{of} {self.unit} ({speed}, elapsed {_hms(now - start)}{eta}{post})",
              file=sys.stderr, flush=True)

  def set_postfix(self, **kw):
    self._postfix = kw
    if self._bar is not None:
      self._bar.set_postfix(**kw)
