"""Crosscoder training throughput against this machine's matmul peak (one process, about a minute).

    python benchmarks/bench_train.py                  # 2 x 256 inputs -> 8,192 latents, batch 4,096, fp32, CPU
    python benchmarks/bench_train.py --d-model 1536 --n-latents 32768 --batch 1024 --device cuda   # 1.5B shape

FLOP convention: a step is 6 matmuls of 2 * batch * (n_models * d_model) * F FLOP
(encoder and decoder forward, two backward matmuls each), 206 GFLOP at the default shape. The trainer
never needs the gradient of the input activations, so ReLU really executes 5 of them; BatchTopK runs the
dense encoder forward plus sparse work proportional to k. GFLOP/s below use the 6-matmul count for both,
so "ratio to peak" reads as "fraction of the time a perfect dense implementation would need".
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from thinkdiff.train import TensorStore, TrainConfig, Trainer


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup, reps):
    """Median (wall seconds, process CPU seconds) of ``fn``. On a shared CPU the wall time swings with
    other people's load; CPU seconds of this process divided by the thread count is the steadier figure."""
    walls, cpus = [], []
    for i in range(warmup + reps):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        if i >= warmup:
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def matmul_peak(device, n=4096, reps=5):
    """(GFLOP/s by wall time, GFLOP/s by CPU time / threads) of an n^3 fp32 matmul."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    wall, cpu = timed(lambda: a @ b, device, 2, reps)
    return 2 * n**3 / wall / 1e9, 2 * n**3 / (cpu / torch.get_num_threads()) / 1e9


def step_time(store, cfg, device, warmup=2, reps=4):
    tr = Trainer(store, cfg, device=device)
    x = store.acts[: cfg.batch_size].to(device)
    return timed(lambda: tr.step(x), device, warmup, reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-latents", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64, help="BatchTopK k")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=4)
    args = ap.parse_args()

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    peak, peak_cpu = matmul_peak(args.device)
    print(f"fp32 matmul 4096^3: {peak:.0f} GFLOP/s wall, {peak_cpu:.0f} GFLOP/s per CPU-second x threads")
    store = TensorStore(torch.randn(args.batch, 2, args.d_model), heldout_frac=0.0)
    flop = 6 * 2 * args.batch * 2 * args.d_model * args.n_latents
    print(f"shape: 2 x {args.d_model} -> {args.n_latents} latents, batch {args.batch}; {flop / 1e9:.0f} GFLOP/step "
          f"(6-matmul convention); floor at peak {flop / peak / 1e9:.3f} s, encoder fwd+bwd floor "
          f"{flop / 3 / peak / 1e9:.3f} s")
    for activation in ("relu", "batchtopk"):
        cfg = TrainConfig(activation=activation, n_latents=args.n_latents, k=args.k, batch_size=args.batch,
                          n_steps=1000, lr_warmup_frac=0.0)
        t, c = step_time(store, cfg, args.device, reps=args.reps)
        c /= torch.get_num_threads()
        rate, rate_cpu = flop / t / 1e9, flop / c / 1e9
        kk = f" (k={args.k})" if activation == "batchtopk" else ""
        print(f"{activation:9s}{kk}: wall {t:.3f} s/step, {args.batch / t:,.0f} tokens/s, {rate:.0f} GFLOP/s = "
              f"{rate / peak:.0%} of peak | CPU {c:.3f} s/step, {rate_cpu:.0f} GFLOP/s = {rate_cpu / peak_cpu:.0%} of peak")


if __name__ == "__main__":
    main()
