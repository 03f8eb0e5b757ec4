"""Crosscoder training speed: the fast step as a ratio to the dense reference step, in one process (~2 min).

    python benchmarks/bench_train.py                  # 2 x 256 inputs -> 8,192 latents, batch 4,096, fp32, CPU
    python benchmarks/bench_train.py --crossover      # also: sparse vs dense ReLU kernels by code density
    python benchmarks/bench_train.py --d-model 1536 --n-latents 32768 --batch 1024 --device cuda   # 1.5B shape

Each scheme's step (``Trainer.step``: loss, backward, clipping, Adam) is timed with its fast kernels and with
the dense reference (``Trainer(dense_reference=True)``: the scheme's loss in plain autograd), alternating the
two so that load from other processes hits both alike, at two points:

- *init*: the crosscoder as initialised, where about half the ReLU latents fire on every token;
- *trained sparsity*: the encoder bias shifted so that each latent fires on ``--density`` of the batch, the
  L0 trained crosscoders reach (the organism's ReLU crosscoders end at 11-15 of 1,024 latents, 1.1-1.5 %;
  the default 1.4 % is 115 of 8,192). The L0 used is printed. The timed steps use lr 1e-9 so that they keep the
  sparsity they start at (a step's work does not depend on the learning rate).

Then the fast step with ``compute_dtype="bfloat16"`` (bf16 autocast of the dense encoder matmul) against float32.

FLOP convention: a dense step is 5 matmuls of 2 * batch * (n_models * d_model) * F FLOP (encoder and decoder
forward, the decoder's two backward products and the encoder weight gradient; the input needs no gradient).
"Share of peak" is that count over the dense reference's time, against an n^3 matmul measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from thinkdiff import precision
from thinkdiff.train import TensorStore, TrainConfig, Trainer
from thinkdiff.schemes import relu_l1


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fns, device, warmup, reps):
    """Median seconds of each function in ``fns``, run in turns (warm-up rounds not counted). On the CPU the
    clock is this process's CPU time divided by its thread count: unlike wall time it does not grow when other
    processes take the cores (run with --threads 1 on a busy machine, where waiting threads also burn CPU)."""
    cpu = torch.device(device).type == "cpu"
    clock = (lambda: time.process_time() / torch.get_num_threads()) if cpu else time.perf_counter
    times = [[] for _ in fns]
    for i in range(warmup + reps):
        for j, fn in enumerate(fns):
            sync(device)
            t = clock()
            fn()
            sync(device)
            if i >= warmup:
                times[j].append(clock() - t)
    return [statistics.median(t) for t in times]


def matmul_peak(device, dtype=torch.float32, n=4096, reps=5):
    """GFLOP/s of an n^3 matmul in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    (t,) = timed([lambda: a @ b], device, 2, reps)
    return 2 * n**3 / t / 1e9


def set_density(trainer, x_raw, density):
    """Shift the encoder bias so that each latent fires on ``density`` of the batch ``x_raw`` (returns the L0)."""
    m = trainer.model
    with torch.no_grad():
        x = x_raw.to(trainer.device) * trainer.scale[None, :, None]
        pre = m.pre_acts(x)
        m.b_enc.sub_(torch.quantile(pre[:2048].float(), 1 - density, dim=0))
        return (m.pre_acts(x) > 0).sum(1).float().mean().item()


def compare(store, cfg, device, density, reps):
    """(fast s/step, dense s/step, L0 of the fast trainer's first timed batch)."""
    x = store.acts[: cfg.batch_size]
    fast, dense = Trainer(store, cfg, device=device), Trainer(store, cfg, device=device, dense_reference=True)
    l0 = None
    if density is not None:
        l0 = set_density(fast, x, density)
        set_density(dense, x, density)
    stats = {}
    t_fast, t_dense = timed([lambda: stats.update(fast.step(x)), lambda: dense.step(x)], device, 1, reps)
    return t_fast, t_dense, stats.get("l0", l0)


def crossover(store, cfg, device, reps):
    """Sparse vs fused-dense ReLU kernels at a range of code densities (where SPARSE_MAX_DENSITY comes from)."""
    x = store.acts[: cfg.batch_size]
    print("ReLU kernels by code density (sparse / dense step time):")
    saved = relu_l1.SPARSE_MAX_DENSITY
    try:
        for density in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
            trs = [Trainer(store, cfg, device=device) for _ in range(2)]
            for tr in trs:
                set_density(tr, x, density)

            def run(tr, limit):
                relu_l1.SPARSE_MAX_DENSITY = limit
                tr.step(x)
            t_sparse, t_dense = timed([lambda: run(trs[0], 1.0), lambda: run(trs[1], 0.0)], device, 1, reps)
            print(f"  density {density:6.1%}: sparse {t_sparse:.3f} s, dense {t_dense:.3f} s, ratio {t_sparse / t_dense:.2f}")
    finally:
        relu_l1.SPARSE_MAX_DENSITY = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-latents", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32, help="BatchTopK k")
    ap.add_argument("--density", type=float, default=0.014, help="share of latents firing per token when trained")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--crossover", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    # bf16 only where the device computes it natively: an emulated bf16 (a CPU without AVX-512 BF16) runs a 4096^3
    # matmul for minutes and times nothing thinkdiff would run there (precision.resolve chooses float32)
    bf16 = precision.resolve("auto", args.device)
    peak = matmul_peak(args.device)
    if bf16["dtype"] == "bfloat16":
        peak16 = matmul_peak(args.device, torch.bfloat16)
        print(f"matmul 4096^3: fp32 {peak:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s ({peak16 / peak:.2f}x)")
    else:
        print(f"matmul 4096^3: fp32 {peak:.0f} GFLOP/s; bf16 skipped here ({bf16['why']})")
    store = TensorStore(torch.randn(args.batch, 2, args.d_model), heldout_frac=0.0)
    flop = 5 * 2 * args.batch * 2 * args.d_model * args.n_latents
    print(f"shape: 2 x {args.d_model} -> {args.n_latents} latents, batch {args.batch}; a dense step is "
          f"{flop / 1e9:.0f} GFLOP, {flop / peak / 1e9:.3f} s at the fp32 peak")
    ratios = {}
    for activation, target in (("relu", 0.55), ("batchtopk", 0.2)):
        cfg = TrainConfig(activation=activation, n_latents=args.n_latents, k=args.k, batch_size=args.batch,
                          n_steps=1000, lr=1e-9, lr_warmup_frac=0.0, l1_warmup_frac=0.0)
        name = activation + (f" (k={args.k})" if activation == "batchtopk" else "")
        for point, density in (("init", None), ("trained sparsity", args.density)):
            t_fast, t_dense, l0 = compare(store, cfg, args.device, density, args.reps)
            ratios[activation, point] = t_fast / t_dense
            goal = f"target <= {target}" if density is not None else "no target"
            print(f"{name:16s} {point:16s} L0 {l0:7.1f}: fast {t_fast:.3f} s/step, dense reference {t_dense:.3f} "
                  f"s/step ({flop / t_dense / 1e9 / peak:.0%} of the fp32 matmul peak); ratio {t_fast / t_dense:.2f} "
                  f"({goal})")
        if bf16["dtype"] != "bfloat16":
            print(f"{name:16s} bf16 autocast step: skipped ({bf16['why']})")
            continue
        cfg16 = cfg.replace(compute_dtype="bfloat16")
        x = store.acts[: cfg.batch_size]
        trs = [Trainer(store, c, device=args.device) for c in (cfg, cfg16)]
        for tr in trs:
            set_density(tr, x, args.density)
        t32, t16 = timed([lambda: trs[0].step(x), lambda: trs[1].step(x)], args.device, 1, args.reps)
        ratios[activation, "bf16"] = t16 / t32
        print(f"{name:16s} trained sparsity, bf16 autocast {t16:.3f} s/step vs float32 {t32:.3f}: ratio {t16 / t32:.2f}")
    if args.crossover:
        crossover(store, TrainConfig(activation="relu", n_latents=args.n_latents, batch_size=args.batch,
                                     n_steps=1000, lr=1e-9, lr_warmup_frac=0.0, l1_warmup_frac=0.0), args.device,
                  args.reps)
    return ratios


if __name__ == "__main__":
    main()
