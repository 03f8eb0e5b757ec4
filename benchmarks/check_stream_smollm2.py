"""The streaming mode's guarantees on the real smollm2-135m pair (outside CI: about 6 minutes on one CPU core).

    OMP_NUM_THREADS=1 THINKDIFF_RUNS=/tmp/smol-runs python benchmarks/check_stream_smollm2.py

On the smollm2-smoke run with ``[harvest] mode = "stream"`` (the pair rebuilt from GGUF + adapter into the runs
folder; a ring of 4 shards of 1,024 tokens, windows of 2; 50 steps of 256 tokens, about two epochs) it checks what
``tests/unit/test_stream.py`` checks on the tiny stand-in: every complete epoch serves the store path's train
tokens exactly once (by document and position), a run stopped after 20 steps and resumed serves the same rows
step by step and ends with the same crosscoder bit for bit, the measured peak disk stays within the plan's; then
``Run.crosscoder()`` trains the run's ReLU crosscoder through the ring. Prints each part's time.
"""
from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))   # runs from a bare checkout too

import torch  # noqa: E402

from thinkdiff import harvest, pipeline, stream  # noqa: E402

OVERRIDES = {"harvest.mode": "stream", "harvest.shard_tokens": 1024, "train.relu.n_steps": 50,
             "harvest.stream": {"ring_shards": 4, "window_shards": 2}}


def main() -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    run = pipeline.load_run("smollm2-smoke", OVERRIDES, progress=False)
    pair = run.pair
    print(f"pair ready in {time.perf_counter() - t0:.1f} s", flush=True)
    docs, h, cfg = run.documents(), run.harvest_config(), run.train_config("relu")
    scfg = stream.StreamConfig(**run.config.harvest["stream"])
    tok_d = getattr(pair, "tokenizer_distilled", None) or pair.tokenizer

    def go(work, served, **kw):
        def on_step(step, meta, epoch):
            served[step] = [(epoch, int(d), int(p)) for d, p in zip(meta["doc_id"], meta["pos"])]
        return stream.train_stream(pair.base, pair.distilled, pair.tokenizer, tok_d, docs, h, kw.pop("tcfg", cfg),
                                   work, scfg, progress=False, on_step=on_step, **kw)

    with tempfile.TemporaryDirectory(prefix="check_stream-") as tmp:
        tmp, whole, parts = Path(tmp), {}, {}
        t1 = time.perf_counter()
        res = go(tmp / "whole", whole)
        r = res.report
        print(f"streamed {cfg.n_steps} steps in {time.perf_counter() - t1:.1f} s (loop {r['seconds']:.1f} s = "
              f"{r['tokens_per_s']:.0f} tok/s; plan estimate {r['plan']['estimated_s']:.1f} s); {r['shards_written']} "
              f"shards through a ring of {scfg.ring_shards}; peak disk {r['peak_disk_bytes']:,} B (plan "
              f"{r['plan']['peak_disk_bytes']:,})", flush=True)
        store = harvest.harvest_pair(pair.base, pair.distilled, pair.tokenizer, tok_d, docs, h, out_dir=tmp / "store",
                                     progress=False)
        m = store.meta
        train_tokens = Counter((int(d), int(p)) for d, p, s in zip(m["doc_id"], m["pos"], m["split"]) if s == 0)
        by_epoch: dict = {}
        for step in sorted(whole):
            for e, d, p in whole[step]:
                by_epoch.setdefault(e, Counter())[(d, p)] += 1
        last = max(by_epoch)
        once = last >= 1 and all(by_epoch[e] == train_tokens for e in range(last)) \
            and set(by_epoch[last]) <= set(train_tokens) and max(by_epoch[last].values()) == 1
        go(tmp / "killed", parts, tcfg=cfg.replace(checkpoint_every=7), stop_after=20)
        resumed = go(tmp / "killed", parts, tcfg=cfg.replace(checkpoint_every=7))
        a, b = res.train.crosscoder.state_dict(), resumed.train.crosscoder.state_dict()
        same = all(torch.equal(a[k], b[k]) or bool(a[k].isnan().all() and b[k].isnan().all()) for k in a)
        print(f"{last + 1} epochs: each complete one serves the store's {sum(train_tokens.values()):,} train tokens "
              f"once: {once}; stopped after 20 steps and resumed: same rows {parts == whole}, same crosscoder {same}; "
              f"peak disk within the plan: {r['peak_disk_bytes'] <= r['plan']['peak_disk_bytes']}", flush=True)
        assert once and parts == whole and same and r["peak_disk_bytes"] <= r["plan"]["peak_disk_bytes"]
    t2 = time.perf_counter()
    cc = run.crosscoder("relu")
    print(f"Run.crosscoder() in stream mode: {time.perf_counter() - t2:.1f} s, {cc}")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
