"""Peak memory of crosscoder training is bounded by the shuffle buffer, not by the store (one run, ~2 min).

    python benchmarks/bench_memory.py                 # stores of 50k and 500k tokens, 2 x 128, float32

Writes two on-disk activation stores, one ten times the other, then trains the same crosscoder on each in a
fresh process and prints each process's peak resident memory (``ru_maxrss``) and their ratio. The store is
memory-mapped and read one buffer at a time, so the process's own (anonymous) memory should not grow with the
store; pages of the mapped store files also count in RSS, as reclaimable page cache, and are shown apart.
"""
from __future__ import annotations

import argparse
import json
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
    args = ap.parse_args()
    cfg = {"n_latents": 2048, "batch_size": 1024, "n_steps": args.steps, "buffer_tokens": 16_384,
           "checkpoint_every": 0, "dead_tokens": 100_000}
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n in (args.tokens, 10 * args.tokens):
            store = write_store(Path(tmp) / f"s{n}", n, args.d_model)
            size_mb = sum(f.stat().st_size for f in store.path.iterdir()) / 2**20
            out = subprocess.run([sys.executable, "-c", CHILD, str(store.path), json.dumps(cfg)],
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((n, size_mb, res["peak_rss_mb"], res["seconds"], res.get("RssAnon", float("nan"))))
            print(f"store {n:>9,} tokens ({size_mb:7.1f} MB on disk): peak RSS {res['peak_rss_mb']:7.1f} MB "
                  f"(at the end: anonymous {res.get('RssAnon', float('nan')):.1f} MB, file-backed "
                  f"{res.get('RssFile', float('nan')):.1f} MB), {args.steps} steps in {res['seconds']:.1f} s",
                  flush=True)
    print(f"store size ratio {rows[1][1] / rows[0][1]:.1f}x -> peak RSS ratio {rows[1][2] / rows[0][2]:.2f}x "
          f"(buffer {cfg['buffer_tokens']:,} tokens, batch {cfg['batch_size']:,}); anonymous memory at the end "
          f"{rows[1][4] / rows[0][4]:.2f}x (file-backed pages of the memory-mapped store count in RSS but are page "
          "cache the kernel can reclaim)")


if __name__ == "__main__":
    main()
