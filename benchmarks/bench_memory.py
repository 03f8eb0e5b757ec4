"""Peak memory of crosscoder training and labelling against the store size (one run, ~3 min).

    python benchmarks/bench_memory.py                 # stores of 50k and 500k tokens, 2 x 128, float32

Writes two on-disk activation stores, one ten times the other, then on each, in fresh processes:

- trains the same crosscoder and prints the peak resident memory (``ru_maxrss``) and the ratio. The store is
  memory-mapped and read one buffer at a time, so the process's own (anonymous) memory should not grow with the
  store; pages of the mapped store files also count in RSS, as reclaimable page cache, and are shown apart.
- labels: encodes every token with a BatchTopK crosscoder (``codes.encode_store``, 4,096-token chunks). Its
  result (the sparse codes, ~k entries a token) grows with the store by nature, so the working memory is the
  peak less the result's bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from thinkdiff.store import META_DTYPE, ActivationStore, StoreWriter

CHILD = """
import json, resource, sys, time
from thinkdiff.store import ActivationStore
from thinkdiff.train import TrainConfig, train
store = ActivationStore(sys.argv[1], verify=False)
cfg = TrainConfig(**json.loads(sys.argv[2]))
t = time.perf_counter()
train(store, cfg, progress=False)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("RssAnon", "RssFile")))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t,
                  **{k: int(v.split()[0]) / 1024 for k, v in status.items()}}))
"""

LABEL_CHILD = """
import json, resource, sys, time
import torch
from thinkdiff.codes import encode_store
from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig
from thinkdiff.store import ActivationStore
from thinkdiff.train import store_hash
store = ActivationStore(sys.argv[1], verify=False)
cfg = CrossCoderConfig(d_model=store.d_model, n_latents=2048, n_models=2, activation="batchtopk", k=16,
                       store_hash=store_hash(store))
cc = CrossCoder(cfg, seed=0).fold(store.norm_scale.tolist()).eval()
cc.threshold.fill_(float(sys.argv[2]))
t = time.perf_counter()
acts = encode_store(cc, store)
result = sum(a.nbytes for a in (acts.rows, acts.cols, acts.vals, acts.token_index)) / 2**20
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("RssAnon", "RssFile")))
print(json.dumps({**{k: int(v.split()[0]) / 1024 for k, v in status.items()},
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "result_mb": result,
                  "l0": len(acts.vals) / acts.n_tokens, "seconds": time.perf_counter() - t}))
"""


def write_store(folder: Path, n_tokens: int, d_model: int, shard: int = 25_000) -> ActivationStore:
    """A store of ``n_tokens`` random rows [n, 2, d_model] written shard by shard (never all in RAM)."""
    w = StoreWriter(folder, {"bench": "memory", "n": n_tokens, "d": d_model, "dtype": "float32"})
    rng = np.random.default_rng(0)
    for start in range(0, n_tokens, shard):
        n = min(shard, n_tokens - start)
        meta = np.zeros(n, META_DTYPE)
        meta["doc_id"], meta["pos"], meta["label"] = np.arange(start, start + n) // 100, np.arange(n) % 100, -1
        meta["split"] = (np.arange(start, start + n) // 100) % 10 == 0
        w.write_shard(rng.standard_normal((n, 2, d_model), dtype=np.float32), meta, "train")
    return ActivationStore(w.finalize({"note": "benchmark"}), verify=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=50_000, help="tokens of the small store (the large one: 10x)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the measured processes")
    ap.add_argument("--label-threshold", type=float, default=0.05,
                    help="BatchTopK inference threshold of the labelling crosscoder (sets its L0)")
    args = ap.parse_args()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    cfg = {"n_latents": 2048, "batch_size": 1024, "n_steps": args.steps, "buffer_tokens": 16_384,
           "checkpoint_every": 0, "dead_tokens": 100_000}
    with tempfile.TemporaryDirectory() as tmp:
        rows, labels = [], []
        for n in (args.tokens, 10 * args.tokens):
            store = write_store(Path(tmp) / f"s{n}", n, args.d_model)
            size_mb = sum(f.stat().st_size for f in store.path.iterdir()) / 2**20
            out = subprocess.run([sys.executable, "-c", CHILD, str(store.path), json.dumps(cfg)],
                                 capture_output=True, text=True, check=True, env=env)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((n, size_mb, res["peak_rss_mb"], res["seconds"], res.get("RssAnon", float("nan"))))
            print(f"store {n:>9,} tokens ({size_mb:7.1f} MB on disk): peak RSS {res['peak_rss_mb']:7.1f} MB "
                  f"(at the end: anonymous {res.get('RssAnon', float('nan')):.1f} MB, file-backed "
                  f"{res.get('RssFile', float('nan')):.1f} MB), {args.steps} steps in {res['seconds']:.1f} s",
                  flush=True)
            lab = subprocess.run([sys.executable, "-c", LABEL_CHILD, str(store.path), str(args.label_threshold)],
                                 capture_output=True, text=True, check=True, env=env)
            labels.append(json.loads(lab.stdout.strip().splitlines()[-1]))
            r = labels[-1]
            print(f"  labelling: peak RSS {r['peak_rss_mb']:7.1f} MB, of which the result {r['result_mb']:.1f} MB "
                  f"(L0 {r['l0']:.1f}); working memory {r['peak_rss_mb'] - r['result_mb']:.1f} MB (at the end: anonymous "
                  f"{r['RssAnon']:.1f} MB, file-backed {r['RssFile']:.1f} MB), {r['seconds']:.1f} s",
                  flush=True)
    print(f"training: store size ratio {rows[1][1] / rows[0][1]:.1f}x -> peak RSS ratio {rows[1][2] / rows[0][2]:.2f}x "
          f"(buffer {cfg['buffer_tokens']:,} tokens, batch {cfg['batch_size']:,}); anonymous memory at the end "
          f"{rows[1][4] / rows[0][4]:.2f}x (file-backed pages of the memory-mapped store count in RSS but are page "
          "cache the kernel can reclaim)")
    work = [r["peak_rss_mb"] - r["result_mb"] for r in labels]
    print(f"labelling: peak RSS ratio {labels[1]['peak_rss_mb'] / labels[0]['peak_rss_mb']:.2f}x, working memory "
          f"(peak less the result) ratio {work[1] / work[0]:.2f}x")


if __name__ == "__main__":
    main()
