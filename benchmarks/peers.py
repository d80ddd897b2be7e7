"""sparkjax side by side with its JAX peer, Google's Tunix, and with Hugging Face `transformers` where it has the
workload: the same shapes, the same weights, the same sampling settings, one run, ratios.

  bash benchmarks/peers/setup_tunix.sh                  # once: Tunix in its own virtualenv (no torch)
  python benchmarks/peers.py                            # every workload, ~6 min on a 2-core CPU
  python benchmarks/peers.py --workloads sampler_tiny,grpo_large --reps 3 --json /tmp/peers.json

Workloads (random weights, float32 everywhere, no row can stop early):
  sampler_tiny / sampler_medium  16 prompts of 32 tokens, 64 new tokens; greedy, T = 1 sampling, and top-k 50
  grpo_small / grpo_large        one GRPO iteration: 4 prompts x 4 samples, 32 + 64 tokens, KL 0.04 against a
                                 reference (its forward pass), mu = 1, AdamW; reward = share of even token ids
  sft_world                      one SFT step of the world's model (configs/spark_prm.py) on verification rows:
                                 64 rows of 61 prompt + 93 target tokens, loss on the targets, AdamW
  verify_world                   Stage-I verification: 32 solutions x 16 verifications of 93 tokens each, T = 0.8,
                                 top_p 0.95 (Tunix has no n-samples-per-prompt: it gets each prompt 16 times)

Each side runs in its own process, one after the other (sparkjax, then Tunix in its virtualenv, then
transformers), never concurrently. Times are medians of --reps calls after untimed warm-up calls (compilation).
Training workloads run as a loop: each timed call updates the state the previous one returned.

Ceilings (as in benchmarks/sampler.py): compute = FLOP/s of a jitted float32 2048^3 matmul in JAX; memory = read
bandwidth of a jitted sum over 256 MB; both the best seen in the run. "% compute" = model FLOPs of the workload
(`bench_common.forward_flops` / `generate_flops`: what a correct implementation must compute, e.g. one prefill per
prompt) / time / compute ceiling; "% memory" = (bytes that must be read: the weights once per decode step and the
KV cache) / bandwidth / time, which only binds when the weights do not fit in the CPU caches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from bench_common import (cpu_idle, forward_flops, generate_bytes, generate_flops, matmul_flops,  # noqa: E402
                          num_cores, read_bandwidth, timed)
from sparkjax import sampling  # noqa: E402
from sparkjax.models import hf, transformer  # noqa: E402
from sparkjax.models.config import ModelConfig  # noqa: E402
from sparkjax.rl import iteration as rl  # noqa: E402
from sparkjax.train import sft  # noqa: E402
from sparkjax.train import state as state_lib  # noqa: E402

DEFAULT_TUNIX_PYTHON = Path.home() / ".cache/sparkjax/tunix_venv/bin/python"
_Q2 = dict(model_type="qwen2", qkv_bias=True, tie_embeddings=True)
MODELS = {
    # benchmarks/sampler.py's two sizes
    "tiny": ModelConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=32, **_Q2),
    "medium": ModelConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8,
                          num_kv_heads=2, head_dim=64, **_Q2),
    # the 14.7M GRPO shape: 4 layers, d 512, vocab 4096
    "grpo_large": ModelConfig(vocab_size=4096, hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8,
                              num_kv_heads=8, head_dim=64, **_Q2),
    # configs/spark_prm.py's world model (arith_rl.model_config on the small world's 68-token vocabulary)
    "world": ModelConfig(vocab_size=68, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                         num_kv_heads=1, head_dim=32, max_position_embeddings=512, **_Q2),
}
WORKLOADS = {
    "sampler_tiny": dict(kind="sampler", model="tiny", batch=16, prompt_len=32, new_tokens=64, reps=7, warmup=3),
    "sampler_medium": dict(kind="sampler", model="medium", batch=16, prompt_len=32, new_tokens=64, reps=5, warmup=3),
    "grpo_small": dict(kind="grpo", model="tiny", prompts=4, group=4, prompt_len=32, new_tokens=64, kl_coef=0.04,
                       mu=1, lr=1e-5, reps=7, warmup=2),
    "grpo_large": dict(kind="grpo", model="grpo_large", prompts=4, group=4, prompt_len=32, new_tokens=64,
                       kl_coef=0.04, mu=1, lr=1e-5, reps=5, warmup=2),
    "sft_world": dict(kind="sft", model="world", batch=64, seq_len=154, prompt_len=61, lr=1e-3, reps=7, warmup=2),
    "verify_world": dict(kind="sampler_n", model="world", batch=32, n=16, prompt_len=61, new_tokens=93,
                         temperature=0.8, top_p=0.95, reps=5, warmup=2),
}
SAMPLER_MODES = {"greedy": dict(temperature=0.0), "sample": dict(temperature=1.0), "topk": dict(temperature=1.0,
                                                                                             top_k=50)}


# ---- model FLOPs and bytes of each workload ----------------------------------------------------------------------


def workload_cost(w: dict, cfg: ModelConfig) -> tuple[float, float]:
  """(model FLOPs, bytes that must be read) of one call of workload `w`."""
  if w["kind"] in ("sampler", "sampler_n"):
    n = w.get("n", 1)
    return (generate_flops(cfg, w["batch"], n, w["prompt_len"], w["new_tokens"]),
            generate_bytes(cfg, w["batch"] * n, w["prompt_len"], w["new_tokens"]))
  if w["kind"] == "grpo":
    N, P, T = w["prompts"] * w["group"], w["prompt_len"], w["new_tokens"]
    logp = forward_flops(cfg, N, P + T, logits_from=P)  # log-probs of the T completion tokens
    ref = logp if w["kl_coef"] > 0 else 0.0
    # rollout + reference forward + mu x (policy forward + backward = 3 forwards)
    return (generate_flops(cfg, w["prompts"], w["group"], P, T) + ref + w["mu"] * 3 * logp,
            generate_bytes(cfg, N, P, T))
  if w["kind"] == "sft":
    return 3 * forward_flops(cfg, w["batch"], w["seq_len"]), 0.0
  raise ValueError(f"unknown workload kind {w['kind']!r}")


# ---- the sparkjax side --------------------------------------------------------------------------------------------


def even_share(tokens_NT, lengths_N, finished_N, targets_N):
  """The benchmark's reward: the share of even token ids in each completion (cheap, not constant)."""
  del finished_N, targets_N
  mask = jnp.arange(tokens_NT.shape[1])[None] < lengths_N[:, None]
  return jnp.sum((tokens_NT % 2 == 0) & mask, axis=1) / jnp.maximum(lengths_N, 1)


def optimizer(lr: float):
  return state_lib.make_optimizer(ml_collections.ConfigDict(dict(
      lr=lr, total_steps=1000, warmup_steps=0, schedule="constant", b1=0.9, b2=0.99, weight_decay=0.0,
      grad_clip=1.0)))


def run_sparkjax(w: dict, cfg: ModelConfig, params, prompts: np.ndarray, modes=("greedy", "sample", "topk")):
  """{mode or "step": [seconds per timed call]} for workload w (warm-up calls untimed)."""
  reps, warmup = w["reps"], w["warmup"]
  if w["kind"] in ("sampler", "sampler_n"):
    prompt = jnp.asarray(prompts)
    mask = jnp.ones(prompt.shape, bool)
    out = {}
    for mode in (modes if w["kind"] == "sampler" else ("verify",)):
      kw = SAMPLER_MODES[mode] if mode in SAMPLER_MODES else dict(temperature=w["temperature"], top_p=w["top_p"])
      sp = sampling.SamplingParams(max_new_tokens=w["new_tokens"], num_samples=w.get("n", 1), stop_tokens=(), **kw)
      fn = jax.jit(lambda p, x, m, k, sp=sp: sampling.sample(p, x, m, k, cfg=cfg, sp=sp))
      call = lambda i: jax.block_until_ready(fn(params, prompt, mask, jax.random.key(100 + i)))
      res = [call(-1 - i) for i in range(warmup)][-1]
      rows = w["batch"] * w.get("n", 1)
      assert res.tokens.shape == (rows, w["new_tokens"]) and bool(jnp.all(res.lengths == w["new_tokens"]))
      out[mode] = [timed(lambda: call(i)) for i in range(reps)]
    return out
  if w["kind"] == "grpo":
    tx, schedule = optimizer(w["lr"])
    sp = sampling.SamplingParams(max_new_tokens=w["new_tokens"], temperature=1.0, num_samples=w["group"],
                                 stop_tokens=())
    settings = rl.GRPOSettings(sampling=sp, kl_coef=w["kl_coef"], mu=w["mu"])
    step = rl.make_iteration(cfg, settings, tx, rl.rule_reward(even_share), schedule)
    state = state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)
    prompt = jnp.asarray(prompts)
    mask = jnp.ones(prompt.shape, bool)
    targets = jnp.zeros((w["prompts"],), jnp.int32)
    holder = [state]

    def call():
      holder[0], metrics, _ = step(holder[0], params, None, prompt, mask, targets)
      jax.block_until_ready((holder[0], metrics))
      return metrics

    m = [call() for _ in range(warmup)][-1]
    assert float(m["response_length"]) == w["new_tokens"], m["response_length"]
    return {"step": [timed(call) for _ in range(reps)]}
  if w["kind"] == "sft":
    tx, schedule = optimizer(w["lr"])
    step = sft.make_sft_step(cfg, tx, schedule)
    tokens = jnp.asarray(prompts)
    loss_mask = jnp.arange(w["seq_len"])[None].repeat(w["batch"], 0) >= w["prompt_len"]
    batch = dict(tokens=tokens, loss_mask=loss_mask, mask=jnp.ones(tokens.shape, bool))
    holder = [state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)]

    def call():
      holder[0], metrics = step(holder[0], batch)
      jax.block_until_ready((holder[0], metrics))

    for _ in range(warmup):
      call()
    return {"step": [timed(call) for _ in range(reps)]}
  raise ValueError(w["kind"])


def workload_prompts(w: dict, cfg: ModelConfig) -> np.ndarray:
  """The workload's token ids (the same on every side): prompts [B, P], or SFT rows [B, T]."""
  rng = np.random.default_rng(0)
  rows = w.get("batch", w.get("prompts"))
  length = w["seq_len"] if w["kind"] == "sft" else w["prompt_len"]
  return rng.integers(0, cfg.vocab_size, (rows, length), dtype=np.int32)


# ---- the peers ----------------------------------------------------------------------------------------------------


def run_tunix(python: Path, jobs: list[dict], workdir: Path) -> dict:
  """Runs benchmarks/peers/tunix_side.py in Tunix's virtualenv on `jobs`; {name: its result}."""
  spec, out = workdir / "tunix_spec.json", workdir / "tunix_out.json"
  spec.write_text(json.dumps(jobs, indent=1))
  proc = subprocess.run([str(python), str(HERE / "peers" / "tunix_side.py"), "--spec", str(spec), "--out", str(out)],
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, text=True, capture_output=True)
  if proc.returncode:
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise RuntimeError(f"the Tunix side failed (exit {proc.returncode}); its output is above")
  return json.loads(out.read_text())


def check_tunix_parity(python: Path, model_dir: Path, cfg: ModelConfig, params, workdir: Path) -> float:
  """Max |logit difference| between sparkjax and Tunix on the same weights (a full forward of 2 x 16 tokens)."""
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 16), dtype=np.int32)
  logits = transformer.forward(params, cfg, jnp.asarray(tokens), None, jnp.ones(tokens.shape, bool))
  np.save(workdir / "ref_tokens.npy", tokens)
  np.save(workdir / "ref_logits.npy", np.asarray(logits, np.float32))
  proc = subprocess.run([str(python), str(HERE / "peers" / "tunix_side.py"), "--check-parity", str(model_dir),
                         "--ref-logits", str(workdir / "ref_logits.npy"), "--ref-tokens",
                         str(workdir / "ref_tokens.npy")], env={**os.environ, "JAX_PLATFORMS": "cpu"}, text=True,
                        capture_output=True)
  if proc.returncode:
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise RuntimeError("the Tunix parity check failed; its output is above")
  return float(json.loads(proc.stdout.strip().splitlines()[-1])["max_abs_diff"])


def run_transformers(model_dir: Path, w: dict, prompts: np.ndarray, modes=("greedy", "sample")) -> dict:
  """{mode: [seconds]} of `transformers.generate` (PyTorch, CPU) on a sampler workload; {} without torch."""
  try:
    import torch
    import transformers
  except ImportError:
    return {}
  transformers.logging.set_verbosity_error()
  torch.set_num_threads(num_cores())
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  ids = torch.as_tensor(prompts, dtype=torch.long)
  out = {}
  for mode in modes:
    kw = dict(do_sample=False) if mode == "greedy" else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)

    @torch.inference_mode()
    def call(i, kw=kw):
      torch.manual_seed(100 + i)
      return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=w["new_tokens"],
                            min_new_tokens=w["new_tokens"], eos_token_id=None, pad_token_id=0, **kw)

    res = [call(-1 - i) for i in range(w["warmup"])][-1]
    assert res.shape == (w["batch"], w["prompt_len"] + w["new_tokens"])
    out[mode] = [timed(lambda: call(i)) for i in range(w["reps"])]
  return out


# ---- report -------------------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
  head = ("| workload | unit | sparkjax | Tunix | transformers | sparkjax / Tunix | sparkjax % compute | "
          "Tunix % compute | sparkjax % memory |\n|---|---|---|---|---|---|---|---|---|")
  fmt = lambda x, u: "—" if x is None else (f"{x:,.0f}" if u == "tok/s" else f"{x:.3f}")
  pct = lambda x: "—" if x is None else f"{100 * x:.1f}%"
  lines = [head]
  for r in rows:
    ratio = None
    if r["tunix"] is not None:
      ratio = r["sparkjax"] / r["tunix"] if r["unit"] == "tok/s" else r["tunix"] / r["sparkjax"]
    lines.append(f"| {r['label']} | {r['unit']} | {fmt(r['sparkjax'], r['unit'])} | {fmt(r['tunix'], r['unit'])} | "
                 f"{fmt(r['transformers'], r['unit'])} | {'—' if ratio is None else f'{ratio:.2f}x'} | "
                 f"{pct(r['sj_compute'])} | {pct(r['tunix_compute'])} | {pct(r['sj_memory'])} |")
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {', '.join(WORKLOADS)}")
  ap.add_argument("--reps", type=int, default=0, help="timed calls per measurement (0: each workload's default)")
  ap.add_argument("--tunix-python", type=Path, default=DEFAULT_TUNIX_PYTHON,
                  help="python of Tunix's virtualenv (benchmarks/peers/setup_tunix.sh makes it)")
  ap.add_argument("--no-tunix", action="store_true")
  ap.add_argument("--no-transformers", action="store_true")
  ap.add_argument("--json", type=Path, default=None)
  args = ap.parse_args(argv)
  names = [s.strip() for s in args.workloads.split(",") if s.strip()]
  for n in names:
    if n not in WORKLOADS:
      ap.error(f"unknown workload {n!r}; known: {', '.join(WORKLOADS)}")
  use_tunix = not args.no_tunix
  if use_tunix and not args.tunix_python.exists():
    ap.error(f"--tunix-python {args.tunix_python} does not exist: run `bash benchmarks/peers/setup_tunix.sh` "
             "first (or pass --no-tunix)")
  idle, t_start = cpu_idle(), time.time()
  peak, bandwidth = matmul_flops(5), read_bandwidth(5)
  print(f"machine: {platform.processor() or platform.machine()}, {num_cores()} cores; jax {jax.__version__}; "
        f"CPU {100 * (idle or 0):.0f}% idle before the run" + ("  WARNING: not idle" if (idle or 1) < 0.9 else ""),
        flush=True)
  results: dict = {}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    dirs, params_of, jobs = {}, {}, []
    for name in names:
      w = dict(WORKLOADS[name])
      if args.reps:
        w["reps"] = args.reps
      cfg = MODELS[w["model"]]
      if w["model"] not in params_of:
        params_of[w["model"]] = transformer.init_params(cfg, jax.random.key(0))
        dirs[w["model"]] = hf.save_params(params_of[w["model"]], cfg, tmp / w["model"])
      prompts = workload_prompts(w, cfg)
      np.save(tmp / f"{name}_tokens.npy", prompts)
      print(f"{name}: sparkjax ...", flush=True)
      results[name] = dict(workload=w, params=cfg.num_params(), sparkjax=run_sparkjax(w, cfg, params_of[w["model"]],
                                                                                     prompts))
      jobs.append(dict(w, name=name, model_dir=str(dirs[w["model"]]), tokens=str(tmp / f"{name}_tokens.npy"),
                       modes=list(SAMPLER_MODES) if w["kind"] == "sampler" else None))
    peak, bandwidth = max(peak, matmul_flops(5)), max(bandwidth, read_bandwidth(5))
    parity = None
    if use_tunix:
      first = names[0]
      parity = check_tunix_parity(args.tunix_python, dirs[WORKLOADS[first]["model"]],
                                  MODELS[WORKLOADS[first]["model"]], params_of[WORKLOADS[first]["model"]], tmp)
      print(f"Tunix: same weights (max |logit difference| {parity:.2e}); running ...", flush=True)
      tunix = run_tunix(args.tunix_python, jobs, tmp)
      for name in names:
        results[name]["tunix"] = tunix["results"][name]
      results["_tunix_versions"] = tunix.get("versions")
    if not args.no_transformers:
      for name in names:
        w = WORKLOADS[name]
        if w["kind"] == "sampler":
          print(f"{name}: transformers ...", flush=True)
          results[name]["transformers"] = run_transformers(dirs[w["model"]], dict(w, **({"reps": args.reps} if
                                                           args.reps else {})), np.load(tmp / f"{name}_tokens.npy"))
  peak, bandwidth = max(peak, matmul_flops(5)), max(bandwidth, read_bandwidth(5))

  rows = []
  for name in names:
    r, w = results[name], WORKLOADS[name]
    cfg = MODELS[w["model"]]
    flops, nbytes = workload_cost(w, cfg)
    med = lambda ts: statistics.median(ts) if ts else None
    for mode, times in r["sparkjax"].items():
      t_sj = med(times)
      t_tx = med((r.get("tunix") or {}).get("times", {}).get(mode, []))
      t_hf = med((r.get("transformers") or {}).get(mode, []))
      tokens = (w["batch"] * w.get("n", 1) * w["new_tokens"]) if w["kind"].startswith("sampler") else None
      speed = (lambda t: None if t is None else tokens / t) if tokens else (lambda t: t)
      label = f"{name} ({cfg.num_params() / 1e6:.2f}M)" + ("" if mode == "step" else f", {mode}")
      row = dict(label=label, name=name, mode=mode, unit="tok/s" if tokens else "s/step", sparkjax=speed(t_sj),
                 tunix=speed(t_tx), transformers=speed(t_hf), sj_compute=flops / t_sj / peak,
                 tunix_compute=None if t_tx is None else flops / t_tx / peak,
                 sj_memory=(nbytes / bandwidth) / t_sj if nbytes else None, flops=flops, bytes=nbytes)
      rows.append(row)
  print()
  print(f"compute ceiling {peak / 1e9:.1f} GFLOP/s (jitted fp32 2048^3 matmul); memory {bandwidth / 1e9:.1f} GB/s "
        f"(jitted sum over 256 MB); {time.time() - t_start:.0f} s in all")
  if parity is not None:
    print(f"Tunix {results.get('_tunix_versions')}; its logits on the same weights differ by at most {parity:.1e}")
  print(table(rows))
  if args.json:
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), machine=platform.processor(),
                cores=num_cores(), jax=jax.__version__, matmul_flops=peak, read_bandwidth=bandwidth,
                cpu_idle_before=idle, tunix_logit_diff=parity)
    args.json.write_text(json.dumps(dict(meta=meta, rows=rows, raw=results), indent=2, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
