"""Peak disk and RAM of the streaming mode at two run lengths, 1x and 10x, in one process: both must stay bounded.

    OMP_NUM_THREADS=1 python benchmarks/bench_stream.py                 # 32,768 and 327,680 tokens, one thread

Runs ``stream.train_stream`` on the tiny random qwen-1.5b stand-in (``qwen.tiny_qwen_pair``: width 64, 4 blocks,
the real 151,936-row embedding) over random-id documents, one epoch each, the corpus growing with the run (a
store would grow 10x). Peak disk: the run's own measurement of its ring and checkpoints (after every write); the
training log, about 330 bytes per step, is the one part that grows with the run and is printed apart. Peak RAM:
this process's resident set sampled every 5 ms by a thread (psutil) during each run, absolute and above the RSS
before the first run (models, libraries). Prints both runs and the 10x / 1x ratios, which must be <= 1.1.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))   # runs from a bare checkout too

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from thinkdiff import pairs, qwen, stream  # noqa: E402
from thinkdiff.harvest import HarvestConfig  # noqa: E402
from thinkdiff.train import TrainConfig  # noqa: E402


class PeakRSS:
    """The highest resident set size of this process while in the ``with`` block (bytes), sampled by a thread."""

    def __enter__(self):
        self.peak, self._stop = psutil.Process().memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        proc = psutil.Process()
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def one_run(models, tok, layer, tokens: int, args) -> dict:
    rng = np.random.default_rng(tokens)
    seq = args.seq_len
    docs = [{"text": "", "input_ids": rng.integers(0, qwen.N_REGULAR, seq).tolist()}
            for _ in range(-(-tokens // (seq - 1)) + 1)]             # one epoch: position 0 is dropped
    hcfg = HarvestConfig(layer=layer, batch_size=8, max_seq_len=seq, dtype="bfloat16", shard_tokens=args.shard_tokens,
                         heldout_fraction=0.0)
    tcfg = TrainConfig(n_latents=args.n_latents, batch_size=args.batch, n_steps=tokens // args.batch, lr=1e-3,
                       checkpoint_every=args.checkpoint_every)
    scfg = stream.StreamConfig(ring_shards=args.ring_shards, window_shards=args.window_shards)
    with tempfile.TemporaryDirectory(prefix="bench_stream-") as tmp, PeakRSS() as rss:
        res = stream.train_stream(*models, tok, tok, docs, hcfg, tcfg, Path(tmp), scfg, progress=False)
    r = res.report
    return {"tokens": tokens, "steps": tcfg.n_steps, "seconds": r["seconds"], "tok_s": r["tokens_per_s"],
            "peak_disk": r["peak_disk_bytes"], "plan_disk": r["plan"]["peak_disk_bytes"], "peak_rss": rss.peak,
            "shards": r["shards_written"], "log": r["log_bytes"]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32768, help="training tokens of the 1x run")
    ap.add_argument("--factor", type=int, default=10, help="the long run is this many times longer")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--shard-tokens", type=int, default=1024)
    ap.add_argument("--ring-shards", type=int, default=8)
    ap.add_argument("--window-shards", type=int, default=2)
    ap.add_argument("--n-latents", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--checkpoint-every", type=int, default=0, help="0: checkpoints only when the ring is full")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer, models as tok_models
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

    real = pairs.get("qwen-1.5b")
    tp = qwen.tiny_qwen_pair(real.name, real.options["base_arch"], real.options["distilled_arch"], hidden=64, layers=4)
    models = [Qwen2ForCausalLM.from_pretrained(p).eval() for p in (tp.base_path, tp.distilled_path)]
    # documents carry their ids, so the tokenizer gives only the pad id: a one-word stand-in spares the harvest's
    # copies of the 151k-entry Qwen tokenizer (hundreds of MiB of RSS that say nothing about the ring)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tok_models.WordLevel({"<pad>": 0}, unk_token="<pad>")),
                                  pad_token="<pad>")
    before = psutil.Process().memory_info().rss
    rows = [one_run(models, tok, tp.layer, n, args) for n in (args.tokens, args.factor * args.tokens)]
    print(f"bench_stream: tiny qwen-1.5b stand-in (d 64), {args.threads} thread(s), ring {args.ring_shards} x "
          f"{args.shard_tokens} tokens, window {args.window_shards} shards, bf16 ring; RSS before the runs "
          f"{before / 2**20:.0f} MiB")
    for r, name in zip(rows, ("1x", f"{args.factor}x")):
        print(f"{name:>4}: {r['tokens']:>9,} tokens ({r['steps']} steps, {r['shards']} shards) in {r['seconds']:.1f} s "
              f"= {r['tok_s']:,.0f} tok/s; peak disk {r['peak_disk'] / 2**20:.2f} MiB "
              f"(plan {r['plan_disk'] / 2**20:.2f}) "
              f"+ log {r['log'] / 2**20:.2f} MiB; "
              f"peak RSS {r['peak_rss'] / 2**20:.0f} MiB ({(r['peak_rss'] - before) / 2**20:+.0f} MiB over the start)")
    ratio = {k: rows[1][k] / rows[0][k] for k in ("peak_disk", "peak_rss")}
    print(f"{args.factor}x / 1x: peak disk {ratio['peak_disk']:.3f}, peak RSS {ratio['peak_rss']:.3f} "
          f"({'bounded' if max(ratio.values()) <= 1.1 else 'NOT bounded'}: <= 1.1 required)")
    return {"runs": rows, "ratio": ratio, "rss_before": before}


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
